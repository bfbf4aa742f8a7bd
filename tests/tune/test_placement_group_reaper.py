"""tuning.search.placement_group_rows, the package's one read of Ray's private state, on a
real local Ray: it sees placement groups with their creators, the reaper keeps the
driver's own and removes one whose creating actor died."""
import time

from ray.core.generated import gcs_pb2

from hashgan_ray.tuning import search as tuning


def test_rows_have_what_the_reaper_reads(local_ray):
    fields = gcs_pb2.PlacementGroupTableData.DESCRIPTOR.fields_by_name
    assert all(f in fields for f in tuning.PLACEMENT_GROUP_FIELDS)
    assert isinstance(tuning.placement_group_rows(), list)      # the check passes on this Ray


def test_reaper_removes_a_dead_actors_group_and_keeps_the_drivers(local_ray):
    ray = local_ray
    from ray.util.placement_group import placement_group, remove_placement_group

    own = placement_group([{"CPU": 0.01}])                    # the driver's: never reaped
    ray.get(own.ready(), timeout=60)

    @ray.remote(num_cpus=0)
    class Controller:                                         # as Ray Train's controller does
        def make(self):
            pg = placement_group([{"CPU": 0.01}])
            ray.get(pg.ready(), timeout=60)
            return pg.id.hex()

    controller = Controller.remote()
    made = ray.get(controller.make.remote(), timeout=120)
    live = {pg.placement_group_id.hex() for pg in tuning.actor_placement_groups()}
    assert made in live and own.id.hex() not in live
    assert tuning.remove_orphaned_placement_groups() == 1     # its creator is alive: kept

    ray.kill(controller)
    deadline = time.monotonic() + 60
    while tuning.remove_orphaned_placement_groups() and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = {pg.placement_group_id.hex(): pg for pg in tuning.placement_group_rows()}
    removed = gcs_pb2.PlacementGroupTableData.REMOVED
    assert rows[made].state == removed                        # reaped
    assert rows[own.id.hex()].state != removed                # the driver's stays
    remove_placement_group(own)

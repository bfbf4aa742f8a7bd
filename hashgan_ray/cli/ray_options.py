"""The Ray connection options every command that starts or joins Ray takes,
and the one function that connects."""
from __future__ import annotations

import os


def add_ray_options(parser, local_cpus: str = "all of this machine's") -> None:
    """--address and --num-cpus; `local_cpus` says what a local Ray gets without --num-cpus."""
    from hashgan_ray.cli.checks import at_least

    group = parser.add_argument_group("Ray")
    group.add_argument("--address", default=None, metavar="ADDR",
                       help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    group.add_argument("--num-cpus", type=at_least(1), default=None, metavar="N",
                       help=f"CPUs of a local Ray (default: {local_cpus})")


def connect_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, as under `ray job submit`),
    else start a local Ray with an explicit CPU count. A Ray this process has
    already joined (tests, notebooks) is kept."""
    import ray

    from hashgan_ray.output import ray_log_level

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=ray_log_level())
    else:
        # One machine has nothing to preempt: Ray Train's preemption watcher would
        # only log a core_worker.cc error about its constructor arguments at each start.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level=ray_log_level())

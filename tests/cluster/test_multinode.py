"""Two Ray nodes on one machine (tests/support/cluster_local.py, token auth on):
training spread over both, index shards served from both, a node killed halfway
through training. Every Ray process the module starts is stopped at its end."""
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import brute, free_port, write_exact_index
from support.cluster_local import TRAIN_WORKER, LocalCluster

from hashgan_ray.config import TrainConfig
from hashgan_ray.data.format import read_meta, read_pairs
from hashgan_ray.index import store
from hashgan_ray.model.checkpoint import max_weight_difference
from hashgan_ray.train.loop import fit

httpx = pytest.importorskip("httpx")
TINY = dict(bits=16, text_hidden=32, text_features=16, batch_size=16, val_database=40, lr=1e-3,
            workers=2, epochs=3)
# A node's own custom resource, so that each index shard can be pinned to one.
HEAD, SECOND = {"node_head": 1}, {"node_second": 1}
# DDP on gloo averages two workers' gradients; a + b is exact in any order, and
# the two runs see the same data split, so the weights came out bit-identical
# (benchmarks/multinode.py: 0.0). One Adam step at lr 1e-3 moves a weight by
# ~1e-3: any real divergence is two orders of magnitude above this bound.
WEIGHT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cluster():
    """A head with 1 CPU and a second node with 2: two workers (1 CPU each) fit
    on the second node, or one on each, and never both on the head."""
    with LocalCluster(head_cpus=1, head_resources=HEAD) as cluster:
        cluster.add_node(2, SECOND)
        cluster.connect()
        yield cluster


@pytest.fixture(scope="module")
def one_node_run(cluster, synth_data, tmp_path_factory):
    """The reference: both workers packed onto one node (the second)."""
    out = tmp_path_factory.mktemp("pack") / "run"
    result, nodes = train_on(cluster, TrainConfig(data=str(synth_data), out=str(out), **TINY))
    assert len(nodes) == 2 and len(set(nodes)) == 1, f"workers on {nodes}"
    return result, out


def train_on(cluster, cfg):
    """fit(cfg) -> (Result, node id of each Train worker it started)."""
    before = cluster.actor_nodes(TRAIN_WORKER)
    result = fit(cfg)
    return result, [n for a, n in cluster.actor_nodes(TRAIN_WORKER).items() if a not in before]


def shards_on(resources: list[dict]) -> dict:
    """Serve options (as a config's `deployments:`) pinning shard s to a node
    offering resources[s]; the encoder takes half a CPU."""
    return {"QueryEncoder": {"ray_actor_options": {"num_cpus": 0.5}},
            **{f"IndexShard{s}": {"ray_actor_options": {"num_cpus": 0.25, "resources": r}}
               for s, r in enumerate(resources)}}


def test_bad_placement_and_shard_resources_are_refused(synth_data, tiny_model, tmp_path):
    from hashgan_ray.serving.app import application

    with pytest.raises(ValueError, match="placement_strategy must be one of"):
        TrainConfig(placement_strategy="spread")
    index = write_exact_index(tmp_path / "index", tiny_model, synth_data, shards=2)
    with pytest.raises(ValueError, match=r"this layout \(split\) does not have: IndexShard2"):
        application(tiny_model, index, options=shards_on([HEAD, HEAD, SECOND]))


def test_shards_on_both_nodes_answer_as_brute_force(cluster, synth_data, tiny_model, tmp_path,
                                                    monkeypatch):
    from ray import serve

    from hashgan_ray.serving.app import application

    monkeypatch.delenv("HASHGAN_API_TOKEN", raising=False)
    index = write_exact_index(tmp_path / "index", tiny_model, synth_data, shards=2)
    port = free_port()
    # One HTTP proxy: a proxy per node would bind the same port twice on this machine.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application(tiny_model, index, options=shards_on([HEAD, SECOND])),
                  name="hashgan", route_prefix="/")
        placed = [set(cluster.actor_nodes(f"ServeReplica:hashgan:IndexShard{s}",
                                          alive=True).values()) for s in range(2)]
        assert placed == [{cluster.node_id(cluster.nodes[0])}, {cluster.node_id(cluster.nodes[1])}]

        codes = store.read_codes(index)
        vocab = read_meta(synth_data).vocabulary
        rows = read_pairs(synth_data, "query", columns=["text"]).to_pylist()[:6]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for row in rows:
                words = [vocab[i] for i in row["text"]]
                code = client.post("/v1/encode", json={"text": words}).json()["code"]
                found = client.post("/v1/search", json={"text": words, "k": 1000}).json()
                assert found["results"] == brute(code, codes.image, codes.ids)    # all, in order
    finally:
        serve.shutdown()


def test_training_spread_over_two_nodes_survives_a_killed_node_and_ends_as_on_one(
        cluster, one_node_run, synth_data, tmp_path):
    """Two workers, one per node (SPREAD); the second node's raylet and workers
    are SIGKILLed after the first checkpoint; a new node joins; the run resumes
    from that checkpoint and ends exactly where the one-node run did."""
    import ray

    head, victim = cluster.nodes
    assert ray.get_runtime_context().get_node_id() == cluster.node_id(head)  # the driver survives
    victim_id = cluster.node_id(victim)
    out = tmp_path / "run"
    # The one-node run's training, spread; the head alone cannot take both workers back,
    # so the retry waits for capacity to return.
    cfg = TrainConfig(data=str(synth_data), out=str(out), placement_strategy="SPREAD",
                      max_failures=1, **TINY)
    before = cluster.actor_nodes(TRAIN_WORKER)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(fit, cfg)
        deadline = time.monotonic() + 300
        # The controller writes this once a reported checkpoint is registered.
        while not (out / "train" / "checkpoint_manager_snapshot.json").exists():
            assert time.monotonic() < deadline and not run.done(), "no checkpoint was written"
            time.sleep(0.2)
        victim.stop(signal.SIGKILL, grace=0)
        replacement = cluster.add_node(2, SECOND)
        result = run.result(timeout=600)
    assert result.error is None and result.metrics["epoch"] == 3
    assert result.metrics["attempt_start_epoch"] > 1          # resumed, not restarted
    nodes = [n for a, n in cluster.actor_nodes(TRAIN_WORKER).items() if a not in before]
    assert sorted(set(nodes)) == sorted({cluster.node_id(head), victim_id,
                                         cluster.node_id(replacement)})
    # Weights, optimiser state and RNG come back from the checkpoint: the run
    # ends where the uninterrupted one did.
    reference, reference_out = one_node_run
    assert max_weight_difference(reference_out / "model", out / "model") <= WEIGHT_TOLERANCE
    assert result.metrics["replicas_in_sync"] == 1.0
    for key in ("loss_full", "map_i2t", "map_t2i"):
        assert result.metrics[key] == pytest.approx(reference.metrics[key], abs=1e-6)

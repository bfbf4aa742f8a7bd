"""Two Ray nodes on one machine: training packed on one node vs spread over two,
and search over index shards on both nodes.

    .venv/bin/python benchmarks/multinode.py [--pairs 1000] [--epochs 3] [--duration 5]

Starts a Ray head and a second node on 127.0.0.1 with `ray start`, `--cpus`
each, token authentication on (tests/support/cluster_local.py). Trains one 2-worker
configuration twice on the synthetic data: both workers on one node (PACK),
then one per node (SPREAD), gloo over TCP; prints samples/s of each (mean of
the epochs after the first), their ratio, both validation MAPs and the largest
weight difference between the two models. Then builds a 2-shard exact index
of the database with the second model (a Ray Data job on the cluster), serves
it with one shard per node, and measures search QPS over HTTP at 8
connections (serve_bench.py's load generator), against both shards on the
head. Stops every Ray process it started.
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

# Ray reads its authentication mode when imported: before anything imports it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # support.cluster_local

from support.cluster_local import TRAIN_WORKER, LocalCluster  # noqa: E402

from hashgan_ray.model.checkpoint import max_weight_difference  # noqa: E402

# A custom resource per node; an index shard asks for half of one (two fit on a node).
HEAD, SECOND = {"node_head": 1}, {"node_second": 1}
ON_HEAD, ON_SECOND = {"node_head": 0.5}, {"node_second": 0.5}
MODEL = dict(bits=32, text_hidden=1024, text_features=512, batch_size=32, lr=1e-3,
             val_database=500, workers=2)                 # the demo's model (Makefile)


def train(cluster, cfg) -> tuple[dict, list[str], float]:
    """fit(cfg) -> (final metrics with the mean samples/s after epoch 1, worker
    node names, wall seconds)."""
    from hashgan_ray.train.loop import fit

    before = cluster.actor_nodes(TRAIN_WORKER)
    started = time.perf_counter()
    result = fit(cfg)
    seconds = time.perf_counter() - started
    names = {cluster.node_id(n): name for n, name in zip(cluster.nodes, ("head", "second"))}
    workers = cluster.actor_nodes(TRAIN_WORKER)
    nodes = sorted(names[n] for a, n in workers.items() if a not in before)
    history = result.metrics_dataframe                    # the kept checkpoints' epochs
    later = history[history["epoch"] > 1] if (history["epoch"] > 1).any() else history
    return {**result.metrics, "samples_per_s": float(later["samples_per_s"].mean())}, nodes, seconds


def serve_qps(cluster, model_dir: Path, index: Path, shard_resources, bodies_file: Path,
              duration: float) -> tuple[dict, list[str]]:
    """Deploy the search app with its shards pinned by `shard_resources`, load it,
    take it down -> (load result, node name of each shard)."""
    from ray import serve
    from serve_bench import run_load

    from hashgan_ray.ports import free_port
    from hashgan_ray.serving.app import application

    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False, "log_level": "WARNING"})
    try:
        # what serve/config.yaml's `deployments:` says for a split layout on two nodes
        options = {"QueryEncoder": {"ray_actor_options": {"num_cpus": 0.5}},
                   **{f"IndexShard{s}": {"ray_actor_options": {"num_cpus": 0.25, "resources": r}}
                      for s, r in enumerate(shard_resources)}}
        serve.run(application(model_dir, index, layout="split", options=options),
                  name="hashgan", route_prefix="/")
        names = {cluster.node_id(n): name for n, name in zip(cluster.nodes, ("head", "second"))}
        shards = [names[n] for s in range(len(shard_resources)) for n in
                  cluster.actor_nodes(f"ServeReplica:hashgan:IndexShard{s}", alive=True).values()]
        return run_load(f"http://127.0.0.1:{port}", "/v1/search", bodies_file, 8, duration), shards
    finally:
        serve.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000, help="synthetic pairs (40%% train)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each Ray node")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of search load")
    args = parser.parse_args()

    from hashgan_ray.config import TrainConfig
    from hashgan_ray.data.format import read_meta, read_pairs
    from hashgan_ray.data.synth import generate
    from hashgan_ray.index.build import build_index

    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(head_cpus=args.cpus, head_resources=HEAD) as cluster:
        tmp = Path(tmp)
        generate(tmp / "data", pairs=args.pairs, seed=0, n_train=int(args.pairs * 0.4))
        cluster.add_node(args.cpus, SECOND)
        cluster.connect()
        # Ray's driver replaces Python's SIGTERM handling; on SIGTERM leave
        # through the `with`s, which stop the nodes and restore ray_current_cluster.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        print(f"2 Ray nodes on 127.0.0.1, {args.cpus} CPUs each ({os.cpu_count()} cores, load "
              f"average {os.getloadavg()[0]:.1f}); {args.pairs} synthetic pairs, {args.epochs} "
              f"epochs, 2 workers x batch {MODEL['batch_size']}", flush=True)
        runs = {}
        for strategy in ("PACK", "SPREAD"):
            cfg = TrainConfig(data=str(tmp / "data"), out=str(tmp / strategy), epochs=args.epochs,
                              placement_strategy=strategy, **MODEL)
            metrics, nodes, seconds = runs[strategy] = train(cluster, cfg)
            print(f"{strategy:6s} workers on {'+'.join(nodes):12s} {metrics['samples_per_s']:7.1f} "
                  f"samples/s  MAP i->t {metrics['map_i2t']:.4f} t->i {metrics['map_t2i']:.4f}  "
                  f"loss {metrics['loss_full']:.6f}  fit {seconds:.0f} s (load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
        pack, spread = runs["PACK"][0], runs["SPREAD"][0]
        ratio = spread["samples_per_s"] / pack["samples_per_s"]
        print(f"two nodes / one node: samples/s {ratio:.2f}; largest weight difference "
              f"{max_weight_difference(tmp / 'PACK' / 'model', tmp / 'SPREAD' / 'model'):.3g}",
              flush=True)

        build_index(tmp / "SPREAD" / "model", tmp / "data", tmp / "index", shards=2)
        vocab = read_meta(tmp / "data").vocabulary
        bodies = [{"text": [vocab[i] for i in row["text"]], "k": 10, "target": "image"}
                  for row in read_pairs(tmp / "data", "query", columns=["text"]).to_pylist()]
        (tmp / "bodies.jsonl").write_text("\n".join(json.dumps(b) for b in bodies))
        qps = {}
        for label, placed in (("one node", [ON_HEAD] * 2), ("two nodes", [ON_HEAD, ON_SECOND])):
            load, shards = serve_qps(cluster, tmp / "SPREAD" / "model", tmp / "index", placed,
                                     tmp / "bodies.jsonl", args.duration)
            qps[label] = load["qps"]
            print(f"search, shards on {'+'.join(shards):12s} {load['qps']:6.1f} q/s at 8 "
                  f"connections, p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
                  f"errors {load['errors']} (load {os.getloadavg()[0]:.1f})", flush=True)
        print(f"search two nodes / one node: QPS {qps['two nodes'] / qps['one node']:.2f}")


if __name__ == "__main__":
    main()

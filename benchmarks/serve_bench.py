"""Search service load test: text->image, k=10, over 193,734 codes of 64 bits.

    .venv/bin/python benchmarks/serve_bench.py [--duration 10] [--connections 1 8 32]
                                               [--scale-codes 10000000] [--cpus 2]

On a local Ray (`--cpus`) it deploys, under one Serve instance on 127.0.0.1:
  * the search application (hashgan_ray.serving.app, 1 shard, the paper's text
    network: 1,000-word bag -> 8192 -> 1000 -> 64 bits; untrained weights,
    speed does not depend on them) over an exact index of 193,734 random codes,
  * a no-op application: the same FastAPI ingress set-up answering POST
    /v1/search with a constant, without encoder or index (the ceiling of Serve's
    HTTP path here).
A load generator in a second process (an asyncio HTTP/1.1 client on raw
keep-alive sockets, little CPU per request) sends the same text queries to
each at 1, 8 and 32 concurrent connections for `--duration` s (after a 3 s
warm-up) and reports QPS, p50/p99 latency and errors. In the same run: the
same queries through the model and FAISS in this process (one at a time, and
in batches of 32). Then the flat index at `--scale-codes` codes: memory and
per-query latency. Ratios: search/no-op QPS (goal >= 0.8 at 32 connections),
search/no-op p99 (goal <= 1.5), errors (goal 0).
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

N_CODES, BITS, VOCAB = 193_734, 64, 1000          # NUS-WIDE's database, 1,000 tags


# --------------------------------------------------------------------------- #
# Load generator (runs in its own process: `serve_bench.py --client ...`)
# --------------------------------------------------------------------------- #

async def _one_connection(host, port, path, bodies, start, stop, latencies, errors, offset):
    reader = writer = None
    i = offset
    while time.perf_counter() < stop:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (path, host.encode(), len(body), body))
            status = int((await reader.readline()).split()[1])
            length, chunked = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while (size := int((await reader.readline()).strip(), 16)):
                    await reader.readexactly(size + 2)
                await reader.readline()
            else:
                await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= start:
                latencies.append(t1 - t0)
                if status != 200:
                    errors.append(status)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            if time.perf_counter() >= start:
                errors.append("connection")
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def _load(url, path, bodies, connections, warmup, duration):
    host, port = url.removeprefix("http://").split(":")
    now = time.perf_counter()
    start, stop = now + warmup, now + warmup + duration
    latencies, errors = [], []
    await asyncio.gather(*[_one_connection(host, int(port), path.encode(), bodies, start, stop,
                                           latencies, errors, c * 7)
                           for c in range(connections)])
    lat = np.array(latencies) * 1000
    return {"connections": connections, "requests": len(lat), "qps": len(lat) / duration,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "errors": len(errors), "error_kinds": sorted(set(map(str, errors)))}


def client_main(args) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines()]
    result = asyncio.run(_load(args.client, args.path, bodies, args.connections_one,
                               args.warmup, args.duration))
    print(json.dumps(result))


def run_load(url: str, path: str, bodies_file: Path, connections: int, duration: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--client", url, "--path", path,
                          "--bodies", str(bodies_file), "--connections-one", str(connections),
                          "--duration", str(duration), "--warmup", "3"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- #
# Set-up: model, index, applications
# --------------------------------------------------------------------------- #

def make_model(out: Path):
    import torch

    from hashgan_ray.model.checkpoint import write_model_files
    from hashgan_ray.model.hashgan import HashGAN

    torch.manual_seed(0)
    model = HashGAN(bits=BITS, vocab_size=VOCAB)           # paper's text net: 8192 -> 1000
    out.mkdir(parents=True)
    write_model_files(out, model, vocabulary=[f"tag{i}" for i in range(VOCAB)],
                      label_names=["l0"], train_config={})
    return model


def make_index(out: Path, model_dir: Path, n: int, seed: int = 0):
    from hashgan_ray.index import store
    from hashgan_ray.model.checkpoint import fingerprint

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    text = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    store.write_index(out, lambda w: w.add(np.arange(n, dtype=np.int64), image, text),
                      bits=BITS, kind="flat", shards=1, manifest_fields={
                          "checkpoint": {"path": str(model_dir),
                                         "fingerprint": fingerprint(model_dir)},
                          "datasets": [], "dataset_fingerprint": ""})


def query_bodies(n: int = 500, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"text": [f"tag{t}" for t in rng.choice(VOCAB, rng.integers(3, 12), replace=False)],
             "k": 10, "target": "image"} for _ in range(n)]


def noop_app():
    from fastapi import FastAPI, Request
    from ray import serve

    from hashgan_ray.serving.app import INGRESS_ONGOING

    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @serve.deployment(max_ongoing_requests=INGRESS_ONGOING)
    @serve.ingress(api)
    class NoOp:
        @api.post("/v1/search")
        async def search(self, request: Request):
            await request.body()
            return {"results": [], "bits": BITS, "took_ms": 0.0, "unknown_words": []}

    return NoOp.options(ray_actor_options={"num_cpus": 0.25}).bind()


# --------------------------------------------------------------------------- #
# References in this process
# --------------------------------------------------------------------------- #

def in_process(model, index_dir: Path, bodies: list[dict], threads: int) -> dict:
    """The same queries through the model and FAISS here: one by one, and in 32s."""
    import faiss
    import torch

    from hashgan_ray.index.store import HashIndex
    from hashgan_ray.model.hashgan import WordListEncoder, pack_codes
    from hashgan_ray.serving.query import Vocabulary

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    index = HashIndex(index_dir)
    vocab = Vocabulary([f"tag{i}" for i in range(VOCAB)])
    words = [vocab.lookup(b["text"])[0] for b in bodies]

    model.eval()
    encode_words = WordListEncoder(model)                # the service's text path

    def run(group):
        return index.search(pack_codes(encode_words(group)), "image", 10)

    for w in words[:20]:
        run([w])                                                      # warm-up
    lat = []
    for w in words:
        t0 = time.perf_counter()
        run([w])
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for a in range(0, len(words), 32):
        run(words[a:a + 32])
    batched = len(words) / (time.perf_counter() - t0)
    lat = np.array(lat) * 1000
    return {"qps": len(lat) / (lat.sum() / 1000), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "batched_qps": batched}


def scale(n: int, threads: int) -> None:
    """The flat index at n codes: memory and per-query latency."""
    import faiss

    from hashgan_ray.index.store import build_faiss, search

    def rss_mb():                                   # resident set size now, MiB
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 2**20

    rng = np.random.default_rng(2)
    before = rss_mb()
    codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    t0 = time.perf_counter()
    index, _ = build_faiss("flat", codes, np.arange(n, dtype=np.int64))
    built = time.perf_counter() - t0
    del codes
    grown = rss_mb() - before
    queries = rng.integers(0, 256, (64, BITS // 8), dtype=np.uint8)
    print(f"\nscale: flat index of {n:,} random {BITS}-bit codes, built in {built:.1f} s; "
          f"index = {n * BITS // 8 / 2**20:.0f} MiB codes + {n * 8 / 2**20:.0f} MiB ids; "
          f"the process's RSS grew {grown:.0f} MiB")
    for t in sorted({1, threads}):
        faiss.omp_set_num_threads(t)
        search(index, queries[:2], 10)
        lat = []
        for q in queries[:32]:
            t0 = time.perf_counter()
            search(index, q[None], 10)
            lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        search(index, queries, 10)
        per_batched = (time.perf_counter() - t0) / len(queries)
        lat = np.array(lat) * 1000
        print(f"  {t} thread(s): one query k=10: p50 {np.percentile(lat, 50):.1f} ms, "
              f"max {lat.max():.1f} ms; in a batch of 64: {per_batched * 1000:.2f} ms/query")


# --------------------------------------------------------------------------- #

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--scale-codes", type=int, default=10_000_000, help="0 skips it")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--connections-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)

    import ray
    from ray import serve

    from hashgan_ray.serving.app import build_app

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model")
        make_index(tmp / "index", tmp / "model", N_CODES)
        bodies = query_bodies()
        bodies_file = tmp / "bodies.jsonl"
        bodies_file.write_text("\n".join(json.dumps(b) for b in bodies))
        print(f"{N_CODES:,} codes of {BITS} bits, text->image k=10, {args.cpus} CPUs, "
              f"{args.duration:.0f} s per measurement (load average {os.getloadavg()[0]:.1f})")

        ref = in_process(model, tmp / "index", bodies, args.cpus)
        print(f"in-process model + FAISS: one at a time {ref['qps']:.0f} q/s "
              f"(p50 {ref['p50_ms']:.2f} ms, p99 {ref['p99_ms']:.2f} ms); "
              f"in batches of 32: {ref['batched_qps']:.0f} q/s")
        del model

        port = 8000 + os.getpid() % 1000
        url = f"http://127.0.0.1:{port}"
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            # No access log line per request, in the proxy (serve.start) and in every
            # replica of both applications (serve.run): the same for both.
            quiet = {"enable_access_log": False, "log_level": "WARNING"}
            serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
            serve.run(build_app({"checkpoint": str(tmp / "model"), "index": str(tmp / "index")}),
                      name="hashgan", route_prefix="/", logging_config=quiet)
            serve.run(noop_app(), name="noop", route_prefix="/noop", logging_config=quiet)
            rows = []
            for c in args.connections:
                noop = run_load(url, "/noop/v1/search", bodies_file, c, args.duration)
                search = run_load(url, "/v1/search", bodies_file, c, args.duration)
                rows.append((c, noop, search))
                print(f"{c:3d} connections | no-op {noop['qps']:6.0f} q/s p50 {noop['p50_ms']:6.1f} "
                      f"p99 {noop['p99_ms']:6.1f} ms err {noop['errors']} | search "
                      f"{search['qps']:6.0f} q/s p50 {search['p50_ms']:6.1f} p99 "
                      f"{search['p99_ms']:6.1f} ms err {search['errors']} {search['error_kinds']}"
                      f" | QPS ratio {search['qps'] / noop['qps']:.2f}, p99 ratio "
                      f"{search['p99_ms'] / noop['p99_ms']:.2f}, vs in-process "
                      f"{search['qps'] / ref['qps']:.2f}", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
        c, noop, search = rows[-1]
        print(f"at {c} connections: search/no-op QPS {search['qps'] / noop['qps']:.2f} "
              f"(goal >= 0.8), p99 {search['p99_ms'] / noop['p99_ms']:.2f} (goal <= 1.5), "
              f"errors {search['errors']} (goal 0)")
    if args.scale_codes:
        scale(args.scale_codes, args.cpus)


if __name__ == "__main__":
    main()

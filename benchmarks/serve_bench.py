"""Search service load test: text->image, k=10, over 193,734 codes of 64 bits.

    .venv/bin/python benchmarks/serve_bench.py [--duration 10] [--connections 1 8 32]
                                               [--layouts ingress split] [--scale-codes 10000000]
                                               [--ingresses python haproxy] [--replicas 1 2]
    .venv/bin/python benchmarks/serve_bench.py --items 195834     # only the items store

First the alternative a user would write: one uvicorn process with a FastAPI app
holding the model and FAISS (a plain `def` endpoint, 1 torch and 1 FAISS
thread like the service's replica). Then, for each of `--ingresses` in turn, a
local Ray of its own (`--cpus`, default 2) with Serve behind that ingress
(hashgan_ray/serving/ingress.py: `python`, Serve's Python proxy actor;
`haproxy`, Serve's high-throughput mode, the service's default) on 127.0.0.1,
deploying:
  * the search application (hashgan_ray.serving.app, 1 shard, the paper's text
    network: 1,000-word bag -> 8192 -> 1000 -> 64 bits; untrained weights,
    speed does not depend on them) over an exact index of 193,734 random codes,
    in each of `--layouts`: ingress (model + index in the HTTP replica, 1 CPU;
    the default for one shard; with `--replicas 2`, also two such replicas
    sharing the CPUs the no-op leaves, "ingress-x2") and split (ingress 0.25
    CPU -> encoder 1 -> shard 0.25),
  * a no-op application: the same FastAPI ingress set-up answering POST
    /v1/search with a constant, without encoder or index (the ceiling of Serve's
    HTTP path behind that ingress).
A load generator in a second process (an asyncio HTTP/1.1 client on raw
keep-alive sockets, little CPU per request) sends the same text queries to
each at 1, 8 and 32 concurrent connections for `--duration` s (after a 3 s
warm-up) and reports QPS, p50/p99 latency and errors, and the CPU per request
of the ingress (Serve's proxy actor; HAProxy's own process and its manager
actor) and of the replicas. Before the load, 50 queries to each endpoint are
checked against the brute-force ranking. In the same run: the queries through
the model and FAISS in this process, one at a time and in batches of 32. Then
the flat index at `--scale-codes` codes: memory and per-query latency.
Goals (issue 27), judged for each ingress: 8 connections QPS >= 1.2x the plain
app, 32 connections >= 2.5x; 1 connection p50 <= 1.3x the plain app's; 32
connections QPS >= 0.4x the in-process batched rate; 0 errors.
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

async def _one_connection(host, port, path, bodies, start, stop, latencies, errors, offset,
                          completed):
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
            completed.append(1)
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
    latencies, errors, completed = [], [], []
    await asyncio.gather(*[_one_connection(host, int(port), path.encode(), bodies, start, stop,
                                           latencies, errors, c * 7, completed)
                           for c in range(connections)])
    lat = np.array(latencies) * 1000
    return {"connections": connections, "requests": len(lat), "qps": len(lat) / duration,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "errors": len(errors), "error_kinds": sorted(set(map(str, errors))),
            "all_requests": len(completed)}                  # warm-up included


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


def rss_mib() -> float:
    """This process's resident set size now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 2**20


def scale(n: int, threads: int) -> None:
    """The flat index at n codes: memory and per-query latency."""
    import faiss

    from hashgan_ray.index.store import build_faiss, search

    rng = np.random.default_rng(2)
    before = rss_mib()
    codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    t0 = time.perf_counter()
    index, _ = build_faiss("flat", codes, np.arange(n, dtype=np.int64))
    built = time.perf_counter() - t0
    del codes
    grown = rss_mib() - before
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

def items_scale(n: int) -> None:
    """The items store over a synthetic dataset of n pairs (NUS-WIDE-like: ~8 tags of
    1,000, ~2 labels of 21, one small embedded image each): start-up, memory, lookups."""
    from hashgan_ray.data.format import DatasetWriter
    from hashgan_ray.data.images import encode_png

    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        with DatasetWriter(data, [f"tag{i}" for i in range(VOCAB)], [f"l{i}" for i in range(21)],
                           rows_per_file=100_000) as w:
            for i in range(n):
                w.add(i, rng.choice(VOCAB, rng.integers(3, 14), replace=False),
                      rng.choice(21, rng.integers(1, 4), replace=False),
                      image=encode_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
            w.finish(name="items", source="synthetic", image_size=16, n_query=2100,
                     n_train=10500, seed=0)
        size = sum(f.stat().st_size for f in data.rglob("*.parquet")) / 2**20
        print(f"items: wrote {n:,} pairs ({size:.0f} MiB of Parquet) in "
              f"{time.perf_counter() - t0:.0f} s")
        # a fresh process, so that its RSS is the store's alone
        subprocess.run([sys.executable, __file__, "--items-load", str(data)], check=True)


def items_load(data: str) -> None:
    """The items store's start-up, memory and lookups, in this (fresh) process."""
    import resource

    from hashgan_ray.serving.items import ItemStore

    before = rss_mib()
    t0 = time.perf_counter()
    store = ItemStore([{"path": data, "split": "database"}])
    load_s, after = time.perf_counter() - t0, rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # KiB -> MiB
    rng = np.random.default_rng(4)
    ids = rng.choice(store.ids, 200, replace=False)
    timings = []
    for fn, sample in ((store.get, ids), (store.get, ids), (store.image_bytes, ids[:50])):
        t0 = time.perf_counter()
        for i in sample:
            fn(int(i))
        timings.append((time.perf_counter() - t0) / len(sample) * 1000)
    held = (store.ids.nbytes + store.rows.nbytes) / 2**20
    print(f"items: {len(store):,} indexed items loaded in {load_s:.2f} s; the id map holds "
          f"{held:.1f} MiB ({(store.ids.nbytes + store.rows.nbytes) / len(store):.0f} B/item); "
          f"RSS {before:.0f} MiB after imports, {after:.0f} MiB loaded (peak {peak:.0f}), "
          f"{rss_mib():.0f} MiB after 200 lookups; an item {timings[0]:.2f} ms from its row group, "
          f"{timings[1]:.3f} ms cached; its image bytes {timings[2]:.2f} ms")


# --------------------------------------------------------------------------- #
# The alternative: one uvicorn process (runs as `serve_bench.py --plain ...`)
# --------------------------------------------------------------------------- #

def plain_main(args) -> None:
    """FastAPI + the model + FAISS in one uvicorn process, as a user would write it."""
    import faiss
    import torch
    import uvicorn
    from fastapi import FastAPI

    from hashgan_ray.index.store import HashIndex
    from hashgan_ray.model.checkpoint import load_model
    from hashgan_ray.model.hashgan import WordListEncoder, pack_codes
    from hashgan_ray.serving.query import Vocabulary

    torch.set_num_threads(1)                         # as the service's 1-CPU replica
    faiss.omp_set_num_threads(1)
    model, config = load_model(args.model)
    encode_words, vocab = WordListEncoder(model), Vocabulary(config["vocabulary"])
    index = HashIndex(args.index)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v1/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/search")
    def search(body: dict):
        words, unknown = vocab.lookup(body["text"])
        D, I = index.search(pack_codes(encode_words([words])), body.get("target", "image"),
                            body.get("k", 10))
        return {"results": [{"id": int(i), "distance": int(d)} for d, i in zip(D[0], I[0])],
                "unknown_words": unknown}

    uvicorn.run(app, host="127.0.0.1", port=args.plain, log_level="warning", access_log=False)


def start_plain(model_dir: Path, index_dir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    from hashgan_ray.ports import free_port

    port = free_port()
    # One OpenMP thread in every thread: FastAPI runs a `def` endpoint in a worker
    # thread, where torch.set_num_threads(1) of the main thread does not apply.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, __file__, "--plain", str(port), "--model",
                             str(model_dir), "--index", str(index_dir)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the plain uvicorn app did not come up")


def check_brute_force(url: str, path: str, bodies: list[dict], expected: list[list[dict]]) -> int:
    """How many of the answers differ from the brute-force ranking (0 is the goal)."""
    import httpx

    with httpx.Client(timeout=60) as client:
        return sum(client.post(url + path, json=b).json()["results"] != e
                   for b, e in zip(bodies, expected))


def brute_force(model, index_dir: Path, bodies: list[dict]) -> list[list[dict]]:
    """Each query's top k by brute-force Hamming distance, ties by database order.
    The query codes come from the model's dense bag-of-words path
    (`encode_text`), not from the service's word-list encoder, so the check
    covers that encoder too."""
    import torch

    from hashgan_ray.data.loading import bag_of_indices
    from hashgan_ray.evaluation.metrics import hamming_distances
    from hashgan_ray.index.store import read_codes
    from hashgan_ray.model.hashgan import pack_codes
    from hashgan_ray.serving.query import Vocabulary

    codes, vocab = read_codes(index_dir), Vocabulary([f"tag{i}" for i in range(VOCAB)])
    bags = bag_of_indices([vocab.lookup(b["text"])[0] for b in bodies], VOCAB)
    with torch.no_grad():
        queries = pack_codes(model.eval().encode_text(torch.as_tensor(bags)))
    out = []
    for q, b in zip(hamming_distances(queries, codes.image), bodies):
        top = np.argsort(q, kind="stable")[:b["k"]]
        out.append([{"id": int(codes.ids[i]), "distance": int(q[i])} for i in top])
    return out


PROXY_PROCESSES = ("ray::ProxyActor", "ray::HAProxyManager")


def serve_cpu_s(app: str) -> dict[str, float]:
    """CPU seconds used so far by this run's HTTP ingress (Serve's proxy actor;
    in the high-throughput mode also HAProxy, a process of its own outside Ray's
    actors, and the actor that manages it), by `app`'s replicas (Ray names their
    processes ray::ServeReplica:APP:...) and, within them, by the threads that run
    the model and FAISS (named SEARCH_THREAD; Linux only): among this process's
    descendants, since another Ray may run on the machine."""
    import psutil

    out = {"proxy": 0.0, "replicas": 0.0, "search_thread": 0.0}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = (proc.cmdline() or [""])[0]
        except psutil.Error:
            continue
        kind = ("proxy" if title.startswith(PROXY_PROCESSES) or
                title.endswith("/haproxy") else
                "replicas" if title.startswith(f"ray::ServeReplica:{app}:") else None)
        if kind:
            try:
                times = proc.cpu_times()
                out[kind] += times.user + times.system
                if kind == "replicas":
                    out["search_thread"] += search_thread_cpu_s(proc)
            except psutil.Error:
                pass
    return out


def search_thread_cpu_s(proc) -> float:
    """CPU seconds of `proc`'s threads named SEARCH_THREAD (0 where /proc has none)."""
    from hashgan_ray.serving.app import SEARCH_THREAD

    total = 0.0
    for thread in proc.threads():
        try:
            name = Path(f"/proc/{proc.pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            continue
        if name == SEARCH_THREAD:
            total += thread.user_time + thread.system_time
    return total


def measured_load(url: str, app: str, path: str, bodies_file: Path, connections: int,
                  duration: float) -> dict:
    """run_load, plus the proxy's and the app's CPU milliseconds per request (over
    the whole load, warm-up included)."""
    before = serve_cpu_s(app)
    result = run_load(url, path, bodies_file, connections, duration)
    after = serve_cpu_s(app)
    n = max(result["all_requests"], 1)
    result.update({f"{k}_cpu_ms": (after[k] - before[k]) * 1000 / n for k in before})
    return result


def load_all(url: str, path: str, bodies_file: Path, connections: list[int],
             duration: float) -> dict[int, dict]:
    return {c: run_load(url, path, bodies_file, c, duration) for c in connections}


def report(name: str, rows: dict[int, dict], noop: dict[int, dict], wrong: int) -> None:
    for c, r in rows.items():
        n = noop[c]
        print(f"  {name:8s} {c:3d} conn | {r['qps']:6.0f} q/s  p50 {r['p50_ms']:6.1f}  p99 "
              f"{r['p99_ms']:6.1f} ms  errors {r['errors']} {r['error_kinds'] or ''}| vs no-op: "
              f"QPS {r['qps'] / n['qps']:.2f}  p50 {r['p50_ms'] / n['p50_ms']:.2f}  "
              f"p99 {r['p99_ms'] / n['p99_ms']:.2f}", flush=True)
    print(f"  {name:8s} answers unlike brute force: {wrong} of 50")


def goals(rows: dict[int, dict], plain: dict[int, dict], ref: dict) -> str:
    """The goals of issue 27 that this run can judge, each with its ratio: the
    search against the plain one-process app and the in-process batched rate."""
    out = []

    def judge(label, ratio, bound, at_least=True):
        met = ratio >= bound if at_least else ratio <= bound
        out.append(f"{label} {ratio:.2f}x ({'>=' if at_least else '<='} {bound}: "
                   f"{'met' if met else 'missed'})")

    if 8 in rows:
        judge("8 conn QPS vs plain", rows[8]["qps"] / plain[8]["qps"], 1.2)
    if 32 in rows:
        judge("32 conn QPS vs plain", rows[32]["qps"] / plain[32]["qps"], 2.5)
    if 1 in rows:
        judge("1 conn p50 vs plain", rows[1]["p50_ms"] / plain[1]["p50_ms"], 1.3, at_least=False)
    if 32 in rows:
        judge("32 conn QPS vs in-process batched", rows[32]["qps"] / ref["batched_qps"], 0.4)
    errors = sum(r["errors"] for r in rows.values())
    return "; ".join(out + [f"errors {errors}"])


def variants(layouts: list[str], replicas: list[int]) -> list[tuple[str, int]]:
    """(name, SearchAPI replicas): each layout; layout ingress once per replica count
    (named ingress-x2 etc. beyond one)."""
    out = []
    for layout in layouts:
        counts = replicas if layout == "ingress" else [1]
        out += [(layout if r == 1 else f"{layout}-x{r}", r) for r in counts]
    return out


INGRESS_NAMES = {"python": "Serve's Python proxy", "haproxy": "HAProxy (high-throughput mode)"}


def measure_serve(ingress: str, args, tmp: Path, bodies: list[dict], bodies_file: Path,
                  expected: list[list[dict]]) -> dict[str, tuple]:
    """{layout: (no-op rows, search rows, answers unlike brute force)} on a local
    Ray of its own started behind `ingress` (serving/ingress.py)."""
    import ray
    from ray import serve

    from hashgan_ray.ports import free_port
    from hashgan_ray.serving.app import application
    from hashgan_ray.serving.ingress import ingress_environment

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    measured = {}
    with ingress_environment(ingress):
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        try:
            # No access log line per request, in the proxy (serve.start) and in every
            # replica of every application (serve.run): the same for all.
            quiet = {"enable_access_log": False, "log_level": "WARNING"}
            serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
            serve.run(noop_app(), name="noop", route_prefix="/noop", logging_config=quiet)
            for layout, replicas in variants(args.layouts, args.replicas):
                options = {}
                if replicas > 1:        # the CPUs but the no-op's quarter, shared out
                    options = {"SearchAPI": {"num_replicas": replicas, "ray_actor_options": {
                        "num_cpus": (args.cpus - 0.25) / replicas}}}
                app = application(tmp / "model", tmp / "index", layout=layout.split("-")[0],
                                  options=options)
                serve.run(app, name=layout, route_prefix=f"/{layout}", logging_config=quiet)
                wrong = check_brute_force(url, f"/{layout}/v1/search", bodies[:50], expected)
                # the no-op right before the search at each count: both see the same machine
                noop, rows = {}, {}
                for c in args.connections:
                    noop[c] = measured_load(url, "noop", "/noop/v1/search", bodies_file, c,
                                            args.duration)
                    rows[c] = measured_load(url, layout, f"/{layout}/v1/search", bodies_file, c,
                                            args.duration)
                    print(f"  {ingress:8s} {layout:8s} {c:3d} conn: {rows[c]['qps']:6.0f} q/s",
                          flush=True)
                measured[layout] = (noop, rows, wrong)
                serve.delete(layout)
        finally:
            serve.shutdown()
            ray.shutdown()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--layouts", nargs="+", default=["ingress", "split"],
                        choices=["ingress", "split"])
    parser.add_argument("--scale-codes", type=int, default=10_000_000, help="0 skips it")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1],
                        help="SearchAPI replicas of layout ingress to measure (beyond 1: the "
                             "Ray's CPUs but the no-op's 0.25, shared out)")
    parser.add_argument("--ingresses", nargs="+", default=["python", "haproxy"],
                        choices=["python", "haproxy"],
                        help="Serve's ingresses to measure, each on a Ray of its own")
    parser.add_argument("--items", type=int, default=0,
                        help="only measure the items store over this many pairs")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--connections-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=3.0, help=argparse.SUPPRESS)
    parser.add_argument("--items-load", help=argparse.SUPPRESS)
    parser.add_argument("--plain", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)
    if args.plain:
        return plain_main(args)
    if args.items:
        return items_scale(args.items)
    if args.items_load:
        return items_load(args.items_load)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model")
        make_index(tmp / "index", tmp / "model", N_CODES)
        bodies = query_bodies()
        bodies_file = tmp / "bodies.jsonl"
        bodies_file.write_text("\n".join(json.dumps(b) for b in bodies))
        expected = brute_force(model, tmp / "index", bodies[:50])
        print(f"{N_CODES:,} codes of {BITS} bits, text->image k=10, Ray with {args.cpus} CPUs, "
              f"{args.duration:.0f} s per measurement (load average {os.getloadavg()[0]:.1f}, "
              f"{os.cpu_count()} cores)")

        ref = in_process(model, tmp / "index", bodies, 1)
        print(f"in-process model + FAISS (1 thread): one at a time {ref['qps']:.0f} q/s "
              f"(p50 {ref['p50_ms']:.2f} ms, p99 {ref['p99_ms']:.2f} ms); "
              f"in batches of 32: {ref['batched_qps']:.0f} q/s")
        del model

        proc, plain_url = start_plain(tmp / "model", tmp / "index")
        try:
            plain_wrong = check_brute_force(plain_url, "/v1/search", bodies[:50], expected)
            plain = load_all(plain_url, "/v1/search", bodies_file, args.connections, args.duration)
        finally:
            proc.terminate()
            proc.wait()

        measured = {}
        for ingress in args.ingresses:
            measured[ingress] = measure_serve(ingress, args, tmp, bodies, bodies_file, expected)

        print("\nplain uvicorn + FastAPI + model + FAISS, one process (before Ray started):")
        for c, r in plain.items():
            print(f"  plain    {c:3d} conn | {r['qps']:6.0f} q/s  p50 {r['p50_ms']:6.1f}  p99 "
                  f"{r['p99_ms']:6.1f} ms  errors {r['errors']}")
        print(f"  plain    answers unlike brute force: {plain_wrong} of 50")
        for ingress, by_layout in measured.items():
            for layout, (noop, rows, wrong) in by_layout.items():
                print(f"\nsearch through {INGRESS_NAMES[ingress]}, layout {layout}, each count "
                      "right after the no-op Serve endpoint:")
                for c, n in noop.items():
                    print(f"  no-op    {c:3d} conn | {n['qps']:6.0f} q/s  p50 {n['p50_ms']:6.1f}  "
                          f"p99 {n['p99_ms']:6.1f} ms  errors {n['errors']}")
                report(layout, rows, noop, wrong)
                print("  CPU ms per request (ingress + replicas), no-op vs search: " + ", ".join(
                    f"{c} conn {noop[c]['proxy_cpu_ms']:.1f} + {noop[c]['replicas_cpu_ms']:.1f} vs "
                    f"{rows[c]['proxy_cpu_ms']:.1f} + {rows[c]['replicas_cpu_ms']:.1f}"
                    for c in rows))
                if any(r["search_thread_cpu_ms"] for r in rows.values()):
                    print("    of which the replica's search thread (model + FAISS): " + ", ".join(
                        f"{c} conn {r['search_thread_cpu_ms']:.2f}" for c, r in rows.items()))
                print("  vs the plain uvicorn app: " + ", ".join(
                    f"{c} conn QPS {rows[c]['qps'] / plain[c]['qps']:.2f}x p50 "
                    f"{rows[c]['p50_ms'] / plain[c]['p50_ms']:.2f}x" for c in rows))
                print("  vs the in-process batched rate: " + ", ".join(
                    f"{c} conn {rows[c]['qps'] / ref['batched_qps']:.2f}x" for c in rows))
                print(f"  goals: {goals(rows, plain, ref)}")
    if args.scale_codes:
        scale(args.scale_codes, args.cpus)


if __name__ == "__main__":
    main()

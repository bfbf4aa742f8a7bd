"""NUS-WIDE at full scale on one machine, stage by stage, with time and peak memory.

    make scale                                    # 195,834 pairs into scale-out/
    .venv/bin/python benchmarks/scale.py --out scale-out --pairs 195834 [--epochs 3] [--cpus 2]
    .venv/bin/python benchmarks/scale.py --out /tmp/scale-3k --pairs 3000      # a small run

Stages, each a process of its own (the `hashgan-ray` command where there is one):

  write    a NUS-WIDE-shaped data set in the official file layout
           (hashgan_ray.data.synth_nuswide: `pairs` kept images + the share
           NUS-WIDE's protocol drops), 64 px JPEGs
  convert  hashgan-ray data convert nuswide (DCMH protocol: 2,100 queries,
           10,500 training pairs, scaled down for small runs)
  train    hashgan-ray train, 2 workers (Ray Train), `--epochs`
  index    hashgan-ray index build: the whole database encoded by Ray Data
  plain    the baseline of `index`: a plain PyTorch loop (iter_batches +
           encode_arrays, `--cpus` threads) over the first `--plain-sample`
           database pairs, as benchmarks/encode_bench.py
  eval     MAP over the full database, both directions: the query split
           encoded, the database codes taken from the index (the database is
           encoded once per run), a sample of them re-encoded to check they
           are the model's
  serve    hashgan-ray serve; 1,000 text->image and 1,000 image->text queries
           over HTTP, a sample of each checked against the brute-force ranking
  index10x the index's codes x `--times` (10: 1.9M codes at full size), each
           copy after the first with 1 bit in 16 flipped at random, written
           by the index store (hashgan_ray.index.store.write_index): the
           index stage's memory at 10x without encoding 1.9M images
  serve10x the serve stage over that index (its items have no dataset: the
           searches return ids and distances only)

For every stage it prints wall time, throughput, the peak RSS of the stage's
main process and of every process under it (Ray's workers and services; read
with psutil every 0.2 s by a thread of this script), the disk size of what the
stage wrote and, where there is one, MAP. Finished stages are reused on a
rerun (their records are in OUT/stages/); `--redo STAGE` runs STAGE and every
later one again. OUT/scale.json holds every record.

RSS counts shared pages in each process that maps them (libraries, and Ray's
object store in the processes that read from it), so the figures add up to
more than the machine's used memory.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))

import numpy as np  # noqa: E402

STAGES = ("write", "convert", "train", "index", "plain", "eval", "serve", "index10x", "serve10x")
PY = sys.executable
CLI = [PY, "-m", "hashgan_ray"]
SCRIPT = str(Path(__file__).resolve())
NUSWIDE_PAIRS = 195_834
MIB = 1 << 20
# Ray's per-node agents: they run as ray:: processes, but are not the job's workers.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


# --------------------------------------------------------------------------- #
# Peak RSS of a process tree, sampled
# --------------------------------------------------------------------------- #

def process_kind(proc, root_pid: int) -> str:
    """'driver' (the stage's own process), 'ray::<task or actor>' for a Ray
    worker (Ray sets that process title), else the program's name."""
    if proc.pid == root_pid:
        return "driver"
    cmdline = proc.cmdline()
    if cmdline and cmdline[0].startswith("ray::"):
        # "ray::Actor.method" while a method runs: the actor is what matters
        return cmdline[0].split(" ")[0].split(".")[0]
    script = next((Path(a).name for a in cmdline[1:] if a.endswith(".py")), None)
    return script or proc.name()


class PeakRSS(threading.Thread):
    """Samples the RSS of `pid` and every process under it (and of this process,
    as 'client', when asked) until stopped; keeps each process's peak."""

    def __init__(self, pid: int, interval: float = 0.2, include_self: bool = False):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.me = psutil.Process() if include_self else None
        self.interval = interval
        self.peaks: dict[int, dict] = {}       # pid -> {"kind", "peak_mib"}
        self.samples = 0
        # Ray's object store is a file in /dev/shm: its growth there during the
        # stage (machine-wide, so other programs' use counts too).
        self.shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        self.shm_start = self._shm_used()
        self.shm_peak = 0.0
        self._halt = threading.Event()

    def _shm_used(self) -> float:
        return self.psutil.disk_usage(str(self.shm)).used / MIB if self.shm else 0.0

    def _sample(self) -> None:
        psutil = self.psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        if self.me is not None:
            procs.append(self.me)
        for p in procs:
            try:
                info = p.memory_info()
                kind = "client" if p is self.me else process_kind(p, self.root.pid)
                entry = self.peaks.setdefault(p.pid, {"kind": kind, "peak_mib": 0.0,
                                                      "private_mib": 0.0})
                # A Ray worker starts as default_worker.py, becomes ray::IDLE, then
                # takes the title of the task or actor it runs: keep that one.
                named = entry["kind"].startswith("ray::") and entry["kind"] != "ray::IDLE"
                if not named or (kind.startswith("ray::") and kind != "ray::IDLE"):
                    entry["kind"] = kind
                entry["peak_mib"] = max(entry["peak_mib"], info.rss / MIB)
                # without the pages shared with other processes (libraries, Ray's object store)
                entry["private_mib"] = max(entry["private_mib"], (info.rss - info.shared) / MIB)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        self.shm_peak = max(self.shm_peak, self._shm_used() - self.shm_start)
        self.samples += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.interval)

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        return {**summarize(list(self.peaks.values()), self.samples),
                "shm_growth_peak_mib": round(self.shm_peak, 1) if self.shm else None}


def summarize(peaks: list[dict], samples: int) -> dict:
    """Driver peak, the largest Ray worker, and every process kind's peak and count."""
    by_kind: dict[str, dict] = {}
    for p in peaks:
        k = by_kind.setdefault(p["kind"], {"count": 0, "peak_mib": 0.0, "private_mib": 0.0})
        k["count"] += 1
        k["peak_mib"] = round(max(k["peak_mib"], p["peak_mib"]), 1)
        k["private_mib"] = round(max(k["private_mib"], p["private_mib"]), 1)
    workers = [p for p in peaks if p["kind"].startswith("ray::") and p["kind"] not in RAY_AGENTS]
    top = max(workers, key=lambda p: p["peak_mib"], default=None)
    return {"driver_peak_mib": by_kind.get("driver", {}).get("peak_mib"),
            "worker_peak_mib": round(top["peak_mib"], 1) if top else None,
            "worker_peak_kind": top["kind"] if top else None,
            "ray_workers": len(workers),
            "any_process_peak_mib": round(max((p["peak_mib"] for p in peaks), default=0.0), 1),
            "processes": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["peak_mib"])),
            "samples": samples}


def disk_mib(path: Path) -> float:
    """Size of the files under `path` (or of the file), MiB."""
    if path.is_file():
        return round(path.stat().st_size / MIB, 1)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return round(total / MIB, 1)


def run_measured(argv: list[str], log: Path, env: dict | None = None) -> tuple[float, dict]:
    """Run `argv` to completion, its output to `log` -> (wall seconds, RSS summary)."""
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = PeakRSS(proc.pid)
        sampler.start()
        # wait4: the kernel's exact peak RSS of the stage's process, beside the samples
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        memory = sampler.stop()
        memory["driver_maxrss_mib"] = round(usage.ru_maxrss / 1024, 1)      # KiB on Linux
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"stage command failed (exit {rc}): {' '.join(argv)}\n"
                         f"--- last lines of {log} ---\n{tail}")
    return wall, memory


# --------------------------------------------------------------------------- #
# Stage bodies that have no hashgan-ray command (run as `scale.py _<name> ...`)
# --------------------------------------------------------------------------- #

def body_write(args) -> None:
    from hashgan_ray.data.synth_nuswide import write_nuswide_layout

    result = write_nuswide_layout(args.src, pairs=args.pairs, seed=args.seed, overwrite=True)
    Path(args.json).write_text(json.dumps(result))


def body_plain(args) -> None:
    """pairs/s of a plain loop over the first `sample` database pairs."""
    import torch

    from hashgan_ray.data.format import read_meta
    from hashgan_ray.data.loading import BatchSpec, iter_batches
    from hashgan_ray.model.encode import encode_arrays
    from hashgan_ray.model.checkpoint import load_model

    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    model.eval()
    spec = BatchSpec.from_meta(read_meta(args.data), model.args["image_size"])
    n, started = 0, time.perf_counter()
    for batch in iter_batches(args.data, "database", 256, spec):
        encode_arrays(model, batch["image"], batch["text"])
        n += len(batch["id"])
        if n >= args.sample:
            break
    seconds = time.perf_counter() - started
    Path(args.json).write_text(json.dumps({"pairs": n, "seconds": seconds}))


def database_labels(data_dir, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """ids (n,) and multi-hot labels (n, L) float32 of the database split, read
    without the images and without a Python list per row."""
    import pyarrow.compute as pc

    from hashgan_ray.data.format import read_pairs

    table = read_pairs(data_dir, "database", columns=["id", "labels"])
    lists = table.column("labels").combine_chunks()
    rows = pc.list_parent_indices(lists).to_numpy()
    labels = np.zeros((len(table), num_labels), np.float32)
    labels[rows, pc.list_flatten(lists).to_numpy().astype(np.int64)] = 1.0
    return table.column("id").to_numpy(), labels


def body_eval(args) -> None:
    """MAP of the query split against the index's database codes; a sample of
    those codes re-encoded here must match them."""
    from hashgan_ray.data.format import read_meta
    from hashgan_ray.evaluation.evaluate import retrieval_map
    from hashgan_ray.model.encode import Encoded, encode_split
    from hashgan_ray.index import store
    from hashgan_ray.model.checkpoint import load_model

    model, _ = load_model(args.checkpoint)
    started = time.perf_counter()
    query = encode_split(model, args.data, "query")
    encode_s = time.perf_counter() - started
    codes = store.read_codes(args.index)
    ids, labels = database_labels(args.data, read_meta(args.data).num_labels)
    if not np.array_equal(ids, codes.ids):
        raise SystemExit(f"{args.index}: its codes are not the database of {args.data} in order")
    database = Encoded(ids, codes.image, codes.text, labels)
    started = time.perf_counter()
    result = retrieval_map(query, database)
    map_s = time.perf_counter() - started
    # The index's codes are the model's: re-encode a sample here, in another process.
    pick = np.sort(np.random.default_rng(0).choice(len(ids), min(args.check, len(ids)),
                                                   replace=False))
    again = encode_split(model, args.data, "database", only_ids=ids[pick])
    differ = sum(int(np.unpackbits(a ^ b).sum()) for a, b in
                 ((again.image_codes, codes.image[pick]), (again.text_codes, codes.text[pick])))
    result.update(n_query=len(query.ids), n_database=len(ids), query_encode_s=encode_s,
                  map_s=map_s, checked_codes=len(pick), checked_bits_differ=differ)
    Path(args.json).write_text(json.dumps(result))


def body_index10x(args) -> None:
    """`times` copies of the index's codes streamed into a new index, as the
    encode job streams batches, so that the store's memory is what it is at
    that size."""
    from hashgan_ray.index import store

    manifest = store.read_manifest(args.index)
    codes = store.read_codes(args.index)
    step = int(codes.ids.max()) + 1
    rng = np.random.default_rng(0)

    def stream(writer) -> None:
        for copy in range(args.times):
            for a in range(0, len(codes), 4096):
                part = codes.slice(a, a + 4096)
                image, text = part.image, part.text
                if copy:              # not exact duplicates: flip 1 bit in 16 at random
                    image = image ^ np.packbits(rng.random((len(part), image.shape[1] * 8)) < 1 / 16, axis=1)
                    text = text ^ np.packbits(rng.random((len(part), text.shape[1] * 8)) < 1 / 16, axis=1)
                writer.add(part.ids + copy * step, image, text)

    fields = {"checkpoint": manifest["checkpoint"], "dataset_fingerprint": "", "datasets": []}
    written = store.write_index(args.out, stream, bits=manifest["bits"], kind=manifest["kind"],
                                shards=len(manifest["shards"]), manifest_fields=fields,
                                overwrite=True)
    Path(args.json).write_text(json.dumps({"count": written["count"]}))


# --------------------------------------------------------------------------- #
# The serve stage: the service in its own process, queries from this one
# --------------------------------------------------------------------------- #

def query_bodies(data_dir, n: int) -> tuple[list[dict], list[dict]]:
    """`n` text->image and `n` image->text search bodies made of the query split's
    tags and images (cycled if the split is smaller)."""
    from hashgan_ray.data.format import read_meta, read_pairs

    vocabulary = read_meta(data_dir).vocabulary
    rows = read_pairs(data_dir, "query", columns=["id", "image", "text"]).slice(0, n).to_pylist()
    rows = [rows[i % len(rows)] for i in range(n)]
    texts = [{"text": [vocabulary[w] for w in r["text"]], "k": 10} for r in rows]
    images = [{"image": base64.b64encode(r["image"]).decode(), "k": 10, "target": "text"}
              for r in rows]
    return texts, images


def brute_force_top(code_hex: str, db_codes: np.ndarray, ids: np.ndarray, k: int) -> list[dict]:
    """The exact ranking's first k (Hamming distance, ties in database order)."""
    from hashgan_ray.evaluation.metrics import hamming_distances

    d = hamming_distances(np.frombuffer(bytes.fromhex(code_hex), np.uint8)[None], db_codes)[0]
    order = np.argsort(d, kind="stable")[:k]
    return [{"id": int(ids[i]), "distance": int(d[i])} for i in order]


def run_queries(client, url: str, bodies: list[dict], connections: int) -> tuple[list, list[float]]:
    def one(body):
        t0 = time.perf_counter()
        r = client.post(f"{url}/v1/search", json=body, timeout=120)
        return r, time.perf_counter() - t0

    with ThreadPoolExecutor(connections) as pool:
        done = list(pool.map(one, bodies))
    bad = [(r.status_code, r.text[:200]) for r, _ in done if r.status_code != 200]
    if bad:
        raise SystemExit(f"{len(bad)} of {len(bodies)} searches failed, e.g. {bad[0]}")
    return [r.json()["results"] for r, _ in done], [t for _, t in done]


def check_sample(client, url: str, bodies: list[dict], results: list, codes, target: str,
                 n: int) -> int:
    """Searches (of the first n) whose results differ from the brute-force ranking."""
    wrong = 0
    for body, found in list(zip(bodies, results))[:n]:
        source = {k: v for k, v in body.items() if k in ("text", "image")}
        r = client.post(f"{url}/v1/encode", json=source, timeout=120)
        r.raise_for_status()
        if found != brute_force_top(r.json()["code"], codes.of(target), codes.ids, body["k"]):
            wrong += 1
    return wrong


def stage_serve(cfg, paths, log: Path, index: Path) -> dict:
    import httpx
    from demo import wait_up  # serve/demo.py: polls /v1/healthz

    from hashgan_ray.index import store
    from hashgan_ray.ports import free_port

    token = base64.b32encode(os.urandom(20)).decode()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HASHGAN_API_TOKEN": token}
    argv = CLI + ["serve", "--checkpoint", str(paths["model"]), "--index", str(index),
                  "--port", str(port), "--num-cpus", str(cfg.cpus)]
    texts, images = query_bodies(paths["data"], cfg.queries)
    codes = store.read_codes(index)
    with open(log, "w") as out, httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = PeakRSS(proc.pid, include_self=True)
        sampler.start()
        try:
            wait_up(url, proc, timeout_s=600)
            ready_s = time.perf_counter() - started
            stats = {"start_s": round(ready_s, 1)}
            query_s = 0.0
            for name, bodies, target in (("t2i", texts, "image"), ("i2t", images, "text")):
                t0 = time.perf_counter()
                results, latency = run_queries(client, url, bodies, cfg.connections)
                query_s += time.perf_counter() - t0
                ms = np.array(latency) * 1000
                stats[name] = {"queries": len(bodies), "qps": round(len(bodies) / (time.perf_counter() - t0), 1),
                               "p50_ms": round(float(np.percentile(ms, 50)), 1),
                               "p99_ms": round(float(np.percentile(ms, 99)), 1),
                               "checked": min(cfg.check_queries, len(bodies)),
                               "differ_from_brute_force": check_sample(
                                   client, url, bodies, results, codes, target, cfg.check_queries)}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            wall = time.perf_counter() - started
            memory = sampler.stop()
    n = sum(stats[d]["queries"] for d in ("t2i", "i2t"))
    return {"wall_s": wall, "items": n, "unit": "queries", "per_s": n / query_s,
            "memory": memory, "serve": stats}


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #

def split_sizes(pairs: int) -> tuple[int, int]:
    """DCMH's 2,100 queries and 10,500 training pairs; a small run keeps their
    share of NUS-WIDE's 195,834 but at least 100 queries and 500 training pairs
    (a tenth and half of the pairs where there are fewer than 1,000)."""
    query = min(2100, max(round(pairs * 2100 / NUSWIDE_PAIRS), min(100, pairs // 10)))
    train = min(10500, max(round(pairs * 10500 / NUSWIDE_PAIRS), min(500, pairs // 2)))
    return query, train


def stage_command(name: str, cfg, paths, result_json: Path) -> list[str]:
    query, train = split_sizes(cfg.pairs)
    if name == "write":
        return [PY, SCRIPT, "_write", "--src", str(paths["src"]), "--pairs", str(cfg.pairs),
                "--seed", str(cfg.seed), "--json", str(result_json)]
    if name == "convert":
        return CLI + ["data", "convert", "nuswide", "--src", str(paths["src"]),
                      "--out", str(paths["data"]), "--image-size", "64", "--query", str(query),
                      "--train", str(train), "--seed", str(cfg.seed), "--overwrite"]
    if name == "train":
        # the demo's CPU settings (Makefile): 2 workers x 32 = the paper's batch of 64
        return CLI + ["train", "--data", str(paths["data"]), "--out", str(paths["run"]),
                      "--epochs", str(cfg.epochs), "--workers", "2", "--batch-size", "32",
                      "--bits", str(cfg.bits), "--lr", "1e-3", "--text-hidden", "1024",
                      "--text-features", "512", "--val-database", "500",
                      "--seed", str(cfg.seed)]
    if name == "index":
        return CLI + ["index", "build", "--checkpoint", str(paths["model"]),
                      "--data", str(paths["data"]), "--out", str(paths["index"]),
                      "--num-cpus", str(cfg.cpus), "--overwrite"]
    if name == "plain":
        return [PY, SCRIPT, "_plain", "--checkpoint", str(paths["model"]),
                "--data", str(paths["data"]), "--sample", str(cfg.plain_sample),
                "--threads", str(cfg.cpus), "--json", str(result_json)]
    if name == "index10x":
        return [PY, SCRIPT, "_index10x", "--index", str(paths["index"]),
                "--out", str(paths["index10x"]), "--times", str(cfg.times),
                "--json", str(result_json)]
    if name == "eval":
        return [PY, SCRIPT, "_eval", "--checkpoint", str(paths["model"]),
                "--data", str(paths["data"]), "--index", str(paths["index"]),
                "--check", "256", "--json", str(result_json)]
    raise ValueError(name)


def run_stage(name: str, cfg, paths, records: dict) -> dict:
    from hashgan_ray.data.format import read_meta

    log = paths["out"] / "logs" / f"{name}.log"
    if name in ("serve", "serve10x"):
        return stage_serve(cfg, paths, log, paths["index" if name == "serve" else "index10x"])
    result_json = paths["out"] / "stages" / f"{name}.result.json"
    if name == "train" and paths["run"].exists():
        shutil.rmtree(paths["run"])          # a half-finished run of an earlier attempt
    wall, memory = run_measured(stage_command(name, cfg, paths, result_json), log)
    record = {"wall_s": wall, "memory": memory}
    if name == "write":
        written = json.loads(result_json.read_text())
        record.update(items=written["images"], unit="images", written=written,
                      disk_mib=disk_mib(paths["src"]))
    elif name == "convert":
        meta = read_meta(paths["data"])
        record.update(items=records["write"]["items"], unit="images read",
                      counts=meta.counts, report=meta.extra.get("report"),
                      disk_mib=disk_mib(paths["data"]))
    elif name == "train":
        n_train = read_meta(paths["data"]).counts["train"]
        record.update(items=cfg.epochs * n_train, unit="samples (epochs x train split)",
                      disk_mib=disk_mib(paths["run"]))
    elif name == "index":
        record.update(items=read_meta(paths["data"]).split_size("database"), unit="pairs",
                      disk_mib=disk_mib(paths["index"]))
    elif name == "plain":
        plain = json.loads(result_json.read_text())
        record.update(items=plain["pairs"], unit="pairs", loop_s=plain["seconds"],
                      loop_per_s=plain["pairs"] / plain["seconds"], disk_mib=0.0)
    elif name == "index10x":
        record.update(items=json.loads(result_json.read_text())["count"], unit="codes",
                      disk_mib=disk_mib(paths["index10x"]))
    elif name == "eval":
        ev = json.loads(result_json.read_text())
        record.update(items=2 * ev["n_query"], unit="queries ranked", eval=ev,
                      map_i2t=ev["map_i2t"], map_t2i=ev["map_t2i"], disk_mib=0.0)
    record["per_s"] = record["items"] / wall
    return record


def fmt_row(name: str, r: dict, reused: bool) -> str:
    m = r["memory"]
    worker = (f"{m['worker_peak_mib']:7.0f} {m['worker_peak_kind'][:34]:34s}"
              if m["worker_peak_mib"] is not None else f"{'-':>7s} {'':34s}")
    maps = (f"  MAP i->t {r['map_i2t']:.4f} t->i {r['map_t2i']:.4f}" if "map_i2t" in r else "")
    # the kernel's peak of the stage's process where there is one (not for serve)
    driver = max(m["driver_peak_mib"] or 0.0, m.get("driver_maxrss_mib") or 0.0)
    return (f"{name:8s} {r['wall_s']:8.1f} {r['per_s']:9.1f} {r['unit'][:15]:15s} "
            f"{driver:7.0f} {worker} {m['ray_workers']:3d} "
            f"{r.get('disk_mib', 0.0):8.1f}{maps}{'  (reused)' if reused else ''}")


def report(records: dict, reused: set) -> str:
    lines = [f"{'stage':8s} {'wall s':>8s} {'per s':>9s} {'of':15s} {'driver':>7s} "
             f"{'worker':>7s} {'(largest Ray worker, MiB RSS)':34s} {'n':>3s} {'disk MiB':>8s}"]
    for name in STAGES:
        if name in records:
            lines.append(fmt_row(name, records[name], name in reused))
    if "index" in records and "plain" in records:
        ratio = records["index"]["per_s"] / records["plain"]["loop_per_s"]
        lines.append(f"encoding: Ray Data index build {records['index']['per_s']:.1f} pairs/s "
                     f"end to end over {records['index']['items']} pairs / plain loop "
                     f"{records['plain']['loop_per_s']:.1f} pairs/s over "
                     f"{records['plain']['items']} = {ratio:.2f} (goal >= 0.9)")
    for stage in ("serve", "serve10x"):
        if stage not in records:
            continue
        s = records[stage]["serve"]
        for d, what in (("t2i", "text->image"), ("i2t", "image->text")):
            lines.append(f"{stage} {what}: {s[d]['queries']} queries, {s[d]['qps']} q/s, p50 "
                         f"{s[d]['p50_ms']} ms, p99 {s[d]['p99_ms']} ms; "
                         f"{s[d]['differ_from_brute_force']} of {s[d]['checked']} checked differ "
                         "from brute force")
    if "eval" in records:
        ev = records["eval"]["eval"]
        lines.append(f"eval: {ev['n_query']} queries x {ev['n_database']} database; "
                     f"{ev['checked_bits_differ']} bits differ in {ev['checked_codes']} "
                     "re-encoded index codes")
    total = sum(records[n]["wall_s"] for n in STAGES if n in records)
    peak = max(max(r["memory"]["any_process_peak_mib"], r["memory"].get("driver_maxrss_mib") or 0)
               for r in records.values())
    lines.append(f"total {total / 60:.1f} min of stage wall time; largest peak RSS of any "
                 f"process {peak:.0f} MiB")
    for name in STAGES:
        if name in records:
            procs = ", ".join(f"{k} x{v['count']} {v['peak_mib']:.0f} ({v['private_mib']:.0f})"
                              for k, v in records[name]["memory"]["processes"].items())
            shm = records[name]["memory"].get("shm_growth_peak_mib")
            lines.append(f"  {name} peak RSS MiB (private) by process: {procs}"
                         + (f"; /dev/shm +{shm:.0f} MiB" if shm is not None else ""))
    return "\n".join(lines)


def ray_start_timed_out(log: Path) -> bool:
    return log.is_file() and "timed out during startup" in log.read_text(errors="replace")


def main_run(cfg) -> dict:
    out = Path(cfg.out).resolve()
    paths = {"out": out, "src": out / "NUS-WIDE", "data": out / "data", "run": out / "run",
             "model": out / "run" / "model", "index": out / "index",
             "index10x": out / f"index{cfg.times}x"}
    for d in ("stages", "logs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(cfg, k) for k in ("pairs", "seed", "epochs", "bits", "cpus")}
    settings_file = out / "settings.json"
    if (settings_file.exists() and cfg.redo != "write"
            and json.loads(settings_file.read_text()) != settings):
        raise SystemExit(f"{out} holds a run with other settings "
                         f"({settings_file.read_text().strip()}); use another --out "
                         "or --redo write")
    settings_file.write_text(json.dumps(settings))
    redo_from = STAGES.index(cfg.redo) if cfg.redo else len(STAGES)
    records, reused = {}, set()
    for i, name in enumerate(STAGES[:STAGES.index(cfg.until) + 1]):
        done = out / "stages" / f"{name}.json"
        record = json.loads(done.read_text()) if done.exists() and i < redo_from else None
        if record is not None and record.get("times", cfg.times) == cfg.times:
            records[name] = record
            reused.add(name)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            try:
                records[name] = run_stage(name, cfg, paths, records)
            except SystemExit:
                if not ray_start_timed_out(paths["out"] / "logs" / f"{name}.log"):
                    raise
                # A loaded machine can keep a local Ray from starting in time; the
                # stage itself has not run, so once more.
                print(f"{name}: the stage's local Ray did not start in time; once more",
                      flush=True)
                records[name] = run_stage(name, cfg, paths, records)
            if name.endswith("10x"):
                records[name]["times"] = cfg.times       # another --times redoes these two
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(records[name], indent=1))
            os.replace(tmp, done)
            redo_from = min(redo_from, i + 1)        # later stages depend on this one
        print(fmt_row(name, records[name], name in reused), flush=True)
    print()
    print(report(records, reused))
    result = {"settings": settings, "stages": records}
    tmp = out / "scale.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "scale.json")
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):                   # a stage body, in its own process
        sub = argparse.ArgumentParser()
        for opt in ("--src", "--checkpoint", "--data", "--index", "--json", "--out"):
            sub.add_argument(opt)
        for opt in ("--pairs", "--seed", "--sample", "--threads", "--check", "--times"):
            sub.add_argument(opt, type=int)
        args = sub.parse_args(argv[1:])
        {"_write": body_write, "_plain": body_plain, "_eval": body_eval,
         "_index10x": body_index10x}[argv[0]](args)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="scale-out", help="work directory (default scale-out)")
    parser.add_argument("--pairs", type=int, default=NUSWIDE_PAIRS,
                        help=f"pairs the converter keeps (default {NUSWIDE_PAIRS}, NUS-WIDE's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs of the local Ray of each stage and threads of the baseline")
    parser.add_argument("--queries", type=int, default=1000, help="searches per direction")
    parser.add_argument("--check-queries", type=int, default=50,
                        help="of them, checked against brute force per direction")
    parser.add_argument("--connections", type=int, default=4, help="searches in flight")
    parser.add_argument("--plain-sample", type=int, default=5000,
                        help="database pairs of the plain-loop baseline")
    parser.add_argument("--times", type=int, default=10,
                        help="copies of the database's codes in index10x/serve10x (default 10)")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1],
                        help="stop after this stage (default: run them all)")
    parser.add_argument("--redo", choices=STAGES, default=None,
                        help="run this stage and every later one again")
    main_run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

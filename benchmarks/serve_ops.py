"""The search service while its world changes (issue 26): steady load, then each
event in turn, and what each cost the people searching.

    .venv/bin/python benchmarks/serve_ops.py [--clients 6] [--pairs 3000] [--replicas 2]
                                             [--json OUT.json]

A real service as users start it: `hashgan-ray serve` in its own process (a
local Ray of 2 CPUs behind HAProxy, the default ingress; `--replicas` ingress
replicas) over a synthetic dataset (`data synth --pairs`) with an untrained
model and its exact index. `--clients` threads, each with its own keep-alive
HTTP connection, send text->image searches (`text_of` an indexed item, k=10) one
after another for the whole run. Then, in turn, with a quiet period between:

  add      `hashgan-ray index add` of the dataset's query split (new ids)
  remove   `hashgan-ray index remove` of those ids
  swap     `hashgan-ray index build --overwrite` into the served directory with
           another model (the index names its model; replicas load both)
  kill     SIGKILL of one ingress replica (of `--replicas`)
  sigterm  SIGTERM to the `hashgan-ray serve` process (the load runs on until
           the port closes)

For each event it prints the requests sent while it ran, how many failed (a
transport error or a status other than 200) and the p99 latency of the rest,
and when its new state was visible:
  add/remove/swap: window = from the command's start until 2 s after the new
    state is visible; `visible after` = seconds from the command's end until 20
    answers of /v1/info in a row (every replica, surely) show the new index
    version (the new model's fingerprint for swap); `command_s` = the command;
  kill: window = from the SIGKILL until 2 s after a replica that was not there
    before answers; `visible after` = that time;
  sigterm: window = the requests sent before the signal since the kill's
    window ended (answered or in flight when it came); `visible after` = until
    the process exited; `closed_under_request` = those of the failed whose
    kept-alive connection closed before an answer came (HAProxy closing its
    connections as it drains; a client that retries such a request, as
    browsers do, gets its answer); `refused_after` = requests sent after the
    signal that failed (the port closing), counted apart.
Goals (issue 26): 0 failed across add, remove and swap; new pairs visible
within 10 s; a killed replica costs at most the requests it held (one per
client) and is replaced within 60 s; SIGTERM loses no request already
accepted.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REFUSED, CLOSED, TIMEOUT = -1, -2, -3      # SteadyLoad's statuses of requests without an answer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class SteadyLoad:
    """`clients` threads sending one search after another to a service until
    stopped; each outcome is kept as (sent, seconds, status), status 200 for an
    answer, its HTTP status for an error, and for no answer at all REFUSED (the
    port closed), CLOSED (the connection closed under the request) or TIMEOUT.
    `retry_closed`: send a request again, once, on a new connection when its
    kept-alive connection closed under it, as browsers do (the search only
    reads, so that is safe); the retried ones are counted. Shared by the tests
    of the service's events (tests/serving)."""

    def __init__(self, url: str, body: dict, clients: int = 4, timeout: float = 60.0,
                 retry_closed: bool = False):
        self.url, self.body, self.timeout, self.retry_closed = url, body, timeout, retry_closed
        self.outcomes: list[tuple[float, float, int]] = []
        self.retried = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(clients)]

    def _send(self, client: httpx.Client) -> int:
        try:
            return client.post(self.url, json=self.body).status_code
        except httpx.ConnectError:
            time.sleep(0.05)              # a refused port answers at once: do not spin
            return REFUSED
        except httpx.TimeoutException:
            return TIMEOUT
        except httpx.TransportError:      # disconnected without an answer, reset
            return CLOSED

    def _client(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                status = self._send(client)
                if status == CLOSED and self.retry_closed:
                    self.retried += 1
                    status = self._send(client)
                self.outcomes.append((sent, time.monotonic() - sent, status))

    def __enter__(self) -> "SteadyLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        """The outcomes of the requests sent in [start, end)."""
        return [o for o in list(self.outcomes) if start <= o[0] < end]

    def failed(self, start: float = 0.0, end: float = float("inf"), status: int | None = None
               ) -> int:
        """Requests sent in [start, end) without a 200 (only those of `status` if given)."""
        return sum(s != 200 and (status is None or s == status)
                   for _, _, s in self.between(start, end))


# --------------------------------------------------------------------------- #
# The benchmark
# --------------------------------------------------------------------------- #

CLI = [sys.executable, "-m", "hashgan_ray"]
AGREE = 20              # /v1/info answers in a row that agree: every replica, surely


def untrained_model(out: Path, data: Path, seed: int) -> Path:
    """A HashGAN of train's default sizes for `data` (untrained: what an event costs
    does not depend on the weights)."""
    import torch

    from hashgan_ray.data.format import read_meta
    from hashgan_ray.model.checkpoint import write_model_files
    from hashgan_ray.model.hashgan import HashGAN

    meta = read_meta(data)
    torch.manual_seed(seed)
    out.mkdir(parents=True)
    write_model_files(out, HashGAN(bits=32, vocab_size=meta.vocab_size),
                      vocabulary=meta.vocabulary, label_names=meta.label_names,
                      train_config={})
    return out


def cli(*args: str) -> float:
    """Run a hashgan-ray command (its own local Ray where it needs one) -> seconds."""
    started = time.monotonic()
    ray = args[0] == "index" and args[1] != "remove"
    done = subprocess.run([*CLI, *args, *(["--num-cpus", "1"] if ray else [])],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"hashgan-ray {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def settle(client: httpx.Client, check, limit: float = 180.0, agree: int = AGREE) -> float:
    """Seconds until `agree` answers of /v1/info in a row pass `check`."""
    started, agreed = time.monotonic(), 0
    while agreed < agree:
        if time.monotonic() - started > limit:
            raise TimeoutError(f"not settled within {limit:.0f} s")
        try:
            r = client.get("/v1/info")
            agreed = agreed + 1 if r.status_code == 200 and check(r.json()) else 0
        except httpx.TransportError:
            agreed = 0
        if not agreed:
            time.sleep(0.1)
    return time.monotonic() - started


def replica_pids(root: int, app: str = "hashgan") -> set[int]:
    """The live SearchAPI replicas of `app` among the processes below `root` (their
    title is ray::ServeReplica:APP:SearchAPI)."""
    import psutil

    pids, title = set(), f"ray::ServeReplica:{app}:SearchAPI"
    for p in psutil.Process(root).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(title):
                pids.add(p.pid)
        except psutil.Error:
            pass
    return pids


def replicas_answering(client: httpx.Client, n: int, limit: float = 60.0) -> set[str]:
    """The ids of the replicas /v1/info answers from, once n distinct ones have."""
    seen, started = set(), time.monotonic()
    while len(seen) < n:
        if time.monotonic() - started > limit:
            raise TimeoutError(f"only {len(seen)} replica(s) answered")
        seen.add(client.get("/v1/info").json()["replica"])
    return seen


def summary(load: SteadyLoad, name: str, start: float, end: float, visible_s: float | None,
            **extra) -> dict:
    window = load.between(start, end)
    seconds = [s for _, s, status in window if status == 200]
    row = {"event": name, "sent": len(window), "failed": load.failed(start, end),
           "p99_ms": round(1000 * float(np.percentile(seconds, 99)), 1) if seconds else None,
           "visible_s": None if visible_s is None else round(visible_s, 2), **extra}
    print(f"{name:8s} sent {row['sent']:6d}  failed {row['failed']:3d}  p99 "
          f"{row['p99_ms']} ms  visible after {row['visible_s']} s"
          + "".join(f"  {k} {v}" for k, v in extra.items()), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=5.0, help="seconds between events")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from hashgan_ray.data.format import read_pairs
    from hashgan_ray.model.checkpoint import fingerprint
    from hashgan_ray.ports import free_port

    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-ops-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        cli("data", "synth", "--out", str(data), "--pairs", str(args.pairs), "--seed", "0")
        model_a = untrained_model(tmp / "model_a", data, 0)
        model_b = untrained_model(tmp / "model_b", data, 1)
        index = tmp / "index"
        cli("index", "build", "--checkpoint", str(model_a), "--data", str(data),
            "--out", str(index))
        port = free_port()
        server = subprocess.Popen(
            [*CLI, "serve", "--checkpoint", str(model_a), "--index", str(index), "--port",
             str(port), "--num-cpus", "2", "--encoder-replicas", str(args.replicas)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                deadline = time.monotonic() + 300
                while True:
                    if server.poll() is not None:
                        raise RuntimeError(server.stdout.read())
                    try:
                        if client.get("/v1/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError("the service did not come up")
                    time.sleep(1)
                item = int(read_pairs(data, "database", columns=["id"]).column("id")[0].as_py())
                new_ids = read_pairs(data, "query", columns=["id"]).column("id").to_pylist()
                print(f"service up: {args.replicas} ingress replica(s) behind HAProxy, "
                      f"{args.clients} clients, {args.pairs} pairs", flush=True)
                with SteadyLoad(f"{url}/v1/search", {"text_of": item, "k": 10},
                                clients=args.clients) as load:
                    time.sleep(args.quiet)
                    rows.append(summary(load, "steady", 0.0, time.monotonic(), None))
                    version = client.get("/v1/info").json()["index"]["version"]

                    for name, command, check in [
                            ("add", ("index", "add", "--index", str(index), "--data", str(data),
                                     "--split", "query"), lambda i: i["index"]["version"] == version + 1),
                            ("remove", ("index", "remove", "--index", str(index), "--ids",
                                        *map(str, new_ids)), lambda i: i["index"]["version"] == version + 2),
                            ("swap", ("index", "build", "--checkpoint", str(model_b), "--data",
                                      str(data), "--out", str(index), "--overwrite"),
                             lambda i: i["model"]["fingerprint"] == fingerprint(model_b))]:
                        start = time.monotonic()
                        took = cli(*command)
                        visible = settle(client, check)
                        time.sleep(2)
                        rows.append(summary(load, name, start, time.monotonic(), visible,
                                            command_s=round(took, 1)))
                        time.sleep(args.quiet)

                    answering = replicas_answering(client, args.replicas)
                    start = time.monotonic()
                    os.kill(min(replica_pids(server.pid)), signal.SIGKILL)
                    # replaced: a replica that was not there before answers
                    settle(client, lambda i: i["replica"] not in answering, agree=1)
                    visible = time.monotonic() - start
                    time.sleep(2)
                    rows.append(summary(load, "kill", start, time.monotonic(), visible,
                                        held_at_most=args.clients))
                    calm = time.monotonic()
                    time.sleep(args.quiet)

                    start = time.monotonic()
                    server.send_signal(signal.SIGTERM)
                    out, _ = server.communicate(timeout=180)
                    stopped = time.monotonic()
                    time.sleep(1)
                    # sent since the kill's window, before the signal (answered or in
                    # flight when it came): none may fail
                    rows.append(summary(load, "sigterm", calm, start, stopped - start,
                                        closed_under_request=load.failed(calm, start, CLOSED),
                                        refused_after=load.failed(start, stopped),
                                        exit_code=server.returncode))
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

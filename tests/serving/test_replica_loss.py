"""A SIGKILLed ingress replica of two, behind HAProxy, under steady load: the
requests it held are all that fail, and Serve brings the count back to two."""
import os
import signal
import threading
import time

import pytest
from helpers import free_port

from hashgan_ray.index import store

httpx = pytest.importorskip("httpx")
CLIENTS = 4


def replica_pids() -> set[int]:
    """The pids of the live SearchAPI replicas: processes of this test's own Ray
    (descendants of this process) titled ray::ServeReplica:hashgan:SearchAPI."""
    import psutil

    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::ServeReplica:hashgan:SearchAPI"):
                pids.add(p.pid)
        except psutil.Error:          # gone meanwhile
            pass
    return pids


def test_a_killed_replica_costs_only_what_it_held_and_is_replaced(local_ray, linked_model,
                                                                  linked_index):
    from ray import serve

    from hashgan_ray.serving.app import application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(linked_model, linked_index, options={"SearchAPI": {
        "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}}), name="hashgan",
        route_prefix="/")
    item = int(store.read_codes(linked_index).ids[0])
    outcomes: list[tuple[float, bool]] = []          # (time sent, answered 200)
    stop = threading.Event()

    def load():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/v1/search", json={"text_of": item, "k": 5})
                    ok = r.status_code == 200
                except httpx.TransportError:
                    ok = False
                outcomes.append((sent, ok))

    threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
    try:
        before = replica_pids()
        assert len(before) == 2
        for t in threads:
            t.start()
        time.sleep(3)
        victim = min(before)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:          # two live replicas again, one of them new
            now = replica_pids()
            status = serve.status().applications["hashgan"].deployments["SearchAPI"]
            if len(now) == 2 and victim not in now and \
                    status.replica_states.get("RUNNING") == 2:
                break
            assert time.monotonic() < deadline, (now, status)
            time.sleep(0.5)
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
        serve.shutdown()
    failed = sum(not ok for _, ok in outcomes)
    after = [ok for sent, ok in outcomes if sent > killed_at]
    print(f"{failed} of {len(outcomes)} requests failed, {len(after)} sent after the kill")
    # each client has one request in flight: the victim held at most CLIENTS of them
    assert failed <= CLIENTS, f"{failed} of {len(outcomes)} requests failed"
    assert len(after) > failed and after[-CLIENTS:] == [True] * CLIENTS

"""A SIGKILLed ingress replica of two, behind HAProxy, under steady load: the
requests it held are all that fail, and Serve brings the count back to two."""
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port

from hashgan_ray.index import store

httpx = pytest.importorskip("httpx")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from serve_ops import SteadyLoad, replica_pids  # noqa: E402

CLIENTS = 4


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
    try:
        before = replica_pids(os.getpid())
        assert len(before) == 2
        with SteadyLoad(f"http://127.0.0.1:{port}/v1/search", {"text_of": item, "k": 5},
                        clients=CLIENTS) as load:
            time.sleep(3)
            victim = min(before)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while True:          # two live replicas again, one of them new
                now = replica_pids(os.getpid())
                status = serve.status().applications["hashgan"].deployments["SearchAPI"]
                if len(now) == 2 and victim not in now and \
                        status.replica_states.get("RUNNING") == 2:
                    break
                assert time.monotonic() < deadline, (now, status)
                time.sleep(0.5)
            time.sleep(3)
    finally:
        serve.shutdown()
    failed, after = load.failed(), load.between(killed_at, float("inf"))
    print(f"{failed} of {len(load.outcomes)} requests failed, {len(after)} sent after the kill")
    # each client has one request in flight: the victim held at most CLIENTS of them
    assert failed <= CLIENTS, f"{failed} of {len(load.outcomes)} requests failed"
    assert len(after) > failed and [s for *_, s in after[-CLIENTS:]] == [200] * CLIENTS

"""The service while its world changes, behind HAProxy, under steady load from
four clients: added and removed pairs go live without a restart, a failed or
half-written version leaves the old one served, a new model goes live through
Serve's config (user_config) and through a rebuilt index, and a mismatched pair
is refused; no request may fail across any of it. A SIGKILLed replica of two
costs only the requests it held, and Serve brings the count back to two.

One service for the module, deployed as `serve deploy` does (the config's
application, built on the cluster by build_app), with two ingress replicas;
each test reads what is served from /v1/info rather than assuming an order."""
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port, write_exact_index, write_tiny_model

from hashgan_ray.data.format import read_pairs
from hashgan_ray.files import move_into_place, temp_dir_for
from hashgan_ray.index import store
from hashgan_ray.model.checkpoint import fingerprint, load_model
from hashgan_ray.model.encode import encode_split

httpx = pytest.importorskip("httpx")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from serve_ops import SteadyLoad, replica_pids  # noqa: E402

AGREE = 20            # /v1/info answers in a row that must agree: both replicas, surely
CLIENTS = 4


def deploy(port: int, checkpoint, index, user_config: dict | None = None) -> None:
    """The application as serve/config.yaml declares it, through Serve's config
    path (what `serve deploy` sends): a changed user_config is Serve's
    lightweight update, applied to the running replicas."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    search_api = {"name": "SearchAPI", "num_replicas": 2,
                  "ray_actor_options": {"num_cpus": 0.5}}
    if user_config is not None:
        search_api["user_config"] = user_config
    from ray import serve

    _get_global_client().deploy_apps(ServeDeploySchema(
        http_options={"host": "127.0.0.1", "port": port},
        applications=[{"name": "hashgan", "route_prefix": "/",
                       "import_path": "hashgan_ray.serving.app:build_app",
                       "args": {"checkpoint": str(checkpoint), "index": str(index)},
                       "deployments": [search_api]}]))
    deadline = time.monotonic() + 240          # Serve's own wait gives up after 60 s
    while (status := serve.status().applications.get("hashgan")) is None or \
            status.status != "RUNNING":
        assert status is None or status.status != "DEPLOY_FAILED", status
        assert time.monotonic() < deadline, status
        time.sleep(1)


@pytest.fixture(scope="module")
def service(local_ray, linked_model, linked_index, tmp_path_factory):
    """(base URL, the served copy of linked_index) of a running service."""
    from ray import serve

    index = tmp_path_factory.mktemp("live") / "index"
    shutil.copytree(linked_index, index)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(port, linked_model, index)
    yield f"http://127.0.0.1:{port}", port
    serve.shutdown()


def info(client: httpx.Client) -> dict:
    r = client.get("/v1/info")
    assert r.status_code == 200, r.text
    return r.json()


def settled(client: httpx.Client, check, what: str, deadline_s: float = 90.0) -> dict:
    """/v1/info once AGREE answers in a row pass `check` (every replica does)."""
    deadline, agreed, now = time.monotonic() + deadline_s, 0, None
    while agreed < AGREE:
        try:                   # no replica for a moment is the steady load's to count
            r = client.get("/v1/info")
            now = r.json() if r.status_code == 200 else now
            agreed = agreed + 1 if r.status_code == 200 and check(now) else 0
        except httpx.TransportError:
            agreed = 0
        assert time.monotonic() < deadline, f"not every replica {what}: {now}"
        if not agreed:
            time.sleep(0.2)
    return now


def served_item(linked_index) -> int:
    return int(store.read_ids(linked_index)[0])


def load(url: str, item: int) -> SteadyLoad:
    return SteadyLoad(f"{url}/v1/search", {"text_of": item, "k": 5}, clients=CLIENTS)


def all_ids(client: httpx.Client, item: int) -> set[int]:
    """Every id the service ranks (k as large as the database)."""
    r = client.post("/v1/search", json={"text_of": item, "k": 1000})
    assert r.status_code == 200, r.text
    return {x["id"] for x in r.json()["results"]}


def test_added_then_removed_pairs_go_live_without_a_restart(service, linked_data, linked_index):
    url, _ = service
    item = served_item(linked_index)
    with httpx.Client(base_url=url, timeout=30) as client, load(url, item) as steady:
        before = info(client)
        index, version = before["index"]["path"], before["index"]["version"]
        model, _ = load_model(before["model"]["path"])
        new = encode_split(model, linked_data, "query")           # ids the index lacks
        assert not set(new.ids) & all_ids(client, item)
        store.add_to_index(index, lambda w: w.add(new.ids, new.image_codes, new.text_codes),
                           dataset={"path": str(linked_data), "split": "query"})
        settled(client, lambda i: i["index"]["version"] == version + 1, "loaded the add")
        assert set(new.ids) <= all_ids(client, item)
        added = int(new.ids[0])
        assert client.get(f"/v1/items/{added}").json()["id"] == added
        r = client.post("/v1/search", json={"image_of": added, "target": "text", "k": 3})
        assert r.status_code == 200, r.text                        # an added item as a query

        store.remove_from_index(index, new.ids)
        now = settled(client, lambda i: i["index"]["version"] == version + 2,
                      "loaded the removal")
        assert not set(new.ids) & all_ids(client, item)
        assert client.get(f"/v1/items/{added}").status_code == 404
        assert now["items"]["count"] == before["items"]["count"]
    assert len(steady.outcomes) > 50
    assert steady.failed() == 0, f"{steady.failed()} of {len(steady.outcomes)} failed"


def test_a_failed_or_half_written_version_leaves_the_old_one_served(service, linked_data,
                                                                   linked_index):
    url, _ = service
    item = served_item(linked_index)
    with httpx.Client(base_url=url, timeout=30) as client, load(url, item) as steady:
        before = info(client)
        index, version = Path(before["index"]["path"]), before["index"]["version"]
        model_dir = before["model"]["path"]
        query_ids = read_pairs(linked_data, "query", columns=["id"]).column("id").to_numpy()

        def fails_midway(writer):
            codes = store.read_codes(index)
            writer.add(query_ids[:3], codes.image[:3], codes.text[:3])
            raise OSError("disk full")                 # as a crash of `index add` would

        with pytest.raises(OSError, match="disk full"):
            store.add_to_index(index, fails_midway, dataset={"path": str(linked_data),
                                                             "split": "query"})
        assert store.read_manifest(index)["version"] == version   # nothing was written

        # A version whose shard file is cut short (a copy interrupted, a foreign
        # tool): the replicas refuse it and keep serving what they have.
        broken = temp_dir_for(index)
        shutil.copytree(index, broken, dirs_exist_ok=True)
        manifest = store.read_manifest(broken)
        manifest["version"] = version + 1
        (broken / "manifest.json").write_text(json.dumps(manifest))
        shard = broken / store.shard_file(0, "image")
        shard.write_bytes(shard.read_bytes()[:100])
        move_into_place(broken, index)
        refused = settled(client, lambda i: i["update"]["state"] == "refused",
                          "refused the broken version")
        assert refused["index"]["version"] == version
        assert refused["update"]["error"].startswith("the index directory changed")
        assert all_ids(client, item)                           # the old version answers

        write_exact_index(index, model_dir, linked_data, overwrite=True)   # repaired
        settled(client, lambda i: i["update"]["state"] == "serving" and
                i["index"]["version"] == version + 2, "loaded the repaired index")
    assert steady.failed() == 0, f"{steady.failed()} of {len(steady.outcomes)} failed"


def test_a_new_model_goes_live_and_a_mismatched_pair_is_refused(service, linked_data,
                                                                linked_model, linked_index,
                                                                tmp_path):
    url, port = service
    item = served_item(linked_index)
    other = write_tiny_model(tmp_path / "model_b", linked_data, seed=1)
    other_index = write_exact_index(tmp_path / "index_b", other, linked_data)
    a, b = fingerprint(linked_model), fingerprint(other)
    with httpx.Client(base_url=url, timeout=30) as client, load(url, item) as steady:
        served = info(client)
        assert served["model"]["fingerprint"] == a
        # Serve's config: user_config names the new pair; the replicas swap in place
        deploy(port, linked_model, served["index"]["path"],
               user_config={"checkpoint": str(other), "index": str(other_index)})
        now = settled(client, lambda i: i["model"]["fingerprint"] == b, "took model b")
        assert now["index"]["path"] == str(other_index.resolve())

        # a pair that does not match: refused, model b keeps serving
        deploy(port, linked_model, served["index"]["path"],
               user_config={"checkpoint": str(linked_model), "index": str(other_index)})
        now = settled(client, lambda i: i["update"]["state"] == "refused", "refused the pair")
        assert now["model"]["fingerprint"] == b
        assert "another model" in now["update"]["error"]

        # the CLI's way: the served index rebuilt for another model names it
        write_exact_index(other_index, linked_model, linked_data, overwrite=True)
        settled(client, lambda i: i["model"]["fingerprint"] == a and
                i["update"]["state"] == "serving", "took model a from the rebuilt index")
    assert steady.failed() == 0, f"{steady.failed()} of {len(steady.outcomes)} failed"


def test_a_replica_started_after_a_model_swap_serves_the_new_model(service, linked_data,
                                                                  linked_model, linked_index,
                                                                  tmp_path):
    """Serve builds a replacement replica from the app's args (the old model); the
    index it names was rebuilt for a new one meanwhile: it serves the new one, as
    the replicas that watched the swap do."""
    from ray import serve

    from hashgan_ray.serving.app import application

    url, _ = service
    index = tmp_path / "index"
    shutil.copytree(linked_index, index)
    serve.run(application(linked_model, index, options={"SearchAPI": {
        "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}}), name="second",
        route_prefix="/second")
    other = write_tiny_model(tmp_path / "model_b", linked_data, seed=1)
    try:
        with httpx.Client(base_url=f"{url}/second", timeout=30) as client:
            write_exact_index(index, other, linked_data, overwrite=True)   # the CLI's swap
            first = settled(client, lambda i: i["model"]["fingerprint"] == fingerprint(other),
                            "took model b")["replica"]
            (victim,) = replica_pids(os.getpid(), "second")
            os.kill(victim, signal.SIGKILL)
            settled(client, lambda i: i["replica"] != first and
                    i["model"]["fingerprint"] == fingerprint(other), "replaced, with model b")
    finally:
        serve.delete("second")


def test_a_killed_replica_costs_only_what_it_held_and_is_replaced(service, linked_index):
    from ray import serve

    url, _ = service
    before = replica_pids(os.getpid())
    assert len(before) == 2
    with load(url, served_item(linked_index)) as steady:
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
    failed, after = steady.failed(), steady.between(killed_at, float("inf"))
    print(f"{failed} of {len(steady.outcomes)} requests failed, {len(after)} sent after the kill")
    # each client has one request in flight: the victim held at most CLIENTS of them
    assert failed <= CLIENTS, f"{failed} of {len(steady.outcomes)} requests failed"
    assert len(after) > failed and [s for *_, s in after[-CLIENTS:]] == [200] * CLIENTS


def test_a_replica_whose_index_does_not_load_is_never_served(service, linked_model,
                                                              linked_index, tmp_path):
    """Its constructor raises: Serve never routes to it and reports the deployment
    failed, instead of a replica that answers with errors."""
    from ray import serve

    from hashgan_ray.serving.app import application

    url, _ = service
    index = tmp_path / "index"
    shutil.copytree(linked_index, index)
    shard = index / store.shard_file(0, "text")
    shard.write_bytes(shard.read_bytes()[:100])          # the manifest still matches
    try:
        with pytest.raises(RuntimeError, match="Deploying application broken failed"):
            serve.run(application(linked_model, index, options={"SearchAPI": {
                "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25},
                "max_constructor_retry_count": 1}}), name="broken", route_prefix="/broken")
        assert serve.status().applications["broken"].status == "DEPLOY_FAILED"
        r = httpx.get(f"{url}/broken/v1/healthz", timeout=30)
        assert r.status_code != 200
    finally:
        serve.delete("broken")

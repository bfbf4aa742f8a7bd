"""The Serve application over real HTTP (httpx) on a real local Ray: one app for the module."""
import base64
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from helpers import brute, free_port, listener_of, write_exact_index, write_tiny_model
from PIL import Image

from hashgan_ray.cli import main
from hashgan_ray.data.format import read_meta, read_pairs
from hashgan_ray.index import store
from hashgan_ray.model.checkpoint import fingerprint, load_model
from hashgan_ray.model.encode import encode_split

httpx = pytest.importorskip("httpx")
TOKEN = "test-token-7f3a"
LIMITS = {"max_image_bytes": 60_000, "max_body_bytes": 100_000, "max_image_pixels": 500_000,
          "body_timeout_s": 2.0}


@pytest.fixture(scope="module")
def index_dir(synth_data, tiny_model, tmp_path_factory):
    """A 2-shard exact index of the database codes."""
    return write_exact_index(tmp_path_factory.mktemp("served") / "index", tiny_model, synth_data,
                             shards=2)


# Small CPU shares: both layouts and the strict app of the 504 test fit a 2-CPU Ray.
SPLIT_OPTIONS = {"SearchAPI": {"ray_actor_options": {"num_cpus": 0.25}},
                 "QueryEncoder": {"ray_actor_options": {"num_cpus": 0.5}},
                 "IndexShard0": {"ray_actor_options": {"num_cpus": 0.25}},
                 "IndexShard1": {"ray_actor_options": {"num_cpus": 0.25}}}


def deploy(name: str, route_prefix: str, **kwargs) -> None:
    from ray import serve

    from hashgan_ray.serving.app import application

    serve.run(application(token=TOKEN, limits=LIMITS, **kwargs), name=name,
              route_prefix=route_prefix)


@pytest.fixture(scope="module")
def service(local_ray, tiny_model, index_dir):
    """Layout split: SearchAPI -> QueryEncoder -> IndexShard0, IndexShard1."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"checkpoint": str(tiny_model), "index": str(index_dir)}
    deploy("hashgan", "/", **args, layout="split", options=SPLIT_OPTIONS)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    yield client, args, port
    client.close()
    serve.shutdown()


@pytest.fixture(scope="module")
def one_shard(service, linked_model, linked_index):
    """Layout ingress (auto, one shard) over the linked-images dataset, at /one."""
    client, _, port = service
    deploy("one", "/one", checkpoint=str(linked_model), index=str(linked_index),
           options={"SearchAPI": {"ray_actor_options": {"num_cpus": 0.5}}})
    one = httpx.Client(base_url=f"http://127.0.0.1:{port}/one", timeout=60,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    yield one
    one.close()


def pairs_as_sent(data_dir) -> list[dict]:
    """Query-split pairs as the API receives them: words and image bytes."""
    meta = read_meta(data_dir)
    column = meta.image_column
    rows = read_pairs(data_dir, "query", columns=["id", "text", column]).to_pylist()[:12]
    return [{"words": [meta.vocabulary[i] for i in r["text"]],
             "image": r[column] if column == "image" else Path(r[column]).read_bytes()}
            for r in rows]


@pytest.fixture(scope="module")
def queries(synth_data):
    return pairs_as_sent(synth_data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(width, height) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("layout", ["split", "ingress"])
def test_served_results_are_the_brute_force_ranking(request, layout, synth_data, queries):
    """Both layouts answer their index's brute-force ranking."""
    if layout == "split":
        client, index_dir = request.getfixturevalue("service")[0], request.getfixturevalue("index_dir")
    else:
        client, index_dir = request.getfixturevalue("one_shard"), request.getfixturevalue("linked_index")
        assert client.get("/v1/info").json()["layout"] == "ingress"
        # its data's images are synth_data's; its word 0 has another name
        queries = pairs_as_sent(request.getfixturevalue("linked_data"))
    codes = store.read_codes(index_dir)
    for q in queries[:6]:
        code = client.post("/v1/encode", json={"text": q["words"]}).json()["code"]
        r = client.post("/v1/search", json={"text": q["words"], "k": 1000}).json()
        assert r["bits"] == 16 and r["target"] == "image" and r["unknown_words"] == []
        assert r["results"] == brute(code, codes.image, codes.ids)         # all 216, in order
        near = client.post("/v1/search", json={"text": q["words"], "radius": 5}).json()
        assert near["results"] == [x for x in r["results"] if x["distance"] <= 5]

        code = client.post("/v1/encode", json={"image": b64(q["image"])}).json()["code"]
        r = client.post("/v1/search", json={"image": b64(q["image"]), "k": 30}).json()
        assert r["target"] == "text"
        assert r["results"] == brute(code, codes.text, codes.ids)[:30]
        upload = client.post("/v1/search/image", files={"file": ("q.png", q["image"], "image/png")},
                             data={"k": "30"}).json()
        assert upload["results"] == r["results"]


def test_the_service_answers_through_haproxy(service):
    """These tests run behind the default ingress: HAProxy holds the port (layout
    split: the deployments call each other over gRPC)."""
    _, _, port = service
    assert listener_of(port) == "haproxy"


def test_the_served_code_is_the_model_code(service, tiny_model, synth_data):
    client, _, _ = service
    model, _ = load_model(tiny_model)
    query = encode_split(model, synth_data, "query")
    row = read_pairs(synth_data, "query", columns=["image"]).column("image")[0].as_py()
    r = client.post("/v1/encode", json={"image": b64(row)}).json()
    assert r == {"code": query.image_codes[0].tobytes().hex(), "bits": 16, "modality": "image",
                 "unknown_words": []}


def test_concurrent_mixed_queries_are_batched_correctly(service, queries):
    client, _, _ = service
    bodies = []
    for i, q in enumerate(queries):
        bodies.append({"text": q["words"], "k": 3 + i})
        bodies.append({"image": b64(q["image"]), "k": 5, "target": "image" if i % 2 else "text"})
    one_by_one = [client.post("/v1/search", json=b).json()["results"] for b in bodies]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: client.post("/v1/search", json=b).json()["results"],
                                 bodies))
    assert together == one_by_one
    assert [len(r) for r in together[::2]] == [3 + i for i in range(len(queries))]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names come from /proc")
def test_the_ingress_replica_searches_in_one_named_thread(one_shard, linked_data):
    """The model and FAISS run in the replica's own thread, named SEARCH_THREAD for
    top -H and py-spy; serve_bench.py reads its CPU by that name."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from serve_bench import serve_cpu_s

    before = serve_cpu_s("one")
    q = pairs_as_sent(linked_data)[0]
    for _ in range(20):
        assert one_shard.post("/v1/search", json={"text": q["words"], "k": 5}).status_code == 200
    after = serve_cpu_s("one")
    search = after["search_thread"] - before["search_thread"]
    assert 0 < search <= after["replicas"] - before["replicas"]


def dataset_items(data_dir, split="database") -> dict[int, dict]:
    """id -> the item JSON the service should answer, read from the dataset itself."""
    meta = read_meta(data_dir)
    rows = read_pairs(data_dir, split, columns=["id", "text", "labels"]).to_pylist()
    return {r["id"]: {"id": r["id"], "labels": [meta.label_names[i] for i in r["labels"]],
                      "words": [meta.vocabulary[i] for i in dict.fromkeys(r["text"])]}
            for r in rows}


@pytest.mark.parametrize("layout", ["split", "ingress"])
def test_items_are_the_dataset_rows_with_thumbnails(request, layout, synth_data, linked_data):
    """Embedded images (split service, synth_data) and linked files (ingress, linked_data)."""
    if layout == "split":
        client, data, root = request.getfixturevalue("service")[0], synth_data, ""
    else:
        client, data, root = request.getfixturevalue("one_shard"), linked_data, "/one"
    expected = dataset_items(data)
    for i in list(expected)[:5]:
        item = client.get(f"/v1/items/{i}").json()
        assert item == {**expected[i], "image": f"{root}/v1/items/{i}/image"}
        small = client.get(item["image"].removeprefix(root), params={"size": 24})
        assert small.status_code == 200 and small.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(small.content)) as img:
            assert img.format == "JPEG" and max(img.size) == 24
        with Image.open(io.BytesIO(client.get(f"/v1/items/{i}/image").content)) as img:
            assert img.size == (64, 64)                            # 64 px source: not enlarged
    query_id = read_pairs(data, "query", columns=["id"]).column("id")[0].as_py()
    r = client.get(f"/v1/items/{query_id}")                       # not in the index
    assert r.status_code == 404 and f"no item with id {query_id}" in r.json()["error"]


def test_the_page_under_a_route_prefix_finds_its_assets(service, one_shard):
    """/one (no trailing slash) redirects to /one/ (Starlette's slash redirect),
    where the page's relative static/ paths resolve to the app's own files."""
    _, _, port = service
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as bare:
        r = bare.get("/one", params={"q": "x"})
        assert r.status_code == 307 and r.headers["location"].endswith(f"{port}/one/?q=x")
        page = bare.get("/one/")
        assert page.status_code == 200 and 'src="static/search.js"' in page.text
        for name in ("search.js", "search.css"):
            assert bare.get(f"/one/static/{name}").status_code == 200
        assert bare.get("/").status_code == 200                # no prefix: no redirect


def test_results_carry_their_items_and_items_can_be_queries(one_shard, linked_data,
                                                           linked_index):
    client, queries = one_shard, pairs_as_sent(linked_data)
    expected = dataset_items(linked_data)
    r = client.post("/v1/search", json={"text": queries[0]["words"], "k": 5,
                                        "include": ["labels", "words", "image"]}).json()
    assert len(r["results"]) == 5
    for x in r["results"]:
        assert x == {**expected[x["id"]], "distance": x["distance"],
                     "image": f"/one/v1/items/{x['id']}/image"}
    only = client.post("/v1/search", json={"text": queries[0]["words"], "k": 5,
                                           "include": ["labels"]}).json()["results"]
    assert [set(x) for x in only] == [{"id", "distance", "labels"}] * 5
    # a dataset without names: null (the emoji set's names: test_search_page.py)
    unnamed = client.post("/v1/search", json={"text": queries[0]["words"], "k": 5,
                                              "include": ["name", "emoji"]}).json()["results"]
    assert [(x["name"], x["emoji"]) for x in unnamed] == [(None, None)] * 5
    upload = client.post("/v1/search/image", files={"file": ("q.png", queries[0]["image"])},
                         data={"k": "4", "include": "words,labels"}).json()["results"]
    assert [x["words"] for x in upload] == [expected[x["id"]]["words"] for x in upload]

    codes = store.read_codes(linked_index)
    meta = read_meta(linked_data)
    for i in list(expected)[:3]:
        words = [meta.vocabulary[w] for w in read_pairs(linked_data, columns=["id", "text"])
                 .filter(pc.field("id") == i).column("text")[0].as_py()]
        image = Path(read_pairs(linked_data, columns=["id", "image_path"])
                     .filter(pc.field("id") == i).column("image_path")[0].as_py()).read_bytes()
        by_image = client.post("/v1/search", json={"image_of": i, "k": 20}).json()
        code = client.post("/v1/encode", json={"image": b64(image)}).json()["code"]
        assert by_image["target"] == "text"
        assert by_image["results"] == brute(code, codes.text, codes.ids)[:20]
        by_text = client.post("/v1/search", json={"text_of": i, "k": 20}).json()
        code = client.post("/v1/encode", json={"text": words}).json()["code"]
        assert by_text["target"] == "image"
        assert by_text["results"] == brute(code, codes.image, codes.ids)[:20]


def test_bad_item_requests_get_a_json_4xx_and_the_service_goes_on(one_shard, linked_data):
    client = one_shard
    ids = list(dataset_items(linked_data))
    gone = Path(read_pairs(linked_data, columns=["id", "image_path"])
                .filter(pc.field("id") == ids[7]).column("image_path")[0].as_py())
    broken = Path(read_pairs(linked_data, columns=["id", "image_path"])
                  .filter(pc.field("id") == ids[8]).column("image_path")[0].as_py())
    saved = broken.read_bytes()
    gone.rename(gone.with_suffix(".away"))
    broken.write_bytes(b"not an image any more")
    try:
        cases = [
            ("/v1/items/987654321", 404, "no item with id 987654321"),
            ("/v1/items/-4", 404, "no item with id -4"),
            ("/v1/items/seven", 400, "an item id must be an integer"),
            ("/v1/items/99999999999999999999999", 400, "an item id must be an integer"),
            ("/v1/items/987654321/image", 404, "no item with id 987654321"),
            (f"/v1/items/{ids[0]}/image?size=-1", 400, "'size' must be an integer from 16 to 1024"),
            (f"/v1/items/{ids[0]}/image?size=0", 400, "'size' must be"),
            (f"/v1/items/{ids[0]}/image?size=100000", 400, "'size' must be"),
            (f"/v1/items/{ids[0]}/image?size=big", 400, "'size' must be"),
            (f"/v1/items/{ids[7]}/image", 404, f"the image file of item {ids[7]} cannot be read"),
            (f"/v1/items/{ids[8]}/image", 404, f"the image of item {ids[8]} cannot be decoded"),
        ]
        for path, status, message in cases:
            r = client.get(path)
            assert r.status_code == status and message in r.json()["error"], (path, r.text)
            assert client.get(f"/v1/items/{ids[1]}/image?size=20").status_code == 200
        r = client.post("/v1/search", json={"image_of": ids[7]})
        assert r.status_code == 404 and "cannot be read" in r.json()["error"]
        assert client.get(f"/v1/items/{ids[7]}").status_code == 200       # its words still are
    finally:
        gone.with_suffix(".away").rename(gone)
        broken.write_bytes(saved)
    assert client.get(f"/v1/items/{ids[7]}/image").status_code == 200


BAD = [
    # (body or request kwargs, status, words of the message)
    (b'{"text": "sky"', 400, "not valid JSON"),
    (b"", 400, "body is empty"),
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b'["sky"]', 400, "must be a JSON object"),
    (b'{"text": 5}', 400, "must be a string or a list of strings"),
    (b'{"text": ["sky", 3]}', 400, "only strings"),
    (b'{}', 400, "none was given"),
    (b'{"k": 5}', 400, "none was given"),
    (b'{"text": "sky", "image": "aGk="}', 400, "text and image were given"),
    (b'{"text": "sky", "image_of": 3}', 400, "text and image_of were given"),
    (b'{"text": "   "}', 400, "'text' is empty"),
    (b'{"text": []}', 400, "'text' is empty"),
    (b'{"text": "zzqx blorp"}', 400, "none of the query's words"),
    (b'{"text": "sky", "k": 0}', 400, "between 1 and 1000"),
    (b'{"text": "sky", "k": 1001}', 400, "between 1 and 1000"),
    (b'{"text": "sky", "k": "5"}', 400, "'k' must be an integer"),
    (b'{"text": "sky", "k": 2.5}', 400, "'k' must be an integer"),
    (b'{"text": "sky", "radius": 17}', 400, "'radius' must be between 0 and 16"),
    (b'{"text": "sky", "target": "video"}', 400, "'target' must be"),
    (b'{"text": "sky", "colour": "red"}', 400, "unknown field"),
    (b'{"text": "sky", "include": ["labels", "price"]}', 400, "'include' has unknown name(s) 'price'"),
    (b'{"text": "sky", "include": "labels"}', 400, "'include' must be a list"),
    (b'{"image_of": 987654321}', 404, "no item with id 987654321"),
    (b'{"text_of": "seven"}', 400, "an item id must be an integer"),
    (b'{"image": "not base64!"}', 400, "not valid base64"),
    (b'{"image": 12}', 400, "must be a base64 string"),
    (json.dumps({"image": b64(b"GIF89a but not really an image")}).encode(), 400,
     "not a JPEG or PNG"),
    (json.dumps({"image": b64(png(64, 64)[:60])}).encode(), 400, "could not be decoded"),
    (json.dumps({"image": b64(png(1000, 1000))}).encode(), 413, "at most 500000 pixels"),
    (json.dumps({"image": b64(np.random.default_rng(0).bytes(70_000))}).encode(), 413,
     "larger than 60000 bytes"),
    (b'{"text": "' + b"sky " * 30_000 + b'"}', 413, "body is larger than 100000 bytes"),
]


@pytest.mark.parametrize("body,status,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_gets_a_json_4xx_and_the_service_goes_on(service, queries, body, status, message):
    client, _, _ = service
    r = client.post("/v1/search", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["status"] == status and message in r.json()["error"]
    good = client.post("/v1/search", json={"text": queries[0]["words"], "k": 2})
    assert good.status_code == 200 and len(good.json()["results"]) == 2


def test_bad_uploads_and_requests_outside_the_api(service, queries):
    client, _, _ = service
    cases = [
        (client.post("/v1/search/image", data={"k": "3"}, files={"other": ("x", b"1")}), 400,
         "field named 'file'"),
        (client.post("/v1/search/image", files={"file": ("q.png", b"text, not png")}), 400,
         "not a JPEG or PNG"),
        (client.post("/v1/search/image", files={"file": ("q.png", queries[0]["image"])},
                     data={"k": "lots"}), 400, "'k' must be an integer"),
        (client.post("/v1/search/image", json={"image": "aGk="}), 415, "multipart/form-data"),
        (client.post("/v1/encode", json={"text": "sky", "k": 3}), 400, "unknown field"),
        (client.get("/v1/search"), 405, "Method Not Allowed"),
        (client.get("/v2/search"), 404, "Not Found"),
    ]
    for r, status, message in cases:
        assert r.status_code == status and message in r.json()["error"], r.text
    assert client.post("/v1/search", json={"text": queries[0]["words"]}).status_code == 200
    unknown = client.post("/v1/search", json={"text": queries[0]["words"] + ["zzqx"]}).json()
    assert unknown["unknown_words"] == ["zzqx"] and len(unknown["results"]) == 10


def test_info_describes_the_model_and_the_index(service, tiny_model):
    client, _, _ = service
    info = client.get("/v1/info").json()
    assert info["model"]["bits"] == 16 and info["model"]["fingerprint"] == fingerprint(tiny_model)
    assert info["index"]["count"] == 216 and len(info["index"]["shards"]) == 2
    assert info["limits"]["max_k"] == 1000
    assert info["layout"] == "split" and info["items"]["count"] == 216


def test_an_index_of_another_model_is_refused(index_dir, synth_data, tmp_path, capsys):
    from hashgan_ray.serving.app import build_app

    eight_bits = write_tiny_model(tmp_path / "m8", synth_data, bits=8)
    with pytest.raises(store.IndexMismatch, match="holds 16-bit codes but the model makes 8-bit"):
        build_app({"checkpoint": str(eight_bits), "index": str(index_dir)})
    other = write_tiny_model(tmp_path / "other", synth_data, bits=16, seed=1)
    assert main(["serve", "--checkpoint", str(other), "--index", str(index_dir)]) == 2
    assert "built with another model" in capsys.readouterr().err


def test_a_body_that_stops_coming_gets_408_and_a_slow_answer_504(service, queries):
    import socket

    from ray import serve

    from hashgan_ray.serving.app import application

    client, args, port = service
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"POST /v1/search HTTP/1.1\r\nHost: localhost\r\n"
                    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                    b'{"text": ')                                  # and then nothing
        answer = b""
        while not answer.endswith(b"}"):                           # the JSON error, whole
            chunk = raw.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 408"), head
    assert json.loads(body)["status"] == 408 and "did not arrive in time" in json.loads(body)["error"]

    # A second application whose time limit no search can meet (tiny CPUs: it
    # shares the 2 CPUs with the first); its replica answers 504 and goes on.
    tiny = {name: {"ray_actor_options": {"num_cpus": 0.05}} for name in SPLIT_OPTIONS}
    serve.run(application(**args, layout="split", options=tiny, token=TOKEN,
                          limits={**LIMITS, "request_timeout_s": 1e-6}),
              name="strict", route_prefix="/strict")
    try:
        for _ in range(2):
            r = client.post("/strict/v1/search", json={"text": queries[0]["words"]})
            assert r.status_code == 504 and "took longer than 1e-06 s" in r.json()["error"], r.text
        assert client.get("/strict/v1/healthz").json()["status"] == "ok"
    finally:
        serve.delete("strict")
    assert client.post("/v1/search", json={"text": queries[0]["words"]}).status_code == 200


def test_token_on_then_off(service, queries):
    """Last in the module: it redeploys the app without the token."""
    from ray import serve

    from hashgan_ray.serving.app import application

    client, args, port = service
    bare = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    body = {"text": queries[0]["words"]}
    assert bare.get("/v1/healthz").json() == {"status": "ok", "index_version": 1}
    assert bare.get("/").status_code == 200                 # the page holds no data
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for r in (bare.post("/v1/search", json=body, headers=headers),
                  bare.get("/v1/info", headers=headers),
                  bare.post("/v1/encode", json=body, headers=headers),
                  bare.get("/v1/items/3", headers=headers),
                  bare.get("/v1/items/3/image", headers=headers)):
            assert r.status_code == 401 and "API token" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/search", json=body).status_code == 200

    serve.run(application(**args, layout="split", options=SPLIT_OPTIONS), name="hashgan",
              route_prefix="/")
    assert bare.post("/v1/search", json=body).status_code == 200
    assert bare.get("/v1/info").status_code == 200
    bare.close()


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from hashgan_ray.serving.app import read_token

    monkeypatch.setenv("HASHGAN_API_TOKEN", "from-env")
    assert read_token(None) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert read_token(str(tmp_path / "token")) == "from-file"
    monkeypatch.delenv("HASHGAN_API_TOKEN")
    assert read_token(None) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="cannot be read"):
        read_token(str(tmp_path / "missing"))

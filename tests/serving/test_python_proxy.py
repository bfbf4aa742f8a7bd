"""The service behind Serve's Python HTTP proxy (`hashgan-ray serve --ingress
python`), the ingress kept for TLS and gRPC set-ups: the same answers, token and
limits as behind HAProxy (test_serving_app.py covers the rest there)."""
import pytest
from helpers import brute, free_port, listener_of

from hashgan_ray.index import store

httpx = pytest.importorskip("httpx")
TOKEN = "python-proxy-token"


@pytest.fixture(scope="module")
def client(python_proxy_ray, linked_model, linked_index):
    from ray import serve

    from hashgan_ray.serving.app import application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(linked_model, linked_index, token=TOKEN,
                          limits={"max_body_bytes": 100_000}), name="hashgan", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c, port
    serve.shutdown()


def test_the_python_proxy_holds_the_port_and_answers_the_exact_ranking(client, linked_index):
    c, port = client
    assert listener_of(port) == "ray::ProxyActor"
    codes = store.read_codes(linked_index)
    for item in codes.ids[:3]:
        code = c.post("/v1/encode", json={"text_of": int(item)}).json()["code"]
        r = c.post("/v1/search", json={"text_of": int(item), "k": 20})
        assert r.status_code == 200
        assert r.json()["results"] == brute(code, codes.image, codes.ids)[:20]


def test_token_limits_and_page_hold_behind_the_python_proxy(client):
    c, port = client
    anonymous = httpx.post(f"http://127.0.0.1:{port}/v1/search", json={"text": "x"}, timeout=60)
    assert anonymous.status_code == 401 and anonymous.json()["status"] == 401
    big = c.post("/v1/search", content=b'{"text": "' + b"sky " * 30_000 + b'"}',
                 headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and "larger than 100000 bytes" in big.json()["error"]
    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()

"""The search page in a real browser: Debian's chromium driven by Playwright,
against the real Serve application (layout ingress, linked images, a token;
and a few real emoji with their names at /emoji).

    .venv/bin/python -m pytest -q tests/serving/test_search_page.py
    HASHGAN_PAGE_SCREENSHOTS=DIR ...    # also saves the page at 1280x800 and 390x844

The browser is never downloaded: .ci/run installs the `chromium` apt package
(tests/support/browser.py).
"""
import base64
import os
import time
from pathlib import Path

import pytest
from helpers import free_port
from support.browser import ALL_LOADED, CHROMIUM, launch

from hashgan_ray.data.format import read_meta, read_pairs
from hashgan_ray.serving.ingress import CLOSE_SPREAD_SECONDS

httpx = pytest.importorskip("httpx")
TOKEN = "page-token-5c1d"
TITLE = "hashgan-ray search"
K = 12

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def url(local_ray, linked_model, linked_index):
    from ray import serve

    from hashgan_ray.serving.app import application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(linked_model, linked_index, token=TOKEN), name="page", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def emoji_url(url, emoji_served):
    """A second app on the same Serve, at /emoji: a few real emoji with names."""
    from ray import serve

    from hashgan_ray.serving.app import application

    serve.run(application(*emoji_served, token=TOKEN,
                          options={"SearchAPI": {"ray_actor_options": {"num_cpus": 0.5}}}),
              name="emoji", route_prefix="/emoji")
    # The browser's kept-alive connections to the HAProxy of before the new route
    # are closed within CLOSE_SPREAD_SECONDS; until then they would route /emoji/ to "/".
    time.sleep(CLOSE_SPREAD_SECONDS + 1)
    return url + "/emoji/"


@pytest.fixture(scope="module")
def api(url):
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_api.sync_playwright() as p:
        context = launch(p, tmp_path_factory.mktemp("chromium-profile"))
        yield context
        context.close()


@pytest.fixture
def page(browser, url):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    yield page
    page.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def hostile_query(api, linked_data, hostile) -> str:
    """Words of a query pair whose first K results include an item with the hostile
    label (found through the API, so the page test is sure to show one)."""
    meta = read_meta(linked_data)
    for text in read_pairs(linked_data, "query", columns=["text"]).column("text").to_pylist():
        words = " ".join(meta.vocabulary[i] for i in text if i != hostile["word_id"])
        found = api.post("/v1/search", json={"text": words, "k": K, "include": ["labels"]}).json()
        if any(hostile["label"] in r["labels"] for r in found["results"]):
            return words
    raise AssertionError("no query finds an item with the hostile label")


def shown_ids(page) -> list[int]:
    return [int(t.split("id ")[1]) for t in page.locator("#results .distance").all_inner_texts()]


def search_words(page, words: str, token: str = TOKEN) -> None:
    page.fill("#token", token)
    page.fill("#k", str(K))
    page.fill("#text", words)
    page.press("#text", "Enter")


def screenshot(page, name: str) -> None:
    out = os.environ.get("HASHGAN_PAGE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / name))


def test_words_find_images_with_labels_and_a_click_finds_texts(page, api, linked_data, hostile):
    words = hostile_query(api, linked_data, hostile)
    search_words(page, words)
    page.wait_for_function(ALL_LOADED, arg=K)
    expected = api.post("/v1/search", json={"text": words, "k": K,
                                            "include": ["labels", "words"]}).json()["results"]
    assert shown_ids(page) == [r["id"] for r in expected]
    cards = page.locator("#results li.result")
    for n, r in enumerate(expected):
        assert cards.nth(n).locator(".labels li").all_inner_texts() == r["labels"]
        assert f"distance {r['distance']}" in cards.nth(n).locator(".distance").inner_text()
    # HTML in labels and words is shown as text, never run or parsed
    assert hostile["label"] in page.locator("#results .labels li").all_inner_texts()
    assert any(hostile["word"] in t for t in page.locator("#results .words").all_inner_texts())
    assert page.locator("#results img[src='x'], #results b").count() == 0
    assert page.locator("#results .name:visible").count() == 0          # no names in this data
    assert page.title() == TITLE
    screenshot(page, "search-page-1280.png")

    first = expected[0]["id"]
    cards.nth(0).locator("button").click()
    page.wait_for_function("s => document.querySelector('#status').textContent.includes(s)",
                           arg=f"for the image of item {first}")
    page.wait_for_function(ALL_LOADED, arg=K)
    texts = api.post("/v1/search", json={"image_of": first, "target": "text", "k": K}).json()
    assert shown_ids(page) == [r["id"] for r in texts["results"]]
    assert page.locator("#query-image").evaluate("i => i.naturalWidth") > 0   # what was clicked
    assert page.locator("#results li.result.text").count() == K

    second = texts["results"][0]["id"]                  # and back: its text finds images
    page.locator("#results li.result button").nth(0).click()
    page.wait_for_function("s => document.querySelector('#status').textContent.includes(s)",
                           arg=f"for the text of item {second}")
    images = api.post("/v1/search", json={"text_of": second, "target": "image", "k": K}).json()
    assert shown_ids(page) == [r["id"] for r in images["results"]]


def test_an_emoji_item_has_its_name_and_emoji(api, emoji_url, emoji_data):
    """The items API on a dataset with the optional columns (the emoji converter's);
    here beside the page test that shows them, so the suite starts one app for both.
    The other datasets have none, and their items no such keys (test_serving_app.py)."""
    assert api.get("/emoji/v1/items/8").json() == {
        "id": 8, "name": "cat face", "emoji": "🐱", "labels": ["animal-mammal"],
        "words": ["cat", "face", "pet"], "image": "/emoji/v1/items/8/image"}
    rows = read_pairs(emoji_data, "database", columns=["id", "name", "emoji"]).to_pylist()
    found = api.post("/emoji/v1/search", json={"text": "cat", "k": 20,
                                               "include": ["name", "emoji", "labels"]})
    assert sorted((r["id"], r["name"], r["emoji"]) for r in found.json()["results"]) == sorted(
        (r["id"], r["name"], r["emoji"]) for r in rows)                  # all 10, named


def test_each_result_shows_its_name(page, emoji_url, api):
    page.goto(emoji_url)
    search_words(page, "cat")
    page.wait_for_function(ALL_LOADED, arg=10)                          # the whole database
    expected = api.post("/emoji/v1/search", json={"text": "cat", "k": K, "include": ["name"]})
    names = [r["name"] for r in expected.json()["results"]]
    assert page.locator("#results .name").all_inner_texts() == names
    assert "cat face" in names and "flag: United Kingdom" in names
    assert page.locator("#results img").first.get_attribute("alt") == names[0]
    screenshot(page, "search-page-emoji-1280.png")


def test_an_uploaded_or_dropped_image_finds_texts(page, api, linked_data, tmp_path):
    row = read_pairs(linked_data, "query", columns=["image_path"]).column("image_path")[0].as_py()
    photo = tmp_path / "photo.png"
    photo.write_bytes(Path(row).read_bytes())
    expected = api.post("/v1/search/image", files={"file": ("photo.png", photo.read_bytes())},
                        data={"k": str(K)}).json()["results"]
    page.fill("#token", TOKEN)
    page.fill("#k", str(K))
    page.set_input_files("#file", str(photo))
    page.wait_for_function(ALL_LOADED, arg=K)
    assert shown_ids(page) == [r["id"] for r in expected]
    assert page.locator("#query-image").evaluate("i => i.naturalWidth") > 0

    page.evaluate("() => document.querySelector('#results').replaceChildren()")
    page.evaluate("""b64 => {
      const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
      document.querySelector('#drop').dispatchEvent(
        new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
    }""", base64.b64encode(photo.read_bytes()).decode())
    page.wait_for_function(ALL_LOADED, arg=K)
    assert shown_ids(page) == [r["id"] for r in expected]


def test_api_errors_are_shown_readably(page):
    search_words(page, "sky", token="wrong-token")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == ("401: missing or wrong API token: send "
                                        "'Authorization: Bearer <token>'")
    assert page.locator("#results li").count() == 0
    search_words(page, "zzqx blorp")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('400')")
    assert "none of the query's words is in the model's vocabulary" in page.inner_text("#error")


def test_the_page_fits_a_phone(browser, url, api, linked_data, hostile):
    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.goto(url + "/")
        search_words(page, hostile_query(api, linked_data, hostile))
        page.wait_for_function(ALL_LOADED, arg=K)
        screenshot(page, "search-page-phone.png")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > 390)
            .map(e => e.tagName + '#' + e.id + '.' + e.className)""")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen: {wide}"
        boxes = [page.locator(s).bounding_box() for s in ("#text", "#file", "#k", "#token")]
        assert all(b is not None and b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes)
    finally:
        page.close()

"""The pictures of the search page in README.md and docs/serving.md: the service on a local Ray, the page
in Debian's chromium, a text query from the dataset's query split, screenshots.

    .venv/bin/python benchmarks/page_screenshot.py --checkpoint demo-out/run/model \
        --index demo-out/index --data demo-out/data --out docs/images

Writes search-page.png (1280x800) and search-page-phone.png (390x844), palette
PNGs (256 colours) to keep them small.
"""
import argparse
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # support.browser

from PIL import Image  # noqa: E402
from support.browser import ALL_LOADED, launch  # noqa: E402


def save_small(png: bytes, path: Path) -> None:
    with Image.open(io.BytesIO(png)) as img:
        img.convert("RGB").quantize(256).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--data", required=True, help="dataset: the query pair's words")
    parser.add_argument("--out", required=True, help="directory of the PNGs")
    parser.add_argument("--query", type=int, default=0, help="which query pair (default 0)")
    parser.add_argument("--k", type=int, default=12)
    args = parser.parse_args()

    import ray
    from playwright.sync_api import sync_playwright
    from ray import serve

    from hashgan_ray.data.format import read_meta, read_pairs
    from hashgan_ray.ports import free_port
    from hashgan_ray.serving.app import application

    meta = read_meta(args.data)
    text = read_pairs(args.data, "query", columns=["text"]).column("text")[args.query].as_py()
    words = " ".join(dict.fromkeys(meta.vocabulary[i] for i in text))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(args.checkpoint, args.index), name="page", route_prefix="/")
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            browser = launch(p, profile)
            for name, (width, height) in {"search-page.png": (1280, 800),
                                          "search-page-phone.png": (390, 844)}.items():
                page = browser.new_page()
                page.set_viewport_size({"width": width, "height": height})
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#k", str(args.k))
                page.fill("#text", words)
                page.press("#text", "Enter")
                page.wait_for_function(ALL_LOADED, arg=args.k)
                save_small(page.screenshot(), out / name)
                page.close()
            browser.close()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()

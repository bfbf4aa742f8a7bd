"""The end of `make demo`: the search service up on the demo model, one text->image
and one image->text search over HTTP, printed, then a clean stop.

    python serve/demo.py --checkpoint demo-out/run/model --index demo-out/index --data demo-out/data

Each search starts from a query pair (never trained on) and prints, for each
result, its name (on the emoji set: "grinning cat"; else its id) and labels,
and how many of the top k share a label with the query. On data with names the
queries are the first query pairs with a word people know (PREFERRED, in that
order); otherwise the first query pair, for both searches.
"""
import argparse
import base64
import os
import signal
import subprocess
import sys
import time

import httpx

from hashgan_ray.data.format import read_meta, read_pairs
from hashgan_ray.ports import free_port


def wait_up(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the service exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    sys.exit("the service did not come up in time")


PREFERRED = ("cat", "dog", "sunset", "tree", "heart", "car")


def pick_queries(rows: dict, vocabulary: list[str]) -> tuple[int, int]:
    """Rows of the text query and of the image query (see the module docstring)."""
    queries = [i for i, split in enumerate(rows["split"]) if split == "query"]
    if "name" not in rows:
        return queries[0], queries[0]
    picked = []
    for word in PREFERRED:
        picked += [i for i in queries if i not in picked
                   and word in {vocabulary[w] for w in rows["text"][i]}][:1]
    picked += [i for i in queries if i not in picked]
    return picked[0], picked[1]


def title(item: dict) -> str:
    """What a person calls an item: its name and emoji, else its id."""
    if item.get("name"):
        return f"{item['name']} {item.get('emoji') or ''}".strip()
    return f"id {item['id']}"


def show_search(heading: str, answer: dict, query_labels: set[str]) -> None:
    results = answer["results"]
    relevant = [bool(set(r["labels"]) & query_labels) for r in results]
    print(f"{heading}: {answer['took_ms']:.1f} ms, {sum(relevant)} of the top {len(results)} "
          f"share a label with the query (+); Hamming distance, result, [labels]")
    for r, hit in zip(results, relevant):
        print(f"  {'+' if hit else ' '} {r['distance']:>3}  {title(r)}  [{', '.join(r['labels'])}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--data", required=True, help="dataset: query pairs and labels to show")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    meta = read_meta(args.data)
    rows = read_pairs(args.data).to_pydict()           # a demo-sized dataset: all of it
    by_text, by_image = pick_queries(rows, meta.vocabulary)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "HASHGAN_API_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "hashgan_ray", "serve", "--checkpoint",
                             args.checkpoint, "--index", args.index, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        wait_up(url, proc)
        print(f"search service up at {url}/v1")
        search = {"k": args.k, "include": ["name", "emoji", "labels"]}
        for row, heading, body in (
                (by_text, "text -> image", {"text": [meta.vocabulary[w] for w in
                                                     rows["text"][by_text]]}),
                (by_image, "image -> text", {"image": base64.b64encode(
                    rows["image"][by_image]).decode()})):
            query = {k: rows[k][row] for k in ("id", "name", "emoji") if k in rows}
            labels = {meta.label_names[i] for i in rows["labels"][row]}
            what = ("words " + " ".join(body["text"]) if "text" in body else "its picture")
            print(f"\nquery: {title(query)}, labels {','.join(sorted(labels))}; {what}")
            answer = httpx.post(f"{url}/v1/search", json={**body, **search}, timeout=60).json()
            show_search(heading, answer, labels)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print("search service stopped")


if __name__ == "__main__":
    main()

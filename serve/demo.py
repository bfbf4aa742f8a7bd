"""The end of `make demo`: the search service up on the demo model, one text->image
and one image->text search over HTTP, printed, then a clean stop.

    python serve/demo.py --checkpoint demo-out/run/model --index demo-out/index --data demo-out/data
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


def label_sets(ids, table) -> list[set]:
    by_id = dict(zip(table["id"], table["labels"]))
    return [set(by_id[x]) for x in ids]


def show(labels: set, names) -> str:
    return ",".join(names[i] for i in sorted(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--data", required=True, help="dataset: query pairs and labels to show")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    meta = read_meta(args.data)
    rows = read_pairs(args.data, columns=["id", "text", "labels", "image", "split"]).to_pydict()
    query = rows["split"].index("query")
    words = [meta.vocabulary[i] for i in rows["text"][query]]

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
        t2i = httpx.post(f"{url}/v1/search", json={"text": words, "k": args.k}, timeout=60).json()
        image = base64.b64encode(rows["image"][query]).decode()
        i2t = httpx.post(f"{url}/v1/search", json={"image": image, "k": args.k}, timeout=60).json()
        (query_labels,) = label_sets([rows["id"][query]], rows)
        print(f"query pair {rows['id'][query]}, labels {show(query_labels, meta.label_names)}")
        for title, answer in ((f"text -> image  ({' '.join(words)})", t2i),
                              ("image -> text  (the pair's image)", i2t)):
            ids = [r["id"] for r in answer["results"]]
            relevant = [bool(labels & query_labels) for labels in label_sets(ids, rows)]
            print(f"{title}: {answer['took_ms']:.1f} ms, {sum(relevant)} of the top {len(ids)} "
                  f"share a label with the query")
            for r, labels, hit in zip(answer["results"], label_sets(ids, rows), relevant):
                print(f"  {'+' if hit else ' '} id {r['id']:>6}  distance {r['distance']:>2}  "
                      f"labels {show(labels, meta.label_names)}")
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

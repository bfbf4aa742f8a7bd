"""`hashgan-ray index build|add` (encode with Ray Data, index in FAISS) and
`hashgan-ray serve` (search over HTTP with Ray Serve)."""
from __future__ import annotations

import os

from hashgan_ray.cli.ray_options import add_ray_options, connect_ray


def _split_arg(split: str) -> str | None:
    return None if split == "all" else split


def _encode_bar(total: int):
    from hashgan_ray.data.convert.common import progress
    return progress(None, total, "encode")


def _job_options(args) -> dict:
    return {"batch_size": args.batch_size, "actors": args.actors}


def cmd_index_build(args) -> None:
    from hashgan_ray.index.build import build_index
    from hashgan_ray.index.store import recall_at_k

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
    from hashgan_ray.index.build import add_to_index
    from hashgan_ray.index.store import read_manifest

    before = read_manifest(args.index)["count"]
    connect_ray(args.address, args.num_cpus)
    m = add_to_index(args.index, args.data, checkpoint=args.checkpoint,
                     split=_split_arg(args.split), progress=_encode_bar, **_job_options(args))
    print(f"added {m['count'] - before} pairs of {args.data} to {args.index} "
          f"(now {m['count']}; restart the service to search them)")


def cmd_serve(args) -> None:
    """The Serve application in the foreground until Ctrl-C / SIGTERM, then a clean stop."""
    import signal
    import threading

    import ray
    from ray import serve

    from hashgan_ray.serving.app import application, read_token, resolve_layout

    # refuses a mismatch first; the replicas are those of what runs the model
    layout = resolve_layout(args.index, args.layout or "auto")
    app = application(args.checkpoint, args.index, layout=layout, token=read_token(None),
                      options={"SearchAPI" if layout == "ingress" else "QueryEncoder":
                               {"num_replicas": args.encoder_replicas}})
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
        print(f"serving on http://{args.host}:{args.port}/v1 (Ctrl-C stops)", flush=True)
        while not stop.wait(1.0):
            pass
        print("stopping", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def _add_encode_arguments(parser) -> None:
    parser.add_argument("--split", default="database",
                        choices=["query", "train", "database", "all"],
                        help="rows to encode (default database, i.e. train + database)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per encoder batch")
    parser.add_argument("--actors", type=int, default=None,
                        help="encoder actors (default: one per GPU, else one per CPU)")
    add_ray_options(parser)


def add_index_commands(commands) -> None:
    index = commands.add_parser("index", help="encode a dataset with Ray Data and index it in FAISS")
    index_cmds = index.add_subparsers(dest="index_command", required=True)
    build = index_cmds.add_parser("build", help="encode a split and write an index directory")
    build.add_argument("--checkpoint", required=True, help="model or checkpoint directory")
    build.add_argument("--data", required=True, help="dataset directory")
    build.add_argument("--out", required=True, help="index directory to write")
    build.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivf", "multihash"],
                       help="flat (exact, default) or an approximate kind for very large databases")
    build.add_argument("--shards", type=int, default=1, help="contiguous shards (default 1)")
    build.add_argument("--overwrite", action="store_true")
    build.add_argument("--recall-k", type=int, default=10,
                       help="k of the recall printed for approximate kinds")
    build.add_argument("--recall-queries", type=int, default=200)
    _add_encode_arguments(build)
    build.set_defaults(func=cmd_index_build)

    add = index_cmds.add_parser("add", help="encode new pairs and add them to an index")
    add.add_argument("--index", required=True, help="index directory")
    add.add_argument("--data", required=True, help="dataset directory of the new pairs")
    add.add_argument("--checkpoint", default=None,
                     help="the index's model (default: the path in its manifest)")
    _add_encode_arguments(add)
    add.set_defaults(func=cmd_index_add)


def add_serve_command(commands) -> None:
    srv = commands.add_parser("serve", help="answer searches over HTTP (Ray Serve), in the foreground")
    srv.add_argument("--checkpoint", required=True, help="model or checkpoint directory")
    srv.add_argument("--index", required=True, help="index directory built for that model")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes it)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--encoder-replicas", type=int, default=1,
                     help="replicas of the model: of the ingress (layout ingress) or the encoder")
    srv.add_argument("--layout", choices=["ingress", "split"], default=None,
                     help="ingress: model and index in the HTTP replica (default for one shard); "
                          "split: encoder and shard deployments (default for several shards)")
    srv.add_argument("--request-timeout", type=float, default=30.0,
                     help="Serve's end-to-end limit per request, seconds (default 30)")
    add_ray_options(srv)
    srv.set_defaults(func=cmd_serve)

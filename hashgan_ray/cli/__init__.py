"""`hashgan-ray` command line: argument parsing and what a person sees.

Each subcommand parses its options and calls one library function with
explicit arguments; the library itself logs and never reads settings on its own.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import math
import os
import sys
from collections import Counter

from hashgan_ray.data.format import DataError
from hashgan_ray.files import write_text

# data convert <name>: module in hashgan_ray.data.convert with add_arguments/run
CONVERTERS = {
    "nuswide": ("nuswide", "NUS-WIDE, official distribution layout"),
    "mirflickr": ("mirflickr", "MIRFlickr-25K images, tags and annotation archive"),
    "iapr": ("iapr", "IAPR TC-12 images with .eng annotations and a label file"),
    "dcmh-mat": ("dcmh_mat", "preprocessed .mat files of the DCMH line of work (v5 or v7.3)"),
}


def cmd_synth(args) -> None:
    from hashgan_ray.data.convert.common import print_result, progress
    from hashgan_ray.data.synth import SynthConfig, generate

    cfg = SynthConfig(num_labels=args.labels, image_size=args.image_size, clutter=args.clutter)
    meta = generate(args.out, pairs=args.pairs, seed=args.seed, n_query=args.query,
                    n_train=args.train, cfg=cfg, overwrite=args.overwrite,
                    progress=lambda it: progress(it, args.pairs, "synth"))
    print_result(meta, None, args.out)


def cmd_info(args) -> None:
    from hashgan_ray.data.format import read_meta
    print(describe(args.data, read_meta(args.data)))


def describe(data_dir, meta) -> str:
    """A human summary of a dataset: counts, vocabulary, labels, one example."""
    from hashgan_ray.data.format import iter_pairs

    label_freq: Counter = Counter()
    words = n = 0
    example = None
    for batch in iter_pairs(data_dir, columns=["id", "text", "labels", "split"], batch_size=4096):
        rows = batch.to_pydict()
        example = example or {k: v[0] for k, v in rows.items()}
        for labels, text in zip(rows["labels"], rows["text"]):
            label_freq.update(labels)
            words += len(text)
            n += 1
    top = ", ".join(f"{meta.label_names[i]} {c}" for i, c in label_freq.most_common(5))
    ex_words = " ".join(meta.vocabulary[i] for i in example["text"][:12])
    ex_labels = ", ".join(meta.label_names[i] for i in example["labels"])
    c = meta.counts
    return "\n".join([
        f"dataset {meta.name} ({meta.source}) at {data_dir}",
        f"  pairs: {c['total']} = query {c['query']} + train {c['train']} + database {c['database']}"
        f" (retrieval database = train + database = {meta.split_size('database')})",
        f"  text: {meta.vocab_size} words, {words / max(n, 1):.1f} per pair",
        f"  labels: {meta.num_labels}, most frequent: {top}",
        f"  images: column '{meta.image_column}', resized to {meta.image_size}x{meta.image_size}",
        f"  example: id {example['id']} [{example['split']}] labels: {ex_labels}; words: {ex_words}",
    ])


# --help text of the training options (the rest is in hashgan_ray/config.py)
TRAIN_HELP = {
    "data": "dataset directory", "out": "run directory (checkpoints, model/ export)",
    "bits": "code length, a multiple of 8", "backbone": "small | resnet18 | vgg19",
    "attention": "both | image | text | none (the paper's Table 4 ablation) | oracle (the "
                 "synthetic data's true masks in place of G)",
    "alpha_scale": "attention threshold α as a multiple of 1/(H·W) and 1/d",
    "ste": "gradient of the attention threshold: identity (the paper's) | saturating "
           "(only where P is within a factor 2 of α)",
    "margin": "triplet margin ε", "workers": "Ray Train workers (data parallel)",
    "pretrained": "start vgg19/resnet18 from ImageNet weights (local file, never downloaded)",
    "backbone_weights": "file of those weights (default: torchvision's cache)",
    "val_database": "database sample for the per-epoch validation MAP (0: all)",
    "max_failures": "worker failures to recover from (restart from the last checkpoint)",
    "placement_strategy": "where Ray puts the workers: PACK | SPREAD (across nodes) | "
                          "STRICT_PACK | STRICT_SPREAD",
    "cache_train": "decode the train split once into Ray's object store (else every epoch)",
    "method": "hashgan (the paper) or a compared method: see README, \"Methods\"",
    "labeled_fraction": "share of the train split used with its labels (semi-supervised runs)",
}


def add_train_arguments(parser) -> None:
    """One --option per TrainConfig field; unset options keep the value from
    --config FILE or the default."""
    from dataclasses import MISSING, fields

    from hashgan_ray.config import TrainConfig

    parser.add_argument("--config", help="JSON file of TrainConfig values (e.g. Tune's best)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = TRAIN_HELP.get(f.name, "") + f" (default {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=float if kind is float else kind, default=None,
                                help=help_text)
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of a local Ray (default: enough for the workers)")


def train_config(args, required_options=("data", "out")):
    from dataclasses import fields

    from hashgan_ray.config import TrainConfig

    values = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)      # None also where a command replaced the option
        if given is not None:
            values[f.name] = given
    for required in required_options:
        if not values.get(required):
            raise ValueError(f"--{required} is required")
    return TrainConfig.from_dict(values)


def connect_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, as under `ray job submit`),
    else start a local Ray with an explicit CPU count. A Ray this process has
    already joined (tests, notebooks) is kept."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)


def cmd_train(args) -> None:
    cfg = train_config(args)
    # Ray Data reads and decodes beside the training workers: leave it a CPU.
    num_cpus = args.num_cpus or max(os.cpu_count() or 1, int(cfg.workers * cfg.cpus_per_worker) + 1)
    connect_ray(args.address, num_cpus)
    from hashgan_ray.train.loop import fit

    result = fit(cfg)
    m = result.metrics or {}
    print(f"trained {cfg.epochs} epochs: MAP i->t {m.get('map_i2t', float('nan')):.4f} "
          f"t->i {m.get('map_t2i', float('nan')):.4f}; model exported to "
          f"{os.path.join(os.path.abspath(cfg.out), 'model')}")


def cmd_tune(args) -> None:
    from hashgan_ray.tuning.search import cpus_needed, default_space_path, read_space, search

    cfg = train_config(args)
    space = read_space(args.space or default_space_path())       # bad files fail before Ray starts
    connect_ray(args.address, args.num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed(cfg))))
    done = search(cfg, space, samples=args.samples, max_concurrent=args.max_concurrent)
    best, paths = done["best"], done["paths"]
    values = ", ".join(f"{k} {best[k]:.4g}" if isinstance(best[k], float) else f"{k} {best[k]}"
                       for k in space)
    print(f"best of {len(done['rows'])} trials: {best['trial']} ({values}): MAP i->t "
          f"{best['map_i2t']:.4f} t->i {best['map_t2i']:.4f} after {best['epochs']} epochs\n"
          f"trials: {paths['csv']}\nplot: {paths['plot']}\nbest config: {paths['config']} "
          f"(hashgan-ray train --config {paths['config']} [--out RUN_DIR] [--epochs N])")


def cmd_eval(args) -> None:
    import torch

    from hashgan_ray.config import ORACLE
    from hashgan_ray.data.oracle import Oracle
    from hashgan_ray.evaluation.evaluate import encode_split, plot_attention_masks, pr_curves, retrieval_map
    from hashgan_ray.evaluation.metrics import plot_pr_curves
    from hashgan_ray.model.checkpoint import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, config = load_model(args.checkpoint, device)
    # A model trained with the true masks is evaluated with them (data/oracle.py).
    oracle = Oracle(args.data) if config.get("train", {}).get("attention") == ORACLE else None
    query = encode_split(model, args.data, "query", device=device, oracle=oracle)
    database = encode_split(model, args.data, "database", device=device, oracle=oracle)
    result = {**retrieval_map(query, database, top_k=args.top_k), "bits": model.bits,
              "n_query": len(query.ids), "n_database": len(database.ids), "top_k": args.top_k}
    os.makedirs(args.figures, exist_ok=True)
    plot_pr_curves(pr_curves(query, database), os.path.join(args.figures, "pr_curves.png"),
                   title=f"precision-recall, {model.bits} bits")
    if model.attention.image is not None:
        plot_attention_masks(model, args.data, os.path.join(args.figures, "attention_masks.png"))
    print(f"MAP i->t {result['map_i2t']:.4f}  t->i {result['map_t2i']:.4f}  "
          f"({result['n_query']} queries, {result['n_database']} database, {model.bits} bits"
          + (f", top {args.top_k}" if args.top_k else "") + f"); figures in {args.figures}")
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))


def cmd_experiment_paper(args) -> None:
    from hashgan_ray.experiment.grid import run_paper

    for name, instead in (("seed", "--seeds"), ("backbone", "--backbones"), ("method", "--settings"),
                          ("attention", "--settings"), ("labeled_fraction", "--labeled-fractions")):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name.replace('_', '-')} is set by the grid: use {instead}")
    if not args.out:
        raise ValueError("--out is required")
    base = train_config(args, required_options=())
    connect_ray(args.address, args.num_cpus or os.cpu_count())
    done = run_paper(args.data_dirs, args.out, base, bits=args.bit_lengths, seeds=args.seeds,
                     backbones=args.backbones, fractions=args.labeled_fractions,
                     settings=args.settings, at_once=args.cells_at_once, report=args.report)
    print(f"{len(done['results'])} cells finished, {len(done['failed'])} failed; "
          f"report: {done['report']}")
    if done["failed"]:
        raise SystemExit(1)


def _add_paper_arguments(parser) -> None:
    """The grid's options; they replace --data and --bits of the training options."""
    from hashgan_ray.config import BACKBONES

    parser.add_argument("--data", dest="data_dirs", nargs="+", action="extend", required=True,
                        metavar="DIR", help="dataset directories (repeatable)")
    parser.add_argument("--bits", dest="bit_lengths", nargs="+", type=int, default=[16, 32, 64],
                        help="code lengths (default 16 32 64)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell, 0..K-1 (default 3)")
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=["small"],
                        help="image networks; the first runs every table, the others HashGAN "
                             "(both) for Table 3 (default small)")
    parser.add_argument("--labeled-fractions", nargs="+", type=float, default=[1.0, 0.1],
                        help="labelled shares of the train split; below 1 at the smallest bits, "
                             "for HashGAN (both), DCMH and the semi-supervised methods (default 1 0.1)")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="a subset of hashgan-both hashgan-image hashgan-text hashgan-none and "
                             "the other registered methods (default all)")
    parser.add_argument("--cells-at-once", type=int, default=None,
                        help="training runs side by side (default: as many as the cluster's CPUs hold)")
    parser.add_argument("--report", default=None, help="report file (default OUT/report.md)")
    for set_by_the_grid in ("--seed", "--backbone", "--method", "--attention", "--labeled-fraction"):
        parser.add_argument(set_by_the_grid, default=None, help=argparse.SUPPRESS)


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
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashgan-ray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('hashgan-ray')}")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, convert and inspect datasets")
    data_cmds = data.add_subparsers(dest="data_command", required=True)

    synth = data_cmds.add_parser("synth", help="write the synthetic benchmark")
    synth.add_argument("--out", required=True, help="dataset directory to write")
    synth.add_argument("--pairs", type=int, default=5000, help="number of pairs (default 5000)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=64)
    synth.add_argument("--labels", type=int, default=24, help="number of labels (default 24)")
    synth.add_argument("--query", type=int, default=None, help="query pairs (default 10%%, <= 2000)")
    synth.add_argument("--train", type=int, default=None, help="training pairs (default 50%%, <= 10000)")
    synth.add_argument("--clutter", action="store_true",
                       help="the clutter variant: distractors in label hues and pieces of label "
                            "patterns, decoy label words in the text (README, \"Attention\")")
    synth.add_argument("--overwrite", action="store_true")
    synth.set_defaults(func=cmd_synth)

    info = data_cmds.add_parser("info", help="summarise a dataset directory")
    info.add_argument("data", help="dataset directory")
    info.set_defaults(func=cmd_info)

    train = commands.add_parser("train", help="train HashGAN with Ray Train")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    tune_cmd = commands.add_parser("tune", help="search margin, lr and α with Ray Tune (ASHA)")
    add_train_arguments(tune_cmd)
    tune_cmd.add_argument("--samples", type=int, required=True, help="trials to run")
    tune_cmd.add_argument("--workers-per-trial", dest="workers", type=int, default=None,
                          help="Ray Train workers per trial (the same as --workers)")
    tune_cmd.add_argument("--space", default=None,
                          help="search-space YAML (default: the package's tuning/space.yaml, "
                               "tune/space.yaml in a checkout)")
    tune_cmd.add_argument("--max-concurrent", type=int, default=None,
                          help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    tune_cmd.set_defaults(func=cmd_tune)

    experiment = commands.add_parser("experiment", help="the paper's experiments on Ray")
    experiments = experiment.add_subparsers(dest="experiment_command", required=True)
    paper = experiments.add_parser("paper", conflict_handler="resolve",
                                   help="Tables 1-4 and Figures 5-6: a grid of training runs, then report.md")
    add_train_arguments(paper)          # every training option applies to every cell
    _add_paper_arguments(paper)
    paper.set_defaults(func=cmd_experiment_paper)

    evaluate = commands.add_parser("eval", help="MAP, PR curves and attention masks of a model")
    evaluate.add_argument("--checkpoint", required=True, help="model or checkpoint directory")
    evaluate.add_argument("--data", required=True, help="dataset directory")
    evaluate.add_argument("--json", help="also write the numbers to this JSON file")
    evaluate.add_argument("--top-k", type=int, default=None, help="MAP over the top k (e.g. 500)")
    evaluate.add_argument("--figures", default="eval-figures",
                          help="directory for pr_curves.png and attention_masks.png")
    evaluate.set_defaults(func=cmd_eval)

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
    srv.add_argument("--address", default=None,
                     help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    srv.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    srv.set_defaults(func=cmd_serve)

    convert = data_cmds.add_parser("convert", help="convert a downloaded dataset")
    formats = convert.add_subparsers(dest="format", required=True)
    for name, (module_name, help_text) in CONVERTERS.items():
        module = importlib.import_module(f"hashgan_ray.data.convert.{module_name}")
        sub = formats.add_parser(name, help=help_text)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"hashgan-ray: error: {e}", file=sys.stderr)
        return 2
    return 0

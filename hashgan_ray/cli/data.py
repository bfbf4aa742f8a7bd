"""`hashgan-ray data synth|convert|info`: make, convert and inspect datasets."""
from __future__ import annotations

import importlib
from collections import Counter

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


def add_data_commands(commands) -> None:
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

    convert = data_cmds.add_parser("convert", help="convert a downloaded dataset")
    formats = convert.add_subparsers(dest="format", required=True)
    for name, (module_name, help_text) in CONVERTERS.items():
        module = importlib.import_module(f"hashgan_ray.data.convert.{module_name}")
        sub = formats.add_parser(name, help=help_text)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)

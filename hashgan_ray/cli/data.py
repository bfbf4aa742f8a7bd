"""`hashgan-ray data synth|convert|info`: make, convert and inspect datasets.

Each converter is a plain function, hashgan_ray.data.convert.<name>.convert;
its options are defined here, the ones they share by _add_convert_options."""
from __future__ import annotations

from pathlib import Path

from hashgan_ray.cli.checks import at_least
from hashgan_ray.cli.help import add_command


def print_result(meta, report, out) -> None:
    """What a person reads after a conversion (or generation): the kept/dropped
    report, then what was written."""
    if report is not None:
        print(report.format())
    print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in meta.counts.items())
          + f"; vocabulary {meta.vocab_size} words, {meta.num_labels} labels")


def cmd_synth(args) -> None:
    from hashgan_ray.data.convert.common import progress
    from hashgan_ray.data.synth import SynthConfig, generate

    cfg = SynthConfig(num_labels=args.labels, image_size=args.image_size, clutter=args.clutter)
    meta = generate(args.out, pairs=args.pairs, seed=args.seed, n_query=args.query,
                    n_train=args.train, cfg=cfg, overwrite=args.overwrite,
                    progress=lambda it: progress(it, args.pairs, "synth"))
    print_result(meta, None, args.out)


def cmd_info(args) -> None:
    from hashgan_ray.data.format import describe_dataset
    print(describe_dataset(args.data))


def _split_options(args) -> dict:
    """The converters' shared keyword arguments, from _add_convert_options."""
    options = {"n_query": args.query, "n_train": args.train, "seed": args.seed,
               "image_size": args.image_size, "overwrite": args.overwrite}
    if hasattr(args, "link_images"):
        options["link_images"] = args.link_images
    return options


def cmd_convert(args) -> None:
    meta, report = args.convert(args)
    print_result(meta, report, args.out)


def _nuswide(args):
    from hashgan_ray.data.convert.nuswide import convert
    return convert(args.src, args.out, images=args.images, top_concepts=args.top_concepts,
                   **_split_options(args))


def _mirflickr(args):
    from hashgan_ray.data.convert.mirflickr import convert
    return convert(args.src, args.out, images=args.images, tags=args.tags,
                   annotations=args.annotations, min_tag_count=args.min_tag_count,
                   **_split_options(args))


def _iapr(args):
    from hashgan_ray.data.convert.iapr import convert
    return convert(args.src, args.out, labels=args.labels, images=args.images,
                   annotations=args.annotations, min_word_count=args.min_word_count,
                   **_split_options(args))


def _dcmh_mat(args):
    from hashgan_ray.data.convert.dcmh_mat import convert
    return convert(args.src, args.out, name=args.name, vocabulary=args.vocabulary,
                   label_names=args.label_names, **_split_options(args))


def _emoji(args):
    from hashgan_ray.data.convert.emoji import convert
    return convert(args.out, font=args.font, annotations=args.annotations, derived=args.derived,
                   emoji_test=args.emoji_test, label_by=args.label_by,
                   skin_tones=args.skin_tones, min_word_count=args.min_word_count,
                   **_split_options(args))


def _add_convert_options(parser, *, query: int | None, train: int | None,
                         image_size: int | None = 224, link_images: bool = True) -> None:
    """Options every `data convert` subcommand has; defaults are the DCMH split sizes."""
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    by_name = "the DCMH protocol size of --name's dataset"    # when the default depends on --name
    parser.add_argument("--query", type=at_least(1), default=query, metavar="N",
                        help="query pairs" + (f" (default: {by_name})" if query is None else ""))
    parser.add_argument("--train", type=at_least(1), default=train, metavar="N",
                        help="training pairs, drawn from the database"
                             + (f" (default: {by_name})" if train is None else ""))
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--image-size", type=at_least(1), default=image_size, metavar="PX",
                        help="side that loaders resize images to, recorded in meta.json"
                             + (" (default: the stored images' side)" if image_size is None else ""))
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset (only once the new one is complete)")
    if link_images:
        parser.add_argument("--link-images", action="store_true",
                            help="store absolute image paths instead of embedding the image "
                                 "bytes (smaller, but every Ray node must see the same paths)")


def _add_converters(convert) -> None:
    from hashgan_ray.data.convert import emoji as emoji_source
    from hashgan_ray.data.convert.iapr import DEFAULT_MIN_WORD_COUNT
    from hashgan_ray.data.splits import PROTOCOL_SIZES

    formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")
    emoji = add_command(
        formats, "emoji", summary="Unicode's emoji from Debian's packages: the real default",
        description="Writes Unicode's emoji as a dataset: each fully-qualified emoji drawn in "
                    "colour from Noto Color Emoji (fonts-noto-color-emoji), its text the words "
                    "of its CLDR English keywords and name (unicode-cldr-core), its label its "
                    "Unicode subgroup (unicode-data, emoji-test.txt). Skin-tone variants and "
                    "the Component group are left out. docs/data.md gives the protocol.",
        examples=["hashgan-ray data convert emoji --out data/emoji",
                  "hashgan-ray data convert emoji --out data/emoji-groups --label-by group"])
    emoji.add_argument("--font", type=Path, default=emoji_source.FONT, metavar="FILE",
                       help=f"Noto Color Emoji (default: {emoji_source.FONT})")
    emoji.add_argument("--annotations", type=Path, default=emoji_source.ANNOTATIONS,
                       metavar="FILE", help="CLDR's English annotations "
                                            f"(default: {emoji_source.ANNOTATIONS})")
    emoji.add_argument("--derived", type=Path, default=emoji_source.DERIVED, metavar="FILE",
                       help=f"CLDR's derived English annotations (default: {emoji_source.DERIVED})")
    emoji.add_argument("--emoji-test", type=Path, default=emoji_source.EMOJI_TEST,
                       metavar="FILE", help=f"Unicode's emoji-test.txt "
                                            f"(default: {emoji_source.EMOJI_TEST})")
    emoji.add_argument("--label-by", choices=emoji_source.LABEL_BY, default="subgroup",
                       help="the label: the emoji's subgroup (default, about 100) or its group (9)")
    emoji.add_argument("--skin-tones", action="store_true",
                       help="keep the skin-tone variants (left out by default: five "
                            "near-identical pictures of one label inflate MAP)")
    emoji.add_argument("--min-word-count", type=at_least(1),
                       default=emoji_source.DEFAULT_MIN_WORD_COUNT, metavar="N",
                       help="vocabulary = words of at least N emoji (default: 2)")
    _add_convert_options(emoji, query=emoji_source.N_QUERY, train=emoji_source.N_TRAIN,
                         image_size=emoji_source.DEFAULT_IMAGE_SIZE, link_images=False)
    emoji.set_defaults(func=cmd_convert, convert=_emoji)

    nuswide = add_command(
        formats, "nuswide", summary="NUS-WIDE, official distribution layout",
        description="Converts the unpacked official NUS-WIDE files (image list, 1,000-tag "
                    "matrix, concept labels, Flickr images) into a dataset directory: the text "
                    "is each image's tags, the labels its most frequent concepts, split into "
                    "query, train and database as in DCMH.",
        examples=["hashgan-ray data convert nuswide --src NUS-WIDE --out data/nuswide"])
    nuswide.add_argument("--src", type=Path, required=True, metavar="DIR",
                         help="directory with ImageList/, NUS_WID_Tags/, ConceptsList/ "
                              "and Groundtruth/")
    nuswide.add_argument("--images", type=Path, default=None, metavar="DIR",
                         help="image root holding <dir>/<file>.jpg (default: SRC/Flickr)")
    nuswide.add_argument("--top-concepts", type=at_least(1), default=21, metavar="N",
                         help="keep the N most frequent concepts and the images carrying one "
                              "(default: 21, the DCMH protocol)")
    _add_convert_options(nuswide, query=PROTOCOL_SIZES["nuswide"][0],
                         train=PROTOCOL_SIZES["nuswide"][1])
    nuswide.set_defaults(func=cmd_convert, convert=_nuswide)

    mirflickr = add_command(
        formats, "mirflickr", summary="MIRFlickr-25K images, tags and annotation archive",
        description="Converts the two unpacked MIRFlickr-25K archives (images with their tag "
                    "files, and the concept annotations) into a dataset directory: the text is "
                    "each image's frequent tags, the labels its annotated concepts.",
        examples=["hashgan-ray data convert mirflickr --src mirflickr --out data/mirflickr",
                  "hashgan-ray data convert mirflickr --src mirflickr --annotations annotations "
                  "--out data/mirflickr"])
    mirflickr.add_argument("--src", type=Path, required=True, metavar="DIR",
                           help="the unpacked mirflickr directory (im<N>.jpg, meta/tags/)")
    mirflickr.add_argument("--images", type=Path, default=None, metavar="DIR",
                           help="directory of im<N>.jpg (default: SRC)")
    mirflickr.add_argument("--tags", type=Path, default=None, metavar="DIR",
                           help="directory of tags<N>.txt (default: SRC/meta/tags)")
    mirflickr.add_argument("--annotations", type=Path, default=None, metavar="DIR",
                           help="directory of the <concept>.txt files (default: SRC/annotations)")
    mirflickr.add_argument("--min-tag-count", type=at_least(1), default=20, metavar="N",
                           help="vocabulary = tags on at least this many images "
                                "(default: 20, the DCMH setting)")
    _add_convert_options(mirflickr, query=PROTOCOL_SIZES["mirflickr"][0],
                         train=PROTOCOL_SIZES["mirflickr"][1])
    mirflickr.set_defaults(func=cmd_convert, convert=_mirflickr)

    iapr = add_command(
        formats, "iapr", summary="IAPR TC-12 images with .eng annotations and a label file",
        description="Converts IAPR TC-12 (images and their English descriptions) with a "
                    "labels file that gives each image its labels into a dataset directory: "
                    "the text is the description's frequent words, stop words removed.",
        examples=["hashgan-ray data convert iapr --src iaprtc12 --labels iapr_labels.txt "
                  "--out data/iapr"])
    iapr.add_argument("--src", type=Path, required=True, metavar="DIR",
                      help="unpacked iaprtc12 directory (holds images/ and "
                           "annotations_complete_eng/)")
    iapr.add_argument("--labels", type=Path, required=True, metavar="FILE",
                      help="labels file: one line per image, '<key> <label> [<label> ...]', "
                           "key '00/25' (path under images/ without extension) or '25'")
    iapr.add_argument("--images", type=Path, default=None, metavar="DIR",
                      help="image directory holding <NN>/<id>.jpg (default: SRC/images)")
    iapr.add_argument("--annotations", type=Path, default=None, metavar="DIR",
                      help="directory holding <NN>/<id>.eng "
                           "(default: SRC/annotations_complete_eng)")
    iapr.add_argument("--min-word-count", type=at_least(1), default=DEFAULT_MIN_WORD_COUNT,
                      metavar="N", help="keep words found in at least this many descriptions")
    _add_convert_options(iapr, query=PROTOCOL_SIZES["iapr"][0], train=PROTOCOL_SIZES["iapr"][1])
    iapr.set_defaults(func=cmd_convert, convert=_iapr)

    dcmh = add_command(
        formats, "dcmh-mat", summary="preprocessed .mat files of the DCMH line of work (v5 or v7.3)",
        description="Converts the preprocessed MATLAB files that DCMH and later papers ship "
                    "(images IAll, bag of words YAll, labels LAll; one file or one per "
                    "variable, MATLAB v5 or v7.3) into a dataset directory.",
        examples=["hashgan-ray data convert dcmh-mat --src FLICKR-25K.mat --out data/mirflickr",
                  "hashgan-ray data convert dcmh-mat --src nus-wide-tc21-{iall,yall,lall}.mat "
                  "--out data/nuswide"])
    dcmh.add_argument("--src", type=Path, nargs="+", required=True, metavar="FILE",
                      help="the .mat file(s) holding IAll (or images), YAll and LAll")
    dcmh.add_argument("--name", default=None,
                      help="dataset name (default: from the file name: nuswide, mirflickr, "
                           "iapr or the stem); picks the DCMH split sizes for --query/--train")
    dcmh.add_argument("--vocabulary", type=Path, default=None, metavar="FILE",
                      help="text file with one word per YAll column (default: w0000, w0001, ...)")
    dcmh.add_argument("--label-names", type=Path, default=None, metavar="FILE",
                      help="text file with one name per LAll column (default: l00, l01, ...)")
    _add_convert_options(dcmh, query=None, train=None, image_size=None, link_images=False)
    dcmh.set_defaults(func=cmd_convert, convert=_dcmh_mat)


def add_data_commands(commands) -> None:
    data = add_command(
        commands, "data", summary="make, convert and inspect datasets",
        description="Every other command reads a dataset directory: image-text pairs in "
                    "Parquet with a vocabulary, label names and a query/train/database split "
                    "(meta.json). `data synth` writes the synthetic benchmark, `data convert` "
                    "turns a downloaded benchmark into one, `data info` summarises one.",
        examples=["hashgan-ray data synth --out data/synth --pairs 3000",
                  "hashgan-ray data convert mirflickr --src mirflickr --out data/mirflickr",
                  "hashgan-ray data info data/synth"])
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    synth = add_command(
        data_cmds, "synth", summary="write the synthetic benchmark",
        description="Writes the synthetic benchmark: small images of coloured label patterns "
                    "with texts of label words and noise words, in the same format as a "
                    "converted dataset, so that every command can run without a download. "
                    "The same seed writes the same bytes.",
        examples=["hashgan-ray data synth --out data/synth --pairs 3000 --seed 0",
                  "hashgan-ray data synth --out data/clutter --pairs 3000 --clutter"])
    synth.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    synth.add_argument("--pairs", type=at_least(3), default=5000, metavar="N",
                       help="number of pairs")
    synth.add_argument("--seed", type=int, default=0, help="seed of the pairs and the split")
    synth.add_argument("--image-size", type=at_least(8), default=64, metavar="PX",
                       help="image side in pixels")
    synth.add_argument("--labels", type=at_least(1), default=24, metavar="N",
                       help="number of labels")
    synth.add_argument("--query", type=at_least(1), default=None, metavar="N",
                       help="query pairs (default: 10%%, at most 2000)")
    synth.add_argument("--train", type=at_least(1), default=None, metavar="N",
                       help="training pairs (default: 50%%, at most 10000)")
    synth.add_argument("--clutter", action="store_true",
                       help="the clutter variant: distractors in label hues and pieces of label "
                            "patterns, decoy label words in the text (docs/data.md)")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace an existing dataset (only once the new one is complete)")
    synth.set_defaults(func=cmd_synth)

    info = add_command(
        data_cmds, "info", summary="summarise a dataset directory",
        description="Prints a dataset's pairs per split, its vocabulary and label counts, the "
                    "most frequent labels and one example pair.",
        examples=["hashgan-ray data info data/synth"])
    info.add_argument("data", metavar="DIR", help="dataset directory")
    info.set_defaults(func=cmd_info)

    convert = add_command(
        data_cmds, "convert", summary="convert a downloaded dataset",
        description="Converts a downloaded cross-modal benchmark into a dataset directory. "
                    "Bad input files stop it with an error naming the file and line; pairs "
                    "that cannot be used (no label, no text, unreadable image) are dropped and "
                    "counted in the report it prints. `data convert FORMAT --help` gives each "
                    "format's options.",
        examples=["hashgan-ray data convert nuswide --src NUS-WIDE --out data/nuswide",
                  "hashgan-ray data convert dcmh-mat --src FLICKR-25K.mat --out data/mirflickr"])
    _add_converters(convert)

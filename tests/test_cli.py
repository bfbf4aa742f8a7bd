import argparse
import subprocess
import sys

import pytest
from helpers import write_exact_index

from hashgan_ray.cli import build_parser, main
from hashgan_ray.config import (ATTENTION, BACKBONES, LR_SCHEDULES, METHODS, MINING, ORACLE,
                                PLACEMENT, SMALL_HEADS, STE)
from hashgan_ray.data.format import read_meta


def test_synth_then_info(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), "--pairs", "50", "--seed", "2",
                 "--query", "5", "--train", "20"]) == 0
    assert read_meta(out).counts == {"query": 5, "train": 20, "database": 25, "total": 50}
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pairs: 50 = query 5 + train 20 + database 25" in text
    assert "retrieval database = train + database = 45" in text
    assert main(["data", "synth", "--out", str(tmp_path / "clutter"), "--pairs", "30",
                 "--clutter"]) == 0
    assert read_meta(tmp_path / "clutter").extra["synth"]["clutter"] is True
    assert (tmp_path / "clutter" / "oracle.parquet").is_file()


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "meta.json: missing" in capsys.readouterr().err
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), "--pairs", "10"]) == 0
    assert main(["data", "synth", "--out", str(out), "--pairs", "10"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--pairs", "10",
                 "--query", "8", "--train", "8"]) == 2
    assert not (tmp_path / "x").exists()


def test_console_script_and_module_entry_point():
    exe = [sys.executable, "-m", "hashgan_ray"]
    for sub in (["--help"], ["data", "convert", "--help"]):
        done = subprocess.run(exe + sub, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("nuswide", "mirflickr", "iapr", "dcmh-mat"))


# -- help that teaches -----------------------------------------------------------------

COMMANDS = [["data"], ["data", "synth"], ["data", "info"], ["data", "convert"],
            ["data", "convert", "emoji"], ["data", "convert", "nuswide"],
            ["data", "convert", "mirflickr"],
            ["data", "convert", "iapr"], ["data", "convert", "dcmh-mat"], ["train"], ["eval"],
            ["index"], ["index", "build"], ["index", "add"], ["index", "remove"], ["serve"],
            ["tune"],
            ["experiment"], ["experiment", "paper"]]


def help_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def description_of(text: str) -> str:
    """The paragraph between the usage and the first group of options."""
    return text.split("\n\n")[1]


def parsers(parser=None, path=()):
    """(command path, parser) of every subcommand."""
    found = [(list(path), parser)] if path else []
    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += parsers(sub, (*path, name))
    return found


def test_the_commands_are_all_in_the_list():
    """COMMANDS is every subcommand there is, so the help tests below miss none."""
    assert sorted(path for path, _ in parsers()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_a_description_and_an_example(command, capsys):
    text = help_of(command, capsys)
    description = description_of(text)
    assert len(description.split()) >= 15 and description.rstrip().endswith(".")
    examples = text.split("\nexamples:\n")[1].splitlines()
    assert examples[0].startswith("  hashgan-ray " + " ".join(command))
    assert "(default: None)" not in text and "(default )" not in text
    assert "(default: )" not in text and "(default None)" not in text
    assert max(map(len, text.splitlines())) <= 80
    parser = dict((" ".join(path), p) for path, p in parsers())[" ".join(command)]
    for action in parser._actions:
        if action.choices and not isinstance(action, argparse._SubParsersAction) \
                and action.help != argparse.SUPPRESS:
            assert "{" + ",".join(action.choices) + "}" in text, action.dest
        if action.option_strings and isinstance(action.default, (int, float, str)) \
                and not isinstance(action.default, bool) and action.default not in ("", "==SUPPRESS==") \
                and "default" not in (action.help or ""):
            assert f"(default: {action.default})" in " ".join(text.split()), action.dest  # 0 too


def test_the_top_level_help_says_what_it_is_and_lists_the_commands(capsys):
    text = help_of([], capsys)
    description = description_of(text)
    assert "images" in description and "Ray" in description and "`hashgan-ray" not in text[:20]
    listed = text.split("\ncommands:\n")[1]
    for name in ("data", "train", "eval", "index", "serve", "tune", "experiment"):
        assert f"\n    {name} " in listed
    tour = text.split("\n\n")[-1]
    assert [line.split()[1] for line in tour.splitlines() if line.startswith("  hashgan-ray ")] \
        == ["data", "train", "eval", "index", "serve"]
    assert max(map(len, text.splitlines())) <= 80


def test_train_help_marks_data_and_out_required_and_lists_the_choices(capsys):
    text = help_of(["train"], capsys)
    assert text.startswith("usage: hashgan-ray train --data DIR --out DIR [option ...]")
    required = text.split("\nrequired:\n")[1].split("\n\n")[0]
    assert "--data DIR" in required and "--out DIR" in required
    for option, values in (("--backbone", BACKBONES), ("--attention", (*ATTENTION, ORACLE)),
                           ("--method", METHODS), ("--placement-strategy", PLACEMENT),
                           ("--mining", MINING), ("--ste", STE),
                           ("--lr-schedule", LR_SCHEDULES), ("--small-head", SMALL_HEADS)):
        assert f"{option} {{{','.join(values)}}}" in text
    # each default once: the dataclass's, as the option's own default is None
    assert text.count("(default: 15)") == 1 and "default: 15) (default" not in text
    assert "--backbone {small,resnet18,vgg19}" in help_of(["tune"], capsys)
    paper = help_of(["experiment", "paper"], capsys)
    assert "--backbones {small,resnet18,vgg19}" in paper and "--backbone {" not in paper


def test_a_bad_choice_or_count_is_one_line_naming_the_option(capsys):
    for argv, named in ((["train", "--data", "d", "--out", "o", "--backbone", "vgg16"], "--backbone"),
                        (["index", "build", "--checkpoint", "c", "--data", "d", "--out", "o",
                          "--shards", "0"], "--shards"),
                        (["tune", "--data", "d", "--out", "o", "--samples", "0"], "--samples"),
                        (["data", "synth", "--out", "o", "--pairs", "two"], "--pairs")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and named in err, err


# -- input checks before Ray starts ------------------------------------------------------

def fails_before_ray(argv, capsys, *expected) -> str:
    """main(argv) exits 2 with one line naming what is wrong, and no Ray was started."""
    import ray

    assert not ray.is_initialized()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    assert not ray.is_initialized()
    return err


def test_train_and_tune_check_the_dataset_and_the_counts_first(synth_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    fails_before_ray(["train", "--data", str(tmp_path), "--out", out], capsys,
                     "--data:", "meta.json: missing")
    fails_before_ray(["train", "--out", out], capsys, "--data is required")
    n_train = read_meta(synth_data).counts["train"]
    fails_before_ray(["train", "--data", str(synth_data), "--out", out, "--workers", "2",
                      "--batch-size", str(n_train)], capsys,
                     f"train split has {n_train} pairs", "--workers 2", "--batch-size")
    fails_before_ray(["train", "--data", str(synth_data), "--out", out, "--workers", "0"],
                     capsys, "workers must be at least 1, got 0")
    fails_before_ray(["train", "--data", str(synth_data), "--out", out,
                      "--labeled-fraction", "0.001"], capsys, "keeps none")
    fails_before_ray(["tune", "--data", str(tmp_path / "nowhere"), "--out", out, "--samples", "2"],
                     capsys, "--data:", "nowhere")
    fails_before_ray(["tune", "--data", str(synth_data), "--out", out, "--samples", "2",
                      "--epochs", "0"], capsys, "epochs must be at least 1")
    assert not (tmp_path / "run").exists()


def test_experiment_checks_every_dataset_bit_length_and_setting_first(synth_data, tmp_path,
                                                                      capsys):
    base = ["experiment", "paper", "--out", str(tmp_path / "grid")]
    fails_before_ray([*base, "--data", str(synth_data), str(tmp_path)], capsys,
                     "--data:", f"{tmp_path}/meta.json: missing")
    fails_before_ray([*base, "--data", str(synth_data), "--bits", "16", "12"], capsys,
                     "--bits: bits must be a positive multiple of 8, got 12")
    fails_before_ray([*base, "--data", str(synth_data), "--settings", "hashgan-both", "nope"],
                     capsys, "--settings nope: not a setting")
    fails_before_ray([*base, "--data", str(synth_data), "--seed", "1"], capsys, "use --seeds")
    assert not (tmp_path / "grid").exists()


def test_index_commands_check_model_dataset_and_shards_first(synth_data, tiny_model, tmp_path,
                                                             capsys):
    out = tmp_path / "index"
    build = ["index", "build", "--checkpoint", str(tiny_model), "--out", str(out)]
    fails_before_ray([*build, "--data", str(tmp_path / "none")], capsys, "--data:", "none")
    database = read_meta(synth_data).split_size("database")
    fails_before_ray([*build, "--data", str(synth_data), "--shards", str(database + 1)], capsys,
                     f"--shards {database + 1}: more shards than the {database} pairs")
    fails_before_ray(["index", "build", "--checkpoint", str(tmp_path), "--data", str(synth_data),
                      "--out", str(out)], capsys, "config.json: missing")
    no_pairs = tmp_path / "no-pairs"
    no_pairs.mkdir()
    (no_pairs / "meta.json").write_bytes((synth_data / "meta.json").read_bytes())
    fails_before_ray([*build, "--data", str(no_pairs)], capsys, "no part-*.parquet files")
    assert not out.exists()
    write_exact_index(out, tiny_model, synth_data)
    fails_before_ray([*build, "--data", str(synth_data)], capsys, "--overwrite")
    fails_before_ray(["index", "add", "--index", str(out), "--data", str(no_pairs)], capsys,
                     "no part-*.parquet files")
    other = tmp_path / "other"
    main(["data", "synth", "--out", str(other), "--pairs", "30", "--seed", "5", "--labels", "5"])
    capsys.readouterr()
    fails_before_ray(["index", "add", "--index", str(out), "--data", str(other)], capsys,
                     "vocabulary differs")


def test_index_remove_names_a_bad_line_of_its_ids_file_and_changes_nothing(
        synth_data, tiny_model, tmp_path, capsys):
    index = write_exact_index(tmp_path / "index", tiny_model, synth_data)
    before = (index / "manifest.json").read_text()
    ids = tmp_path / "gone.txt"
    ids.write_text("# pairs to take out\n12\n\n7x\n")
    assert main(["index", "remove", "--index", str(index), "--ids-file", str(ids)]) == 2
    assert f"{ids}:4: not an id: '7x'" in capsys.readouterr().err
    assert main(["index", "remove", "--index", str(index)]) == 2
    assert "--ids ID" in capsys.readouterr().err
    assert main(["index", "remove", "--index", str(index), "--ids", "999999"]) == 2
    assert "1 id(s) not in the index: 999999" in capsys.readouterr().err
    assert (index / "manifest.json").read_text() == before


def test_the_choices_written_in_the_cli_are_the_librarys():
    """--kind and --layout list their values in cli/index.py (importing FAISS or Serve
    to build the parser would cost every command); they must stay the library's."""
    from hashgan_ray.index.store import KINDS
    from hashgan_ray.serving.app import LAYOUTS

    by_path = {" ".join(path): p for path, p in parsers()}
    choices = {a.dest: tuple(a.choices) for name in ("index build", "serve")
               for a in by_path[name]._actions if a.choices}
    assert choices["kind"] == KINDS
    assert choices["layout"] == tuple(v for v in LAYOUTS if v != "auto")

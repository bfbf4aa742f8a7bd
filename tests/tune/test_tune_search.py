"""A real 2-trial, 1-epoch search on 2 CPUs: a failed first attempt resumed,
outputs from the trials, the best config trains through the CLI, a rerun
restarts nothing."""
import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from hashgan_ray.cli import main
from hashgan_ray.config import TrainConfig
from hashgan_ray.model.checkpoint import load_model

TINY = ["--bits", "16", "--text-hidden", "32", "--text-features", "16", "--batch-size", "16",
        "--val-database", "40"]


def tune_args(data, out, samples=2):
    return ["tune", "--data", str(data), "--out", str(out), "--samples", str(samples),
            "--epochs", "1", "--workers-per-trial", "1", *TINY]


def read_rows(out: Path) -> list[dict]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def tune_records(out: Path) -> dict[str, list[dict]]:
    """Tune's own per-trial result logs: trial id -> the results it reported."""
    records = {}
    for result_file in (out / "search").glob("*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        if lines:
            records[lines[0]["trial_id"]] = lines
    return records


@pytest.fixture(scope="module")
def searched(local_ray, synth_data, tmp_path_factory):
    """A search whose first attempt failed (the dataset's Parquet files were
    unreadable: the CLI refuses missing ones before Ray starts) and which a rerun
    on the same --out resumed: -> (out, the failed rows)."""
    root = tmp_path_factory.mktemp("tune")
    data, out = root / "data", root / "search"
    shutil.copytree(synth_data, data)
    parts = {path: path.read_bytes() for path in (data / "pairs").glob("part-*.parquet")}
    for path in parts:
        path.write_bytes(b"not parquet")
    with pytest.raises(RuntimeError, match="no trial reported a MAP"):
        main(tune_args(data, out))
    failed = read_rows(out)
    for path, content in parts.items():
        path.write_bytes(content)
    assert main(tune_args(data, out)) == 0
    return out, failed


def test_a_failed_search_resumes_the_same_trials(searched):
    out, failed = searched
    assert [r["status"] for r in failed] == ["error", "error"]
    assert sorted(r["trial"] for r in failed) == sorted(r["trial"] for r in read_rows(out))
    assert all(r["status"] == "completed" for r in read_rows(out))


def test_search_writes_every_trial_the_best_config_and_the_plot(searched):
    out, _ = searched
    rows, records = read_rows(out), tune_records(out)
    assert len(rows) == 2 and {r["trial"] for r in rows} == set(records)
    for row in rows:
        last = records[row["trial"]][-1]
        assert row["status"] == "completed" and row["epochs"] == "1" and last["epoch"] == 1
        for key in ("map_i2t", "map_t2i", "map_mean", "margin", "lr", "alpha_scale"):
            value = last[key] if key.startswith("map") else last["config"][key]
            assert float(row[key]) == pytest.approx(value, rel=1e-12)
        assert 0.5 <= float(row["margin"]) <= 4 and 1e-4 <= float(row["lr"]) <= 3e-3
        assert 0.5 <= float(row["alpha_scale"]) <= 2 and 0 < float(row["map_mean"]) <= 1
        # the trial's own Ray Train checkpoint, trained with the sampled values
        assert Path(row["checkpoint"]).is_relative_to(out / "trials" / row["trial"])
        trained = json.loads((Path(row["checkpoint"]) / "config.json").read_text())
        assert trained["train"]["margin"] == pytest.approx(float(row["margin"]), rel=1e-12)
        assert trained["model"]["alpha_scale"] == pytest.approx(float(row["alpha_scale"]), rel=1e-12)
    assert float(rows[0]["map_mean"]) >= float(rows[1]["map_mean"])        # best first

    best = TrainConfig.from_file(out / "best_config.json")
    assert (best.margin, best.lr, best.alpha_scale) == pytest.approx(
        (float(rows[0]["margin"]), float(rows[0]["lr"]), float(rows[0]["alpha_scale"])), rel=1e-12)
    assert best.data == str((out.parent / "data").resolve()) and best.out == str(out.resolve() / "best")
    assert (best.epochs, best.bits, best.text_hidden, best.workers) == (1, 16, 32, 1)

    with Image.open(out / "map_vs_hyperparameters.png") as png:
        assert png.format == "PNG" and png.width > 3 * 250       # one panel per option


def test_the_best_config_trains_through_the_cli(searched, tmp_path, capsys):
    out, _ = searched
    best = TrainConfig.from_file(out / "best_config.json")
    assert main(["train", "--config", str(out / "best_config.json"), "--out", str(tmp_path / "run")]) == 0
    assert "trained 1 epochs" in capsys.readouterr().out
    model, config = load_model(tmp_path / "run" / "model")
    assert model.bits == 16 and config["train"]["margin"] == best.margin


def test_a_rerun_resumes_instead_of_starting_over(searched, caplog):
    out, _ = searched
    caplog.set_level(logging.INFO, logger="hashgan_ray.tune")
    before, rows = tune_records(out), read_rows(out)
    trial_dirs = sorted(p.name for p in (out / "search").iterdir() if p.is_dir())
    assert main(tune_args(out.parent / "data", out)) == 0
    assert "resuming the search" in caplog.text
    assert tune_records(out) == before                       # no trial ran again
    assert sorted(p.name for p in (out / "search").iterdir() if p.is_dir()) == trial_dirs
    assert read_rows(out) == rows


def test_a_rerun_with_other_settings_is_refused(searched, capsys):
    out, _ = searched
    assert main(tune_args(out.parent / "data", out, samples=3)) == 2
    assert "started with other settings (samples" in capsys.readouterr().err

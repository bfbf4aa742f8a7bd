"""benchmarks/attention_study.py at a tiny size: 200 pairs, 1 epoch, 1 seed, 2 settings."""
import importlib.util
import json
import logging
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_study.py"
TINY = ["--pairs", "200", "--epochs", "1", "--seeds", "1", "--settings", "none", "oracle",
        "--ste", "identity", "--text-hidden", "32", "--text-features", "16", "--val-database", "50"]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("attention_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str) -> dict[tuple, list[str]]:
    rows = {}
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cols[0] in ("default", "clutter"):
            rows[tuple(cols[:3])] = cols[3:]
    return rows


def check_tables(text: str, benchmark: str) -> None:
    rows = table_rows(text)
    assert set(rows) == {(benchmark, "none", "–"), (benchmark, "oracle", "–")}
    none, oracle = rows[(benchmark, "none", "–")], rows[(benchmark, "oracle", "–")]
    assert none[0] == oracle[0] == "1"                               # seeds
    assert none[-2:] == ["1.00 ± 0.00", "1.00 ± 0.00"]               # no attention: all attended
    assert float(oracle[-2].split()[0]) < 0.5                        # a few positions per pattern
    assert float(oracle[-1].split()[0]) < 1.0                        # label words among noise
    assert none[4] == "–" and oracle[4].startswith(("+", "-"))       # setting − none


def test_study_without_ray_runs_resumes_and_keeps_its_runner(study, tmp_path, capsys, caplog):
    out = tmp_path / "study"
    argv = ["--out", str(out), "--no-ray", "--benchmarks", "default", *TINY]
    assert study.main(argv) == 0
    first = capsys.readouterr().out
    check_tables(first, "default")
    cells = sorted(p.parent.name for p in out.glob("e1-identity/cells/default/*/result.json"))
    assert cells == ["small-16bits-hashgan-none-labels1-seed0",
                     "small-16bits-hashgan-oracle-labels1-seed0"]
    result = json.loads(next(out.glob("e1-identity/cells/default/*oracle*/result.json")).read_text())
    assert result["config"]["attention"] == "oracle" and result["config"]["bits"] == 16
    assert result["config"]["text_hidden"] == 32 and result["config"]["lr"] == 1e-3   # STUDY_DEFAULTS

    caplog.clear()
    caplog.set_level(logging.INFO, logger="attention_study")
    assert study.main(argv) == 0                                     # resumes: nothing to run
    assert "2 finished before, 0 to run" in caplog.text
    assert table_rows(capsys.readouterr().out) == table_rows(first)
    with pytest.raises(SystemExit, match="was run with the plain runner"):
        study.main(argv[:2] + argv[3:])
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: this torch sees no CUDA device"):
            study.main([*argv, "--device", "cuda"])


def test_study_with_ray_runs_its_cells_as_ray_tasks(study, tmp_path, capsys, local_ray):
    out = tmp_path / "study"
    assert study.main(["--out", str(out), "--benchmarks", "clutter", *TINY]) == 0
    check_tables(capsys.readouterr().out, "clutter")
    # each cell was a Ray Train run with checkpoints, evaluated on the clutter benchmark
    for setting in ("none", "oracle"):
        cell = next(out.glob(f"e1-identity/cells/clutter/*{setting}*"))
        assert list((cell / "run" / "train").glob("checkpoint_*"))
        assert json.loads((cell / "result.json").read_text())["cell"]["dataset"] == "clutter"
    assert json.loads((out / "data" / "clutter" / "meta.json").read_text())["extra"]["synth"][
        "clutter"] is True


def test_goals_are_judged_per_seed_against_none(study):
    def result(bench, setting, seed, i2t, t2i, ste="identity", image=1.0, text=1.0):
        return {"cell": {"dataset": bench, "setting": f"hashgan-{setting}", "seed": seed},
                "config": {"epochs": 12, "ste": ste}, "map_i2t": i2t, "map_t2i": t2i,
                "attended_image": image, "attended_text": text, "train_seconds": 1.0,
                "eval_seconds": 1.0}

    results = []
    for seed, base in enumerate([0.30, 0.32, 0.34]):
        results += [result("clutter", "none", seed, base, base),
                    result("clutter", "oracle", seed, base + 0.05 + seed / 100, base + 0.04),
                    # wins on every seed, masks half open
                    result("clutter", "both", seed, base + 0.02 + seed / 200, base + 0.01 + seed / 200,
                           image=0.5, text=0.6),
                    # wins image->text only, text mask collapsed
                    result("clutter", "both", seed, base + 0.03, base - 0.01 + seed / 100,
                           ste="saturating", image=0.5, text=0.05),
                    result("default", "none", seed, base, base),
                    result("default", "oracle", seed, base - 0.01 * seed, base),
                    # loses by less than a standard error on average
                    result("default", "both", seed, base + (-0.02, 0.01, 0.0)[seed], base,
                           image=0.9, text=0.9)]
    lines = study.goal_lines(study.rows(results))
    assert lines[0].startswith("12 epochs, default: oracle − none -0.010 ± 0.006 / +0.000 ± 0.000")
    assert lines[0].endswith("does not beat none by >= 1 SE both ways")
    assert lines[1] == ("  both, identity: -0.003 ± 0.009 / +0.000 ± 0.000; >= none − 1 SE both "
                        "ways: yes; masks 90% positions, 90% features: within 10–97%")
    assert lines[2].endswith("beats none by >= 1 SE both ways")
    assert "both, identity" in lines[3] and "beats none by >= 1 SE both ways: yes" in lines[3]
    assert "within 10–97%" in lines[3]
    assert "both, saturating" in lines[4] and "both ways: no" in lines[4]
    assert "5% features: outside 10–97%" in lines[4]

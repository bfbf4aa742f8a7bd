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

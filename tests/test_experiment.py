"""hashgan-ray experiment paper: the grid, and a reduced grid end to end on a real local Ray."""
import json
import re
import sys

import pytest

import hashgan_ray.train.local  # noqa: F401  (imported before a test patches its read_meta)
from hashgan_ray.cli import main
from hashgan_ray.config import METHODS, TrainConfig, runs_that_fit
from hashgan_ray.data import format as data_format
from hashgan_ray.experiment.grid import (Cell, all_settings, build_grid, cells_that_fit,
                                         fit_in_process, method_of, partial_label_settings,
                                         run_cell)
from hashgan_ray.experiment.report import fmt
from hashgan_ray.tuning.search import trials_that_fit

TINY = ["--text-hidden", "32", "--text-features", "16", "--batch-size", "16",
        "--val-database", "40", "--lr", "1e-3", "--epochs", "1"]


def test_the_grid_takes_its_rows_from_the_method_registry():
    settings = all_settings()
    assert settings[:4] == ["hashgan-both", "hashgan-image", "hashgan-text", "hashgan-none"]
    assert set(settings[4:]) == set(METHODS) - {"hashgan"} and "dcmh" in settings
    assert method_of("hashgan-text") == ("hashgan", "text") and method_of("dcmh") == ("dcmh", "none")
    partial = partial_label_settings(settings)
    assert {"hashgan-both", "dcmh"} <= set(partial) and "hashgan-none" not in partial
    cells = build_grid({"a": "/a", "b": "/b"}, bits=[16, 32, 64], seeds=3, backbones=["small", "vgg19"],
                       fractions=[1.0, 0.1], settings=settings)
    full = 2 * 3 * 3 * len(settings)                       # datasets x bits x seeds x settings
    partial_cells = 2 * 3 * len(partial)                   # at the smallest bits only
    backbone_cells = 2 * 3 * 3                             # HashGAN (both) on vgg19
    assert len(cells) == len(set(cells)) == full + partial_cells + backbone_cells
    assert {c.bits for c in cells if c.labeled_fraction < 1} == {16}
    assert {c.setting for c in cells if c.backbone == "vgg19"} == {"hashgan-both"}
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)     # seed by seed


@pytest.mark.parametrize("options, cluster, beside, shared, fits", [
    ({}, {"CPU": 8.0}, 0, 0, 8),                                  # CPU only, one CPU per run
    ({"workers": 2, "cpus_per_worker": 1.5}, {"CPU": 8.0}, 0, 0, 2),     # 8 // 3
    ({}, {"CPU": 8.0}, 1, 0, 4),                                  # a CPU beside each run
    ({}, {"CPU": 8.0}, 0.01, 1, 6),                               # one CPU kept for all: 7 // 1.01
    ({"workers": 2, "gpus_per_worker": 1.0}, {"CPU": 64.0, "GPU": 4.0}, 0, 0, 2),  # GPUs bind
    ({"gpus_per_worker": 0.5}, {"CPU": 2.0, "GPU": 4.0}, 0, 0, 2),                 # CPUs bind
    ({"workers": 4}, {"CPU": 2.0}, 0, 0, 1),                      # too small: one waits for Ray
    ({"gpus_per_worker": 1.0}, {"CPU": 8.0}, 0, 0, 1),            # no GPU at all: still one
    ({"cpus_per_worker": 0.0, "gpus_per_worker": 1.0}, {"CPU": 1.0, "GPU": 3.0}, 0, 0, 3),
    ({"cpus_per_worker": 0.0}, {"CPU": 8.0}, 0, 0, 1),            # asks for nothing: one
])
def test_runs_that_fit_the_cluster(options, cluster, beside, shared, fits):
    cfg = TrainConfig(**options)
    assert runs_that_fit(cfg, cluster, cpus_beside_each=beside, cpus_shared=shared) == fits


def test_cells_and_trials_count_their_data_cpus_through_the_one_helper():
    cluster = {"CPU": 8.0}
    cached, streamed = TrainConfig(cache_train=True), TrainConfig(cache_train=False)
    assert cells_that_fit(cached, cluster) == runs_that_fit(cached, cluster) == 8
    assert cells_that_fit(streamed, cluster) == runs_that_fit(streamed, cluster,
                                                              cpus_beside_each=1) == 4
    assert trials_that_fit(cached, cluster) == 6          # Ray Data's CPU kept once, 0.01 per trial


# What a cell's result.json holds (report.py and finished_result read it).
CELL_RESULT_KEYS = {"cell", "config", "map_i2t", "map_t2i", "top500_map_i2t", "top500_map_t2i",
                    "attended_image", "attended_text", "n_query", "n_database", "pr", "masks",
                    "train_seconds", "eval_seconds"}


def test_a_cell_reads_its_dataset_meta_once(synth_data, tmp_path, monkeypatch):
    """Training, export and evaluation of one cell (without Ray: fit_in_process)
    read meta.json once and hand it on. Counted: every read_meta call made from
    outside data/format.py, whose readers check the directory on their own."""
    real, callers = data_format.read_meta, []

    def counting_read_meta(data_dir):
        callers.append(sys._getframe(1).f_code.co_qualname)
        return real(data_dir)

    for module in list(sys.modules.values()):
        if (getattr(module, "__name__", "").startswith("hashgan_ray.") and module is not data_format
                and getattr(module, "read_meta", None) is real):
            monkeypatch.setattr(module, "read_meta", counting_read_meta)
    cell = Cell(str(synth_data), "synth", "small", 16, "hashgan-both", 1.0, 0)
    cfg = cell.config(TrainConfig(text_hidden=32, text_features=16, batch_size=16, epochs=1),
                      tmp_path)
    result = run_cell(cell, cfg, with_pr=True, with_masks=True, fit=fit_in_process)
    assert callers == ["run_cell"]
    assert set(result) == CELL_RESULT_KEYS
    assert json.loads((cell.directory(tmp_path) / "result.json").read_text()) == result
    assert (cell.directory(tmp_path) / "masks.png").read_bytes().startswith(b"\x89PNG")
    assert result["n_query"] == 24 and len(result["pr"]["I->T"]["precision"]) == 17


def test_a_cell_finished_before_an_option_existed_counts_with_the_value_it_had(tmp_path):
    """A finished cell is reused only if it ran the wanted settings. An option
    added since with a default that trains differently (config.VALUES_BEFORE_ADDED:
    the label head) had its old value in that run, not today's default: refused."""
    from hashgan_ray.experiment.grid import RESULT, finished_result

    cell = Cell("/d", "synth", "small", 16, "hashgan-none", 1.0, 0)
    cfg = cell.config(TrainConfig(epochs=1), tmp_path)
    saved = {k: v for k, v in cfg.to_dict().items() if k != "label_head"}   # before the option
    cell.directory(tmp_path).mkdir(parents=True)
    (cell.directory(tmp_path) / RESULT).write_text(json.dumps({"config": saved, "map_i2t": 0.5}))
    with pytest.raises(ValueError, match=r"label_head 0\.0 -> 3\.0"):
        finished_result(cell, cfg, tmp_path)
    same = cell.config(TrainConfig(epochs=1, label_head=0.0), tmp_path)
    assert finished_result(cell, same, tmp_path)["map_i2t"] == 0.5


def test_a_change_of_one_methods_option_leaves_the_other_methods_cells_finished(tmp_path):
    """DCMH's options (config.METHOD_FIELDS) do not make a finished HashGAN cell
    stale; a DCMH cell that ran DCMH's paper values before they were options
    (config.VALUES_BEFORE_ADDED) is refused under today's defaults."""
    from hashgan_ray.experiment.grid import RESULT, finished_result

    for setting, refused in (("hashgan-none", False), ("dcmh", True)):
        cell = Cell("/d", "synth", "small", 16, setting, 1.0, 0)
        cfg = cell.config(TrainConfig(epochs=1), tmp_path)
        saved = {k: v for k, v in cfg.to_dict().items() if not k.startswith("dcmh_")}
        cell.directory(tmp_path).mkdir(parents=True)
        (cell.directory(tmp_path) / RESULT).write_text(json.dumps({"config": saved, "map_i2t": 0.5}))
        if refused:
            with pytest.raises(ValueError, match=r"dcmh_balance 1\.0 -> 0\.0, dcmh_prior False -> True"):
                finished_result(cell, cfg, tmp_path)
            paper = cell.config(TrainConfig(epochs=1, dcmh_balance=1.0, dcmh_prior=False), tmp_path)
            assert finished_result(cell, paper, tmp_path)["map_i2t"] == 0.5
        else:
            assert finished_result(cell, cfg, tmp_path)["map_i2t"] == 0.5


def test_a_change_of_hashgans_objective_leaves_the_other_methods_cells_finished(tmp_path):
    """The label head's weight and the margin are HashGAN's and SCH-GAN's alone
    (config.METHOD_FIELDS): cells of DCMH, DFAH and the reference that finished
    with other values are still finished; HashGAN's and SCH-GAN's are refused."""
    from hashgan_ray.experiment.grid import RESULT, finished_result

    for setting in ("hashgan-none", "schgan", "dcmh", "dfah", "supervised"):
        cell = Cell("/d", "synth", "small", 16, setting, 1.0, 0)
        ran = cell.config(TrainConfig(epochs=1, label_head=3.0, margin=2.0), tmp_path)
        cell.directory(tmp_path).mkdir(parents=True)
        (cell.directory(tmp_path) / RESULT).write_text(
            json.dumps({"config": ran.to_dict(), "map_i2t": 0.5}))
        wanted = cell.config(TrainConfig(epochs=1, label_head=1.0, margin=1.0), tmp_path)
        if setting in ("hashgan-none", "schgan"):
            with pytest.raises(ValueError, match=r"label_head 3\.0 -> 1\.0, margin 2\.0 -> 1\.0"):
                finished_result(cell, wanted, tmp_path)
        else:
            assert finished_result(cell, wanted, tmp_path)["map_i2t"] == 0.5


def section(report: str, title: str) -> str:
    return report.split(f"## {title}")[1].split("\n## ")[0]


def test_a_reduced_grid_fills_the_report_from_its_cells_and_reruns_nothing(local_ray, synth_data,
                                                                          tmp_path):
    out = tmp_path / "exp"
    argv = ["experiment", "paper", "--data", str(synth_data), "--out", str(out), "--bits", "16",
            "--seeds", "1", "--settings", "hashgan-both", "dcmh", "--labeled-fractions", "1", *TINY]
    assert main(argv) == 0
    results = {json.loads(p.read_text())["cell"]["setting"]: json.loads(p.read_text())
               for p in out.glob("cells/*/*/result.json")}
    assert set(results) == {"hashgan-both", "dcmh"}
    assert all(set(r) == CELL_RESULT_KEYS for r in results.values())
    report = (out / "report.md").read_text()
    name = results["dcmh"]["cell"]["dataset"]
    for setting, row in (("hashgan-both", "HashGAN"), ("dcmh", "DCMH")):
        r = results[setting]
        t1, t2 = section(report, "Table 1"), section(report, "Table 2")
        assert f"| I->T | {row} | {fmt([r['map_i2t']])} |" in t1
        assert f"| T->I | {row} | {fmt([r['map_t2i']])} |" in t1
        assert f"| I->T | {row} | {fmt([r['top500_map_i2t']])} |" in t2
        assert f"| T->I | {row} | {fmt([r['top500_map_t2i']])} |" in t2
    both = results["hashgan-both"]
    assert f"| T->I | 16 | {fmt([both['map_t2i']])} | not run | not run |" in section(report, "Table 3")
    t4 = section(report, "Table 4")
    assert f"| I->T | both | {fmt([both['map_i2t']])} |" in t4 and "| I->T | none | – |" in t4
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert sorted(figures) == sorted([f"report-fig5-{name}-i2t.png", f"report-fig5-{name}-t2i.png",
                                      f"report-fig6-{name}.png"])
    assert all((out / f).read_bytes().startswith(b"\x89PNG") for f in figures)
    assert "hashgan-ray experiment paper --data" in report and "| torch |" in report

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/**/*") if p.is_file()}
    assert main(argv) == 0                                    # finished cells are not rerun
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/**/*") if p.is_file()} == stamps

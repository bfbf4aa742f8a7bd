"""The paper's experiments (section 4) as one grid of training runs on Ray.

    hashgan-ray experiment paper --data DIR [--data DIR ...] --out OUT [--bits 16 32 64]
        [--epochs E] [--workers N] [--seeds K] [--backbones small vgg19]
        [--labeled-fractions 1.0 0.1] [--settings ...] [--cells-at-once N] [--report PATH]

A cell is one training run: dataset x backbone x bits x setting x labelled
fraction x seed, where a setting is HashGAN with one attention setting
(Table 4: both, image, text, none) or another registered method
(train/methods/__init__.py: DCMH, and whatever else is registered). The grid:

* every setting at every bit length with all labels, on the first backbone;
* with fewer labels (each --labeled-fractions value below 1), at the smallest
  bit length: HashGAN (both), DCMH and every semi-supervised method;
* each further backbone: HashGAN (both) at every bit length (Table 3).

Each cell runs as a Ray task that calls train.loop.fit (the very loop of
`hashgan-ray train`) into OUT/cells/<dataset>/<cell>/run/, then evaluates the
exported model on the whole database (MAP both ways, top-500 MAP, PR curves at
the smallest bit length, the attention masks of HashGAN (both)) and writes
OUT/cells/<dataset>/<cell>/result.json last. A cell with its result.json is
finished and is not rerun; an interrupted one resumes from its last
checkpoint. report.py turns the results into report.md.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

try:
    import ray
except ImportError:      # run_cell with its own `fit` works without Ray (benchmarks/attention_study.py)
    ray = None

from hashgan_ray.config import (ATTENTION, METHOD_FIELDS, METHODS, ORACLE, VALUES_BEFORE_ADDED,
                                TrainConfig, runs_that_fit)
from hashgan_ray.data.format import DatasetMeta, read_meta
from hashgan_ray.data.oracle import Oracle
from hashgan_ray.evaluation.evaluate import evaluate_model
from hashgan_ray.files import move_into_place, temp_dir_for, write_text
from hashgan_ray.model.checkpoint import WEIGHTS, load_model, write_model_files
from hashgan_ray.output import epoch_line, ray_log_level, setup_output
from hashgan_ray.train.methods import trainer_class

log = logging.getLogger("hashgan_ray.experiment.grid")

TOP_K = 500                       # Table 2: top-500 MAP
RESULT = "result.json"            # written last: a cell with one is finished
MASKS = "masks.png"
GRID_FIELDS = ("data", "out", "bits", "backbone", "seed", "method", "attention", "labeled_fraction")
# With fewer labels: the supervised references beside the semi-supervised methods.
PARTIAL_LABEL_REFERENCES = ("hashgan-both", "dcmh")


def all_settings() -> list[str]:
    """HashGAN with each attention setting, then every other registered method."""
    return [f"hashgan-{a}" for a in ATTENTION] + [m for m in METHODS if m != "hashgan"]


def method_of(setting: str) -> tuple[str, str]:
    """(method, attention) of a setting name."""
    if setting.startswith("hashgan-"):
        return "hashgan", setting.removeprefix("hashgan-")
    return setting, "none"


def partial_label_settings(settings: list[str]) -> list[str]:
    return [s for s in settings if s in PARTIAL_LABEL_REFERENCES
            or (s in METHODS and trainer_class(s).uses_unlabeled)]


@dataclass(frozen=True)
class Cell:
    data: str                # dataset directory (absolute)
    dataset: str             # its name in the tables
    backbone: str
    bits: int
    setting: str
    labeled_fraction: float
    seed: int

    @property
    def key(self) -> str:
        return (f"{self.backbone}-{self.bits}bits-{self.setting}-labels{self.labeled_fraction:g}"
                f"-seed{self.seed}")

    def directory(self, out) -> Path:
        return Path(out) / "cells" / self.dataset / self.key

    def config(self, base: TrainConfig, out) -> TrainConfig:
        method, attention = method_of(self.setting)
        return TrainConfig.from_dict({
            **base.to_dict(), "data": self.data, "out": str(self.directory(out) / "run"),
            "bits": self.bits, "backbone": self.backbone, "seed": self.seed, "method": method,
            "attention": attention, "labeled_fraction": self.labeled_fraction})


def dataset_names(data_dirs: list[str]) -> dict[str, str]:
    """{table name: absolute directory}: meta.json's name, made unique."""
    names: dict[str, str] = {}
    for d in data_dirs:
        name = read_meta(d).name
        unique, n = name, 2
        while unique in names:
            unique, n = f"{name}-{n}", n + 1
        names[unique] = str(Path(d).resolve())
    return names


def build_grid(datasets: dict[str, str], *, bits: list[int], seeds: int, backbones: list[str],
               fractions: list[float], settings: list[str]) -> list[Cell]:
    """The cells (module docstring), seed by seed: an interrupted grid has whole tables
    for its first seeds."""
    cells = []
    for seed in range(seeds):
        for name, data in datasets.items():
            for fraction in fractions:
                for b in (bits if fraction == 1 else [min(bits)]):
                    for setting in (settings if fraction == 1 else partial_label_settings(settings)):
                        cells.append(Cell(data, name, backbones[0], b, setting, fraction, seed))
            for backbone in backbones[1:]:
                cells += [Cell(data, name, backbone, b, "hashgan-both", 1.0, seed)
                          for b in bits if "hashgan-both" in settings]
    return cells


def fit_in_process(cfg: TrainConfig, *, meta: DatasetMeta, device="cpu",
                   train: dict | None = None) -> None:
    """`fit` of run_cell without Ray: train in this process (train/local.py) and
    export RUN_DIR/model atomically. `train`: the decoded train split, to share
    one decode between cells (train.local.load_split)."""
    from hashgan_ray.train.local import train_in_memory

    model = train_in_memory(cfg, device=device, train=train, meta=meta)
    target = Path(cfg.out) / "model"
    tmp = temp_dir_for(target)
    write_model_files(tmp, model, vocabulary=meta.vocabulary, label_names=meta.label_names,
                      train_config=cfg.to_dict(),
                      extra={"epoch": cfg.epochs - 1, "method": cfg.method})
    move_into_place(tmp, target)


def run_cell(cell: Cell, cfg: TrainConfig, *, with_pr: bool, with_masks: bool, fit=None,
             device="cpu") -> dict:
    """Train (unless its model is exported already), evaluate on `device`, write
    result.json. `fit(cfg, meta=...)` trains and exports RUN_DIR/model; default:
    Ray Train (train/loop.py); fit_in_process trains without Ray. The dataset's
    meta.json is read once here and handed to training and evaluation."""
    directory = Path(cfg.out).parent
    started = time.perf_counter()
    meta = read_meta(cfg.data)
    if not (Path(cfg.out) / "model" / WEIGHTS).is_file():
        if fit is None:
            from hashgan_ray.train.loop import fit as ray_fit

            def fit(cfg, meta):      # a line per epoch, as `train` prints: a cell takes minutes
                ray_fit(cfg, meta=meta, on_epoch=lambda metrics: log.info(
                    "%s: %s", cell.key, epoch_line(metrics, cfg.epochs)))
        fit(cfg, meta=meta)
    trained = time.perf_counter()
    torch.set_num_threads(max(1, int(cfg.workers * cfg.cpus_per_worker)))   # the workers' CPUs, now free
    model, _ = load_model(Path(cfg.out) / "model", device)
    # Whole-database MAP both ways, top-500 MAP, the attended shares over the
    # queries, PR curves and the mask figure where asked.
    evaluation = evaluate_model(
        model, cfg.data, meta, also_top_k=TOP_K, attended=True, pr=with_pr,
        masks_path=directory / MASKS if with_masks else None,
        oracle=Oracle(cfg.data, meta=meta) if cfg.attention == ORACLE else None)
    result = {"cell": asdict(cell), "config": cfg.to_dict(), **evaluation,
              "pr": evaluation.get("pr"), "masks": MASKS if with_masks else None,
              "train_seconds": trained - started, "eval_seconds": time.perf_counter() - trained}
    write_text(directory / RESULT, json.dumps(result, indent=1))
    return result


def _cell_task(cell: Cell, cfg: dict, with_pr: bool, with_masks: bool, verbose: bool) -> dict:
    # The driver's console choice (-v or not), so that without -v the cells' Ray
    # Train workers keep their per-report INFO lines to Ray's log files, as `train` does.
    setup_output(verbose)
    return run_cell(cell, TrainConfig.from_dict(cfg), with_pr=with_pr, with_masks=with_masks)


if ray is not None:     # no CPUs of its own: its Ray Train workers reserve theirs
    _cell_task = ray.remote(num_cpus=0, max_retries=0)(_cell_task)


def finished_result(cell: Cell, cfg: TrainConfig, out) -> dict | None:
    """The cell's result if it finished with this configuration; an error if it
    finished with another (a finished cell is never silently reused or redone)."""
    path = cell.directory(out) / RESULT
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    wanted, defaults = cfg.to_dict(), TrainConfig().to_dict()
    # options added since: their defaults, or the value they had before (config.py)
    had = {**defaults, **VALUES_BEFORE_ADDED, **result["config"]}
    # options that only other methods read (config.METHOD_FIELDS) cannot make this cell stale
    unread = {k for k, methods in METHOD_FIELDS.items() if cfg.method not in methods}
    differ = sorted(k for k in wanted
                    if k not in ("data", "out", *unread) and had[k] != wanted[k])
    if differ:
        changes = ", ".join(f"{k} {had.get(k)!r} -> {wanted[k]!r}" for k in differ)
        raise ValueError(f"{path}: this cell finished with other settings ({changes}); "
                         "use another --out, or delete the cell to redo it")
    return result


def cells_that_fit(cfg: TrainConfig, cluster: dict) -> int:
    """Cells side by side. With cache_train a run's Ray Data tasks finish before
    its workers start; a streaming run needs a CPU beside them."""
    return runs_that_fit(cfg, cluster, cpus_beside_each=0 if cfg.cache_train else 1)


def describe(cell: Cell, result: dict) -> str:
    return (f"{cell.dataset} {cell.backbone} {cell.bits} bits {cell.setting} labels "
            f"{cell.labeled_fraction:g} seed {cell.seed}: MAP i->t {result['map_i2t']:.4f} "
            f"t->i {result['map_t2i']:.4f}, top-{TOP_K} {result[f'top{TOP_K}_map_i2t']:.4f} / "
            f"{result[f'top{TOP_K}_map_t2i']:.4f}")


def last_line(error: Exception) -> str:
    """The message of a cell's error without the remote traceback."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def run_grid(cells: list[Cell], base: TrainConfig, out, *, at_once: int) -> tuple[list[dict], list]:
    """Run the unfinished cells, `at_once` at a time; (results of every finished
    cell, [(cell, error)] of the failed ones). One log line per finished cell."""
    min_bits = min(c.bits for c in cells)
    configs = {c: c.config(base, out) for c in cells}
    results = {c: r for c in cells if (r := finished_result(c, configs[c], out)) is not None}
    todo = [c for c in cells if c not in results]
    log.info("%d cells: %d finished before, %d to run, %d at a time", len(cells), len(results),
             len(todo), at_once)
    running, failed, started = {}, [], time.perf_counter()
    while todo or running:
        while todo and len(running) < at_once:
            cell = todo.pop(0)
            # Figure 6: one per dataset, HashGAN (both), first seed, smallest bits, first backbone
            masks = (cell.setting == "hashgan-both" and cell.bits == min_bits and cell.seed == 0
                     and cell.labeled_fraction == 1 and cell.backbone == cells[0].backbone)
            running[_cell_task.remote(cell, configs[cell].to_dict(), cell.bits == min_bits,
                                      masks, ray_log_level() <= logging.INFO)] = cell
        (ref,), _ = ray.wait(list(running), num_returns=1)
        cell = running.pop(ref)
        done = len(results) + len(failed) + 1
        try:
            results[cell] = ray.get(ref)
        except Exception as e:          # one failed cell must not stop the grid
            failed.append((cell, e))
            log.error("[%d/%d] FAILED %s/%s: %s", done, len(cells), cell.dataset, cell.key, e)
            continue
        log.info("[%d/%d] %s (%.0f s; %.0f s so far)", done, len(cells), describe(cell, results[cell]),
                 results[cell]["train_seconds"] + results[cell]["eval_seconds"],
                 time.perf_counter() - started)
    return [results[c] for c in cells if c in results], failed


def versions() -> dict[str, str]:
    """Python, the packages the results depend on, and this checkout's commit."""
    import platform
    import subprocess
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("hashgan-ray", "torch", "torchvision", "ray", "numpy", "pyarrow", "faiss-cpu",
                 "faiss-gpu"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True,
                                capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               text=True, capture_output=True, check=True).stdout.strip()
        found["commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return found


def command_line(data_dirs: list[str], out: str, grid: dict, base: TrainConfig) -> str:
    """The `hashgan-ray experiment paper` command that runs this grid: its grid
    options and every training option that differs from the default."""
    defaults = TrainConfig().to_dict()
    words = ["hashgan-ray experiment paper", "--data", *data_dirs, "--out", out,
             "--bits", *map(str, grid["bits"]), "--seeds", str(grid["seeds"]),
             "--backbones", *grid["backbones"],
             "--labeled-fractions", *(f"{f:g}" for f in grid["fractions"])]
    if grid["settings"] != all_settings():
        words += ["--settings", *grid["settings"]]
    for key, value in base.to_dict().items():
        if key not in GRID_FIELDS and value != defaults[key]:
            flag = "--" + key.replace("_", "-")
            words += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return " ".join(words)


def run_paper(data_dirs: list[str], out: str, base: TrainConfig, *, bits: list[int], seeds: int,
              backbones: list[str], fractions: list[float], settings: list[str] | None = None,
              at_once: int | None = None, report: str | None = None) -> dict:
    """The whole grid on the connected Ray, then report.md (default OUT/report.md).
    Returns {"report": path, "results": [...], "failed": [(cell, error)]}."""
    from hashgan_ray.experiment.report import write_report

    settings = settings or all_settings()
    unknown = [s for s in settings if s not in all_settings()]
    if unknown:
        raise ValueError(f"unknown settings {unknown}: expected some of {', '.join(all_settings())}")
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"labelled fractions must be in (0, 1], got {fractions}")
    grid = {"bits": sorted(bits), "seeds": seeds, "backbones": backbones, "fractions": fractions,
            "settings": settings, "epochs": base.epochs}
    cells = build_grid(dataset_names(data_dirs), bits=grid["bits"], seeds=seeds, backbones=backbones,
                       fractions=fractions, settings=settings)
    if not cells:
        raise ValueError("the grid is empty: check --settings and --labeled-fractions")
    at_once = at_once or cells_that_fit(base, ray.cluster_resources())
    results, failed = run_grid(cells, base, out, at_once=at_once)
    notes = [f"{len(failed)} cells failed and are missing: "
             + "; ".join(f"{c.dataset}/{c.key} ({last_line(e)})" for c, e in failed)] if failed else []
    path = write_report(results, Path(report or Path(out) / "report.md"), {
        "command": command_line(data_dirs, out, grid, base), "grid": grid, "notes": notes,
        "versions": {**versions(), "Ray cluster CPUs": f"{ray.cluster_resources().get('CPU', 0):g}"}})
    log.info("report: %s", path)
    return {"report": path, "results": results, "failed": failed}

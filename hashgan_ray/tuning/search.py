"""Ray Tune over the training loop: a search-space file, ASHA, one Ray Train run per trial.

    hashgan-ray tune --data DIR --out OUT --samples 16 --epochs 20 [--space tune/space.yaml]

Each trial is a Tune function trainable (`run_trial`) that calls `fit` from
train/loop.py, the very loop of `hashgan-ray train`, on its own run directory
OUT/trials/<trial id>/; the loop's per-epoch report (validation MAP) reaches Tune
through Ray Train's TuneReportCallback (the Train V2 way). ASHA stops weak
trials early. OUT/search/ holds Tune's experiment state, so the same command on
the same OUT resumes the search; OUT/trials.csv, OUT/best_config.json and
OUT/map_vs_hyperparameters.png are written when it ends.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from importlib import resources
from pathlib import Path

import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from hashgan_ray.config import TrainConfig, runs_that_fit
from hashgan_ray.data.format import read_meta
from hashgan_ray.files import save_figure, write_text
from hashgan_ray.train.loop import fit

log = logging.getLogger("hashgan_ray.tune")

METRIC = "map_mean"        # mean of MAP image->text and text->image (train/loop.py, validate)
EXPERIMENT = "search"      # OUT/search/: Tune's experiment state (what a restart resumes)
SETTINGS = "search.json"   # OUT/search.json: the settings the search was started with
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.json"
PLOT = "map_vs_hyperparameters.png"
DISTRIBUTIONS = ("uniform", "loguniform", "choice")
# Set by the search itself (its options and the trial resources), never sampled.
NOT_SEARCHABLE = ("data", "out", "epochs", "workers", "cpus_per_worker", "gpus_per_worker")
# CPUs of a trial besides its workers: the trial itself only drives Ray Train (a
# token 0.01: Tune needs a non-empty bundle), and Ray Data's read/decode tasks need
# one free CPU beside the workers, as for `hashgan-ray train`.
TRIAL_CPUS = 0.01
DATA_CPUS = 1.0
REAP_EVERY_S = 2.0


def default_space_path() -> Path:
    """The default search space, shipped in the package (hashgan_ray/tuning/space.yaml;
    the checkout's tune/space.yaml is a link to it), so an installed package finds it."""
    return Path(str(resources.files("hashgan_ray.tuning") / "space.yaml"))


def read_space(path) -> dict[str, tuple[str, list]]:
    """Read and check a search-space file (format in tune/space.yaml):
    {option: (distribution, arguments)}. Errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no search-space file at {path} (pass --space FILE; "
                                f"the default, {default_space_path()}, shows the format)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected training options mapped to distributions, "
                         "e.g. 'lr: {loguniform: [1.0e-4, 3.0e-3]}'")
    defaults = TrainConfig().to_dict()
    space = {}
    for key, entry in raw.items():
        where = f"{path}: {key}"
        if key not in defaults:
            raise ValueError(f"{where}: not a training option (the fields of hashgan_ray/config.py)")
        if key in NOT_SEARCHABLE:
            raise ValueError(f"{where}: set by the search's own options, cannot be searched")
        if not (isinstance(entry, dict) and len(entry) == 1 and next(iter(entry)) in DISTRIBUTIONS):
            raise ValueError(f"{where}: expected {{uniform: [low, high]}}, {{loguniform: [low, high]}} "
                             f"or {{choice: [values]}}, got {entry!r}")
        (kind, args), = entry.items()
        space[key] = (kind, _checked_arguments(where, key, kind, args, defaults[key]))
    return space


def _checked_arguments(where: str, key: str, kind: str, args, default) -> list:
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}: choice needs a non-empty list of values, got {args!r}")
        for value in args:
            try:
                TrainConfig.from_dict({key: value})
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: choice {value!r} is not a valid value: {e}") from None
        return args
    if not isinstance(default, float):
        raise ValueError(f"{where}: {kind} draws floats; this option takes "
                         f"{type(default).__name__} values, list them with choice")
    try:
        # float(): PyYAML reads 1e-4 (no dot) as a string
        low, high = (float(v) for v in args)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {kind} needs [low, high], two numbers, got {args!r}") from None
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"{where}: {kind} needs {'0 < ' if kind == 'loguniform' else ''}"
                         f"low < high, got [{low}, {high}]")
    return [low, high]


def param_space(base: TrainConfig, space: dict) -> dict:
    """A whole TrainConfig dict with the searched options as Tune distributions."""
    sampled = {key: tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
               for key, (kind, args) in space.items()}
    return {**base.to_dict(), **sampled}


def run_trial(config: dict) -> None:
    """The Tune function trainable: one Ray Train run of the sampled config in
    OUT/trials/<trial id>/ (stable across restarts, so Ray Train resumes it)."""
    run_dir = Path(config["out"]) / "trials" / tune.get_context().get_trial_id()
    fit(TrainConfig.from_dict({**config, "out": str(run_dir)}), callbacks=[TuneReportCallback()])


def trial_resources() -> tune.PlacementGroupFactory:
    # The trial's Ray Train workers reserve their own placement group (CPU or GPU
    # per --gpus-per-worker); Ray Data's tasks run outside the trial's bundle.
    return tune.PlacementGroupFactory([{"CPU": TRIAL_CPUS}])


def cpus_needed(cfg: TrainConfig, trials: int = 1) -> float:
    """CPUs that `trials` concurrent trials take: each its token and its workers'
    CPUs, plus one CPU that their Ray Data tasks share."""
    return DATA_CPUS + trials * (TRIAL_CPUS + cfg.workers * cfg.cpus_per_worker)


def trials_that_fit(cfg: TrainConfig, cluster: dict) -> int:
    """Concurrent trials the cluster holds at once, counted as cpus_needed does."""
    return runs_that_fit(cfg, cluster, cpus_beside_each=TRIAL_CPUS, cpus_shared=DATA_CPUS)


class TrialLog(tune.Callback):
    """One log line per trial result and per finished trial."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if METRIC in result:
            log.info("trial %s  epoch %d/%d  MAP i->t %.4f t->i %.4f  mean %.4f", trial.trial_id,
                     result["epoch"], self.epochs, result["map_i2t"], result["map_t2i"], result[METRIC])

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get("epoch", 0)
        log.info("trial %s  %s after %d epoch(s)", trial.trial_id,
                 "finished" if epochs >= self.epochs else "stopped by ASHA", epochs)

    def on_trial_error(self, iteration, trials, trial, **info):
        log.warning("trial %s  failed (its error is in %s)", trial.trial_id, trial.path)


class PlacementGroupReaper(tune.Callback):
    """Remove the workers' placement group of a trial that Tune stopped.

    Tune stops a trial (ASHA, or at its last epoch) by killing its actor, and with
    it the Ray Train controller the trial started. The workers' placement group,
    made by that controller, lives on until the job ends: a placement group goes
    with its creating job *and* actor. Ray Train's PlacementGroupCleaner would
    remove it (ray-project/ray#58515), but it asks the State API, which needs the
    dashboard and fails when several Ray instances share a machine; the next trial
    then waits forever for that CPU. So the driver removes them itself.
    """

    def __init__(self):
        self.last = 0.0

    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() - self.last >= REAP_EVERY_S:
            self.last = time.monotonic()
            remove_orphaned_placement_groups()


# What the reaper reads of a placement group's GCS row (gcs.proto's PlacementGroupTableData).
PLACEMENT_GROUP_FIELDS = ("placement_group_id", "state", "is_detached", "creator_job_id",
                          "creator_actor_id", "creator_actor_dead")


def placement_group_rows() -> list:
    """Every placement group's GCS row (PlacementGroupTableData).

    The package's one use of Ray's private API: Ray (2.60) has no public way to
    list placement groups with the actor that made them and whether it died.
    `ray.util.placement_group_table()` and the State API's `list_placement_groups`
    leave both out, and Ray Train's own cleaner (ray-project/ray#58515) goes through
    the State API, which needs the dashboard. Checked here, so that a Ray that
    changes any of it fails loudly, naming this function, rather than reaping
    nothing."""
    from ray.core.generated import gcs_pb2

    table = gcs_pb2.PlacementGroupTableData
    changed = [f for f in PLACEMENT_GROUP_FIELDS if f not in table.DESCRIPTOR.fields_by_name]
    try:
        from ray._private.state import state  # the one private import (see above)

        rows = state._connect_and_get_accessor().get_placement_group_table()
    except (ImportError, AttributeError) as e:
        changed.append(f"{type(e).__name__}: {e}")
    if changed:
        raise RuntimeError(
            f"Ray {ray.__version__} changed what hashgan_ray.tuning.search.placement_group_rows "
            f"reads (ray._private.state's placement-group table): {changed}. The reaper of stopped "
            "trials' placement groups needs updating for this Ray (tested: Ray 2.60)")
    return [table.FromString(raw) for raw in rows]


def actor_placement_groups() -> list:
    """This job's live placement groups made by actors (Ray Train controllers),
    not by the driver itself (Tune's trial bundles), as GCS table rows."""
    from ray.core.generated import gcs_pb2

    removed = gcs_pb2.PlacementGroupTableData.REMOVED
    job = ray.get_runtime_context().get_job_id()
    return [pg for pg in placement_group_rows() if pg.state != removed and not pg.is_detached
            and pg.creator_job_id.hex() == job and not ray.ActorID(pg.creator_actor_id).is_nil()]


def remove_orphaned_placement_groups() -> int:
    """Remove those whose creating actor is dead; return how many are left."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    left = 0
    for pg in actor_placement_groups():
        if pg.creator_actor_dead:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
        else:
            left += 1
    return left


def wait_for_stopped_trials(timeout_s: float = 60.0) -> None:
    """After the search: the last trials' controllers die shortly after their
    actors; remove their placement groups so the cluster is whole again."""
    deadline = time.monotonic() + timeout_s
    while remove_orphaned_placement_groups() and time.monotonic() < deadline:
        time.sleep(0.5)


def search(base: TrainConfig, space: dict, samples: int, max_concurrent: int | None = None) -> dict:
    """Run (or resume) the search of `space` (from read_space) around `base` on
    the connected Ray cluster and write its outputs to base.out; return
    {"rows", "best" (a row), "paths"}."""
    if samples < 1:
        raise ValueError(f"--samples must be at least 1, got {samples}")
    read_meta(base.data)                                   # fail early, on the driver
    out = Path(base.out).resolve()
    base = TrainConfig.from_dict({**base.to_dict(), "data": str(Path(base.data).resolve()),
                                  "out": str(out)})
    settings = json.loads(json.dumps({"samples": samples, "space": space, "config": base.to_dict()}))
    trainable = tune.with_resources(run_trial, trial_resources())
    if tune.Tuner.can_restore(out / EXPERIMENT):
        _check_same_settings(out, settings)
        log.info("resuming the search in %s (finished trials are kept)", out / EXPERIMENT)
        tuner = tune.Tuner.restore(str(out / EXPERIMENT), trainable, resume_errored=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / SETTINGS, json.dumps(settings, indent=1) + "\n")
        concurrent = max_concurrent or trials_that_fit(base, ray.cluster_resources())
        log.info("searching %s over %d trials of %d epochs, %d at a time, in %s",
                 ", ".join(space), samples, base.epochs, concurrent, out)
        tuner = tune.Tuner(
            trainable, param_space=param_space(base, space),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", num_samples=samples,
                # seeded: the same draws every time (Tune ignores max_concurrent_trials
                # beside an explicit BasicVariantGenerator, hence max_concurrent here)
                search_alg=BasicVariantGenerator(random_state=base.seed, max_concurrent=concurrent),
                # Rungs at epochs 1, 2, 4, ...: a trial below the top half there stops.
                scheduler=ASHAScheduler(time_attr="epoch", max_t=base.epochs, grace_period=1,
                                        reduction_factor=2)),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out), verbose=1,
                                      callbacks=[TrialLog(base.epochs), PlacementGroupReaper()]))
    grid = tuner.fit()
    wait_for_stopped_trials()
    rows = trial_rows(grid, space, base.epochs)
    paths = {"csv": out / TRIALS_CSV, "config": out / BEST_CONFIG, "plot": out / PLOT}
    write_csv(rows, paths["csv"])                    # also when every trial failed
    best = best_row(rows, out)
    best_config = TrainConfig.from_dict({**best["config"], "out": str(out / "best")})
    write_text(paths["config"], json.dumps(best_config.to_dict(), indent=1) + "\n")
    plot_map(rows, space, best, paths["plot"])
    return {"rows": rows, "best": best, "paths": paths}


def _check_same_settings(out: Path, settings: dict) -> None:
    try:
        started = json.loads((out / SETTINGS).read_text())
    except (OSError, json.JSONDecodeError):
        return                     # nothing to compare with: resume as Tune stored it
    changed = [k for k in ("samples", "space") if started.get(k) != settings[k]]
    # an option the package gained since keeps its default: not a change
    changed += [k for k, v in settings["config"].items() if started.get("config", {}).get(k, v) != v]
    if changed:
        raise ValueError(f"{out} holds a search started with other settings ({', '.join(changed)} "
                         f"differ from {out / SETTINGS}): run it with those to resume, "
                         "or give a new --out")


def trial_rows(grid, space: dict, epochs: int) -> list[dict]:
    """One row per trial, best final MAP first: status, epochs run, searched
    values, final and best MAP (from the trial's own reports)."""
    rows = []
    for result in grid:
        last = result.metrics or {}
        history = result.metrics_dataframe
        reported = history is not None and METRIC in history and len(history) > 0
        run = int(last.get("epoch", 0)) if reported else 0
        best_at = history[METRIC].idxmax() if reported else None
        rows.append({
            "trial": last.get("trial_id") or Path(result.path).name,
            "status": "error" if result.error else "completed" if run >= epochs
                      else "stopped early" if run else "not run",
            "epochs": run,
            **{key: result.config[key] for key in space},
            **{k: float(last[k]) if reported else math.nan for k in ("map_i2t", "map_t2i", METRIC)},
            "best_map_mean": float(history[METRIC].max()) if reported else math.nan,
            "best_epoch": int(history.loc[best_at, "epoch"]) if reported else 0,
            "checkpoint": last.get("checkpoint_path", "") if reported else "",
            "config": result.config,
        })
    return sorted(rows, key=lambda r: -r[METRIC] if not math.isnan(r[METRIC]) else math.inf)


def best_row(rows: list[dict], out: Path) -> dict:
    """The highest final MAP among trials that ran every epoch (ASHA's survivors),
    else among all trials that reported."""
    reported = [r for r in rows if not math.isnan(r[METRIC])]
    if not reported:
        raise RuntimeError(f"no trial reported a MAP; their errors are under {out / EXPERIMENT}")
    completed = [r for r in reported if r["status"] == "completed"]
    return max(completed or reported, key=lambda r: r[METRIC])


def write_csv(rows: list[dict], path: Path) -> None:
    columns = [k for k in rows[0] if k != "config"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_map(rows: list[dict], space: dict, best: dict, path: Path) -> None:
    """PNG: final MAP of every trial against each searched option (one panel each)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(space), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(space), sharey=True, squeeze=False)[0]
    for ax, (key, (kind, _)) in zip(axes, space.items()):
        for status, marker in (("completed", "o"), ("stopped early", "x")):
            points = [(r[key], r[METRIC]) for r in rows
                      if r["status"] == status and not math.isnan(r[METRIC])]
            if points:
                ax.scatter(*zip(*points), marker=marker, color="tab:blue", label=status)
        ax.scatter([best[key]], [best[METRIC]], marker="*", s=200, color="tab:red", label="best")
        if kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MAP at the last epoch\n(mean of I->T and T->I)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{len(rows)} trials, up to {max(r['epochs'] for r in rows)} epochs")
    fig.tight_layout()
    save_figure(fig, path)

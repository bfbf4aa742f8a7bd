"""Does HashGAN's attention earn its place? The attention study of issue 15.

    .venv/bin/python benchmarks/attention_study.py --out study-out [--seeds 6] [--epochs 12 24]
        [--benchmarks default clutter] [--settings none oracle both image text]
        [--ste identity saturating] [--pairs 3000] [--cells-at-once N] [any `train` option]
    python3 benchmarks/attention_study.py --out study-out --no-ray --device cuda --procs 8 ...

The grid: benchmark {default, clutter} (`data synth`, --pairs pairs, seed 0,
written to OUT/data/ on first use) x attention setting {none, oracle, both,
image, text} x straight-through estimator {identity, saturating} x seed x
epochs, at 16 bits. `none` and `oracle` have no attention module G, so the
estimator does not apply to them: they run once per benchmark, seed and epochs
and are the reference of every row. `oracle` trains and evaluates with the
synthetic data's true masks (hashgan_ray/data/oracle.py): the bound of what
attention can give on that benchmark.

Training options not given take the demo's values (STUDY_DEFAULTS: text
1024 -> 512, lr 1e-3, batch 64, 1 worker per cell) and otherwise `train`'s
defaults; `--alpha-scale`, `--small-head`, `--mining` ... apply to every cell.

Each cell is one cell of the experiment grid (hashgan_ray/experiment/grid.py):
OUT/e<epochs>-<ste>/cells/<benchmark>/<cell>/, trained, evaluated on the whole
database and finished by its result.json. With Ray (default) the cells run as
Ray tasks through `run_grid`, each a Ray Train run (it joins RAY_ADDRESS or
--address, else starts a local Ray with --num-cpus). With --no-ray they run
as plain PyTorch (train/local.py: the train split decoded once and held in
memory) in --procs processes on --device: for a machine with torch, numpy and
pyarrow but no Ray. Either way, running the same command again skips the
finished cells (a Ray Train cell also resumes from its last checkpoint); an
OUT is kept to the one runner it started with, since the two order the
batches differently.

Prints, per epochs: mean ± standard error over seeds of MAP image->text and
text->image, of (setting − none) paired by seed, and the attended share of
image positions and of text features over the queries at the end (for the
oracle: its image masks and the share of words that are label words), and the
time the cells took.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashgan_ray.cli.ray_options import connect_ray  # noqa: E402
from hashgan_ray.cli.train import add_train_arguments, train_config  # noqa: E402
from hashgan_ray.config import TrainConfig  # noqa: E402
from hashgan_ray.experiment.grid import (Cell, cells_that_fit, describe, finished_result,  # noqa: E402
                                         fit_in_process, run_cell, run_grid)
from hashgan_ray.experiment.report import mean_se  # noqa: E402

log = logging.getLogger("attention_study")

STUDY_DEFAULTS = dict(bits=16, text_hidden=1024, text_features=512, lr=1e-3, batch_size=64,
                      val_database=200)
BENCHMARKS = {"default": False, "clutter": True}      # name -> SynthConfig.clutter
SETTINGS = ("none", "oracle", "both", "image", "text")
WITHOUT_G = ("none", "oracle")                         # the estimator does not apply
STES = ("identity", "saturating")
RUNNER_FILE = "study.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     conflict_handler="resolve")
    add_train_arguments(parser)                        # every training option, for every cell
    parser.add_argument("--out", dest="study_out", required=True, help="study directory")
    parser.add_argument("--epochs", dest="epoch_list", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--seeds", type=int, default=6, help="seeds 0..K-1 (default 6)")
    parser.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS),
                        default=list(BENCHMARKS))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--ste", dest="stes", nargs="+", choices=STES, default=list(STES))
    parser.add_argument("--pairs", type=int, default=3000, help="pairs per benchmark (default 3000)")
    parser.add_argument("--cells-at-once", type=int, default=None,
                        help="Ray: cells side by side (default: as many as the cluster's CPUs hold)")
    parser.add_argument("--no-ray", action="store_true", help="plain PyTorch cells, no Ray")
    parser.add_argument("--device", default="cpu", help="--no-ray: torch device (cpu, cuda)")
    parser.add_argument("--procs", type=int, default=1, help="--no-ray: cells side by side")
    parser.add_argument("--threads", type=int, default=1, help="--no-ray: torch threads per cell")
    for set_by_the_study in ("--data", "--seed", "--attention", "--method", "--labeled-fraction"):
        parser.add_argument(set_by_the_study, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if "none" not in args.settings:
        parser.error("--settings must include none: it is every row's reference")
    return args


def base_config(args) -> TrainConfig:
    """The training options given (on the command line or in --config FILE), else
    STUDY_DEFAULTS, else `train`'s defaults."""
    in_file = set(json.loads(Path(args.config).read_text())) if args.config else set()
    values = train_config(args, required_options=()).to_dict()
    for key, value in STUDY_DEFAULTS.items():
        if getattr(args, key, None) is None and key not in in_file:
            values[key] = value
    return TrainConfig.from_dict(values)


def benchmark_data(out: Path, names: list[str], pairs: int) -> dict[str, str]:
    """{benchmark: dataset directory}, generated under OUT/data/ when missing."""
    from hashgan_ray.data.format import read_meta
    from hashgan_ray.data.synth import SynthConfig, generate

    found = {}
    for name in names:
        directory = out / "data" / name
        if not (directory / "meta.json").is_file():
            generate(directory, pairs=pairs, seed=0, cfg=SynthConfig(clutter=BENCHMARKS[name]))
        meta = read_meta(directory)
        if (meta.extra["synth"].get("clutter", False) != BENCHMARKS[name]
                or meta.counts["total"] != pairs):
            raise ValueError(f"{directory}: holds {meta.name}, not the {name} benchmark with "
                             f"{pairs} pairs; use another --out")
        found[name] = str(directory.resolve())
    return found


def plan(data: dict[str, str], args, base: TrainConfig) -> list[tuple[int, str, list[Cell]]]:
    """[(epochs, estimator, cells)]: one experiment grid per epochs and estimator,
    seed by seed; none and oracle only in the first estimator's grid."""
    groups = []
    for epochs in args.epoch_list:
        for ste in args.stes:
            settings = [s for s in args.settings if ste == args.stes[0] or s not in WITHOUT_G]
            cells = [Cell(directory, bench, base.backbone, base.bits, f"hashgan-{s}", 1.0, seed)
                     for seed in range(args.seeds) for bench, directory in data.items()
                     for s in settings]
            if cells:
                groups.append((epochs, ste, cells))
    return groups


def group_dir(out: Path, epochs: int, ste: str) -> Path:
    return out / f"e{epochs}-{ste}"


# -- without Ray -------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _train_split(data: str, image_size):
    from hashgan_ray.train.local import load_split
    return load_split(data, "train", image_size)


def fit_in_memory(cfg: TrainConfig, device: str, meta) -> None:
    """`fit` of experiment.run_cell without Ray (fit_in_process), the train
    split decoded once per process."""
    fit_in_process(cfg, meta=meta, device=device, train=_train_split(cfg.data, cfg.image_size))


def _local_cell(cell: Cell, cfg: dict, device: str, threads: int) -> dict:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(threads)
    return run_cell(cell, TrainConfig.from_dict(cfg), with_pr=False, with_masks=False,
                    fit=functools.partial(fit_in_memory, device=device), device=device)


def run_locally(cells: list[Cell], base: TrainConfig, out: Path, *, procs: int, device: str,
                threads: int) -> tuple[list[dict], list]:
    """run_grid's contract without Ray: (results of every finished cell, [(cell, error)])."""
    configs = {c: c.config(base, out) for c in cells}
    results = {c: r for c in cells if (r := finished_result(c, configs[c], out)) is not None}
    todo = [c for c in cells if c not in results]
    log.info("%d cells: %d finished before, %d to run, %d at a time on %s", len(cells),
             len(results), len(todo), procs, device)
    failed = []
    jobs = [(c, configs[c].to_dict(), device, threads) for c in todo]
    if procs == 1:
        outcomes = ((job[0], _try(_local_cell, *job)) for job in jobs)
    else:
        pool = ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"))
        futures = [(job[0], pool.submit(_local_cell, *job)) for job in jobs]
        outcomes = ((c, _try(f.result)) for c, f in futures)
    for n, (cell, (result, error)) in enumerate(outcomes, len(results) + 1):
        if error is not None:
            failed.append((cell, error))
            log.error("[%d/%d] FAILED %s/%s: %s", n, len(cells), cell.dataset, cell.key, error)
            continue
        results[cell] = result
        log.info("[%d/%d] %s (%.0f s)", n, len(cells), describe(cell, result),
                 result["train_seconds"] + result["eval_seconds"])
    if procs != 1:
        pool.shutdown()
    return [results[c] for c in cells if c in results], failed


def _try(fn, *args):
    try:
        return fn(*args), None
    except Exception as e:          # one failed cell must not stop the study
        return None, e


# -- the table ----------------------------------------------------------------
def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    m, se = mean_se(values)
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def fmt_diff(values: list[float]) -> str:
    if not values:
        return "–"
    m, se = mean_se(values)
    return f"{m:+.3f} ± {se:.3f}"


def rows(results: list[dict]) -> list[dict]:
    """One row per (epochs, benchmark, setting, estimator) with its per-seed values."""
    def key(r):
        setting = r["cell"]["setting"].removeprefix("hashgan-")
        ste = "–" if setting in WITHOUT_G else r["config"]["ste"]
        return r["config"]["epochs"], r["cell"]["dataset"], setting, ste

    none = {(r["config"]["epochs"], r["cell"]["dataset"], r["cell"]["seed"]): r for r in results
            if r["cell"]["setting"] == "hashgan-none"}
    table: dict[tuple, dict] = {}
    for r in sorted(results, key=lambda r: r["cell"]["seed"]):
        row = table.setdefault(key(r), {"key": key(r), "seeds": [], "map_i2t": [], "map_t2i": [],
                                        "diff_i2t": [], "diff_t2i": [], "attended_image": [],
                                        "attended_text": [], "seconds": []})
        row["seeds"].append(r["cell"]["seed"])
        for k in ("map_i2t", "map_t2i", "attended_image", "attended_text"):
            row[k].append(r[k])
        row["seconds"].append(r["train_seconds"] + r["eval_seconds"])
        ref = none.get((r["config"]["epochs"], r["cell"]["dataset"], r["cell"]["seed"]))
        if ref is not None and ref is not r:
            row["diff_i2t"].append(r["map_i2t"] - ref["map_i2t"])
            row["diff_t2i"].append(r["map_t2i"] - ref["map_t2i"])
    order = {s: i for i, s in enumerate(SETTINGS)}
    return sorted(table.values(), key=lambda row: (row["key"][0], list(BENCHMARKS).index(
        row["key"][1]), order[row["key"][2]], row["key"][3]))


def print_tables(results: list[dict], bits: int) -> None:
    table = rows(results)
    for epochs in sorted({row["key"][0] for row in table}):
        these = [row for row in table if row["key"][0] == epochs]
        seconds = sum(sum(row["seconds"]) for row in these)
        cells = sum(len(row["seeds"]) for row in these)
        print(f"\n### {epochs} epochs, {bits} bits: {cells} cells, {seconds / 60:.1f} min of "
              f"training and evaluation summed ({seconds / max(cells, 1):.0f} s per cell)\n")
        print("| benchmark | setting | estimator | seeds | MAP I->T | MAP T->I | − none I->T "
              "| − none T->I | attended positions | attended features |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in these:
            _, bench, setting, ste = row["key"]
            print(f"| {bench} | {setting} | {ste} | {len(row['seeds'])} | {fmt(row['map_i2t'])} "
                  f"| {fmt(row['map_t2i'])} | {fmt_diff(row['diff_i2t'])} "
                  f"| {fmt_diff(row['diff_t2i'])} | {fmt(row['attended_image'], 2)} "
                  f"| {fmt(row['attended_text'], 2)} |", flush=True)
    print("\nmean ± standard error over seeds; − none: the setting's MAP minus none's, "
          "same benchmark, seed and epochs (I->T / T->I below)")
    print("\nThe issue's goals:")
    for line in goal_lines(table):
        print(line)


def beats(diffs: list[float]) -> bool:
    """The mean gain is at least one standard error above 0."""
    if len(diffs) < 2:
        return False
    m, se = mean_se(diffs)
    return m > 0 and m >= se


def goal_lines(table: list[dict]) -> list[str]:
    """The issue's goals, judged row by row: on a benchmark where the oracle beats
    none (>= 1 SE both ways), `both` must beat none by >= 1 SE both ways; on the
    default, `both` >= none − 1 SE both ways; `both`'s masks end between 10% and
    97% attended (positions and features)."""
    lines = []
    by_key = {row["key"]: row for row in table}
    for epochs, bench in sorted({row["key"][:2] for row in table},
                                key=lambda k: (k[0], list(BENCHMARKS).index(k[1]))):
        oracle = by_key.get((epochs, bench, "oracle", "–"))
        oracle_wins = oracle is not None and beats(oracle["diff_i2t"]) and beats(oracle["diff_t2i"])
        lines.append(f"{epochs} epochs, {bench}: oracle − none "
                     + (f"{fmt_diff(oracle['diff_i2t'])} / {fmt_diff(oracle['diff_t2i'])}: "
                        f"{'beats' if oracle_wins else 'does not beat'} none by >= 1 SE both ways"
                        if oracle is not None else "not run"))
        for row in table:
            if row["key"][:3] != (epochs, bench, "both"):
                continue
            verdicts = []
            if oracle_wins:
                ok = beats(row["diff_i2t"]) and beats(row["diff_t2i"])
                verdicts.append(f"beats none by >= 1 SE both ways: {'yes' if ok else 'no'}")
            if bench == "default":
                ok = all(mean_se(d)[0] >= -mean_se(d)[1] for d in (row["diff_i2t"], row["diff_t2i"])
                         if d)
                verdicts.append(f">= none − 1 SE both ways: {'yes' if ok else 'no'}")
            shares = [mean_se(row[k])[0] for k in ("attended_image", "attended_text")]
            verdicts.append(f"masks {shares[0]:.0%} positions, {shares[1]:.0%} features: "
                            + ("within 10–97%" if all(0.10 <= v <= 0.97 for v in shares)
                               else "outside 10–97%"))
            lines.append(f"  both, {row['key'][3]}: {fmt_diff(row['diff_i2t'])} / "
                         f"{fmt_diff(row['diff_t2i'])}; " + "; ".join(verdicts))
    return lines


def check_runner(out: Path, runner: str) -> None:
    path = out / RUNNER_FILE
    if path.is_file():
        before = json.loads(path.read_text())["runner"]
        if before != runner:
            raise SystemExit(f"{out} was run with the {before} runner; rerun it that way "
                             f"({'--no-ray' if before == 'plain' else 'without --no-ray'}) "
                             "or use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RUNNER_FILE}.tmp"
    tmp.write_text(json.dumps({"runner": runner}))
    os.replace(tmp, path)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    base = base_config(args)
    if args.no_ray and base.workers != 1:
        raise SystemExit("--no-ray trains in one process: --workers must be 1")
    if args.no_ray and args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: this torch sees no CUDA device")
    out = Path(args.study_out).resolve()
    check_runner(out, "plain" if args.no_ray else "ray")
    data = benchmark_data(out, args.benchmarks, args.pairs)
    groups = plan(data, args, base)
    started = time.perf_counter()
    if not args.no_ray:
        connect_ray(args.address, args.num_cpus or os.cpu_count())
    results, failed = [], []
    for epochs, ste, cells in groups:
        group_base = TrainConfig.from_dict({**base.to_dict(), "epochs": epochs, "ste": ste})
        directory = group_dir(out, epochs, ste)
        if args.no_ray:
            done, bad = run_locally(cells, group_base, directory, procs=args.procs,
                                    device=args.device, threads=args.threads)
        else:
            import ray
            at_once = args.cells_at_once or cells_that_fit(group_base, ray.cluster_resources())
            done, bad = run_grid(cells, group_base, directory, at_once=at_once)
        results += done
        failed += bad
    print(f"\nattention study: {len(results)} cells finished, {len(failed)} failed, "
          f"{(time.perf_counter() - started) / 60:.1f} min wall for this invocation "
          f"({'plain PyTorch on ' + args.device if args.no_ray else 'Ray'})")
    print_tables(results, base.bits)
    summary = out / "study-results.json"
    tmp = out / f".{summary.name}.tmp"
    tmp.write_text(json.dumps({"rows": rows(results), "failed": [
        f"{c.dataset}/{c.key}: {e}" for c, e in failed]}, indent=1))
    os.replace(tmp, summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

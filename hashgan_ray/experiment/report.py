"""report.md of the paper's experiments, from the cells' result.json (experiment/grid.py).

`render_report(results, context)` is a pure function of the results and of the
run's description (command, versions, grid, figure file names): the tables are
computed from the results alone, mean ± standard deviation over seeds.
`write_report` also draws Figure 5 (PR curves) and copies Figure 6 (masks).

Published anchors are the figures known to this project's sources; the HashGAN
paper's table bodies are not in its text we hold, so only the figure quoted in
its section 4.2 appears (IAPR TC-12, image->text, 64 bits).
"""
from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import numpy as np

from hashgan_ray.config import ATTENTION, BACKBONES
from hashgan_ray.files import write_text

TASKS = (("I->T", "map_i2t"), ("T->I", "map_t2i"))
NAMES = {"hashgan-both": "HashGAN", "hashgan-image": "HashGAN, image attention only",
         "hashgan-text": "HashGAN, text attention only", "hashgan-none": "HashGAN, no attention",
         "dcmh": "DCMH", "dfah": "DFAH", "schgan": "SCH-GAN"}
PAPER = "HashGAN paper (Zhang et al., ECCV 2018), section 4.2"
DCMH_PAPER = "DCMH (Jiang & Li, CVPR 2017), as quoted in issue 6"
# (dataset, method, task) -> {bits: MAP of Hamming ranking}, with its source
PUBLISHED = {
    ("iapr", "HashGAN", "I->T"): ({64: 0.5439}, PAPER),
    ("iapr", "PRDH", "I->T"): ({64: 0.5135}, PAPER),
    ("mirflickr", "DCMH", "I->T"): ({16: 0.7410, 32: 0.7465, 64: 0.7485}, DCMH_PAPER),
    ("mirflickr", "DCMH", "T->I"): ({16: 0.7827, 32: 0.7900, 64: 0.7932}, DCMH_PAPER),
    ("nuswide", "DCMH", "I->T"): ({16: 0.5903, 32: 0.6031, 64: 0.6093}, DCMH_PAPER),
    ("nuswide", "DCMH", "T->I"): ({16: 0.6389, 32: 0.6511, 64: 0.6571}, DCMH_PAPER),
}


def name_of(setting: str, fraction: float = 1.0) -> str:
    name = NAMES.get(setting, setting)
    return name if fraction == 1 else f"{name}, {fraction:.0%} labels"


def fmt(values: list[float]) -> str:
    """mean ± sample standard deviation over seeds; one value as is; none: a dash."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def mean_se(values: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) over seeds; the error is 0 for one value."""
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return statistics.mean(values), se


def pick(results: list[dict], **cell) -> list[dict]:
    return [r for r in results if all(r["cell"][k] == v for k, v in cell.items())]


def values(results: list[dict], metric: str, **cell) -> list[float]:
    return [r[metric] for r in sorted(pick(results, **cell), key=lambda r: r["cell"]["seed"])]


def ordered(results: list[dict], field: str, **cell) -> list:
    """The values of a cell field in the order the grid ran them."""
    seen: dict = {}
    for r in pick(results, **cell):
        seen.setdefault(r["cell"][field], None)
    return list(seen)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def published_key(dataset: str) -> str | None:
    """Which published benchmark a dataset name stands for, if any."""
    return next((k for k in ("mirflickr", "nuswide", "iapr") if k in dataset.lower()), None)


def methods_table(results: list[dict], dataset: str, backbone: str, bits: list[int],
                  metric_prefix: str, with_published: bool) -> list[str]:
    """Tables 1 and 2: task x method rows, a column per bit length."""
    rows = []
    rows_of = [(s, f) for f in ordered(results, "labeled_fraction", dataset=dataset, backbone=backbone)
               for s in ordered(results, "setting", dataset=dataset, backbone=backbone,
                                labeled_fraction=f)
               if not s.startswith("hashgan-") or s == "hashgan-both"]
    for task, metric in TASKS:
        for setting, fraction in rows_of:
            rows.append([task, name_of(setting, fraction)] + [
                fmt(values(results, metric_prefix + metric, dataset=dataset, backbone=backbone,
                           setting=setting, labeled_fraction=fraction, bits=b)) for b in bits])
        for (key, method, published_task), (maps, source) in PUBLISHED.items():
            if with_published and key == published_key(dataset) and published_task == task:
                rows.append([task, f"{method} (published)"]
                            + [f"{maps[b]:.4f}" if b in maps else "–" for b in bits])
    return table(["task", "method"] + [f"{b} bits" for b in bits], rows)


def backbone_table(results: list[dict], dataset: str, bits: list[int]) -> list[str]:
    """Table 3: HashGAN (both) with each backbone; a column per backbone."""
    ran = ordered(results, "backbone", dataset=dataset, setting="hashgan-both")
    columns = ran + [b for b in BACKBONES if b not in ran]
    rows = [[task, f"{b}"] + [fmt(values(results, metric, dataset=dataset, backbone=bb, bits=b,
                                         setting="hashgan-both", labeled_fraction=1.0))
                              if bb in ran else "not run" for bb in columns]
            for task, metric in TASKS for b in bits]
    return table(["task", "bits"] + columns, rows)


def attention_table(results: list[dict], dataset: str, backbone: str, bits: list[int]) -> list[str]:
    """Table 4: HashGAN with attention on both modalities, image only, text only, none."""
    rows = [[task, attention] + [fmt(values(results, metric, dataset=dataset, backbone=backbone,
                                            setting=f"hashgan-{attention}", labeled_fraction=1.0,
                                            bits=b)) for b in bits]
            for task, metric in TASKS for attention in ATTENTION]
    return table(["task", "attention"] + [f"{b} bits" for b in bits], rows)


def cells_table(results: list[dict]) -> list[str]:
    rows = [[c["dataset"], c["backbone"], str(c["bits"]), c["setting"], f"{c['labeled_fraction']:g}",
             str(c["seed"]), f"{r['map_i2t']:.4f}", f"{r['map_t2i']:.4f}",
             f"{r['top500_map_i2t']:.4f}", f"{r['top500_map_t2i']:.4f}", f"{r['train_seconds']:.0f}"]
            for r in results for c in [r["cell"]]]
    return table(["dataset", "backbone", "bits", "setting", "labels", "seed", "MAP I->T", "MAP T->I",
                  "top-500 I->T", "top-500 T->I", "train s"], rows)


BACKBONE_NOTE = ("Columns marked *not run* were not in this grid (`--backbones`). The paper compares "
                 "VGG19 with the small CNN-F; on CPU only the small and resnet18 backbones are "
                 "practical, and vgg19 wants GPUs and ImageNet weights (`--pretrained`).")


def render_report(results: list[dict], context: dict) -> str:
    """report.md. context: command (str), versions ({package: version}), grid
    ({bits, seeds, backbones, epochs}), figures (figure_files), notes (list of str)."""
    grid, figures = context["grid"], context["figures"]
    bits, main = grid["bits"], grid["backbones"][0]
    datasets = ordered(results, "dataset")
    out = ["# The paper's experiments, reproduced", "",
           f"{len(results)} cells (training runs) on {', '.join(datasets) or 'no dataset'}: "
           f"bits {', '.join(map(str, bits))}, backbones {', '.join(grid['backbones'])}, "
           f"{grid['seeds']} seed(s), {grid['epochs']} epochs each. A value is the mean ± standard "
           "deviation over seeds of the MAP of Hamming ranking over the whole retrieval database "
           "(query split against train + database) unless the table says otherwise; – marks a "
           "cell that did not run.", ""]
    out += [f"- {n}" for n in context.get("notes", [])] + ([""] if context.get("notes") else [])
    sections = [
        ("Table 1. MAP of Hamming ranking", f"backbone {main}",
         lambda d: methods_table(results, d, main, bits, "", True), None),
        ("Table 2. Top-500 MAP", f"backbone {main}",
         lambda d: methods_table(results, d, main, bits, "top500_", False), None),
        ("Table 3. MAP of HashGAN (both) with different image networks", "",
         lambda d: backbone_table(results, d, bits), BACKBONE_NOTE),
        ("Table 4. MAP of HashGAN with different attention settings", f"backbone {main}",
         lambda d: attention_table(results, d, main, bits), None),
    ]
    for title, detail, make, note in sections:
        out += [f"## {title}", ""]
        for d in datasets:
            out += [f"**{d}**" + (f" ({detail})" if detail else ""), "", *make(d), ""]
        out += [note, ""] if note else []
    out += [f"## Figure 5. Precision-recall curves at {min(bits)} bits", ""]
    for d in datasets:
        out += [line for task, path in figures["pr"].get(d, {}).items()
                for line in (f"![{d} {task}]({path})", "")]
    out += ["## Figure 6. Images and their learned attention masks (HashGAN, both)", ""]
    for d in datasets:
        path = figures["masks"].get(d)
        out += [f"![{d} masks]({path})" if path else f"{d}: no HashGAN (both) cell drew masks.", ""]
    out += ["## Published figures", "",
            *table(["dataset", "method", "task", "bits: MAP", "source"],
                   [[k, m, t, ", ".join(f"{b}: {v:.4f}" for b, v in maps.items()), src]
                    for (k, m, t), (maps, src) in PUBLISHED.items()]), "",
            "They stand beside the measured rows of Table 1 for a dataset whose name contains "
            "mirflickr, nuswide or iapr (the converters' names). The HashGAN paper's Tables 1-4 "
            "are not in the text this project holds; its section 4.2 quotes the one figure given "
            "here.", ""]
    out += ["## How this report was made", "", "```sh", context["command"], "```", "",
            *table(["package", "version"], [[k, v] for k, v in context["versions"].items()]), "",
            f"Training time summed over the cells: {sum(r['train_seconds'] for r in results) / 60:.1f}"
            f" min; evaluation: {sum(r['eval_seconds'] for r in results) / 60:.1f} min.", "",
            "## Every cell", "", *cells_table(results), ""]
    return "\n".join(out)


def figure_files(stem: str, results: list[dict], backbone: str) -> dict:
    """File names (beside the report) of the figures the results can make."""
    pr, masks = {}, {}
    for r in results:
        d = r["cell"]["dataset"]
        if r.get("pr") and r["cell"]["backbone"] == backbone and r["cell"]["labeled_fraction"] == 1:
            pr[d] = {task: f"{stem}-fig5-{d}-{task.replace('->', '2').lower()}.png"
                     for task, _ in TASKS}
        if r.get("masks"):
            masks[d] = f"{stem}-fig6-{d}.png"
    return {"pr": pr, "masks": masks}


def mean_curve(curves: list[dict]) -> dict:
    """Precision and recall at each Hamming radius, averaged over seeds; a radius
    undefined (None) in every seed stays NaN."""
    def mean(key):
        rows = np.array([[np.nan if v is None else v for v in c[key]] for c in curves], dtype=float)
        seen = (~np.isnan(rows)).sum(0)
        return np.where(seen > 0, np.nansum(rows, 0) / np.maximum(seen, 1), np.nan)
    return {"precision": mean("precision"), "recall": mean("recall")}


def write_figures(results: list[dict], folder: Path, files: dict, backbone: str) -> None:
    """Figure 5 per dataset and task (a curve per setting: all labels, the main
    backbone, mean over seeds) and Figure 6 (copied from the cell that drew it)."""
    from hashgan_ray.evaluation.metrics import plot_pr_curves

    for d, tasks in files["pr"].items():
        drawn = [r for r in pick(results, dataset=d, labeled_fraction=1.0, backbone=backbone)
                 if r.get("pr")]
        for task, name in tasks.items():
            curves = {name_of(s): mean_curve([r["pr"][task] for r in pick(drawn, setting=s)])
                      for s in ordered(drawn, "setting")}
            plot_pr_curves(curves, folder / name, title=f"{d}, {task}, {drawn[0]['cell']['bits']} bits")
    for d, name in files["masks"].items():
        r = next(r for r in pick(results, dataset=d) if r.get("masks"))
        shutil.copyfile(Path(r["config"]["out"]).parent / r["masks"], folder / name)


def write_report(results: list[dict], path, context: dict) -> Path:
    """Figures beside `path`, then report.md at `path` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = figure_files(path.stem, results, context["grid"]["backbones"][0])
    write_figures(results, path.parent, files, context["grid"]["backbones"][0])
    return write_text(path, render_report(results, {**context, "figures": files}))

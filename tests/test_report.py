"""experiment/report.py: tables from the cells' results alone (no Ray, no training)."""
import statistics

import pytest

from hashgan_ray.experiment.report import figure_files, fmt, mean_curve, render_report


def result(dataset, setting, seed, bits=16, backbone="small", fraction=1.0, value=0.5):
    return {"cell": {"data": "/d", "dataset": dataset, "backbone": backbone, "bits": bits,
                     "setting": setting, "labeled_fraction": fraction, "seed": seed},
            "config": {"out": f"/o/{setting}-{seed}/run"},
            "map_i2t": value, "map_t2i": value + 0.01, "top500_map_i2t": value + 0.1,
            "top500_map_t2i": value + 0.11, "n_query": 10, "n_database": 90, "pr": None,
            "masks": None, "train_seconds": 60.0, "eval_seconds": 6.0}


CONTEXT = {"command": "hashgan-ray experiment paper ...", "versions": {"torch": "x"},
           "grid": {"bits": [16, 32], "seeds": 3, "backbones": ["small"], "epochs": 2}}


def test_mean_and_spread_over_seeds_with_published_anchors_and_partial_label_rows():
    maps = [0.61, 0.65, 0.70]
    results = [result("mirflickr", "dcmh", s, value=v) for s, v in enumerate(maps)]
    results += [result("mirflickr", "hashgan-both", s, value=0.7) for s in range(3)]
    results += [result("mirflickr", "hashgan-both", 0, fraction=0.1, value=0.4)]
    results += [result("mirflickr", "hashgan-none", s, value=0.66) for s in range(3)]
    report = render_report(results, {**CONTEXT, "figures": figure_files("r", results, "small")})
    t1 = report.split("## Table 1")[1].split("## Table 2")[0]
    assert fmt(maps) == f"{statistics.mean(maps):.4f} ± {statistics.stdev(maps):.4f}"
    assert f"| I->T | DCMH | {fmt(maps)} | – |" in t1                       # 32 bits did not run
    assert "| I->T | HashGAN, 10% labels | 0.4000 | – |" in t1
    assert "| I->T | DCMH (published) | 0.7410 | 0.7465 |" in t1
    assert "| T->I | DCMH (published) | 0.7827 | 0.7900 |" in t1
    assert "HashGAN, no attention" not in t1                                  # Table 4's row
    t4 = report.split("## Table 4")[1].split("## Figure 5")[0]
    assert f"| T->I | none | {fmt([0.67] * 3)} | – |" in t4 and "| I->T | image | – | – |" in t4
    assert "| I->T | 16 | 0.7000 ± 0.0000 | not run | not run |" in report   # Table 3
    assert "no HashGAN (both) cell drew masks" in report


def test_pr_curves_average_over_seeds_and_keep_undefined_points_undefined():
    curves = [{"precision": [None, 0.5, 1.0], "recall": [0.0, 0.2, 1.0]},
              {"precision": [None, 0.7, None], "recall": [0.0, 0.4, 1.0]}]
    m = mean_curve(curves)
    assert str(m["precision"][0]) == "nan" and list(m["precision"][1:]) == [0.6, 1.0]
    assert list(m["recall"]) == pytest.approx([0.0, 0.3, 1.0])

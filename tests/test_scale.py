"""benchmarks/scale.py and what it is built on: the NUS-WIDE-layout writer read
by the real converter, the RSS sampler on real processes, and the whole run at
a few hundred pairs (every stage, then a rerun that reuses them)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashgan_ray.data.convert import nuswide
from hashgan_ray.data.format import read_meta, read_pairs
from hashgan_ray.data.synth import World
from hashgan_ray.data.synth_nuswide import FREQUENT, world_config, write_nuswide_layout

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import scale  # noqa: E402


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    src = tmp_path_factory.mktemp("nuswide") / "NUS-WIDE"
    return src, write_nuswide_layout(src, pairs=150, dropped=40, seed=3)


def test_layout_is_nuswides_and_the_converter_keeps_exactly_the_pairs(layout, tmp_path):
    src, written = layout
    assert written == {"images": 190, "pairs": 150, "dropped": 40}
    lines = (src / "ImageList/Imagelist.txt").read_bytes().split(b"\r\n")
    assert lines[-1] == b"" and len(lines) == 191
    assert all(line.startswith(b"C:\\ImageData\\Flickr\\") for line in lines[:-1])
    tags = (src / "NUS_WID_Tags/AllTags1k.txt").read_text().splitlines()
    assert len(tags) == 190 and all(len(row.split("\t")) == 1001 for row in tags)
    concepts = (src / "ConceptsList/Concepts81.txt").read_text().split()
    assert len(concepts) == 81
    assert len((src / "NUS_WID_Tags/TagList1k.txt").read_text().split()) == 1000
    first = src / "Flickr" / lines[0].decode().split("\\", 3)[3].replace("\\", "/")
    with Image.open(first) as img:
        assert img.format == "JPEG" and min(img.size) >= 64

    meta, report = nuswide.convert(src, tmp_path / "data", n_query=20, n_train=60,
                                   image_size=64)
    assert report.kept == 150 and sum(report.dropped.values()) == 40
    assert set(report.dropped) <= {"no top concept label", "no tags"}
    world = World(world_config())
    assert meta.label_names == [world.label_names[c] for c in FREQUENT]
    assert meta.vocabulary == world.vocabulary and meta.vocab_size == 1000
    rows = read_pairs(tmp_path / "data", columns=["text", "labels"]).to_pylist()
    assert all(r["text"] and r["labels"] for r in rows)


def test_layout_is_reproducible(layout, tmp_path):
    src, _ = layout
    again = tmp_path / "again"
    write_nuswide_layout(again, pairs=150, dropped=40, seed=3)
    for name in ("ImageList/Imagelist.txt", "NUS_WID_Tags/AllTags1k.txt",
                 f"Groundtruth/AllLabels/Labels_{World(world_config()).label_names[4]}.txt"):
        assert (again / name).read_bytes() == (src / name).read_bytes()
    with pytest.raises(FileExistsError):
        write_nuswide_layout(again, pairs=10)


def test_peak_rss_sees_the_process_and_its_children():
    """A parent holding 300 MiB and a child holding 200 MiB, both touched."""
    code = textwrap.dedent("""
        import subprocess, sys, time
        import numpy as np
        held = np.ones(300 << 20, np.uint8)
        child = subprocess.Popen([sys.executable, "-c",
            "import numpy as np, time; a = np.ones(200 << 20, np.uint8); time.sleep(3)"])
        child.wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    sampler = scale.PeakRSS(proc.pid, interval=0.1)
    sampler.start()
    assert proc.wait() == 0
    memory = sampler.stop()
    assert memory["driver_peak_mib"] >= 300
    children = {k: v for k, v in memory["processes"].items() if k != "driver"}
    assert max(v["peak_mib"] for v in children.values()) >= 200
    assert memory["samples"] > 5


def test_the_cli_parser_loads_no_torch():
    """`data convert` builds the full parser: importing torch for it cost ~1 GB RSS."""
    out = subprocess.run([sys.executable, "-c", "import sys; from hashgan_ray import cli; "
                          "cli.build_parser(); print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scale_run_every_stage_then_reused(tmp_path):
    out = tmp_path / "scale"
    base = [sys.executable, str(REPO / "benchmarks/scale.py"), "--out", str(out), "--cpus", "2"]
    argv = base + ["--pairs", "300", "--epochs", "1", "--queries", "30", "--check-queries", "10",
                   "--plain-sample", "200"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads((out / "scale.json").read_text())
    stages = result["stages"]
    assert list(stages) == list(scale.STAGES)
    for name, record in stages.items():
        assert record["wall_s"] > 0 and record["per_s"] > 0, name
        assert record["memory"]["driver_peak_mib"] > 0, name
        assert record["memory"]["samples"] > 0, name
        if not name.startswith("serve"):                 # the kernel's figure, from wait4
            assert record["memory"]["driver_maxrss_mib"] >= 0.9 * record["memory"]["driver_peak_mib"]
    for name in ("train", "index", "serve"):          # Ray stages: their workers were seen
        assert stages[name]["memory"]["ray_workers"] >= 1, name
    assert stages["train"]["memory"]["worker_peak_kind"].startswith("ray::RayTrainWorker")
    assert stages["convert"]["counts"]["total"] == 300
    query, train = scale.split_sizes(300)
    assert stages["convert"]["counts"]["query"] == query
    assert stages["index"]["items"] == 300 - query
    ev = stages["eval"]["eval"]
    assert ev["n_database"] == 300 - query and ev["checked_bits_differ"] == 0
    assert 0 < stages["eval"]["map_i2t"] <= 1 and 0 < stages["eval"]["map_t2i"] <= 1
    for direction in ("t2i", "i2t"):
        served = stages["serve"]["serve"][direction]
        assert served["queries"] == 30 and served["checked"] == 10
        assert served["differ_from_brute_force"] == 0
    assert read_meta(out / "data").counts["total"] == 300

    records = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(reused)") >= 2 * len(scale.STAGES)   # each row, and the table
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")} == records

    other = subprocess.run(base + ["--pairs", "400", "--epochs", "1"], capture_output=True,
                           text=True)
    assert other.returncode != 0 and "other settings" in other.stderr


def test_database_labels_match_the_rows(layout, tmp_path):
    src, _ = layout
    meta, _ = nuswide.convert(src, tmp_path / "data", n_query=20, n_train=60, image_size=64)
    ids, labels = scale.database_labels(tmp_path / "data", meta.num_labels)
    rows = read_pairs(tmp_path / "data", "database", columns=["id", "labels"]).to_pylist()
    assert ids.tolist() == [r["id"] for r in rows]
    expected = np.zeros_like(labels)
    for i, r in enumerate(rows):
        expected[i, r["labels"]] = 1
    assert np.array_equal(labels, expected)


def test_until_stops_after_that_stage(tmp_path):
    out = tmp_path / "scale"
    argv = [sys.executable, str(REPO / "benchmarks/scale.py"), "--out", str(out), "--pairs", "300",
            "--until", "convert"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (out / "stages").glob("*.json") if ".result" not in p.name) == [
        "convert.json", "write.json"]
    assert json.loads((out / "scale.json").read_text())["stages"]["convert"]["counts"]["total"] == 300
    assert not (out / "run").exists()

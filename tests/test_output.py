"""What `train` and `index build` print (hashgan_ray/output.py): each runs as a
subprocess that starts its own local Ray, as a person runs it."""
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from hashgan_ray.data.format import pair_files

EPOCHS = 2
# What a person should see: a line per epoch or a progress bar, the summary, and
# room for a few of Ray's own warnings. Before output.py the same train printed
# 135 lines (Ray Train's reports and checkpoints per worker per epoch, Ray Data's
# plans and progress, the placement-group cleaner's failed polls) and the index
# build 23.
MAX_LINES = 10
# Ray's own line that stays (Ray issue 53727): its core worker logs an error for
# every Ray Data actor with max_restarts (the encoder pool keeps its restarts),
# on stderr beside the log file; nothing the project passes can change it.
KNOWN_RAY_LINES = ("has constructor arguments in the object store and max_restarts > 0",)
# Ray Train's controller warns, with a traceback, when its resource request to Ray
# Data's autoscaling coordinator takes over 5 s, "safe to ignore" by its own words:
# on a loaded machine, while that actor starts. Its lines are left out here.
TRANSIENT_RAY_WARNING = "Failed to send resource request"
# Set by an in-process main() of another test; each run here chooses for itself.
OUTPUT_ENV = ("RAY_DATA_LOGGING_CONFIG", "RAY_DATA_DISABLE_PROGRESS_BARS",
              "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")


def hashgan_ray(*args) -> subprocess.CompletedProcess:
    """`python -m hashgan_ray ARGS` with its stdout and stderr as one text; once
    more where its local Ray timed out starting (a loaded machine)."""
    env = {k: v for k, v in os.environ.items() if k not in OUTPUT_ENV}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "hashgan_ray", *args], env=env, check=False,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=900)
        if "timed out during startup" not in done.stdout:
            return done
    return done


def problems(output: str) -> list[str]:
    """Lines a quiet run must not show: tracebacks, failures, errors (Python's
    and Ray's core " E " lines), Ray's known line and transient warning aside."""
    lines = output.splitlines()
    transient = {line.split(")")[0] for line in lines if TRANSIENT_RAY_WARNING in line}
    return [line for line in lines
            if ("Traceback" in line or "Failed to" in line or re.search(r"\bERROR\b", line)
                or re.search(r"\[[\d\- :,]+ E \d+ \d+\]", line))
            and not any(known in line for known in KNOWN_RAY_LINES)
            and line.split(")")[0] not in transient]


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    done = hashgan_ray("train", "--data", str(synth_data), "--out", str(run), "--epochs",
                       str(EPOCHS), "--workers", "2", "--batch-size", "16", "--num-cpus", "2")
    return run, done


def test_train_shows_one_line_per_epoch_and_the_summary(trained):
    _, done = trained
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert problems(done.stdout) == []
    assert len(lines) <= MAX_LINES, done.stdout
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == [f"{e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    assert all(re.search(r"MAP i->t 0\.\d{3} t->i 0\.\d{3}  \d+ samples/s  \d+[hm]\d\d[ms] left  "
                         r"loss( \w+ -?\d+\.\d{3})+$", line) for line in epochs), epochs
    assert lines[-1].startswith(f"trained {EPOCHS} epochs: MAP i->t")


def test_index_build_is_quiet_and_verbose_shows_rays_lines(trained, synth_data, tmp_path):
    run, _ = trained
    args = ["index", "build", "--checkpoint", str(run / "model"), "--data", str(synth_data),
            "--num-cpus", "2"]
    quiet = hashgan_ray(*args, "--out", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stdout
    assert problems(quiet.stdout) == []
    assert len(quiet.stdout.splitlines()) <= MAX_LINES, quiet.stdout
    assert "indexed 216 pairs" in quiet.stdout and "faiss.loader" not in quiet.stdout

    verbose = hashgan_ray("-v", *args, "--out", str(tmp_path / "verbose"))
    assert verbose.returncode == 0, verbose.stdout
    assert len(verbose.stdout.splitlines()) > len(quiet.stdout.splitlines())
    # FAISS's loader, Ray's start and Ray Data's execution plan are back
    for shown in ("faiss.loader", "Started a local Ray instance", "Execution plan of Dataset"):
        assert shown in verbose.stdout, shown


def test_a_failing_train_still_shows_its_error(synth_data, tmp_path):
    """Train rows whose image bytes are broken: the decoding in Ray Data fails
    inside the streamed epoch of a Ray Train worker, and the run ends with that
    worker's error (Ray's WorkerGroupError holding PIL's)."""
    broken = tmp_path / "broken"
    (broken / "pairs").mkdir(parents=True)
    (broken / "meta.json").write_bytes((synth_data / "meta.json").read_bytes())
    for path in pair_files(synth_data):
        table = pq.read_table(path)
        rows = table.to_pydict()
        for i, split in enumerate(rows["split"]):
            if split == "train":
                rows["image"][i] = b"not an image"
        pq.write_table(type(table).from_pydict(rows, schema=table.schema), broken / "pairs" / path.name)
    done = hashgan_ray("train", "--data", str(broken), "--out", str(tmp_path / "run"), "--epochs",
                       "1", "--workers", "1", "--batch-size", "16", "--num-cpus", "2",
                       "--no-cache-train")
    assert done.returncode != 0
    lines = done.stdout.splitlines()
    # the driver's own traceback ends with Ray Train's error, which quotes the worker's
    assert "ray.train.WorkerGroupError: Training failed due to worker errors:" in lines, done.stdout
    assert "PIL.UnidentifiedImageError: cannot identify image file" in done.stdout

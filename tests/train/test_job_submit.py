"""A real `ray job submit` of a tiny training against a head this test starts."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster_local import LocalCluster

from hashgan_ray.model.checkpoint import load_model

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent          # the venv's ray, python


@pytest.fixture
def ray_head():
    """A head of our own, stopped by signalling its session (tests/support/cluster_local.py):
    `ray stop` would stop every Ray on the machine, not only this one."""
    with LocalCluster(head_cpus=2) as cluster:
        yield cluster.dashboard_url, cluster.env


def test_ray_job_submit_trains_and_token_auth_is_on(ray_head, synth_data, tmp_path):
    address, env = ray_head
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    no_token["HOME"] = str(tmp_path)                       # hides ~/.ray/auth_token
    refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address],
                             env=no_token, capture_output=True, text=True, timeout=120)
    assert "no authentication token was found" in refused.stdout + refused.stderr

    out = tmp_path / "run"
    done = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--", "python", "-m", "hashgan_ray", "train", "--data", str(synth_data), "--out", str(out),
         "--epochs", "1", "--workers", "1", "--bits", "16", "--text-hidden", "64",
         "--text-features", "32", "--batch-size", "32", "--val-database", "40"],
        env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    model, config = load_model(out / "model")
    assert model.bits == 16 and config["train"]["epochs"] == 1
    shutil.rmtree(out)

"""A real `ray job submit` of a tiny training against a head this test starts."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hashgan_ray.model.checkpoint import load_model

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent          # the venv's ray, python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    dashboard = free_port()
    subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus", "2",
                    "--port", str(free_port()), "--dashboard-port", str(dashboard),
                    "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1",
                    "--disable-usage-stats"], check=True, env=env, timeout=180,
                   capture_output=True)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, timeout=180,
                       capture_output=True)


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
         "--", "python", "-m", "hashgan_ray.train", "--data", str(synth_data), "--out", str(out),
         "--epochs", "1", "--workers", "1", "--bits", "16", "--text-hidden", "64",
         "--text-features", "32", "--batch-size", "32", "--val-database", "40"],
        env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    model, config = load_model(out / "model")
    assert model.bits == 16 and config["train"]["epochs"] == 1
    shutil.rmtree(out)

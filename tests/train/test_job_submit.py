"""A real `ray job submit` of a tiny training against a head this test starts."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
    """A head of our own. `ray start --block` in its own session, stopped by
    signalling that session: `ray stop` would kill every Ray on the machine,
    not only the one this test started."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    dashboard, gcs_port = free_port(), free_port()
    # `ray start` records its address here for later `ray.init()` calls; `ray stop`
    # would remove it, signalling does not: put back what was there before.
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    before = current.read_text() if current.exists() else None
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
                             "--port", str(gcs_port), "--dashboard-port", str(dashboard),
                             "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1",
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not _listening(dashboard):
            assert head.poll() is None, f"ray start exited with {head.returncode}"
            assert time.monotonic() < deadline, "the Ray head did not come up in 180 s"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        if current.exists() and current.read_text().strip().endswith(f":{gcs_port}"):
            if before is None:
                current.unlink()
            else:
                current.write_text(before)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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

"""`hashgan-ray serve` in the foreground (a real process with its own Ray) and serve/config.yaml."""
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import free_port, write_exact_index

httpx = pytest.importorskip("httpx")
ROOT = Path(__file__).resolve().parents[2]


def test_serve_stays_up_until_interrupted_then_stops_cleanly(synth_data, tiny_model, tmp_path):
    index = write_exact_index(tmp_path / "index", tiny_model, synth_data)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "HASHGAN_API_TOKEN")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashgan_ray.cli", "serve", "--checkpoint", str(tiny_model),
         "--index", str(index), "--port", str(port), "--num-cpus", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/v1/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(1)
        r = httpx.post(f"{url}/v1/search", json={"text": ["sky", "sea"], "k": 3}, timeout=60)
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert f"serving on http://127.0.0.1:{port}/v1" in out and "stopping" in out
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v1/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_serve_config_is_valid_and_listens_on_loopback():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema(**yaml.safe_load((ROOT / "serve" / "config.yaml").read_text()))
    assert config.http_options.host == "127.0.0.1"
    (app,) = config.applications
    assert app.import_path == "serve.app:app"
    assert {"checkpoint", "index"} <= set(app.args)
    spec = importlib.util.spec_from_file_location("serve_app", ROOT / "serve" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from hashgan_ray.serving.app import build_app
    assert module.app is build_app

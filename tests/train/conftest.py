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

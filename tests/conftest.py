import pytest

from hashgan_ray.data.synth import generate


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic dataset shared read-only by the tests that need one."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, pairs=240, seed=0, n_query=24, n_train=120)
    return out


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with an explicit small CPU count, stopped afterwards."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()

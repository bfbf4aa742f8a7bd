import os

import pytest
from helpers import local_ray_running, write_tiny_model

from hashgan_ray.data.synth import generate

# Ray reads its authentication mode once, when it is imported. Ray 2.60 turns
# token authentication on for every local ray.init() anyway; saying so before
# anything imports Ray also lets a test's driver join the token-protected
# clusters that `ray start` makes (tests/cluster).
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic dataset shared read-only by the tests that need one."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, pairs=240, seed=0, n_query=24, n_train=120)
    return out


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with an explicit small CPU count, stopped afterwards."""
    yield from local_ray_running()


@pytest.fixture(scope="session")
def tiny_model(synth_data, tmp_path_factory):
    """A 16-bit model directory for synth_data, shared read-only."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", synth_data)

import os

import pytest
from helpers import local_ray_running, write_tiny_model

from hashgan_ray.data.synth import generate

# Ray reads its authentication mode once, when it is imported. Ray 2.60 turns
# token authentication on for every local ray.init() anyway; saying so before
# anything imports Ray also lets a test's driver join the token-protected
# clusters that `ray start` makes (tests/cluster).
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Without Ray's usage stats, Ray Data starts no usage poller thread in this
# process. That daemon thread lives from the first Ray Data execution to the
# end of the process, across the suite's many ray.init/shutdown pairs (a
# user's process has one). On 2026-12-06 the suite died with no summary on
# "The core worker has already been shutdown ... The process will exit" from a
# thread born early in the run that lived on. In another run the long-lived
# threads of about that age were this poller and a C++ "worker.io" thread left
# from an early session: which one it was is not known yet (the suite now
# records every thread at each ray.shutdown: helpers.record_threads_at_shutdown).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


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

"""Training on a real local Ray: two DDP workers, resume, recovery from a killed worker."""
import os
import signal
import threading
import time
from pathlib import Path

import torch
from support.cluster_local import TRAIN_WORKER

from hashgan_ray.config import TrainConfig
from hashgan_ray.model.checkpoint import TRAIN_STATE, load_model
from hashgan_ray.train.loop import fit

TINY = dict(bits=16, text_hidden=64, text_features=32, batch_size=16, val_database=40, lr=1e-3)


def adam_steps(checkpoint: Path) -> int:
    state = torch.load(checkpoint / TRAIN_STATE, weights_only=True)["trainer"]["opt_ed"]["state"]
    return int(next(iter(state.values()))["step"])


def test_two_workers_stay_in_sync_then_resume_with_optimizer_state(ray3, synth_data, tmp_path):
    # augment_shift: each worker shifts its Ray Data batches (train/augment.py) and the
    # replicas stay in sync all the same
    cfg = TrainConfig(data=str(synth_data), out=str(tmp_path / "run"), epochs=1, workers=2,
                      augment_shift=2, **TINY)
    first = fit(cfg)
    assert first.metrics["epoch"] == 1 and first.metrics["replicas_in_sync"] == 1.0
    assert first.metrics["map_i2t"] > 0 and first.metrics["map_t2i"] > 0
    steps_after_one = adam_steps(Path(first.checkpoint.path))
    # 120 train pairs over 2 workers, batches of 16: 3 E/D steps per worker
    # per epoch (a G step would follow the 4th).
    assert steps_after_one == 3

    again = fit(TrainConfig(**{**cfg.to_dict(), "epochs": 2}))   # same RUN_DIR: resume
    assert again.metrics["epoch"] == 2 and again.metrics["attempt_start_epoch"] == 2
    assert again.metrics["replicas_in_sync"] == 1.0
    assert adam_steps(Path(again.checkpoint.path)) == 2 * steps_after_one   # state carried over
    model, config = load_model(Path(cfg.out) / "model")
    assert config["epoch"] == 1 and model.bits == 16                 # 0-based epoch of the export


def _kill_a_worker_after_first_checkpoint(out: Path, killed: list, deadline: float):
    from ray._private import state  # the GCS actor table: this test's own cluster only

    # The controller writes its snapshot once a reported checkpoint is registered.
    while time.time() < deadline and not (out / "train" / "checkpoint_manager_snapshot.json").exists():
        time.sleep(0.2)
    for actor in state.actors().values():
        if actor["ActorClassName"].endswith(TRAIN_WORKER) and actor["State"] == "ALIVE":
            os.kill(actor["Pid"], signal.SIGKILL)
            killed.append(actor["Pid"])
            return


def test_a_killed_worker_is_recovered_from_the_last_checkpoint(ray3, synth_data, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(synth_data), out=str(out), epochs=4, workers=1, max_failures=2, **TINY)
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint,
                              args=(out, killed, time.time() + 300), daemon=True)
    killer.start()
    result = fit(cfg)
    killer.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert result.error is None and result.metrics["epoch"] == 4
    assert result.metrics["attempt_start_epoch"] > 1     # the retry resumed, not restarted

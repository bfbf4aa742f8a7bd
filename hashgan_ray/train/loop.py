"""Ray Train wiring: the per-worker loop and the TorchTrainer that runs it.

The steps themselves are plain PyTorch (train/methods/, train/steps.py); this module adds what
Ray brings: the worker's device, DDP wrappers, the dataset shard streamed by
Ray Data, checkpoints reported with `ray.train.report`, restore on restart.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.data import ExecutionOptions
from ray.train import (Checkpoint, CheckpointConfig, DataConfig, FailureConfig, LoggingConfig,
                       RunConfig, ScalingConfig, UserCallback)
from ray.train.torch import TorchTrainer

from hashgan_ray.config import ORACLE, TrainConfig
from hashgan_ray.data.format import DatasetMeta, read_meta, read_pairs
from hashgan_ray.data.loading import BatchSpec
from hashgan_ray.data.oracle import Oracle
from hashgan_ray.data.ray_data import read_split
from hashgan_ray.data.splits import labeled_ids, mark_labeled
from hashgan_ray.evaluation.evaluate import retrieval_map, sample_ids
from hashgan_ray.model.backbones import pretrained_path
from hashgan_ray.model.checkpoint import TRAIN_STATE, WEIGHTS, export_model, write_model_files
from hashgan_ray.model.encode import encode_split
from hashgan_ray.output import ray_log_level
from hashgan_ray.train.augment import random_shift
from hashgan_ray.train.methods import build_model, build_trainer, no_all_reduce, trainer_class

try:    # Ray Train's internal class (Ray 2.60): if a later Ray moves it, training still
        # runs and only the cleaner's log lines come back (_Trainer below)
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback)
except ImportError:
    PlacementGroupCleanerCallback = None

log = logging.getLogger("hashgan_ray.train")
RAY_RUN_NAME = "train"          # RUN_DIR/train/ holds Ray Train's checkpoints
SHUFFLE_BUFFER = 1024           # rows; Ray Data's local shuffle within each worker's stream
RAY_LOG_LEVEL = "ray_log_level"     # beside the TrainConfig in train_loop_config: output.py's
DATASET_META = "dataset_meta"       # beside it too: the DatasetMeta fit read, so no worker reads it


def save_checkpoint(directory, model, meta, cfg, epoch, trainer) -> None:
    write_model_files(directory, model, vocabulary=meta.vocabulary, label_names=meta.label_names,
                      train_config=cfg.to_dict(), extra={"epoch": epoch, "method": cfg.method})
    torch.save({"epoch": epoch, "trainer": trainer.state_dict(),
                "torch_rng": torch.get_rng_state()}, Path(directory) / TRAIN_STATE)


def restore_checkpoint(directory, model, trainer) -> int:
    """Load weights and the trainer's state; return the epoch to start from."""
    directory = Path(directory)
    model.load_state_dict(torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
    state = torch.load(directory / TRAIN_STATE, map_location="cpu", weights_only=True)
    trainer.load_state_dict(state["trainer"])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"] + 1


def train_split_ids(data_dir) -> np.ndarray:
    return np.sort(read_pairs(data_dir, "train", columns=["id"]).column("id").to_numpy())


def all_reduce_for(world: int):
    """`all_reduce` of the trainer interface (train/methods/__init__.py): sum over ranks."""
    if world == 1:
        return no_all_reduce
    import torch.distributed as dist

    def all_reduce(tensor):
        dist.all_reduce(tensor)
        return tensor
    return all_reduce


class _GatherRows(torch.autograd.Function):
    """Every rank's (n, ...) tensor concatenated in rank order; the gradient of
    each rank's rows is the sum over ranks of the gradient of its slice (every
    rank computes the loss of the whole gathered batch). Same n on every rank.
    Written here because torch.distributed.nn.functional.all_gather warns at
    every call that it is deprecated (torch 2.14)."""

    @staticmethod
    def forward(ctx, tensor):
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = slice(dist.get_rank() * len(tensor), (dist.get_rank() + 1) * len(tensor))
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_for(world: int):
    """`gather` of the trainer interface (train/methods/__init__.py): the ranks' tensors
    concatenated in rank order, differentiable; None for one worker."""
    return None if world == 1 else _GatherRows.apply


def validate(model, cfg, meta, val_ids, device) -> dict[str, float]:
    """MAP on the query split against a fixed database sample (rank 0 only);
    the oracle setting encodes with the true masks, as it trains."""
    oracle = Oracle(cfg.data, meta=meta) if cfg.attention == ORACLE else None
    query = encode_split(model, cfg.data, "query", device=device, oracle=oracle, meta=meta)
    database = encode_split(model, cfg.data, "database", device=device, only_ids=val_ids,
                            oracle=oracle, meta=meta)
    m = retrieval_map(query, database)
    return {**m, "map_mean": (m["map_i2t"] + m["map_t2i"]) / 2}    # what Tune maximises


def replicas_in_sync(model: torch.nn.Module, world: int) -> bool:
    """True if every rank holds the same parameters (what DDP promises); three
    float64 checksums per rank, compared across ranks."""
    if world == 1:
        return True
    import torch.distributed as dist

    flat = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    ramp = torch.linspace(0, 1, len(flat), dtype=torch.float64)
    mine = torch.stack([flat.sum(), flat.pow(2).sum(), (flat * ramp).sum()])
    device = next(model.parameters()).device
    gathered = [torch.zeros(3, dtype=torch.float64, device=device) for _ in range(world)]
    dist.all_gather(gathered, mine.to(device))
    return all(torch.equal(gathered[0], g) for g in gathered)


def report_lines_at(level: str) -> None:
    """Ray Train 2.60 logs "Reporting training result N: TrainingReport(...)" for
    each worker and epoch through a logger named by its file's path, outside the
    "ray.train" logger that RunConfig's logging_config governs: give it that level."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(level)


def train_loop_per_worker(config: dict) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = dict(config)
    report_lines_at(config.pop(RAY_LOG_LEVEL))
    meta = DatasetMeta(**config.pop(DATASET_META))
    cfg = TrainConfig.from_dict(config)
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, meta)
    if cfg.pretrained:
        model.load_pretrained_backbone(cfg.backbone_weights)
    model.to(device)
    # The method's trainer wraps each module it updates in its own DDP (see steps.py).
    trainer = build_trainer(
        cfg, model, meta=meta, wrap=lambda m: ray.train.torch.prepare_model(m, move_to_device=False),
        all_reduce=all_reduce_for(world), train_ids=train_split_ids(cfg.data),
        gather=gather_for(world))
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start_epoch = restore_checkpoint(d, model, trainer)
        log.info("resumed from %s at epoch %d", checkpoint.path, start_epoch + 1)

    shard = ray.train.get_dataset_shard("train")
    val_ids = sample_ids(cfg.data, "database", cfg.val_database, cfg.seed) if rank == 0 else None

    shifts = torch.Generator().manual_seed(cfg.seed * 1_000 + rank)   # each worker its own draws
    attempt_started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        samples, started = 0, time.perf_counter()
        batches = shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True, device=device,
                                           local_shuffle_buffer_size=SHUFFLE_BUFFER,
                                           local_shuffle_seed=cfg.seed * 100_003 + epoch)
        for step, batch in enumerate(batches):
            batch["image"] = random_shift(batch["image"], cfg.augment_shift, shifts)
            stats = trainer.step(step, batch)
            for k, v in stats.items():
                sums[k] += v
                counts[k] += 1
            samples += len(batch["id"])
        trainer.end_epoch()
        seconds = time.perf_counter() - started
        report = {"epoch": epoch + 1, "samples_per_s": samples * world / max(seconds, 1e-9),
                  "attempt_start_epoch": start_epoch + 1,      # > 1 after a resume or recovery
                  "replicas_in_sync": float(replicas_in_sync(model, world)),
                  **{f"loss_{k}": sums[k] / counts[k] for k in sums}}
        if rank == 0:
            model.eval()
            report.update(validate(model, cfg, meta, val_ids, device))
            # training and validation, mean over this attempt's epochs (the time left)
            report["seconds_per_epoch"] = ((time.perf_counter() - attempt_started)
                                           / (epoch + 1 - start_epoch))
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, model, meta, cfg, epoch, trainer)
                ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(report, checkpoint=None)


class _ReportsToDriver(UserCallback):
    """Puts rank 0's report of each epoch (the one with MAP) on a queue that
    fit's thread reads: callbacks run in Ray Train's controller actor, whose
    output would reach the console only with Ray's "(TrainController pid=...)"."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        for worker_metrics in metrics:
            if "map_i2t" in worker_metrics:
                self.queue.put(worker_metrics)


@contextmanager
def _epochs_to(on_epoch):
    """Ray Train callbacks that call `on_epoch(metrics)` in this process after
    each epoch (none when on_epoch is None), from a thread while training runs."""
    if on_epoch is None:
        yield []
        return
    from ray.util.queue import Empty, Queue

    queue, done = Queue(actor_options={"num_cpus": 0}), threading.Event()

    def relay():
        while True:
            try:
                on_epoch(queue.get(timeout=0.5))
            except Empty:
                if done.is_set():
                    return
            except ray.exceptions.RayError:     # Ray went down: fit raises the error
                return
    thread = threading.Thread(target=relay, name="epoch-lines", daemon=True)
    thread.start()
    try:
        yield [_ReportsToDriver(queue)]
    finally:
        done.set()
        thread.join(timeout=30)
        queue.shutdown()


class _Trainer(TorchTrainer):
    """TorchTrainer without Ray Train's placement-group cleaner where the
    cluster has no state API (a local Ray started without its dashboard, as
    the CLI and the tests start it): the cleaner asks that API every second
    whether the controller still lives, logs "Failed to query Ray Train
    Controller actor state" at each try, and so could never clean up anyway
    (Tune's PlacementGroupReaper, tuning/search.py, removes a stopped trial's group)."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if PlacementGroupCleanerCallback is None or state_api_reachable():
            return callbacks
        return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]


def state_api_reachable() -> bool:
    """Whether the connected cluster answers Ray's state API (its dashboard runs)."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    try:
        list_nodes(address=ray.get_runtime_context().gcs_address, limit=1, timeout=10,
                   raise_on_missing_output=False)
    except RayStateApiException:
        return False
    return True


def fit(cfg: TrainConfig, callbacks=(), meta: DatasetMeta | None = None, on_epoch=None):
    """Run training on the connected Ray cluster; export the final model to
    RUN_DIR/model/ and return Ray Train's Result. `callbacks`: Ray Train
    callbacks for the run (Tune passes its TuneReportCallback, tuning.py).
    `meta`: the dataset's, where the caller has read it (an experiment's cell).
    `on_epoch(metrics)`: called here after each epoch with rank 0's report
    (the CLI prints its line, output.epoch_line)."""
    meta = meta or read_meta(cfg.data)                # fail early, on the driver
    if cfg.pretrained:
        pretrained_path(cfg.backbone, cfg.backbone_weights)
    out = Path(cfg.out).resolve()
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "data": str(Path(cfg.data).resolve()),
                                 "out": str(out)})
    spec = BatchSpec.from_meta(meta, cfg.image_size)
    use_gpu = cfg.gpus_per_worker > 0
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if use_gpu else {})}
    train = read_split(cfg.data, "train", spec=spec)
    if cfg.labeled_fraction < 1:
        labeled = labeled_ids(train_split_ids(cfg.data), cfg.labeled_fraction, cfg.seed)
        train = train.map_batches(mark_labeled, batch_format="numpy", fn_kwargs={
            "labeled": labeled, "keep_unlabeled": trainer_class(cfg.method).uses_unlabeled})
    if cfg.cache_train:
        # A streamed epoch waits ~3 s here for its first batch (the pipeline
        # restarts every epoch); a cached one ~0.1 s (benchmarks/train_bench.py).
        train = train.materialize()
    ray_level = logging.getLevelName(ray_log_level())
    with _epochs_to(on_epoch) as relays:
        trainer = _Trainer(
            train_loop_per_worker,
            train_loop_config={**cfg.to_dict(), RAY_LOG_LEVEL: ray_level,
                               DATASET_META: asdict(meta)},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                         resources_per_worker=resources,
                                         placement_strategy=cfg.placement_strategy),
            run_config=RunConfig(name=RAY_RUN_NAME, storage_path=str(out),
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 callbacks=list(callbacks) + relays,
                                 # Ray Train's INFO lines (each report, each checkpoint)
                                 # follow this process's Ray level: log files only, without -v
                                 logging_config=LoggingConfig(ray_level)),
            datasets={"train": train},
            # Ray Train's default ingest options pass the deprecated
            # exclude_resources (a RayDeprecationWarning in every run); these are
            # the same options otherwise.
            dataset_config=DataConfig(execution_options=ExecutionOptions()),
        )
        result = trainer.fit()
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            export_model(d, out / "model")
    return result

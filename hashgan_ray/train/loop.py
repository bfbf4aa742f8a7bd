"""Ray Train wiring: the per-worker loop and the TorchTrainer that runs it.

The steps themselves are plain PyTorch (train/steps.py); this module adds what
Ray brings: the worker's device, DDP wrappers, the dataset shard streamed by
Ray Data, checkpoints reported with `ray.train.report`, restore on restart.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from hashgan_ray.config import TrainConfig
from hashgan_ray.data.format import read_meta
from hashgan_ray.data.loading import BatchSpec
from hashgan_ray.data.ray_data import read_split
from hashgan_ray.evaluate import encode_split, retrieval_map, sample_ids
from hashgan_ray.model.backbones import pretrained_path
from hashgan_ray.model.checkpoint import TRAIN_STATE, export_model, write_model_files
from hashgan_ray.model.hashgan import HashGAN
from hashgan_ray.train.steps import build_optimizers, ed_step, g_step, is_g_step

log = logging.getLogger("hashgan_ray.train")
RAY_RUN_NAME = "train"          # RUN_DIR/train/ holds Ray Train's checkpoints
SHUFFLE_BUFFER = 1024           # rows; Ray Data's local shuffle within each worker's stream


def build_model(cfg: TrainConfig, meta) -> HashGAN:
    return HashGAN(bits=cfg.bits, vocab_size=meta.vocab_size, backbone=cfg.backbone,
                   image_size=cfg.image_size or meta.image_size, text_hidden=cfg.text_hidden,
                   text_features=cfg.text_features, image_attention=cfg.image_attention,
                   text_attention=cfg.text_attention, alpha_scale=cfg.alpha_scale)


def save_checkpoint(directory, model, meta, cfg, epoch, opt_ed, opt_g, schedulers) -> None:
    write_model_files(directory, model, vocabulary=meta.vocabulary, label_names=meta.label_names,
                      train_config=cfg.to_dict(), extra={"epoch": epoch})
    torch.save({"epoch": epoch, "opt_ed": opt_ed.state_dict(),
                "opt_g": opt_g.state_dict() if opt_g else None,
                "schedulers": [s.state_dict() for s in schedulers],
                "torch_rng": torch.get_rng_state()}, Path(directory) / TRAIN_STATE)


def restore_checkpoint(directory, model, opt_ed, opt_g, schedulers) -> int:
    """Load weights and optimiser state; return the epoch to start from."""
    directory = Path(directory)
    model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
    state = torch.load(directory / TRAIN_STATE, map_location="cpu", weights_only=True)
    opt_ed.load_state_dict(state["opt_ed"])
    if opt_g is not None:
        opt_g.load_state_dict(state["opt_g"])
    for s, s_state in zip(schedulers, state["schedulers"]):
        s.load_state_dict(s_state)
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"] + 1


def validate(model, cfg, val_ids, device) -> dict[str, float]:
    """MAP on the query split against a fixed database sample (rank 0 only)."""
    query = encode_split(model, cfg.data, "query", device=device)
    database = encode_split(model, cfg.data, "database", device=device, only_ids=val_ids)
    return retrieval_map(query, database)


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


def train_loop_per_worker(config: dict) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = TrainConfig.from_dict(config)
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    meta = read_meta(cfg.data)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, meta)
    if cfg.pretrained:
        model.load_pretrained_backbone(cfg.backbone_weights)
    model.to(device)
    opt_ed, opt_g = build_optimizers(model, cfg.lr, cfg.beta1)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, cfg.lr_decay_every, cfg.lr_decay)
                  for o in (opt_ed, opt_g) if o is not None]
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start_epoch = restore_checkpoint(d, model, opt_ed, opt_g, schedulers)
        log.info("resumed from %s at epoch %d", checkpoint.path, start_epoch + 1)

    # Two DDP wrappers: E+D and G are updated in alternation (see steps.py).
    net = ray.train.torch.prepare_model(model.net, move_to_device=False)
    attention = ray.train.torch.prepare_model(model.attention, move_to_device=False) \
        if opt_g is not None else model.attention
    shard = ray.train.get_dataset_shard("train")
    val_ids = sample_ids(cfg.data, "database", cfg.val_database, cfg.seed) if rank == 0 else None

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        samples, started = 0, time.perf_counter()
        batches = shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True, device=device,
                                           local_shuffle_buffer_size=SHUFFLE_BUFFER,
                                           local_shuffle_seed=cfg.seed * 100_003 + epoch)
        for step, batch in enumerate(batches):
            if opt_g is not None and is_g_step(step, cfg.d_steps, cfg.g_steps):
                stats = g_step(model, attention, batch, opt_g, cfg.margin)
            else:
                stats = ed_step(model, net, batch, opt_ed, cfg.margin)
            for k, v in stats.items():
                sums[k] += v
                counts[k] += 1
            samples += len(batch["id"])
        for s in schedulers:
            s.step()
        seconds = time.perf_counter() - started
        report = {"epoch": epoch + 1, "samples_per_s": samples * world / max(seconds, 1e-9),
                  "attempt_start_epoch": start_epoch + 1,      # > 1 after a resume or recovery
                  "replicas_in_sync": float(replicas_in_sync(model, world)),
                  **{f"loss_{k}": sums[k] / counts[k] for k in sums}}
        if rank == 0:
            model.eval()
            report.update(validate(model, cfg, val_ids, device))
            log.info("epoch %d/%d  loss %.4f (retrieval %.4f, adversarial %.4f, G %.4f)  "
                     "MAP i->t %.4f t->i %.4f  %.0f samples/s", epoch + 1, cfg.epochs,
                     report.get("loss_full", float("nan")), report.get("loss_retrieval", float("nan")),
                     report.get("loss_adversarial", float("nan")),
                     report.get("loss_g_adversarial", float("nan")), report["map_i2t"],
                     report["map_t2i"], report["samples_per_s"])
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, model, meta, cfg, epoch, opt_ed, opt_g, schedulers)
                ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(report, checkpoint=None)


def fit(cfg: TrainConfig):
    """Run training on the connected Ray cluster; export the final model to
    RUN_DIR/model/ and return Ray Train's Result."""
    meta = read_meta(cfg.data)                        # fail early, on the driver
    if cfg.pretrained:
        pretrained_path(cfg.backbone, cfg.backbone_weights)
    out = Path(cfg.out).resolve()
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "data": str(Path(cfg.data).resolve()),
                                 "out": str(out)})
    spec = BatchSpec.from_meta(meta, cfg.image_size)
    use_gpu = cfg.gpus_per_worker > 0
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if use_gpu else {})}
    train = read_split(cfg.data, "train", spec=spec)
    if cfg.cache_train:
        # A streamed epoch waits ~3 s here for its first batch (the pipeline
        # restarts every epoch); a cached one ~0.1 s (benchmarks/train_bench.py).
        train = train.materialize()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=RAY_RUN_NAME, storage_path=str(out),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": train},
    )
    result = trainer.fit()
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            export_model(d, out / "model")
    return result

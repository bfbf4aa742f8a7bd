"""`index build` and `index add`: a Ray Data job encodes a dataset split into
codes (read -> decode tasks -> `map_batches` over an actor pool of encoders,
GPUs when the cluster has them), streamed back in database order into the
index directory (hashgan_ray.index.store, which knows no Ray).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import ray
import ray.data
import torch

from hashgan_ray.data.format import DataError, dataset_fingerprint, read_meta, read_pairs
from hashgan_ray.data.loading import BatchSpec
from hashgan_ray.data.ray_data import read_split
from hashgan_ray.index import store
from hashgan_ray.model.checkpoint import fingerprint, load_model, read_config
from hashgan_ray.model.encode import encode_arrays

log = logging.getLogger(__name__)


class CodeEncoder:
    """Ray Data actor: loads the model once, then decoded batches -> packed codes."""

    def __init__(self, checkpoint: str, threads: int | None = None):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if threads:
            torch.set_num_threads(threads)
        self.model, _ = load_model(checkpoint, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image_codes, text_codes = encode_arrays(self.model, batch["image"], batch["text"],
                                                self.device)
        return {"id": batch["id"], "image_code": image_codes, "text_code": text_codes}


def check_dataset(checkpoint, data_dir) -> dict:
    """The model's config.json, once the dataset is known to speak its vocabulary."""
    config = read_config(checkpoint)
    if read_meta(data_dir).vocabulary != config["vocabulary"]:
        raise DataError(f"{data_dir}: its text vocabulary differs from the one the model "
                        f"at {checkpoint} was trained with; word ids would mean other words")
    return config


def object_store_budget(spec: BatchSpec, batch_size: int, actors: int) -> int:
    """Bytes of object store the encode job may fill: 8 decoded batches per
    encoder actor, at least 256 MiB."""
    return max(256 << 20, 8 * actors * batch_size * spec.row_bytes)


def encode_job(checkpoint, data_dir, split: str | None, *, batch_size: int = 256,
               actors: int | None = None, gpus_per_actor: float | None = None) -> ray.data.Dataset:
    """Ray Dataset of {id, image_code, text_code} batches for `split` (None: all
    rows), in storage order.

    Reading and decoding run in Ray Data tasks ahead of the encoder actors (the
    execution plan shows ReadFilesParquetV2 -> MapBatches(decode_batch) ->
    MapBatches(CodeEncoder), the last an actor pool); the decoded batches between
    them are held to `object_store_budget`. On GPUs (`gpus_per_actor` None: 1 when the cluster has GPUs) there is one
    actor per GPU. On CPUs there is one single-threaded actor per CPU (`actors`
    None), and together they reserve all CPUs but one per node: that one runs a
    read task and a decode task (1 CPU together, see read_split), which would
    otherwise wait for the actors forever."""
    config = check_dataset(checkpoint, data_dir)
    meta = read_meta(data_dir)
    spec = BatchSpec.from_meta(meta, config["model"]["image_size"])
    # No more actors than batches: one without a batch would idle, and Ray Data
    # warns at each run that the pool "won't fully utilize the available concurrency".
    batches = max(1, math.ceil(_row_count(meta, split) / batch_size))
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 1)), resources.get("GPU", 0)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else 0.0
    if gpus_per_actor:
        actors = min(actors or max(1, int(gpus // gpus_per_actor)), batches)
        cpus_per_actor, threads = 1.0, None
    else:
        actors = min(actors or cpus, batches)
        nodes = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1)
        cpus_per_actor, threads = max(0, cpus - max(nodes, 1)) / actors, 1
    # A read task and a decode task fit in the one CPU the actors leave (see
    # read_split). No repartition between them: it ran ahead through the whole
    # split, 166 MiB of undecoded rows in the object store at NUS-WIDE's size,
    # holding a CPU of its own.
    ds = read_split(data_dir, split, spec=spec, task_cpus=1.0)
    # Database order = storage order, so that ties rank as in `hashgan-ray eval`.
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False           # the caller shows one bar
    # Blocks of about one encoder batch, not Ray Data's 128 MiB: the encoders start
    # on the first ones, and the budget below counts in batches.
    ds.context.target_max_block_size = batch_size * spec.row_bytes
    # Decoded batches wait in the object store for the encoders. Unbounded, Ray Data
    # lets decoding run ahead up to its share of the store: 337 MiB of /dev/shm at
    # 12k pairs, growing with the database (benchmarks/scale.py). A few batches per
    # actor keep the encoders fed.
    limits = ds.context.execution_options.resource_limits
    ds.context.execution_options.resource_limits = limits.copy(
        object_store_memory=object_store_budget(spec, batch_size, actors))
    log.info("encoding with %d actor(s), %.2f CPU and %.2f GPU each", actors, cpus_per_actor,
             gpus_per_actor)
    return ds.map_batches(
        CodeEncoder, fn_constructor_kwargs={"checkpoint": str(Path(checkpoint).resolve()),
                                            "threads": threads},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, udf_modifying_row_count=False)


def _stream_into(ds: ray.data.Dataset, total: int, progress):
    """A codes_writer_fn for hashgan_ray.index.store: the job's batches, in order."""
    def write(writer: store.CodesWriter) -> None:
        bar = progress(total) if progress else None
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            writer.add(batch["id"], batch["image_code"], batch["text_code"])
            if bar is not None:
                bar.update(len(batch["id"]))
        if bar is not None:
            bar.close()
    return write


def _row_count(meta, split: str | None) -> int:
    return meta.split_size(split) if split else meta.counts["total"]


def _dataset_entry(data_dir, split: str | None) -> dict:
    meta = read_meta(data_dir)
    return {"path": str(Path(data_dir).resolve()), "split": split or "all",
            "count": _row_count(meta, split),
            "fingerprint": dataset_fingerprint(data_dir), "added_at": store.now()}


def build_index(checkpoint, data_dir, out_dir, *, split: str | None = "database",
                kind: str = "flat", shards: int = 1, overwrite: bool = False,
                progress=None, **job_options) -> dict:
    """Encode `split` of `data_dir` with the model at `checkpoint` and write the
    index directory `out_dir` (atomically) -> its manifest.
    `progress(total)` makes a progress bar with update(n) and close() (the CLI's tqdm)."""
    if kind not in store.KINDS:
        raise ValueError(f"index kind must be one of {store.KINDS}, got {kind!r}")
    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    config = read_config(checkpoint)
    dataset = _dataset_entry(data_dir, split)
    ds = encode_job(checkpoint, data_dir, split, **job_options)
    fields = {"checkpoint": {"path": str(Path(checkpoint).resolve()),
                             "fingerprint": fingerprint(checkpoint)},
              "dataset_fingerprint": dataset["fingerprint"], "datasets": [dataset]}
    return store.write_index(out_dir, _stream_into(ds, dataset["count"], progress), bits=config["model"]["bits"],
                             kind=kind, shards=shards, manifest_fields=fields,
                             overwrite=overwrite)


def add_to_index(index_dir, data_dir, *, checkpoint=None, split: str | None = "database",
                 progress=None, **job_options) -> dict:
    """Encode `split` of `data_dir` with the index's own model and append it."""
    manifest = store.read_manifest(index_dir)
    checkpoint = checkpoint or manifest["checkpoint"]["path"]
    store.check_manifest(manifest, index_dir, checkpoint_fingerprint=fingerprint(checkpoint))
    new_ids = read_pairs(data_dir, split, columns=["id"]).column("id").to_numpy()
    # before the encoding job: a duplicate id is refused in seconds, not after it
    store.check_unique(np.concatenate([store.read_codes(index_dir).ids, new_ids]),
                       f"{index_dir} plus {data_dir}")
    dataset = _dataset_entry(data_dir, split)
    ds = encode_job(checkpoint, data_dir, split, **job_options)
    return store.add_to_index(index_dir, _stream_into(ds, dataset["count"], progress), dataset=dataset)

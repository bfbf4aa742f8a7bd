"""Exact Hamming search on a GPU when FAISS can, with the CPU index's results.

    choose_gpu(requested)        the one place that decides CPU or GPU
    exact_index(index, gpu)      what to search: a GPU copy of an exact index, or itself
    gpu_ranking(q, db, k, gpu)   the top-k rows from a GPU index, or None (rank on the CPU)

FAISS's GPU build (`pip install 'hashgan-ray[gpu]'`, docs/install.md) has
`GpuIndexBinaryFlat`; the CPU build (faiss-cpu, the default) has not. Both
compute the same Hamming distances, but the GPU's k-selection returns the items
tied at the k-th distance in no particular order and may cut a different subset
of them, while the CPU index breaks ties by database order (the project's
ranking contract, hashgan_ray.evaluation.metrics). `GpuExactBinaryIndex` asks the GPU for
more than k until every item tied at the k-th distance is in, then orders by
(distance, database row): the CPU's answer, ties included. The few queries whose
ties run past the GPU's selection limit are answered by the CPU index.

numpy + FAISS only: no Ray, no torch.
"""
from __future__ import annotations

import importlib.metadata
import logging
import threading

import faiss
import numpy as np

log = logging.getLogger(__name__)

# The largest k FAISS's GPU k-selection takes (GPU_MAX_SELECTION_K, 2048 in the CUDA
# builds; faiss-gpu 1.15.1's library holds the check `k <= 2048`). Beyond it FAISS
# asserts, so larger searches never reach the GPU.
GPU_MAX_K = 2048
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def faiss_gpu_build() -> bool:
    """Whether the imported FAISS has GPU indexes (faiss-gpu, not faiss-cpu)."""
    return hasattr(faiss, "GpuIndexBinaryFlat")


def visible_gpus() -> int:
    """GPUs FAISS can use in this process (CUDA_VISIBLE_DEVICES applies); 0 on faiss-cpu."""
    return faiss.get_num_gpus() if faiss_gpu_build() else 0


def installed_faiss() -> list[str]:
    """The FAISS distributions installed (normally exactly one)."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
            found.append(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def install_problem(distributions: list[str]) -> str | None:
    """What is wrong with this set of FAISS distributions, or None."""
    if len(distributions) > 1:
        return (f"{' and '.join(distributions)} are both installed: each writes the module "
                "`faiss`, so which one runs depends on the install order. Keep one: "
                "pip uninstall -y faiss-cpu faiss-gpu && pip install -c constraints.txt "
                "--no-deps faiss-gpu   (or faiss-cpu)")
    return None


def decide(requested: bool | None, gpu_build: bool, gpus: int) -> tuple[bool, str | None]:
    """(use the GPU, why not when it was asked for): the selection rule.

    requested None: the GPU when FAISS has GPU support and a GPU is visible.
    True (the caller was given a GPU, e.g. a Serve replica with num_gpus): the
    same, but saying why not. False: the CPU."""
    if requested is False:
        return False, None
    if gpu_build and gpus > 0:
        return True, None
    if requested is None:
        return False, None
    if not gpu_build:
        return False, ("a GPU was given but this FAISS is the CPU build (faiss-cpu); "
                       "exact search runs on the CPU. For GPU search install "
                       "'hashgan-ray[gpu]' (docs/install.md)")
    return False, "a GPU was given but FAISS sees none (CUDA_VISIBLE_DEVICES?); searching on the CPU"


def choose_gpu(requested: bool | None = None) -> bool:
    """Whether exact search in this process runs on a GPU (see `decide`)."""
    problem = install_problem(installed_faiss())
    if problem:
        _warn_once(problem)
    use, why_not = decide(requested, faiss_gpu_build(), visible_gpus())
    if why_not:
        _warn_once(why_not)
    return use


_resources = None


def _gpu_resources():
    """One StandardGpuResources per process (its scratch memory is reused)."""
    global _resources
    if _resources is None:
        _resources = faiss.StandardGpuResources()
    return _resources


def exact_index(index, gpu: bool | None = None):
    """The index to search for exact binary k-NN: a GPU copy of `index` (an
    IndexBinaryFlat, or an IndexBinaryIDMap over one, as the index files hold)
    when `choose_gpu(gpu)` says so, else `index` itself, unchanged."""
    flat, ids = faiss.downcast_IndexBinary(index), None
    if isinstance(flat, faiss.IndexBinaryIDMap):
        flat, ids = faiss.downcast_IndexBinary(flat.index), faiss.vector_to_array(flat.id_map)
    if not isinstance(flat, faiss.IndexBinaryFlat):
        raise TypeError(f"exact search needs an IndexBinaryFlat, got {type(flat).__name__}")
    return GpuExactBinaryIndex(flat, ids, owner=index) if choose_gpu(gpu) else index


def flat_index(codes: np.ndarray) -> "faiss.IndexBinaryFlat":
    """A CPU IndexBinaryFlat holding codes (n, bits/8) uint8, rows in their order."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    flat = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    flat.add(codes)
    return flat


def gpu_ranking(query_codes: np.ndarray, db_codes: np.ndarray, k: int,
                gpu: bool | None = None) -> np.ndarray | None:
    """The k nearest database rows of each query, (nq, min(k, n)) in the ranking
    contract's order, searched on a GPU when `choose_gpu(gpu)` says so; None
    otherwise, and the caller ranks as before (the evaluation's numpy metrics)."""
    if not choose_gpu(gpu):
        return None
    index = GpuExactBinaryIndex(flat_index(db_codes))
    return index.search(query_codes, min(k, index.ntotal))[1]


class GpuExactBinaryIndex:
    """A `GpuIndexBinaryFlat` copy of a CPU `IndexBinaryFlat` whose `search`
    returns what the CPU index returns: ascending distance, ties by row, rows
    mapped through `ids` (int64, one per row) when given."""

    def __init__(self, flat, ids: np.ndarray | None = None, *, owner=None):
        self.cpu, self.owner = flat, owner      # the owner frees `flat`: keep it alive
        self.ids = ids
        self.ntotal = flat.ntotal
        self.gpu = faiss.GpuIndexBinaryFlat(_gpu_resources(), flat)
        # FAISS's GPU indexes and resources are not thread-safe; Serve may call
        # a replica's search from several threads.
        self.lock = threading.Lock()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances int32 (nq, k), labels int64 (nq, k)), k <= ntotal."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        with self.lock:
            D, rows = search_ties_by_row(self.gpu, queries, k, self.ntotal, GPU_MAX_K,
                                         self.cpu.search)
        return D, rows if self.ids is None else self.ids[rows]


def search_ties_by_row(index, queries: np.ndarray, k: int, n: int, max_k: int,
                       fallback) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k by (distance, row) from `index`, whose search(q, kq) returns
    the kq nearest rows of n with ties in any order (a GPU k-selection), taking
    at most max_k at a time; `fallback(q, k)` answers the queries whose ties at
    the k-th distance need more than that."""
    nq = len(queries)
    D_out, I_out = np.empty((nq, k), np.int32), np.empty((nq, k), np.int64)
    todo = np.arange(nq)
    limit = min(n, max_k)
    kq = min(limit, max(2 * k, k + 32))
    while len(todo) and k <= limit:
        D, I = index.search(queries[todo], kq)
        # Complete when the kq-th distance is past the k-th: every item tied at
        # the k-th distance is then among the kq returned.
        complete = np.ones(len(todo), bool) if kq == n else D[:, -1] > D[:, k - 1]
        if complete.any():
            d, i = D[complete], I[complete]
            order = np.lexsort((i, d), axis=-1)[:, :k]
            D_out[todo[complete]] = np.take_along_axis(d, order, 1)
            I_out[todo[complete]] = np.take_along_axis(i, order, 1)
        todo = todo[~complete]
        if kq == limit:
            break
        kq = min(limit, 4 * kq)
    if len(todo):
        D_out[todo], I_out[todo] = fallback(queries[todo], k)
    return D_out, I_out

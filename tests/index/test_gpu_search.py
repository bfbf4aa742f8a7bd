"""hashgan_ray.index.gpu: when exact search goes to a GPU, and that the GPU path's
tie repair returns the CPU index's ranking, ties included.

The repair is tested here on the CPU: a GPU k-selection returns the kq nearest
rows with the items tied at the boundary in no set order, so the stand-in below
returns real FAISS distances with every tie shuffled. The GPU itself is checked
by the last test, where FAISS has GPU support and a GPU is visible."""
import logging

import numpy as np
import pytest

from hashgan_ray.evaluation import metrics
from hashgan_ray.evaluation.evaluate import _map
from hashgan_ray.index import gpu
from hashgan_ray.index.store import HashIndex, recall_at_k, write_index


def codes(n: int, nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, nbytes), dtype=np.uint8)


def test_decide_the_selection_rule():
    # (requested, GPU build, visible GPUs) -> GPU?, and why not when it was asked for
    assert gpu.decide(None, True, 1) == (True, None)
    assert gpu.decide(True, True, 2) == (True, None)
    assert gpu.decide(False, True, 1) == (False, None)          # asked for the CPU
    assert gpu.decide(None, False, 0) == (False, None)          # faiss-cpu: quietly the CPU
    assert gpu.decide(None, True, 0) == (False, None)           # no GPU visible
    use, why = gpu.decide(True, False, 0)
    assert not use and "hashgan-ray[gpu]" in why and "faiss-cpu" in why
    use, why = gpu.decide(True, True, 0)
    assert not use and "sees none" in why


def test_install_problem_names_both_and_the_fix():
    assert gpu.install_problem(["faiss-cpu"]) is None
    assert gpu.install_problem(["faiss-gpu"]) is None
    problem = gpu.install_problem(["faiss-cpu", "faiss-gpu"])
    assert "faiss-cpu and faiss-gpu are both installed" in problem
    assert "pip uninstall -y faiss-cpu faiss-gpu" in problem
    assert gpu.installed_faiss(), "no FAISS distribution found"


@pytest.mark.skipif(gpu.faiss_gpu_build(), reason="checks the faiss-cpu install (the default)")
def test_cpu_faiss_keeps_the_cpu_index_unchanged_and_says_why_when_given_a_gpu(caplog):
    flat = gpu.flat_index(codes(50, 4, 0))
    assert gpu.visible_gpus() == 0
    assert gpu.exact_index(flat) is flat                          # auto: the CPU, silently
    with caplog.at_level(logging.WARNING, logger="hashgan_ray.index.gpu"):
        gpu._warned.clear()
        assert gpu.exact_index(flat, gpu=True) is flat            # a Serve replica given a GPU
    assert "hashgan-ray[gpu]" in caplog.text


class AnyTieOrder:
    """The kq nearest rows, as a GPU k-selection may return them: exact
    distances (FAISS's CPU IndexBinaryFlat over every row), ties shuffled, so
    the rows tied at the kq-th distance are an arbitrary subset."""

    def __init__(self, flat, seed: int):
        self.flat, self.rng, self.calls = flat, np.random.default_rng(seed), []

    def search(self, queries, kq):
        self.calls.append(kq)
        D, I = self.flat.search(queries, self.flat.ntotal)
        order = np.lexsort((self.rng.random(D.shape), D), axis=-1)[:, :kq]
        return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


@pytest.mark.parametrize("nbytes,n,k,max_k", [
    (1, 3000, 10, 2048),      # 8 bits: ~12 rows per distance, many ties at the k-th
    (2, 2000, 100, 2048),     # widens past 2k: the k-th distance's ties run long
    (1, 3000, 50, 64),        # the ties outrun max_k: those queries take the fallback
    (4, 500, 500, 2048),      # k = n: everything
])
def test_tie_repair_returns_the_cpu_ranking(nbytes, n, k, max_k):
    db, queries = codes(n, nbytes, 1), codes(40, nbytes, 2)
    flat = gpu.flat_index(db)
    want_D, want_I = flat.search(queries, k)
    shuffled = AnyTieOrder(flat, seed=3)
    unrepaired = shuffled.search(queries, k)[1]
    assert not np.array_equal(unrepaired, want_I), "the stand-in must scramble ties"
    fallen_back = []

    def fallback(q, kk):
        fallen_back.append(len(q))
        return flat.search(q, kk)

    D, I = gpu.search_ties_by_row(shuffled, queries, k, n, max_k, fallback)
    np.testing.assert_array_equal(D, want_D)
    np.testing.assert_array_equal(I, want_I)
    if max_k == 64:
        assert sum(fallen_back) > 0 and all(kq <= max_k for kq in shuffled.calls)
    else:
        assert not fallen_back


def labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 6)) < 0.25


@pytest.mark.parametrize("k", [1, 10, 150, 400])
def test_map_of_an_exact_faiss_ranking_is_the_metrics_map(k):
    """The evaluation's GPU path ranks with an exact FAISS index and scores that
    ranking: with the CPU index's ranking it must give metrics' own MAP@k."""
    db, queries = codes(400, 1, 6), codes(30, 1, 7)            # 8 bits: ties everywhere
    db_labels, query_labels = labels(400, 8), labels(30, 9)
    ranking = gpu.flat_index(db).search(queries, k)[1]
    assert metrics.mean_average_precision_of_ranking(ranking, query_labels, db_labels) == \
        pytest.approx(metrics.mean_average_precision(queries, db, query_labels, db_labels,
                                                     top_k=k), abs=1e-12)
    with pytest.raises(ValueError, match="rows outside"):
        metrics.mean_average_precision_of_ranking(ranking + 400, query_labels, db_labels)
    with pytest.raises(ValueError, match="n_queries=30"):
        metrics.mean_average_precision_of_ranking(ranking[:5], query_labels, db_labels)


@pytest.mark.skipif(gpu.faiss_gpu_build(), reason="checks the faiss-cpu install (the default)")
def test_without_gpu_faiss_the_evaluation_ranks_with_metrics():
    db, queries = codes(100, 2, 10), codes(8, 2, 11)
    assert gpu.gpu_ranking(queries, db, 10) is None
    assert _map(queries, db, labels(8, 1), labels(100, 2), 10) == metrics.mean_average_precision(
        queries, db, labels(8, 1), labels(100, 2), top_k=10)


@pytest.mark.skipif(gpu.visible_gpus() == 0, reason="needs FAISS with GPU support "
                    "(pip install 'hashgan-ray[gpu]') and a visible GPU")
def test_gpu_index_equals_the_cpu_index(tmp_path):
    """On a GPU: every shard of a flat index, the recall check's and the
    evaluation's exact ranking, on GpuIndexBinaryFlat, equal to the CPU's, ties
    included."""
    db = codes(20_000, 2, 4)                     # 16 bits: heavy ties at every k
    ids = np.arange(10**6, 10**6 + len(db), dtype=np.int64)[::-1].copy()

    def write(writer):
        writer.add(ids, db, db[::-1].copy())

    write_index(tmp_path / "ix", write, bits=16, kind="flat", shards=3,
                manifest_fields={"checkpoint": {"fingerprint": "f" * 64, "path": "-"},
                                 "datasets": []})
    on_gpu = HashIndex(tmp_path / "ix")
    on_cpu = HashIndex(tmp_path / "ix")
    for shard in on_cpu.shards:
        shard.indexes = {t: i.owner for t, i in shard.indexes.items()}
    assert all(isinstance(i, gpu.GpuExactBinaryIndex) for s in on_gpu.shards
               for i in s.indexes.values())
    queries = codes(300, 2, 5)
    for target in ("image", "text"):
        for k in (1, 10, 100, 1000, 3000):
            D, I = on_gpu.search(queries, target, k)
            want_D, want_I = on_cpu.search(queries, target, k)
            np.testing.assert_array_equal(D, want_D)
            np.testing.assert_array_equal(I, want_I)
    assert recall_at_k(tmp_path / "ix", k=10) == {"image": 1.0, "text": 1.0}
    # the evaluation's MAP@k from the GPU ranking equals metrics' numpy ranking
    query_labels, db_labels = labels(300, 12), labels(len(db), 13)
    for k in (10, 500, 2500):
        assert np.array_equal(gpu.gpu_ranking(queries, db, k), gpu.flat_index(db).search(queries, k)[1])
        assert _map(queries, db, query_labels, db_labels, k) == pytest.approx(
            metrics.mean_average_precision(queries, db, query_labels, db_labels, top_k=k), abs=1e-12)

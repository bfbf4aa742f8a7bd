"""hashgan_ray.evaluation.metrics against deliberately naive references, hand cases, edge cases.

The references unpack bits, loop over queries in Python and rank with an
explicit sort key (distance, database index) - the project's tie rule.
"""
from __future__ import annotations

import numpy as np
import pytest

from hashgan_ray.evaluation import metrics
from hashgan_ray.evaluation.metrics import (hamming_distances, mean_average_precision,
                                            plot_pr_curves, pr_curve, precision_at_k, relevance)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- #
# Naive references
# --------------------------------------------------------------------------- #

def ref_distances(q_codes, db_codes):
    qb = np.unpackbits(q_codes, axis=1).astype(int)
    db = np.unpackbits(db_codes, axis=1).astype(int)
    return np.array([[int(np.sum(a != b)) for b in db] for a in qb])


def ref_relevant(q_labels, db_labels):
    return np.array([[bool(np.any((a != 0) & (b != 0))) for b in db_labels]
                     for a in q_labels])


def ref_ranking(dist_row):
    return sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))


def ref_ap(ranking, rel_row, top_k):
    hits, total = 0, 0.0
    for r, j in enumerate(ranking[:top_k], start=1):
        if rel_row[j]:
            hits += 1
            total += hits / r
    return total / hits if hits else 0.0


def ref_map(q_codes, db_codes, q_labels, db_labels, top_k=None):
    dist, rel = ref_distances(q_codes, db_codes), ref_relevant(q_labels, db_labels)
    k = len(db_codes) if top_k is None else top_k
    return float(np.mean([ref_ap(ref_ranking(dist[i]), rel[i], k)
                          for i in range(len(q_codes))]))


def ref_precision_at_k(q_codes, db_codes, q_labels, db_labels, k):
    dist, rel = ref_distances(q_codes, db_codes), ref_relevant(q_labels, db_labels)
    k = min(k, len(db_codes))
    return float(np.mean([sum(rel[i][j] for j in ref_ranking(dist[i])[:k]) / k
                          for i in range(len(q_codes))]))


def ref_pr_curve(q_codes, db_codes, q_labels, db_labels):
    dist, rel = ref_distances(q_codes, db_codes), ref_relevant(q_labels, db_labels)
    bits = q_codes.shape[1] * 8
    precision, recall = [], []
    for r in range(bits + 1):
        ps, rs = [], []
        for i in range(len(q_codes)):
            got = [j for j in range(len(db_codes)) if dist[i][j] <= r]
            hits = sum(rel[i][j] for j in got)
            if got:
                ps.append(hits / len(got))
            if rel[i].sum():
                rs.append(hits / rel[i].sum())
        precision.append(np.mean(ps) if ps else np.nan)
        recall.append(np.mean(rs) if rs else np.nan)
    return np.array(precision), np.array(recall)


# --------------------------------------------------------------------------- #
# Random cases with many ties
# --------------------------------------------------------------------------- #

def tie_heavy_case(seed, bits, nq=12, ndb=90, n_labels=5, n_distinct=6):
    """Few distinct codes (many equal distances) and duplicated db items."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, size=(n_distinct, bits // 8), dtype=np.uint8)
    db_codes = pool[rng.integers(0, n_distinct, ndb)]
    q_codes = np.concatenate([pool[rng.integers(0, n_distinct, nq // 2)],
                              rng.integers(0, 256, (nq - nq // 2, bits // 8), dtype=np.uint8)])
    db_labels = (rng.random((ndb, n_labels)) < 0.25).astype(np.int64)
    q_labels = (rng.random((nq, n_labels)) < 0.25).astype(np.int64)
    q_labels[0] = 0                       # a query with no relevant item at all
    # duplicate a stretch of the database (same code and labels, later index)
    db_codes[-10:], db_labels[-10:] = db_codes[:10], db_labels[:10]
    return q_codes, db_codes, q_labels, db_labels


BITS = [8, 16, 24, 40, 64, 72, 128]


@pytest.mark.parametrize("bits", BITS)
def test_hamming_distances_match_reference(bits):
    q, d, _, _ = tie_heavy_case(bits, bits)
    got = hamming_distances(q, d)
    assert got.shape == (len(q), len(d))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref_distances(q, d))


def test_hamming_distances_uint16_above_255_bits():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (3, 33), dtype=np.uint8)            # 264 bits
    d = rng.integers(0, 256, (20, 33), dtype=np.uint8)
    d[0] = ~q[0]                                                 # distance 264
    got = hamming_distances(q, d)
    assert got.dtype == np.uint16
    assert got[0, 0] == 264
    np.testing.assert_array_equal(got, ref_distances(q, d))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("top_k", [None, 1, 7, 90, 500])        # ndb = 90
def test_map_matches_reference(bits, top_k):
    case = tie_heavy_case(100 + bits, bits)
    assert mean_average_precision(*case, top_k=top_k) == pytest.approx(
        ref_map(*case, top_k=top_k), abs=1e-12)


@pytest.mark.parametrize("bits", [8, 40, 128])
@pytest.mark.parametrize("k", [1, 5, 90, 200])
def test_precision_at_k_matches_reference(bits, k):
    case = tie_heavy_case(200 + bits, bits)
    assert precision_at_k(*case, k=k) == pytest.approx(
        ref_precision_at_k(*case, k=k), abs=1e-12)


@pytest.mark.parametrize("bits", [8, 16, 24])
def test_pr_curve_matches_reference(bits):
    case = tie_heavy_case(300 + bits, bits, nq=8, ndb=40)
    got = pr_curve(*case)
    want_p, want_r = ref_pr_curve(*case)
    np.testing.assert_array_equal(got["radius"], np.arange(bits + 1))
    np.testing.assert_allclose(got["precision"], want_p, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got["recall"], want_r, atol=1e-12, equal_nan=True)


def test_many_threads_and_blocks_give_the_same_answer(monkeypatch):
    # Several ranges, several query blocks per range, several tiles per block.
    monkeypatch.setattr(metrics, "_num_workers", lambda: 3)
    monkeypatch.setattr(metrics, "_QUERY_BLOCK", 2)
    monkeypatch.setattr(metrics, "_TILE_BYTES", 16)              # tile = 1024
    case = tie_heavy_case(7, 16, nq=23, ndb=2500, n_distinct=40)
    q, d, ql, dl = case
    want_map = ref_map(q[:5], d, ql[:5], dl)
    assert mean_average_precision(q[:5], d, ql[:5], dl) == pytest.approx(want_map, abs=1e-12)
    # full query set: compare the threaded path with a single-thread run
    got = [mean_average_precision(*case), mean_average_precision(*case, top_k=100),
           precision_at_k(*case, k=30), hamming_distances(q, d)]
    monkeypatch.setattr(metrics, "_num_workers", lambda: 1)
    monkeypatch.setattr(metrics, "_QUERY_BLOCK", 8)
    want = [mean_average_precision(*case), mean_average_precision(*case, top_k=100),
            precision_at_k(*case, k=30), hamming_distances(q, d)]
    assert got[:3] == pytest.approx(want[:3], abs=1e-12)
    np.testing.assert_array_equal(got[3], want[3])


def test_uint64_keys_give_the_same_answer(monkeypatch):
    case = tie_heavy_case(11, 16)
    want = mean_average_precision(*case), precision_at_k(*case, k=9)
    monkeypatch.setattr(metrics, "_KEY32_BITS", 0)               # force uint64 keys
    assert metrics._Database(case[1]).key_dtype == np.uint64
    assert (mean_average_precision(*case), precision_at_k(*case, k=9)) == pytest.approx(want)


def test_label_dtypes_and_more_than_64_labels():
    rng = np.random.default_rng(5)
    q, d = (rng.integers(0, 256, (n, 2), dtype=np.uint8) for n in (6, 50))
    ql, dl = ((rng.random((n, 70)) < 0.03) for n in (6, 50))     # 70 labels: 2 words
    want = ref_map(q, d, ql, dl)
    for dtype in (bool, np.int8, np.uint16, np.float32, np.float64):
        assert mean_average_precision(q, d, ql.astype(dtype) * 3, dl.astype(dtype)) \
            == pytest.approx(want, abs=1e-12)
    np.testing.assert_array_equal(relevance(ql, dl), ref_relevant(ql, dl))


# --------------------------------------------------------------------------- #
# Hand-computed cases
# --------------------------------------------------------------------------- #

# One 8-bit query 00000000 against 4 database items:
#   item 0: 00000011  distance 2  relevant
#   item 1: 00000001  distance 1  irrelevant
#   item 2: 00000101  distance 2  irrelevant
#   item 3: 00001000  distance 1  relevant
# Ranking (distance, then database order): item1, item3, item0, item2
#   rank 1 item1 -, rank 2 item3 +, rank 3 item0 +, rank 4 item2 -
# AP = (1/2) * (1/2 + 2/3) = 7/12.
# (Breaking the distance-1 tie the other way would give (1/2)(1/1 + 2/3) = 5/6.)
HAND_Q = np.array([[0b00000000]], dtype=np.uint8)
HAND_DB = np.array([[0b00000011], [0b00000001], [0b00000101], [0b00001000]], dtype=np.uint8)
HAND_QL = np.array([[1, 0]])
HAND_DL = np.array([[1, 0], [0, 1], [0, 1], [1, 1]])


def test_hand_example_map():
    case = HAND_Q, HAND_DB, HAND_QL, HAND_DL
    assert mean_average_precision(*case) == pytest.approx(7 / 12)
    # top 2 = item1 -, item3 +: R = 1 within the cut, AP = (1/1) * (1/2)
    assert mean_average_precision(*case, top_k=2) == pytest.approx(1 / 2)
    assert mean_average_precision(*case, top_k=1) == 0.0
    assert mean_average_precision(*case, top_k=3) == pytest.approx(7 / 12)
    assert mean_average_precision(*case, top_k=10) == pytest.approx(7 / 12)


def test_hand_example_precision_at_k():
    case = HAND_Q, HAND_DB, HAND_QL, HAND_DL
    assert precision_at_k(*case, k=1) == 0.0
    assert precision_at_k(*case, k=2) == pytest.approx(1 / 2)
    assert precision_at_k(*case, k=3) == pytest.approx(2 / 3)
    assert precision_at_k(*case, k=9) == pytest.approx(2 / 4)   # k > ndb -> ndb


def test_hand_example_pr_curve():
    got = pr_curve(HAND_Q, HAND_DB, HAND_QL, HAND_DL)
    # r = 0: nothing retrieved -> precision undefined (NaN), recall 0
    # r = 1: {item1, item3}, 1 relevant of 2 -> P 1/2, recall 1/2
    # r >= 2: all 4, both relevant -> P 1/2, recall 1
    want_p = np.array([np.nan, 0.5] + [0.5] * 7)
    want_r = np.array([0.0, 0.5] + [1.0] * 7)
    np.testing.assert_array_equal(got["radius"], np.arange(9))
    np.testing.assert_allclose(got["precision"], want_p, equal_nan=True)
    np.testing.assert_allclose(got["recall"], want_r)


def test_queries_without_relevant_items_count_as_zero():
    # query 0 is the hand query (AP 7/12); query 1 has a label nobody has.
    q = np.repeat(HAND_Q, 2, axis=0)
    ql = np.array([[1, 0, 0], [0, 0, 1]])
    dl = np.concatenate([HAND_DL, np.zeros((4, 1), int)], axis=1)
    assert mean_average_precision(q, HAND_DB, ql, dl) == pytest.approx(7 / 24)
    assert precision_at_k(q, HAND_DB, ql, dl, k=2) == pytest.approx(1 / 4)
    curve = pr_curve(q, HAND_DB, ql, dl)
    # recall ignores query 1; precision averages both queries where they retrieve
    np.testing.assert_allclose(curve["recall"][1:3], [0.5, 1.0])
    np.testing.assert_allclose(curve["precision"][1:3], [0.25, 0.25])


def test_no_relevant_item_anywhere_gives_nan_recall():
    ql = np.zeros((1, 2), int)
    curve = pr_curve(HAND_Q, HAND_DB, ql, HAND_DL)
    assert np.isnan(curve["recall"]).all()
    assert mean_average_precision(HAND_Q, HAND_DB, ql, HAND_DL) == 0.0


# --------------------------------------------------------------------------- #
# Plot
# --------------------------------------------------------------------------- #

def test_plot_pr_curves_writes_png(tmp_path):
    q, d, ql, dl = tie_heavy_case(1, 16, nq=6, ndb=40)
    curves = {"I->T": pr_curve(q, d, ql, dl), "T->I": pr_curve(d[:6], q, dl[:6], ql)}
    path = tmp_path / "plots" / "pr.png"
    plot_pr_curves(curves, path, title="PR @ 16 bits")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in path.parent.iterdir()] == ["pr.png"]   # no temp file left
    plot_pr_curves(curves, str(path))                                # overwrite, str path
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_pr_curves_rejects_bad_curves(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        plot_pr_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="precision"):
        plot_pr_curves({"a": {"recall": [0.1]}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="differ"):
        plot_pr_curves({"a": {"recall": [0.1], "precision": [1, 2]}}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- #
# Invalid inputs
# --------------------------------------------------------------------------- #

GOOD = dict(query_codes=HAND_Q, db_codes=HAND_DB, query_labels=HAND_QL, db_labels=HAND_DL)


@pytest.mark.parametrize("change, message", [
    (dict(query_codes=HAND_Q.astype(np.int64)), "query_codes must have dtype uint8"),
    (dict(db_codes=HAND_DB[:, 0]), "db_codes must be 2-D"),
    (dict(db_codes=[[1], [2]]), "db_codes must be a numpy array"),
    (dict(query_codes=np.zeros((0, 1), np.uint8)), "query_codes is empty"),
    (dict(db_codes=np.zeros((4, 0), np.uint8)), "0 bytes per code"),
    (dict(db_codes=np.zeros((4, 2), np.uint8)), "1 bytes per code but db_codes has 2"),
    (dict(query_labels=np.array([[1, 0], [0, 1]])), "query_labels has 2 rows but query_codes has 1"),
    (dict(db_labels=HAND_DL[:3]), "db_labels has 3 rows but db_codes has 4"),
    (dict(db_labels=HAND_DL[:, :1]), "query_labels has 2 label columns but db_labels has 1"),
    (dict(query_labels=np.array([["a", "b"]])), "query_labels must be bool, integer or float"),
    (dict(query_labels=np.array([[np.nan, 1.0]])), "query_labels contains NaN"),
    (dict(db_labels=np.zeros(4)), "db_labels must be 2-D"),
    (dict(query_labels=np.zeros((1, 0))), "0 label columns"),
])
def test_invalid_inputs_raise(change, message):
    args = {**GOOD, **change}
    with pytest.raises(ValueError, match=message):
        mean_average_precision(**args)
    with pytest.raises(ValueError, match=message):
        precision_at_k(**args, k=1)
    with pytest.raises(ValueError, match=message):
        pr_curve(**args)


@pytest.mark.parametrize("k", [0, -3, 1.5, True, None, "2"])
def test_invalid_k_raises(k):
    if k is not None:
        with pytest.raises(ValueError, match="top_k"):
            mean_average_precision(**GOOD, top_k=k)
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(**GOOD, k=k)


def test_hamming_distances_invalid_inputs():
    with pytest.raises(ValueError, match="bytes per code"):
        hamming_distances(HAND_Q, np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="dtype uint8"):
        hamming_distances(HAND_Q.astype(bool), HAND_DB)
    with pytest.raises(ValueError, match="empty"):
        hamming_distances(HAND_Q, HAND_DB[:0])


def test_relevance_invalid_inputs():
    with pytest.raises(ValueError, match="label columns"):
        relevance(HAND_QL, HAND_DL[:, :1])
    with pytest.raises(ValueError, match="empty"):
        relevance(HAND_QL[:0], HAND_DL)

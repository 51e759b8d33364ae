"""asen.metrics against a straightforward per-query implementation (contract 5)."""

from __future__ import annotations

import numpy as np
import pytest

from asen.metrics import MapResult, average_precision, mean_average_precision

# ------------------------------------------------------------------ reference (loops)


def reference_ap(score, relevant) -> float:
    """AP of one query: walk the stable descending ranking, sum precision at each hit."""
    score = [float(s) for s in score]
    relevant = [bool(r) for r in relevant]
    order = sorted(range(len(score)), key=lambda j: -score[j])  # stable: ties by index
    hits = 0
    total = 0.0
    for rank, j in enumerate(order, start=1):
        if relevant[j]:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def reference_map(query_emb, query_attr, query_val, cand_emb, cand_attr, cand_val):
    """Per-query loop: returns (overall, per_attribute, num_queries, ap per query)."""
    ap_of_attr: dict[int, list[float]] = {}
    aps = []
    for q in range(len(query_attr)):
        a = int(query_attr[q])
        cands = [j for j in range(len(cand_attr)) if int(cand_attr[j]) == a]
        score = [float(np.dot(query_emb[q], cand_emb[j])) for j in cands]
        relevant = [int(cand_val[j]) == int(query_val[q]) for j in cands]
        ap = reference_ap(score, relevant)
        aps.append(ap)
        ap_of_attr.setdefault(a, []).append(ap)
    per_attribute = {a: sum(v) / len(v) for a, v in ap_of_attr.items()}
    num_queries = {a: len(v) for a, v in ap_of_attr.items()}
    overall = sum(per_attribute[a] * num_queries[a] for a in per_attribute) / sum(
        num_queries.values()
    )
    return overall, per_attribute, num_queries, aps


# ------------------------------------------------------------------------ fixtures


def tied_split(rng, num, dim, attr_values, attr_weights=None):
    """A split whose embeddings take few small integer values: many exact score ties,
    and every dot product exact in float32, so any summation order gives the same."""
    num_attr = len(attr_values)
    attr = rng.choice(num_attr, size=num, p=attr_weights).astype(np.int64)
    val = np.array([rng.integers(0, attr_values[a]) for a in attr], dtype=np.int64)
    emb = rng.integers(-1, 2, size=(num, dim)).astype(np.float32)
    return emb, attr, val


# ------------------------------------------------------------------ average_precision


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    q, c = 40, 57
    scores = np.round(rng.random((q, c)), 1)  # 11 distinct values: many ties
    relevant = rng.random((q, c)) < 0.2
    relevant[:5] = False  # queries with no relevant candidate
    relevant[5, :] = True
    scores[6] = 0.5  # a row that is all one tie
    for dtype in (np.float64, np.float32):
        got = average_precision(scores.astype(dtype), relevant)
        assert got.dtype == np.float64 and got.shape == (q,)
        want = [reference_ap(s, r) for s, r in zip(scores.astype(dtype), relevant, strict=True)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        assert np.all(got[:5] == 0.0)
        assert got[5] == 1.0


def test_average_precision_integer_scores_and_signed_zeros():
    rng = np.random.default_rng(7)
    scores = rng.integers(-2, 3, size=(30, 25))
    relevant = rng.random((30, 25)) < 0.3
    got = average_precision(scores, relevant)
    want = [reference_ap(s, r) for s, r in zip(scores, relevant, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # -0.0 and +0.0 tie: the lower index ranks first whichever zero it holds
    zeros = np.array([[0.0, -0.0, 0.0, -0.0, -1.0, 1.0]], dtype=np.float32)
    rel = np.array([[False, True, False, False, True, False]])
    want = reference_ap(zeros[0], rel[0])  # ranking 5, 0, 1, 2, 3, 4: hits at 3 and 6
    assert want == pytest.approx((1 / 3 + 2 / 6) / 2)
    assert average_precision(zeros, rel)[0] == pytest.approx(want, abs=1e-12)


def test_average_precision_hand_computed():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    relevant = np.array([[True, False, True, False]])  # relevant at ranks 1 and 3 of 4
    assert average_precision(scores, relevant)[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    # same scores, shuffled columns: ranking follows scores, not positions
    scores = np.array([[0.6, 0.9, 0.7, 0.8]])
    relevant = np.array([[False, True, True, False]])
    assert average_precision(scores, relevant)[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    # ties broken by index: candidate 0 and 1 tie, 1 relevant -> rank 2
    scores = np.array([[0.5, 0.5, 0.1]])
    relevant = np.array([[False, True, False]])
    assert average_precision(scores, relevant)[0] == pytest.approx(1 / 2)


def test_average_precision_perfect_and_none():
    scores = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    relevant = np.array([[True, True, False, False], [False, False, False, False]])
    np.testing.assert_array_equal(average_precision(scores, relevant), [1.0, 0.0])
    empty = average_precision(np.zeros((3, 0)), np.zeros((3, 0), dtype=bool))
    np.testing.assert_array_equal(empty, np.zeros(3))


@pytest.mark.parametrize(
    ("scores", "relevant", "match"),
    [
        (np.zeros(4), np.zeros(4, dtype=bool), "2-D"),
        (np.zeros((2, 3)), np.zeros((2, 4), dtype=bool), "must match"),
        (np.zeros((2, 3)), np.zeros((2, 3), dtype=np.int64), "bool"),
        (np.zeros((2, 3), dtype=bool), np.zeros((2, 3), dtype=bool), "real"),
        (np.full((2, 3), np.nan), np.zeros((2, 3), dtype=bool), "NaN"),
    ],
)
def test_average_precision_rejects_bad_input(scores, relevant, match):
    with pytest.raises(ValueError, match=match):
        average_precision(scores, relevant)


# ------------------------------------------------------------- mean_average_precision


def assert_matches_reference(result: MapResult, queries, cands):
    overall, per_attribute, num_queries, _ = reference_map(*queries, *cands)
    assert set(result.per_attribute) == set(per_attribute)
    assert result.num_queries == num_queries
    for a, value in per_attribute.items():
        assert result.per_attribute[a] == pytest.approx(value, abs=1e-9)
    assert result.overall == pytest.approx(overall, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_map_matches_reference_with_ties(seed, chunk_size):
    rng = np.random.default_rng(seed)
    attr_values = [3, 5, 2, 4]
    weights = [0.5, 0.3, 0.15, 0.05]
    queries = tied_split(rng, 60, 3, attr_values, weights)
    cands = tied_split(rng, 150, 3, attr_values, weights)
    # values no candidate has: queries with no relevant candidate
    queries[2][:4] = 99
    result = mean_average_precision(
        *queries, *cands, num_attributes=len(attr_values), chunk_size=chunk_size
    )
    assert isinstance(result, MapResult)
    assert_matches_reference(result, queries, cands)
    # the per-query APs behind it agree one by one too
    _, _, _, aps = reference_map(*queries, *cands)
    assert result.overall == pytest.approx(np.mean(aps), abs=1e-9)


def test_map_weights_attributes_by_number_of_queries():
    # attribute 0: 3 queries, all perfect (AP 1); attribute 1: 1 query, AP 0.5
    q_emb = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    q_attr = np.array([0, 0, 0, 1])
    q_val = np.array([0, 0, 0, 0])
    c_emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    c_attr = np.array([0, 0, 1, 1])
    c_val = np.array([0, 1, 1, 0])
    result = mean_average_precision(q_emb, q_attr, q_val, c_emb, c_attr, c_val)
    assert result.per_attribute == {0: pytest.approx(1.0), 1: pytest.approx(0.5)}
    assert result.num_queries == {0: 3, 1: 1}
    weighted = (3 * 1.0 + 1 * 0.5) / 4
    unweighted = (1.0 + 0.5) / 2
    assert result.overall == pytest.approx(weighted, abs=1e-12)
    assert abs(result.overall - unweighted) > 0.1
    assert_matches_reference(result, (q_emb, q_attr, q_val), (c_emb, c_attr, c_val))


def test_map_random_normalised_embeddings():
    # the real setting: L2-normalised float embeddings, interleaved attributes
    rng = np.random.default_rng(11)
    q_emb = rng.standard_normal((50, 16)).astype(np.float32)
    c_emb = rng.standard_normal((200, 16)).astype(np.float32)
    q_emb /= np.linalg.norm(q_emb, axis=1, keepdims=True)
    c_emb /= np.linalg.norm(c_emb, axis=1, keepdims=True)
    q_attr, c_attr = rng.integers(0, 3, 50), rng.integers(0, 3, 200)
    q_val, c_val = rng.integers(0, 4, 50), rng.integers(0, 4, 200)
    result = mean_average_precision(q_emb, q_attr, q_val, c_emb, c_attr, c_val)
    # scores from the same float32 matmul the module uses, then the per-query loop
    per_attr = {}
    for a in np.unique(q_attr):
        qi, ci = np.flatnonzero(q_attr == a), np.flatnonzero(c_attr == a)
        scores = q_emb[qi] @ c_emb[ci].T
        aps = [reference_ap(scores[k], c_val[ci] == q_val[q]) for k, q in enumerate(qi)]
        per_attr[int(a)] = np.mean(aps)
    for a, value in per_attr.items():
        assert result.per_attribute[a] == pytest.approx(value, abs=1e-9)


def test_map_perfect_ranking_is_one():
    # each value has its own direction; candidates of a value lie on it
    eye = np.eye(4, dtype=np.float32)
    q_val = np.array([0, 1, 2, 3, 0, 1])
    q_attr = np.array([0, 0, 0, 0, 1, 1])
    c_val = np.array([0, 0, 1, 2, 3, 3, 0, 1, 1])
    c_attr = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    result = mean_average_precision(eye[q_val], q_attr, q_val, eye[c_val], c_attr, c_val)
    assert result.overall == 1.0
    assert result.per_attribute == {0: 1.0, 1: 1.0}


def test_map_attribute_without_candidates_gives_zero():
    rng = np.random.default_rng(3)
    q_emb = rng.standard_normal((5, 4)).astype(np.float32)
    c_emb = rng.standard_normal((4, 4)).astype(np.float32)
    q_attr = np.array([0, 0, 2, 2, 2])  # attribute 2 has no candidates
    q_val = np.array([0, 1, 0, 0, 1])
    c_attr = np.array([0, 0, 1, 1])
    c_val = np.array([0, 1, 0, 1])
    result = mean_average_precision(q_emb, q_attr, q_val, c_emb, c_attr, c_val, num_attributes=3)
    assert result.per_attribute[2] == 0.0
    assert result.num_queries == {0: 2, 2: 3}
    assert 1 not in result.per_attribute  # candidates but no queries: not reported
    assert result.overall == pytest.approx(2 * result.per_attribute[0] / 5, abs=1e-12)
    assert_matches_reference(result, (q_emb, q_attr, q_val), (c_emb, c_attr, c_val))


def _good():
    emb = np.zeros((3, 4), dtype=np.float32)
    ids = np.zeros(3, dtype=np.int64)
    return [emb, ids, ids, emb.copy(), ids.copy(), ids.copy()]


@pytest.mark.parametrize(
    ("position", "value", "match"),
    [
        (0, np.zeros((3, 5), dtype=np.float32), "dimension"),
        (0, np.zeros(3, dtype=np.float32), "query_emb must be 2-D"),
        (1, np.zeros(2, dtype=np.int64), "query_attr has 2 entries"),
        (2, np.zeros((3, 1), dtype=np.int64), "query_val must be 1-D"),
        (4, np.zeros(3, dtype=np.float32), "cand_attr must be an integer"),
        (5, np.zeros(4, dtype=np.int64), "cand_val has 4 entries"),
        (3, np.array([[np.nan] * 4] * 3), "NaN"),
        (3, np.zeros((3, 4), dtype=np.complex64), "real"),
    ],
)
def test_map_rejects_bad_input(position, value, match):
    args = _good()
    args[position] = value
    with pytest.raises(ValueError, match=match):
        mean_average_precision(*args)


def test_map_rejects_out_of_range_attributes_and_no_queries():
    args = _good()
    args[4] = np.array([0, 1, 5])
    with pytest.raises(ValueError, match="num_attributes=3"):
        mean_average_precision(*args, num_attributes=3)
    empty = [np.zeros((0, 4), dtype=np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)]
    with pytest.raises(ValueError, match="no queries"):
        mean_average_precision(*empty, *_good()[3:])


def test_fast_float32_ranking_equals_stable_argsort():
    from asen.metrics import _descending_order

    rng = np.random.default_rng(5)
    special = np.array(
        [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0],
        dtype=np.float32,
    )
    scores = rng.choice(special, size=(50, 80)).astype(np.float32)
    scores[25:] = np.round(rng.standard_normal((25, 80)), 1)
    want = np.argsort(-scores, axis=1, kind="stable")
    np.testing.assert_array_equal(_descending_order(scores), want)

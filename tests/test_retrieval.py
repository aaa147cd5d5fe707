from __future__ import annotations

import numpy as np
import pytest
import torch

from stpredict.retrieval import (
    RetrievalResult,
    aggregate,
    naive_topk_cosine,
    resolve_device,
    retrieve,
    topk_cosine,
)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def _assert_same_neighbours(idx_a, sim_a, idx_b, sim_b):
    assert idx_a.shape == idx_b.shape
    for row_a, row_b in zip(idx_a, idx_b):
        assert set(row_a.tolist()) == set(row_b.tolist())
    np.testing.assert_allclose(sim_a, sim_b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("chunk_size", "key_chunk_size"), [(2048, 65536), (7, 65536), (1, 13), (16, 10), (33, 300)]
)
def test_topk_matches_naive(rng, chunk_size, key_chunk_size):
    queries = rng.normal(size=(101, 12))
    keys = rng.normal(size=(300, 12)) * rng.uniform(0.1, 10, size=(300, 1))  # norms must not matter
    idx, sim = topk_cosine(queries, keys, 10, chunk_size=chunk_size, key_chunk_size=key_chunk_size)
    ref_idx, ref_sim = naive_topk_cosine(queries, keys, 10)
    assert idx.dtype == np.int64
    assert sim.dtype == np.float32
    _assert_same_neighbours(idx, sim, ref_idx, ref_sim)
    # sorted by decreasing similarity
    assert np.all(np.diff(sim, axis=1) <= 1e-6)


def test_topk_key_chunks_smaller_than_k(rng):
    # key blocks of 3 rows while k = 8: the merge must still find the global top-8
    queries, keys = rng.normal(size=(9, 5)), rng.normal(size=(40, 5))
    idx, sim = topk_cosine(queries, keys, 8, chunk_size=4, key_chunk_size=3)
    ref_idx, ref_sim = naive_topk_cosine(queries, keys, 8)
    _assert_same_neighbours(idx, sim, ref_idx, ref_sim)


def test_topk_similarities_are_cosine(rng):
    queries, keys = rng.normal(size=(5, 4)), rng.normal(size=(20, 4))
    idx, sim = topk_cosine(queries, keys, 3)
    for i in range(5):
        for j, s in zip(idx[i], sim[i]):
            cos = queries[i] @ keys[j] / np.linalg.norm(queries[i]) / np.linalg.norm(keys[j])
            assert s == pytest.approx(cos, abs=1e-6)


def test_topk_accepts_torch_and_k_equals_r(rng):
    queries = torch.from_numpy(rng.normal(size=(6, 3)).astype(np.float32))
    keys = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))
    idx, sim = topk_cosine(queries, keys, 4)
    assert isinstance(idx, np.ndarray)
    assert sorted(idx[0].tolist()) == [0, 1, 2, 3]
    ref_idx, ref_sim = naive_topk_cosine(queries.numpy(), keys.numpy(), 4)
    _assert_same_neighbours(idx, sim, ref_idx, ref_sim)


def test_topk_empty_queries(rng):
    idx, sim = topk_cosine(np.zeros((0, 3)), rng.normal(size=(4, 3)), 2)
    assert idx.shape == (0, 2)
    assert sim.shape == (0, 2)


def test_topk_validation(rng):
    keys = rng.normal(size=(5, 3))
    with pytest.raises(ValueError, match=r"k must be at most the number of reference spots \(5\), got 6"):
        topk_cosine(keys, keys, 6)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        topk_cosine(keys, keys, 0)
    with pytest.raises(TypeError, match="k must be an integer"):
        topk_cosine(keys, keys, 2.0)
    with pytest.raises(ValueError, match="queries have 4 features but keys have 3"):
        topk_cosine(rng.normal(size=(2, 4)), keys, 2)
    bad = keys.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="keys must be finite"):
        topk_cosine(keys, bad, 2)
    with pytest.raises(ValueError, match="queries must be a 2-d array"):
        topk_cosine(keys[0], keys, 2)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        topk_cosine(keys, keys, 2, chunk_size=0)
    with pytest.raises(TypeError, match="values must be a numeric array"):
        retrieve(keys, keys, np.array([["a"]] * 5), 2)


def test_aggregate_mean(rng):
    values = rng.normal(size=(10, 4))
    idx = np.array([[0, 3, 9], [2, 2, 5]])
    out = aggregate(values, idx)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], values[[0, 3, 9]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(out[1], (2 * values[2] + values[5]) / 3, rtol=1e-6)


def test_aggregate_inverse_distance2_by_hand():
    values = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    idx = np.array([[0, 1, 2]])
    d = np.array([[1.0, 2.0, 4.0]])
    out = aggregate(values, idx, weighting="inverse_distance2", distances=d, eps=0.0 + 1e-12)
    w = np.array([1.0, 1 / 4, 1 / 16])
    w /= w.sum()  # 16/21, 4/21, 1/21
    expected = w @ values
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[0], [19 / 21, 7 / 21], rtol=1e-6)


def test_aggregate_inverse_distance2_zero_distance_dominates():
    values = np.array([[5.0], [0.0]])
    out = aggregate(
        values, np.array([[0, 1]]), weighting="inverse_distance2", distances=np.array([[0.0, 1.0]])
    )
    assert out[0, 0] == pytest.approx(5.0, rel=1e-6)
    assert np.isfinite(out).all()


def test_aggregate_softmax_by_hand():
    values = np.array([[2.0, 0.0], [0.0, 4.0]])
    sims = np.array([[0.9, 0.4]])
    out = aggregate(values, np.array([[0, 1]]), weighting="softmax", similarities=sims, temperature=0.5)
    e = np.exp(np.array([0.9, 0.4]) / 0.5)
    w = e / e.sum()
    np.testing.assert_allclose(out[0], [2 * w[0], 4 * w[1]], rtol=1e-6)


def test_aggregate_chunks_large_gene_count(rng, monkeypatch):
    # force tiny gather blocks so several chunks are used
    import stpredict.retrieval as retrieval

    monkeypatch.setattr(retrieval, "_GATHER_FLOATS", 50)
    values = rng.normal(size=(30, 7))
    idx = rng.integers(0, 30, size=(23, 4))
    out = aggregate(values, idx)
    np.testing.assert_allclose(out, values[idx].mean(1), rtol=1e-5, atol=1e-6)


def test_aggregate_validation(rng):
    values = rng.normal(size=(4, 2))
    with pytest.raises(ValueError, match="needs distances"):
        aggregate(values, np.array([[0, 1]]), weighting="inverse_distance2")
    with pytest.raises(ValueError, match="needs similarities"):
        aggregate(values, np.array([[0, 1]]), weighting="softmax")
    with pytest.raises(ValueError, match="weighting must be one of"):
        aggregate(values, np.array([[0, 1]]), weighting="median")
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        aggregate(values, np.array([[0, 4]]))
    with pytest.raises(TypeError, match="indices must be integers"):
        aggregate(values, np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="similarities must have the shape of indices"):
        aggregate(values, np.array([[0, 1]]), weighting="softmax", similarities=np.ones((1, 3)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        aggregate(
            values, np.array([[0, 1]]), weighting="softmax", similarities=np.ones((1, 2)), temperature=0
        )


@pytest.mark.parametrize("weighting", ["mean", "inverse_distance2", "softmax"])
def test_retrieve_end_to_end(rng, weighting):
    keys = rng.normal(size=(80, 6))
    values = rng.random((80, 5))
    queries = rng.normal(size=(17, 6)) * 3
    res = retrieve(queries, keys, values, 7, weighting=weighting, temperature=0.3, chunk_size=5)
    assert isinstance(res, RetrievalResult)
    assert res.prediction.shape == (17, 5)
    assert res.prediction.dtype == np.float32
    ref_idx, ref_sim = naive_topk_cosine(queries, keys, 7)
    _assert_same_neighbours(res.indices, res.similarities, ref_idx, ref_sim)
    # distances are Euclidean on the un-normalised embeddings
    expected_d = np.linalg.norm(keys[res.indices] - queries[:, None, :], axis=2)
    np.testing.assert_allclose(res.distances, expected_d, rtol=1e-5)
    # recompute the prediction by hand
    nb = values[res.indices]
    if weighting == "mean":
        w = np.full((17, 7), 1 / 7)
    elif weighting == "inverse_distance2":
        w = 1 / (expected_d**2 + 1e-8)
        w /= w.sum(1, keepdims=True)
    else:
        e = np.exp(res.similarities.astype(np.float64) / 0.3)
        w = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(res.prediction, np.einsum("qk,qkg->qg", w, nb), rtol=1e-5, atol=1e-6)


def test_retrieve_exact_match_returns_own_values(rng):
    keys = rng.normal(size=(30, 4))
    values = rng.random((30, 3))
    res = retrieve(keys[:5], keys, values, 4, weighting="inverse_distance2")
    np.testing.assert_array_equal(res.indices[:, 0], np.arange(5))
    np.testing.assert_allclose(res.prediction, values[:5], rtol=1e-4)


def test_retrieve_validation(rng):
    keys = rng.normal(size=(5, 3))
    with pytest.raises(ValueError, match="values has 4 rows but keys has 5"):
        retrieve(keys, keys, rng.random((4, 2)), 2)
    with pytest.raises(ValueError, match="k must be at most the number of reference spots"):
        retrieve(keys, keys, rng.random((5, 2)), 9)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        retrieve(keys, keys, rng.random((5, 2)), 2, weighting="softmax", temperature=-1.0)


def test_resolve_device():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")).type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu0")
    with pytest.raises(TypeError, match="device must be a str"):
        resolve_device(3)


# -- FAISS backend ------------------------------------------------------------------------------


def test_faiss_backend_matches_the_exact_search(rng):
    pytest.importorskip("faiss")
    keys = rng.normal(size=(3000, 24)).astype(np.float32)
    queries = rng.normal(size=(257, 24)).astype(np.float32)
    i_t, s_t = topk_cosine(queries, keys, 10)
    i_f, s_f = topk_cosine(queries, keys, 10, backend="faiss", chunk_size=100)
    np.testing.assert_allclose(s_f, s_t, atol=1e-5)
    assert (i_f == i_t).mean() > 0.999  # the same neighbours (ties aside)
    vals = rng.random((3000, 5))
    a = retrieve(queries, keys, vals, 10, backend="faiss").prediction
    b = retrieve(queries, keys, vals, 10).prediction
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_unknown_backend_is_named(rng):
    keys = rng.normal(size=(5, 3))
    with pytest.raises(ValueError, match="backend must be one of"):
        topk_cosine(keys, keys, 2, backend="annoy")


@pytest.mark.parametrize("key_chunk_size", [7, 1000])
def test_topk_inner_product_matches_brute_force(rng, key_chunk_size):
    from stpredict.retrieval import topk_inner_product

    q = rng.normal(size=(13, 6)).astype(np.float32)
    r = rng.normal(size=(40, 6)).astype(np.float32) * rng.uniform(0.1, 3.0, size=(40, 1)).astype(np.float32)
    idx, prod = topk_inner_product(q, r, 5, chunk_size=4, key_chunk_size=key_chunk_size)
    full = q @ r.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(idx, expected)  # un-normalised: long keys win, unlike cosine
    np.testing.assert_allclose(prod, np.take_along_axis(full, expected, axis=1), rtol=1e-5, atol=1e-5)

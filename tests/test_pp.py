from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import stpredict as stp


def _adata(n_per_slide=40, n_genes=50, slides=("a", "b"), seed=0):
    rng = np.random.default_rng(seed)
    n = n_per_slide * len(slides)
    # gene-specific means; genes 0-4 are bimodal between two spot groups (same mean)
    means = rng.gamma(2.0, 2.0, n_genes)
    lam = np.tile(means, (n, 1))
    group = rng.random(n) < 0.5
    lam[np.ix_(group, np.arange(5))] *= 1.9
    lam[np.ix_(~group, np.arange(5))] *= 0.1
    X = rng.poisson(lam).astype(np.float32)
    obs = pd.DataFrame(
        {"library_id": pd.Categorical(np.repeat(slides, n_per_slide))}, index=[f"s{i}" for i in range(n)]
    )
    return ad.AnnData(
        X=sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    )


# --------------------------------------------------------------------------------------------
# check_counts
# --------------------------------------------------------------------------------------------
def test_check_counts_accepts_counts():
    stp.pp.check_counts(np.array([[0, 3], [100, 1]], dtype=np.float32))
    stp.pp.check_counts(sparse.csr_matrix(np.array([[0, 2.0]])))
    stp.pp.check_counts(np.array([[0.5, 300.0]]))  # non-integer but far above log range


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.array([[1.0, -2.0]]), r"my\.X has 1 negative"),
        (np.array([[1.0, np.nan]]), r"my\.X has 1 NaN or infinite"),
        (sparse.csr_matrix(np.array([[np.inf, 1.0]])), "NaN or infinite"),
        (np.log1p(np.array([[3.0, 10.0], [0.0, 50.0]])), r"my\.X looks log-transformed.*layer="),
    ],
)
def test_check_counts_rejects(X, match):
    with pytest.raises(ValueError, match=match):
        stp.pp.check_counts(X, name="my.X")


# --------------------------------------------------------------------------------------------
# normalize_matrix / normalize
# --------------------------------------------------------------------------------------------
def test_normalize_matrix_by_hand():
    counts = np.array([[1, 3, 0], [0, 0, 0], [2, 2, 4]], dtype=np.float64)
    out = stp.pp.normalize_matrix(counts, target_sum=10)
    assert out.dtype == np.float32
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out[0], np.log1p([2.5, 7.5, 0]), rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0)  # zero total stays zero
    np.testing.assert_allclose(out[2], np.log1p([2.5, 2.5, 5]), rtol=1e-6)
    # default target: median of the non-zero row totals (4 and 8 -> 6)
    np.testing.assert_allclose(stp.pp.normalize_matrix(counts)[0], np.log1p([1.5, 4.5, 0]), rtol=1e-6)
    # sparse input gives the same
    np.testing.assert_array_equal(stp.pp.normalize_matrix(sparse.csr_matrix(counts), target_sum=10), out)


def test_normalize_matrix_errors():
    with pytest.raises(ValueError, match="negative"):
        stp.pp.normalize_matrix(np.array([[-1.0, 1.0]]))
    with pytest.raises(ValueError, match="target_sum"):
        stp.pp.normalize_matrix(np.ones((2, 2)), target_sum=0)


def test_normalize_matches_scanpy_and_records(caplog):
    import scanpy as sc

    adata = _adata()
    expected = adata.copy()
    sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    out = stp.pp.normalize(adata, target_sum=1e4, copy=True)
    np.testing.assert_allclose(out.X.toarray(), expected.X.toarray(), rtol=1e-5)
    assert out.uns["stpredict_normalization"]["target_sum"] == 1e4
    assert "stpredict_normalization" not in adata.uns  # copy left the input alone
    np.testing.assert_allclose(out.X.toarray(), stp.pp.normalize_matrix(adata.X, target_sum=1e4), rtol=1e-5)

    # from a layer into another layer, in place, default target recorded
    adata.layers["counts"] = adata.X.copy()
    assert stp.pp.normalize(adata, layer="counts", key_added="lognorm") is None
    params = adata.uns["stpredict_normalization"]
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert params == {
        "target_sum": float(np.median(totals)),
        "layer": "counts",
        "key_added": "lognorm",
        "log1p": True,
    }
    np.testing.assert_allclose(
        adata.layers["lognorm"].toarray(), stp.pp.normalize_matrix(adata.X), rtol=1e-5, atol=1e-6
    )
    assert "lognorm" in caplog.text


def test_normalize_refuses_log_data_before_modifying():
    adata = _adata()
    stp.pp.normalize(adata)
    before = adata.X.copy()
    with pytest.raises(ValueError, match="looks log-transformed"):
        stp.pp.normalize(adata)
    assert (adata.X != before).nnz == 0
    with pytest.raises(KeyError, match="layers has no key 'raw'"):
        stp.pp.normalize(adata, layer="raw")


# --------------------------------------------------------------------------------------------
# select_genes
# --------------------------------------------------------------------------------------------
def test_select_genes_union_of_per_slide_hvgs():
    import scanpy as sc

    adata = _adata()
    genes = stp.pp.select_genes(adata, n_top_genes=5)
    assert {f"g{i}" for i in range(5)} <= set(genes)  # the planted variable genes
    assert genes == [g for g in adata.var_names if g in set(genes)]  # var_names order
    # equals the union of scanpy's per-slide picks
    union = set()
    for lib in ("a", "b"):
        sub = adata[adata.obs["library_id"] == lib].copy()
        sc.pp.normalize_total(sub)
        sc.pp.log1p(sub)
        sc.pp.highly_variable_genes(sub, n_top_genes=5, flavor="seurat")
        union |= set(sub.var_names[sub.var["highly_variable"]])
    assert set(genes) == union


def test_select_genes_restricted_to_genes_detected_everywhere():
    adata = _adata()
    X = adata.X.toarray()
    X[adata.obs["library_id"] == "b", 0] = 0  # g0 (highly variable) absent from slide b
    adata.X = sparse.csr_matrix(X)
    genes = stp.pp.select_genes(adata, n_top_genes=5)
    assert "g0" not in genes
    assert "g1" in genes
    # n_top_genes above the number of common genes: all of them
    assert stp.pp.select_genes(adata, n_top_genes=1000) == [f"g{i}" for i in range(1, 50)]


def test_select_genes_single_slide_and_layer():
    adata = _adata(slides=("a",))
    del adata.obs["library_id"]
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()))
    got = stp.pp.select_genes(adata, n_top_genes=5, layer="counts")
    assert got == stp.pp.select_genes(ad.AnnData(adata.layers["counts"], var=adata.var), n_top_genes=5)
    assert len(got) == 5
    with pytest.raises(ValueError, match="log-transformed"):
        stp.pp.select_genes(adata, n_top_genes=5)


def test_select_genes_user_list_and_errors():
    adata = _adata()
    assert stp.pp.select_genes(adata, genes=["g3", "g1"]) == ["g3", "g1"]
    with pytest.raises(KeyError, match=r"2 of the 3 genes.*\['nope', 'zzz'\]"):
        stp.pp.select_genes(adata, genes=["g1", "nope", "zzz"])
    with pytest.raises(ValueError, match="more than once"):
        stp.pp.select_genes(adata, genes=["g1", "g1"])
    with pytest.raises(TypeError, match="single string"):
        stp.pp.select_genes(adata, genes="g1")
    with pytest.raises(ValueError, match="n_top_genes"):
        stp.pp.select_genes(adata, n_top_genes=0)


def test_select_genes_empty_intersection():
    adata = _adata()
    X = adata.X.toarray()
    X[:40, :25] = 0
    X[40:, 25:] = 0
    adata.X = sparse.csr_matrix(X)
    with pytest.raises(ValueError, match="no gene is detected .* in every one of the 2 slides"):
        stp.pp.select_genes(adata)

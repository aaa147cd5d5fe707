"""stpredict.metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr

from stpredict import metrics

# 5 spots x 3 genes, worked out by hand:
# A: truth 1..5, pred (2,1,4,3,5): deviations (-2,-1,0,1,2)·(-1,-2,1,0,2) = 8, both norms² 10 → r = 0.8
#    squared errors (1,1,1,1,0) → MSE 0.8; MAE 0.8
# B: truth (1,0,1,0,1), pred (0,1,0,1,0) → r = -1, MSE 1, MAE 1
# C: truth constant 2 → r undefined; pred (1,2,3,2,2) → MSE 0.4, MAE 0.4
TRUTH = pd.DataFrame(
    {"A": [1, 2, 3, 4, 5], "B": [1, 0, 1, 0, 1], "C": [2, 2, 2, 2, 2]},
    index=[f"s{i}" for i in range(5)],
    dtype=float,
)
PRED = pd.DataFrame(
    {"A": [2, 1, 4, 3, 5], "B": [0, 1, 0, 1, 0], "C": [1, 2, 3, 2, 2]},
    index=TRUTH.index,
    dtype=float,
)


def test_pearson_per_gene_by_hand():
    r = metrics.pearson_per_gene(TRUTH, PRED)
    np.testing.assert_allclose(r, [0.8, -1.0, 0.0])
    assert r.shape == (3,)
    assert r.dtype == np.float64


def test_pearson_nan_policy():
    r = metrics.pearson_per_gene(TRUTH, PRED, nan_to=None)
    assert np.isnan(r[2])
    np.testing.assert_allclose(r[:2], [0.8, -1.0])
    r = metrics.pearson_per_gene(TRUTH, PRED, nan_to=-9.0)
    assert r[2] == -9.0
    # a constant prediction is undefined too
    const_pred = PRED.assign(A=3.0)
    assert metrics.pearson_per_gene(TRUTH, const_pred)[0] == 0.0


def test_pearson_constant_with_rounding_is_undefined():
    # the mean of repeated 0.1 is not exactly 0.1; the r must still be undefined, not ±1
    t = np.full((7, 1), 0.1)
    p = np.arange(7.0)[:, None]
    assert np.isnan(metrics.pearson_per_gene(t, p, nan_to=None)[0])


def test_pearson_matches_scipy_and_accepts_arrays():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(30, 4))
    p = t + rng.normal(size=(30, 4))
    expected = [pearsonr(t[:, g], p[:, g])[0] for g in range(4)]
    np.testing.assert_allclose(metrics.pearson_per_gene(t, p), expected)
    np.testing.assert_allclose(metrics.pearson_per_gene(sp.csr_matrix(t), p), expected)


def test_dataframes_aligned_by_gene_name():
    shuffled = PRED[["C", "A", "B"]]
    np.testing.assert_allclose(metrics.pearson_per_gene(TRUTH, shuffled), [0.8, -1.0, 0.0])
    with pytest.raises(ValueError, match="different genes"):
        metrics.pearson_per_gene(TRUTH, PRED.rename(columns={"C": "D"}))
    with pytest.raises(ValueError, match="same shape"):
        metrics.pearson_per_gene(TRUTH.to_numpy(), PRED.to_numpy()[:4])


def test_pearson_per_spot_by_hand():
    # spot 0: truth (1,1,2), pred (2,0,1): deviations (-1/3,-1/3,2/3)·(1,-1,0) = 0 → r = 0
    # spot 4: truth (5,1,2), pred (5,0,2): deviations (7/3,-5/3,-2/3)·(8/3,-7/3,-1/3)
    #   = (56 + 35 + 2)/9 = 93/9; norms² 78/9 and 114/9 → r = 93 / sqrt(78 * 114)
    r = metrics.pearson_per_spot(TRUTH, PRED)
    assert r.shape == (5,)
    assert r[0] == pytest.approx(0.0, abs=1e-12)
    assert r[4] == pytest.approx(93 / np.sqrt(78 * 114))


def test_mse_mae_by_hand():
    np.testing.assert_allclose(metrics.mse_per_gene(TRUTH, PRED), [0.8, 1.0, 0.4])
    np.testing.assert_allclose(metrics.mae_per_gene(TRUTH, PRED), [0.8, 1.0, 0.4])


def test_too_few_spots():
    r = metrics.pearson_per_gene(TRUTH.iloc[:1], PRED.iloc[:1], nan_to=None)
    assert np.isnan(r).all()


def test_heg_hvg_by_hand():
    # totals A 15, B 3, C 10; variances A 2, B 0.24, C 0
    assert metrics.heg_genes(TRUTH, n=2) == ["A", "C"]
    assert metrics.heg_genes(TRUTH, n=3) == ["A", "C", "B"]
    assert metrics.hvg_genes(TRUTH, n=2) == ["A", "B"]
    # n larger than the number of genes: all of them
    assert metrics.hvg_genes(TRUTH, n=50) == ["A", "B", "C"]


def test_heg_hvg_ties_broken_by_name():
    df = pd.DataFrame({"b": [1.0, 3.0], "a": [3.0, 1.0], "c": [0.0, 0.0]})
    assert metrics.heg_genes(df, n=2) == ["a", "b"]
    assert metrics.hvg_genes(df, n=2) == ["a", "b"]


def test_gene_set_validation():
    with pytest.raises(TypeError, match="DataFrame"):
        metrics.heg_genes(TRUTH.to_numpy())
    with pytest.raises(ValueError, match="positive integer"):
        metrics.hvg_genes(TRUTH, n=0)


def test_gene_sets_documented():
    assert set(metrics.GENE_SETS) >= {"heg", "hvg", "all"}
    # mclSTExp's "HVG" is the mean over all genes: documented under "all"
    assert "mclSTExp" in metrics.GENE_SETS["all"]

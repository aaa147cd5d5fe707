"""stp.tl.evaluate and the result-key reader/writer policy (stpredict.get and stpredict.tl._results)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _predicted import make_predicted

from stpredict.get import prediction as get_prediction
from stpredict.tl._evaluate import evaluate
from stpredict.tl._results import check_key_writable

# Two slides of 5 spots x 3 genes. lib0 is the hand-worked example of test_metrics.py:
#   r = (0.8, -1, 0 [constant]); totals A 15, B 3, C 10; variances A 2, B 0.24, C 0
# lib1: A constant 1 (total 5, var 0), B = (0,2,4,6,8) (total 20, var 8), C = (3,3,3,3,4) (total 16,
#   var 0.16); pred B = truth B → r 1; pred C = (4,4,4,4,3) → r -1; pred A = (0..4) → r undefined → 0
TRUTH = pd.DataFrame(
    {
        "A": [1, 2, 3, 4, 5, 1, 1, 1, 1, 1],
        "B": [1, 0, 1, 0, 1, 0, 2, 4, 6, 8],
        "C": [2, 2, 2, 2, 2, 3, 3, 3, 3, 4],
    },
    index=[f"s{i}" for i in range(10)],
    dtype=float,
)
PRED = pd.DataFrame(
    {
        "A": [2, 1, 4, 3, 5, 0, 1, 2, 3, 4],
        "B": [0, 1, 0, 1, 0, 0, 2, 4, 6, 8],
        "C": [1, 2, 3, 2, 2, 4, 4, 4, 4, 3],
    },
    index=TRUTH.index,
    dtype=float,
)


def _hand_adata(*, truth=True) -> ad.AnnData:
    obs = pd.DataFrame({"library_id": pd.Categorical(["lib0"] * 5 + ["lib1"] * 5)}, index=TRUTH.index)
    adata = ad.AnnData(X=np.zeros((10, 3), dtype=np.float32), obs=obs, var=pd.DataFrame(index=list("ABC")))
    adata.obsm["stpredict"] = PRED.copy()
    if truth:
        adata.obsm["stpredict_truth"] = TRUTH.copy()
    adata.uns["stpredict"] = {"written_by": "stpredict", "params": {"copy": False}}
    return adata


def _r(res, lib, gene_set):
    sub = res[(res.library_id == lib) & (res.gene_set == gene_set)]
    return dict(zip(sub.gene, sub.pearson_r))


# -- get_prediction ---------------------------------------------------------------------------


def test_get_prediction_obsm():
    adata = make_predicted(n_libraries=1, n_side=3, n_genes=4)
    pred, truth = get_prediction(adata)
    assert list(pred.columns) == ["G0", "G1", "G2", "G3"]
    assert pred.index.equals(adata.obs_names)
    assert truth is not None
    assert list(truth.columns) == list(pred.columns)
    np.testing.assert_array_equal(truth.to_numpy(), adata.obsm["stpredict_truth"].to_numpy())


def test_get_prediction_aligns_truth_columns():
    adata = _hand_adata()
    adata.obsm["stpredict_truth"] = TRUTH[["C", "A", "B"]]
    pred, truth = get_prediction(adata)
    assert list(truth.columns) == ["A", "B", "C"]
    np.testing.assert_array_equal(truth.to_numpy(), TRUTH.to_numpy())


def test_get_prediction_copy_layout():
    adata = make_predicted(n_libraries=1, n_side=3, n_genes=4, copy=True)
    assert "stpredict" not in adata.obsm
    pred, truth = get_prediction(adata)
    np.testing.assert_allclose(pred.to_numpy(), adata.X)
    np.testing.assert_allclose(truth.to_numpy(), adata.layers["truth"])
    no_truth = make_predicted(n_libraries=1, n_side=3, n_genes=4, copy=True, with_truth=False)
    assert get_prediction(no_truth)[1] is None


def test_get_prediction_missing_key_lists_obsm():
    adata = make_predicted(n_libraries=1, n_side=3, n_genes=4)
    with pytest.raises(KeyError, match=r"'other'.*spatial"):
        get_prediction(adata, "other")
    with pytest.raises(ValueError, match="not a valid key"):
        get_prediction(adata, "")


# -- check_key_writable -----------------------------------------------------------------------


def test_check_key_writable_policy(caplog):
    adata = make_predicted(n_libraries=1, n_side=3, n_genes=4)
    assert check_key_writable(adata, "fresh", overwrite=False) is False
    # stpredict's own entry: replaced with a warning
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        assert check_key_writable(adata, "stpredict", overwrite=False) is True
    assert "Replacing" in caplog.text
    # somebody else's entry: an error naming where, unless overwrite=True
    adata.obsm["theirs"] = np.zeros((adata.n_obs, 2))
    with pytest.raises(ValueError, match=r"obsm\['theirs'\]"):
        check_key_writable(adata, "theirs", overwrite=False)
    adata.uns["theirs2"] = {"written_by": "someone"}
    with pytest.raises(ValueError, match=r"uns\['theirs2'\]"):
        check_key_writable(adata, "theirs2", overwrite=False)
    assert check_key_writable(adata, "theirs", overwrite=True) is True
    # only the attributes asked about are checked
    assert check_key_writable(adata, "theirs", overwrite=False, where=("layers", "uns")) is False
    assert "theirs" in adata.obsm  # nothing modified


# -- evaluate ---------------------------------------------------------------------------------


def test_evaluate_by_hand():
    adata = _hand_adata()
    res = evaluate(adata, genes=("heg", "hvg", "all"), n_genes=2)
    metrics_ = ["pearson_r", "pooled_pearson_r", "mse", "mae", "spread_error_spearman"]
    assert list(res.columns) == ["library_id", "gene_set", "gene", *metrics_]
    # per-slide gene sets chosen from that slide's truth
    assert _r(res, "lib0", "heg") == pytest.approx({"A": 0.8, "C": 0.0})
    assert _r(res, "lib0", "hvg") == pytest.approx({"A": 0.8, "B": -1.0})
    assert _r(res, "lib1", "heg") == pytest.approx({"B": 1.0, "C": -1.0})
    assert _r(res, "lib1", "hvg") == pytest.approx({"B": 1.0, "C": -1.0})
    assert _r(res, "lib1", "all") == pytest.approx({"A": 0.0, "B": 1.0, "C": -1.0})
    # HEG order: highest total first
    assert res[(res.library_id == "lib0") & (res.gene_set == "heg")].gene.tolist() == ["A", "C"]
    lib0 = res[(res.library_id == "lib0") & (res.gene_set == "all")].set_index("gene")
    np.testing.assert_allclose(lib0.loc[["A", "B", "C"], "mse"], [0.8, 1.0, 0.4])
    np.testing.assert_allclose(lib0.loc[["A", "B", "C"], "mae"], [0.8, 1.0, 0.4])
    assert len(res) == 2 * (2 + 2 + 3)


def test_evaluate_summary_in_uns():
    adata = _hand_adata()
    evaluate(adata, genes="all", n_genes=2)
    ev = adata.uns["stpredict"]["evaluation"]
    summary = ev["summary"].set_index(["library_id", "gene_set"])
    assert summary.loc[("lib0", "all"), "mean_pearson_r"] == pytest.approx((0.8 - 1.0 + 0.0) / 3)
    assert summary.loc[("lib1", "all"), "mean_pearson_r"] == pytest.approx(0.0)
    assert summary.loc[("lib0", "all"), "n_genes"] == 3
    assert summary.loc[("lib0", "all"), "n_spots"] == 5
    # per-spot r over the set's genes (spot 0 of lib0 is 0 by hand, see test_metrics.py)
    assert np.isfinite(summary["mean_spot_r"]).all()
    assert ev["mean"]["all"] == pytest.approx(((0.8 - 1.0) / 3 + 0.0) / 2)
    assert ev["nan_to"] == 0.0
    assert ev["gene_sets"] == {"all": "all"}
    assert adata.uns["stpredict"]["written_by"] == "stpredict"


def test_evaluate_nan_policy_keep():
    adata = _hand_adata()
    res = evaluate(adata, genes="all", nan_to=None)
    r = _r(res, "lib0", "all")
    assert np.isnan(r["C"])
    # NaN genes are left out of the means
    summary = adata.uns["stpredict"]["evaluation"]["summary"].set_index(["library_id", "gene_set"])
    assert summary.loc[("lib0", "all"), "mean_pearson_r"] == pytest.approx((0.8 - 1.0) / 2)
    assert adata.uns["stpredict"]["evaluation"]["nan_to"] == "keep"


def test_evaluate_markers_and_mapping(caplog):
    adata = _hand_adata()
    res = evaluate(adata, genes=["B", "A"])
    assert set(res.gene_set) == {"markers"}
    assert _r(res, "lib0", "markers") == pytest.approx({"B": -1.0, "A": 0.8})
    res = evaluate(adata, genes={"mine": ["C"], "top": "heg"}, n_genes=1)
    assert set(res.gene_set) == {"mine", "top"}
    assert _r(res, "lib1", "top") == pytest.approx({"B": 1.0})
    # set names and genes can be mixed
    res = evaluate(adata, genes=["heg", "C"], n_genes=1)
    assert set(res.gene_set) == {"heg", "markers"}
    # unknown marker genes are skipped with a warning; none known is an error
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        res = evaluate(adata, genes=["A", "NOPE"])
    assert "NOPE" in caplog.text
    assert res.gene.tolist() == ["A", "A"]
    with pytest.raises(KeyError, match="NOPE"):
        evaluate(adata, genes=["NOPE"])
    with pytest.raises(ValueError, match="one of"):
        evaluate(adata, genes={"x": "bogus"})


def test_evaluate_missing_truth_and_key():
    adata = _hand_adata(truth=False)
    before = dict(adata.uns["stpredict"])
    with pytest.raises(ValueError, match="true expression"):
        evaluate(adata)
    assert adata.uns["stpredict"] == before
    with pytest.raises(KeyError, match="No prediction"):
        evaluate(_hand_adata(), key="nothing")
    with pytest.raises(KeyError, match="library_key"):
        evaluate(_hand_adata(), library_key="slide")
    with pytest.raises(ValueError, match="n_genes"):
        evaluate(_hand_adata(), n_genes=0)


def test_evaluate_one_slide_without_library_column():
    adata = _hand_adata()
    del adata.obs["library_id"]
    res = evaluate(adata, genes="all")
    assert set(res.library_id) == {"all"}
    # r over all 10 spots
    expected = np.corrcoef(TRUTH["A"], PRED["A"])[0, 1]
    assert _r(res, "all", "all")["A"] == pytest.approx(expected)


def test_evaluate_key_added_and_foreign_uns(caplog):
    adata = _hand_adata()
    evaluate(adata, genes="all", key_added="eval2")
    assert adata.uns["eval2"]["written_by"] == "stpredict"
    assert "evaluation" in adata.uns["eval2"]
    assert "evaluation" not in adata.uns["stpredict"]
    adata.uns["foreign"] = {"mine": 1}
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        res = evaluate(adata, genes="all", key_added="foreign")
    assert adata.uns["foreign"] == {"mine": 1}
    assert "not written by stpredict" in caplog.text
    assert len(res) == 6


def test_evaluate_copy_layout_and_h5ad_roundtrip(tmp_path):
    adata = make_predicted(n_libraries=2, n_side=3, n_genes=5, copy=True)
    res = evaluate(adata, genes=("heg", "hvg"), n_genes=3)
    assert set(res.library_id) == {"lib0", "lib1"}
    assert len(res) == 2 * 2 * 3
    assert (res.pearson_r > 0).mean() > 0.5  # the helper's prediction is correlated with its truth
    path = tmp_path / "eval.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    summary = back.uns["stpredict"]["evaluation"]["summary"]
    assert len(summary) == 4


def test_get_prediction_and_evaluate_spatialdata_like():
    # a SpatialData keeps the prediction in tables[key]; only `.tables` is used
    from types import SimpleNamespace

    table = _hand_adata()
    sdata = SimpleNamespace(tables={"stpredict": table})
    pred, truth = get_prediction(sdata)
    np.testing.assert_array_equal(pred.to_numpy(), PRED.to_numpy())
    res = evaluate(sdata, genes="all")
    assert _r(res, "lib0", "all") == pytest.approx({"A": 0.8, "B": -1.0, "C": 0.0})
    assert "evaluation" in table.uns["stpredict"]
    with pytest.raises(KeyError, match="available tables"):
        get_prediction(sdata, "other")

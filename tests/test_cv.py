"""stp.tl.cross_validate: folds, result tables and an end-to-end run on synthetic slides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import stpredict as stp
from stpredict.tl._cv import CrossValidationResult, _assemble, _make_folds, _parse_methods


# ---------------------------------------------------------------------------------------------
# folds and method specs
# ---------------------------------------------------------------------------------------------
def test_folds_leave_one_out_up_to_five_groups():
    groups = np.array(["b", "a", "b", "c", "a"])
    assert _make_folds(groups, None, seed=0) == [["b"], ["a"], ["c"]]


def test_folds_k_fold_above_five_groups():
    groups = np.repeat([f"s{i}" for i in range(12)], 3)
    folds = _make_folds(groups, None, seed=0)
    assert len(folds) == 5
    flat = [g for f in folds for g in f]
    assert sorted(flat) == sorted(set(groups))  # every group held out exactly once
    assert {len(f) for f in folds} == {2, 3}
    assert _make_folds(groups, None, seed=0) == folds  # seeded
    assert len(_make_folds(groups, 3, seed=0)) == 3


@pytest.mark.parametrize("n_folds", [1, 4, 2.5, True])
def test_folds_bad_n_folds(n_folds):
    with pytest.raises(ValueError, match="n_folds"):
        _make_folds(np.array(["a", "b", "c"]), n_folds, seed=0)


def test_folds_need_two_groups():
    with pytest.raises(ValueError, match="at least 2 groups"):
        _make_folds(np.array(["a", "a"]), None, seed=0)


def test_parse_methods():
    assert _parse_methods("bleep") == {"bleep": ("bleep", {})}
    assert list(_parse_methods(["cmrcnet", "bleep"])) == ["cmrcnet", "bleep"]
    spec = _parse_methods({"full": "cmrcnet", "contrastive only": ("cmrcnet", {"reconstruction": None})})
    assert spec["contrastive only"] == ("cmrcnet", {"reconstruction": None})
    with pytest.raises(ValueError, match="Unknown method"):
        _parse_methods(["cmrcnet", "stnet"])
    with pytest.raises(ValueError, match="clashes"):
        _parse_methods({"random": "bleep"})
    with pytest.raises(TypeError, match="method"):
        _parse_methods(3)


# ---------------------------------------------------------------------------------------------
# result tables from a hand-made per-gene table
# ---------------------------------------------------------------------------------------------
def _hand_per_gene():
    rows = []
    # method m: fold 0 has two held-out slides (r 0.2 and 0.4 on HEG), fold 1 one slide (0.6)
    for fold, lib, heg, hvg in [(0, "s1", 0.2, 0.1), (0, "s2", 0.4, 0.3), (1, "s3", 0.6, 0.5)]:
        for g, delta in (("g1", -0.1), ("g2", 0.1)):
            rows.append(("m", fold, lib, "heg", g, heg + delta, 1.0, 1.0))
            rows.append(("m", fold, lib, "hvg", g, hvg + delta, 1.0, 1.0))
            rows.append(("random", fold, lib, "heg", g, 0.0, 2.0, 1.0))
            rows.append(("random", fold, lib, "hvg", g, 0.0, 2.0, 1.0))
    return pd.DataFrame(
        rows, columns=["method", "fold", "library_id", "gene_set", "gene", "pearson_r", "mse", "mae"]
    )


def test_assemble_mean_over_slides_then_folds():
    res = _assemble(_hand_per_gene(), [["s1", "s2"], ["s3"]], ["g1", "g2"], [], {}, {"k": 5})
    pf = res.per_fold.set_index(["method", "fold", "gene_set"])
    assert pf.loc[("m", 0, "heg"), "pearson_r"] == pytest.approx(0.3)
    assert pf.loc[("m", 0, "heg"), "n_slides"] == 2
    assert pf.loc[("m", 1, "hvg"), "pearson_r"] == pytest.approx(0.5)
    # summary: mean of fold means (0.3, 0.6), not of the three slides (0.4)
    assert list(res.summary.index) == ["m", "random"]
    assert list(res.summary.columns) == ["heg", "hvg"]
    assert res.summary.loc["m", "heg"] == pytest.approx(0.45)
    assert res.summary.loc["m", "hvg"] == pytest.approx(0.35)
    assert res.summary_std.loc["m", "heg"] == pytest.approx(np.std([0.3, 0.6], ddof=1))
    assert res.summary.loc["random", "heg"] == 0


def test_result_markdown_repr_and_dict():
    res = _assemble(_hand_per_gene(), [["s1", "s2"], ["s3"]], ["g1", "g2"], [], {}, {"k": 5})
    md = res.to_markdown(digits=3)
    lines = md.splitlines()
    assert lines[0] == "| method | HEG | HVG |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[2].startswith("| m | 0.450 ± 0.212 | 0.350 ± 0.212 |")
    assert len(lines) == 4
    text = repr(res)
    assert "2 folds" in text
    assert "0.4500 ± 0.2121" in text
    d = json.loads(json.dumps(res.to_dict()))
    assert d["summary"]["m"]["heg"] == pytest.approx(0.45)
    assert d["folds"] == [["s1", "s2"], ["s3"]]


def test_result_single_fold_has_no_std():
    per_gene = _hand_per_gene()
    per_gene = per_gene[per_gene.fold == 0]
    res = _assemble(per_gene, [["s1", "s2"]], ["g1", "g2"], [], {}, {})
    assert np.isnan(res.summary_std.loc["m", "heg"])
    assert "| m | 0.3000 | 0.2000 |" in res.to_markdown()
    assert res.to_dict()["summary_std"]["m"]["heg"] is None


# ---------------------------------------------------------------------------------------------
# validation happens before any training
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return stp.datasets.synthetic(n_slides=3, n_spots_per_side=8, n_genes=40, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"groups": "patient"}, KeyError, "patient"),
        ({"baselines": ("random", "magic")}, ValueError, "baselines"),
        ({"gene_sets": ("heg", "top")}, ValueError, "gene sets"),
        ({"markers": ["NOT_A_GENE"]}, KeyError, "NOT_A_GENE"),
        ({"k": 0}, ValueError, "k"),
        ({"method": "stnet"}, ValueError, "Unknown method"),
        ({"n_folds": 7}, ValueError, "n_folds"),
        ({"smooth": 2}, ValueError, r"`smooth` must be in \[0, 1\]"),
        ({"smooth": 0.5, "smooth_radius": -1}, ValueError, "smooth_radius"),
        ({"weighting": "softmax", "temperature": 0}, ValueError, "`temperature` must be a finite positive"),
        ({"genes": ["KRT19"], "preset": "tiny", "copy": True}, TypeError, "copy"),
    ],
)
def test_cross_validate_validates_first(small, kwargs, err, match, monkeypatch):
    import stpredict.tl._fit as fit_module

    def boom(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("fit was called before validation finished")

    monkeypatch.setattr(fit_module, "fit", boom)
    before = small.copy()
    with pytest.raises(err, match=match):
        stp.tl.cross_validate(small, progress=False, **kwargs)
    assert small.obs.equals(before.obs)


def test_cross_validate_rejects_non_anndata():
    with pytest.raises(TypeError, match="AnnData"):
        stp.tl.cross_validate(np.zeros((3, 3)))


# ---------------------------------------------------------------------------------------------
# end to end on synthetic slides
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cross_validate_synthetic_end_to_end(small):
    res = stp.tl.cross_validate(
        small,
        method={"cmrcnet": "cmrcnet", "contrastive only": ("cmrcnet", {"reconstruction": None})},
        preset="tiny",
        epochs=1,
        k=10,
        n_genes=10,
        n_top_genes=30,
        baselines=("random", "oracle", "image_knn", "image_ridge"),
        markers=["KRT19", "COL1A1"],
        device="cpu",
        progress=False,
    )
    assert isinstance(res, CrossValidationResult)
    # three slides → leave one out
    assert res.folds == [[s] for s in pd.unique(small.obs["library_id"].astype(str))]
    assert sorted(g for f in res.folds for g in f) == sorted(small.obs["library_id"].astype(str).unique())
    expected_methods = [
        "cmrcnet",
        "oracle (cmrcnet)",
        "contrastive only",
        "oracle (contrastive only)",
        "random",
        "image_knn",
        "image_ridge",
    ]
    assert list(res.summary.index) == expected_methods
    assert list(res.summary.columns) == ["heg", "hvg", "markers"]
    assert list(res.per_gene.columns) == [
        "method",
        "fold",
        "library_id",
        "gene_set",
        "gene",
        "pearson_r",
        "mse",
        "mae",
    ]
    # every method × fold × set has n_genes genes per held-out slide (markers: 2)
    counts = res.per_gene.groupby(["method", "fold", "gene_set"]).size().unstack("gene_set")
    assert (counts["heg"] == 10).all()
    assert (counts["hvg"] == 10).all()
    assert (counts["markers"] == 2).all()
    assert len(res.per_fold) == len(expected_methods) * 3 * 3
    # held-out slide of each fold is the one evaluated
    for fold, held in enumerate(res.folds):
        assert set(res.per_gene.loc[res.per_gene.fold == fold, "library_id"]) == set(held)
    # same genes for every method in a fold (HEG/HVG are chosen from the truth)
    heg = res.per_gene[res.per_gene.gene_set == "heg"]
    genes_per_method = heg.groupby(["fold", "method"])["gene"].apply(frozenset).unstack("method")
    assert (genes_per_method.nunique(axis=1) == 1).all()
    # same gene list everywhere, markers included
    assert {"KRT19", "COL1A1"} <= set(res.genes)
    # the oracle (retrieving with the true expression) beats random retrieval on average
    assert res.summary.loc["oracle (cmrcnet)"].mean() > res.summary.loc["random"].mean() + 0.1
    assert abs(res.summary.loc["random", "heg"]) < 0.3
    assert np.isfinite(res.summary.to_numpy()).all()
    assert np.isfinite(res.summary_std.to_numpy()).all()
    # timings recorded for every method and fold
    assert set(res.timings["method"]) == set(expected_methods)
    assert (res.timings.loc[res.timings.method == "cmrcnet", "fit_s"] > 0).all()
    assert "HEG" in res.to_markdown()
    assert res.models == {}


# ---------------------------------------------------------------------------------------------
# orchestration with stand-ins for fit / predict (fast; no model is trained)
# ---------------------------------------------------------------------------------------------
def _lognorm(adata, genes):
    x = adata[:, genes].X
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
    total = np.maximum(np.asarray(adata.X.sum(axis=1)).ravel(), 1.0)
    return np.log1p(x / total[:, None] * 1e4).astype(np.float32)


class _FakeModel:
    def __init__(self, train, genes, method):
        self.genes, self.method = list(genes), method
        self.retrieval = {"k": 50, "weighting": "mean"}
        self.patch = {"patch_size_um": 112.0, "size": 32}
        expr = _lognorm(train, self.genes)
        self.bank = {
            "expression": expr,
            "embeddings": expr.copy(),
            "library_id": train.obs["library_id"].astype(str).to_numpy(),
            "obs_names": train.obs_names.to_numpy().astype(str),
        }
        self.train_slides = sorted(set(self.bank["library_id"]))


@pytest.fixture
def fake_tools(monkeypatch):
    import anndata as ad

    import stpredict.tl._fit as fit_module
    import stpredict.tl._predict as predict_module

    calls = {"fit": [], "predict": []}

    def fake_select_genes(adata, *, n_top_genes=1000, library_key="library_id", genes=None, layer=None, **kw):
        return list(genes) if genes is not None else list(adata.var_names[:20])

    def fake_fit(train, *, method, genes, seed, progress, **kwargs):
        calls["fit"].append({"method": method, "slides": sorted(train.obs["library_id"].unique()), **kwargs})
        return _FakeModel(train, genes, method)

    def fake_predict(test, model, *, k, weighting, copy, key_added, progress, library_key, **kwargs):
        assert copy
        calls["predict"].append(
            {
                "k": k,
                "slides": sorted(test.obs["library_id"].unique()),
                "temperature": kwargs.get("temperature"),
            }
        )
        truth = _lognorm(test, model.genes)
        rng = np.random.default_rng(0)
        out = ad.AnnData(
            X=truth + rng.normal(scale=0.3, size=truth.shape).astype(np.float32),
            obs=test.obs.copy(),
            var=pd.DataFrame(index=model.genes),
        )
        out.layers["truth"] = truth
        out.uns[key_added] = {"written_by": "stpredict", "params": {"copy": True}}
        return out

    monkeypatch.setattr(stp.pp, "select_genes", fake_select_genes, raising=False)
    monkeypatch.setattr(fit_module, "fit", fake_fit)
    monkeypatch.setattr(predict_module, "predict", fake_predict)
    return calls


def test_cross_validate_orchestration(small, fake_tools):
    res = stp.tl.cross_validate(
        small,
        method=["cmrcnet", "bleep"],
        baselines=("random",),
        k=7,
        n_genes=5,
        preset="tiny",
        epochs=1,
        progress=False,
    )
    slides = sorted(small.obs["library_id"].astype(str).unique())
    assert res.folds == [[s] for s in pd.unique(small.obs["library_id"].astype(str))]
    # each fold trains every method on the other slides, with the fit kwargs passed through
    assert len(fake_tools["fit"]) == 2 * 3
    for call, held in zip(fake_tools["fit"], [f for f in res.folds for _ in range(2)]):
        assert call["slides"] == sorted(set(slides) - set(held))
        assert call["preset"] == "tiny"
        assert call["epochs"] == 1
    assert {c["k"] for c in fake_tools["predict"]} == {7}
    assert list(res.summary.index) == ["cmrcnet", "bleep", "random"]
    assert list(res.summary.columns) == ["heg", "hvg"]
    assert res.genes == list(small.var_names[:20])
    # noisy truth ≫ random retrieval
    assert (res.summary.loc["cmrcnet"] > 0.5).all()
    assert (res.summary.loc["random"].abs() < 0.3).all()
    # per-fold numbers are the means of the per-gene table
    sub = res.per_gene[
        (res.per_gene.method == "bleep") & (res.per_gene.fold == 1) & (res.per_gene.gene_set == "hvg")
    ]
    assert len(sub) == 5
    row = res.per_fold[
        (res.per_fold.method == "bleep") & (res.per_fold.fold == 1) & (res.per_fold.gene_set == "hvg")
    ]
    assert row["pearson_r"].item() == pytest.approx(sub["pearson_r"].mean())
    assert res.params["k"] == 7
    assert res.params["fit_kwargs"] == {"preset": "tiny", "epochs": 1}


def test_cross_validate_smooth_applies_to_every_row(small, fake_tools):
    kwargs = {"method": "cmrcnet", "baselines": ("random",), "k": 7, "n_genes": 5, "progress": False}
    plain = stp.tl.cross_validate(small, **kwargs)
    # α = 1 over the whole slide: each spot gets the mean of the *other* spots, (S - p) / (n - 1),
    # a decreasing affine map of its own prediction, so every gene's r flips sign exactly
    flipped = stp.tl.cross_validate(small, smooth=1.0, smooth_radius=1e6, **kwargs)
    assert list(flipped.summary.index) == ["cmrcnet", "random"]
    assert np.allclose(flipped.per_gene["pearson_r"], -plain.per_gene["pearson_r"], atol=1e-4)
    assert flipped.params["smooth"] == 1.0
    assert flipped.params["smooth_radius"] == 1e6
    assert plain.params["smooth"] == 0.0
    assert plain.params["smooth_radius"] is None


def test_cross_validate_passes_the_softmax_temperature(small, fake_tools):
    res = stp.tl.cross_validate(
        small, method="cmrcnet", baselines=(), k=7, n_genes=5, weighting="softmax", temperature=0.1,
        progress=False,
    )  # fmt: skip
    assert [c["temperature"] for c in fake_tools["predict"]] == [0.1] * 3
    assert res.params["temperature"] == 0.1


def test_cross_validate_explicit_genes_and_n_folds(small, fake_tools):
    genes = list(small.var_names[5:15])
    res = stp.tl.cross_validate(
        small, method="cmrcnet", baselines=(), genes=genes, n_folds=2, gene_sets=("all",), progress=False
    )
    assert res.genes == genes
    assert len(res.folds) == 2
    assert list(res.summary.columns) == ["all"]
    assert (res.per_gene.groupby(["fold", "library_id"]).size() == len(genes)).all()


def test_feature_cache_follows_the_models_stain_matching(small):
    """The image-feature baseline sees the pixels the model saw: stain-matched to the fold's target."""
    from stpredict.data import SpotData
    from stpredict.data._features import spot_features
    from stpredict.data._stain import hed_shift, slide_stain_stats, stain_matched, stain_target
    from stpredict.tl._cv import _FeatureCache

    adata = small.copy()
    lib = "slide0"
    spatial = adata.uns["spatial"][lib]["images"]
    for name, img in spatial.items():  # one slide scanned differently
        spatial[name] = hed_shift(np.asarray(img), scale=(1.3, 0.7, 1.0), shift=(0.05, -0.05, 0.0))
    cache = _FeatureCache(adata, "library_id", {})
    names = adata.obs_names[adata.obs["library_id"] == lib]
    plain = cache.get(names, 112.0)
    sd = SpotData.from_object(adata, library_key="library_id")
    target = stain_target(slide_stain_stats(sd, patch_size_um=112.0))
    matched = cache.get(names, 112.0, target.tolist())
    assert not np.allclose(plain, matched)
    np.testing.assert_array_equal(cache.get(names, 112.0), plain)  # both kept, per (slide, target)
    one = sd.subset(np.flatnonzero(sd.library_ids == lib))
    expected = spot_features(
        stain_matched(one, target, patch_size_um=112.0), "handmade", adata, what="test", patch_size_um=112.0
    )
    np.testing.assert_allclose(matched, expected, rtol=1e-5, atol=1e-5)


def test_slide_stain_stats_do_not_depend_on_the_other_slides():
    from stpredict.data import SpotData
    from stpredict.data._stain import slide_stain_stats

    big = stp.datasets.synthetic(n_slides=2, n_spots_per_side=17, n_genes=10, seed=1)  # 289 > 256 drawn
    sd = SpotData.from_object(big, library_key="library_id")
    together = slide_stain_stats(sd, patch_size_um=112.0)
    alone = slide_stain_stats(sd.subset(np.flatnonzero(sd.library_ids == "slide1")), patch_size_um=112.0)
    np.testing.assert_array_equal(together["slide1"], alone["slide1"])

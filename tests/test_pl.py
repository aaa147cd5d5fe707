"""stp.pl: structure of the figures drawn from hand-made prediction results."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import _predicted
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from _predicted import make_predicted
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure

from stpredict import pl
from stpredict.metrics import hvg_genes


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _spot_collections(ax):
    return [c for c in ax.collections if isinstance(c, EllipseCollection)]


def _panel_axes(fig):
    """Axes with a title (colour bars have none)."""
    return [a for a in fig.axes if a.get_title()]


# -- expression_map ---------------------------------------------------------------------------


def test_expression_map_structure():
    adata = make_predicted(n_libraries=2, n_side=4, n_genes=5)
    fig = pl.expression_map(adata, ["G1", "G3"], library_id="lib1", show=False)
    assert isinstance(fig, Figure)
    panels = _panel_axes(fig)
    assert len(panels) == 4  # 2 genes x (observed, predicted)
    titles = [a.get_title() for a in panels]
    assert "G1" in titles[0]
    assert "observed" in titles[0]
    assert "G1" in titles[1]
    assert "r =" in titles[1]
    assert "G3" in titles[3]
    assert "r =" in titles[3]
    # r in the title is the Pearson r across this slide's spots
    mask = (adata.obs["library_id"] == "lib1").to_numpy()
    r = np.corrcoef(adata.obsm["stpredict_truth"].loc[mask, "G1"], adata.obsm["stpredict"].loc[mask, "G1"])[
        0, 1
    ]
    assert f"r = {r:.2f}" in titles[1]
    for ax in panels:
        (coll,) = _spot_collections(ax)
        assert len(coll.get_offsets()) == mask.sum()  # one circle per spot of lib1
        assert len(ax.images) == 1  # the H&E image
    # spots at obsm["spatial"] * hires scalefactor
    offsets = _spot_collections(panels[0])[0].get_offsets()
    np.testing.assert_allclose(offsets, adata.obsm["spatial"][mask] * _predicted.HIRES_SCALEF)
    # colour scale shared by observed and predicted of the same gene, and spans both
    for t_ax, p_ax in (panels[0:2], panels[2:4]):
        t_coll, p_coll = _spot_collections(t_ax)[0], _spot_collections(p_ax)[0]
        assert t_coll.norm.vmin == p_coll.norm.vmin
        assert t_coll.norm.vmax == p_coll.norm.vmax
        both = np.concatenate([t_coll.get_array(), p_coll.get_array()])
        assert t_coll.norm.vmin == pytest.approx(both.min())
        assert t_coll.norm.vmax == pytest.approx(both.max())
    # values drawn are the truth and the prediction
    np.testing.assert_allclose(
        _spot_collections(panels[1])[0].get_array(), adata.obsm["stpredict"].loc[mask, "G1"].to_numpy()
    )


def test_expression_map_options(caplog, tmp_path):
    adata = make_predicted(n_libraries=2, n_side=3, n_genes=4)
    with caplog.at_level(logging.INFO, logger="stpredict"):
        fig = pl.expression_map(adata, "G0", img=False, vmin=0, vmax=5, show=False)
    assert "showing the first, 'lib0'" in caplog.text
    panels = _panel_axes(fig)
    assert all(len(a.images) == 0 for a in panels)
    coll = _spot_collections(panels[0])[0]
    assert (coll.norm.vmin, coll.norm.vmax) == (0, 5)
    # lowres image: offsets scaled by its scale factor
    fig = pl.expression_map(adata, "G0", img_key="lowres", show=False)
    offsets = _spot_collections(_panel_axes(fig)[0])[0].get_offsets()
    np.testing.assert_allclose(offsets, adata.obsm["spatial"][:9] * _predicted.LOWRES_SCALEF)
    # several genes per row
    fig = pl.expression_map(adata, ["G0", "G1", "G2"], ncols=3, show=False)
    assert len(_panel_axes(fig)) == 6
    path = tmp_path / "sub" / "map.png"
    with caplog.at_level(logging.INFO, logger="stpredict"):
        pl.expression_map(adata, "G0", save=path, show=False)
    assert path.stat().st_size > 0
    assert str(path) in caplog.text


def test_expression_map_prediction_only_and_copy_layout():
    adata = make_predicted(n_libraries=1, n_side=3, n_genes=4, with_truth=False)
    fig = pl.expression_map(adata, ["G0", "G2"], show=False)
    panels = _panel_axes(fig)
    assert len(panels) == 2
    assert all("predicted" in a.get_title() and "r =" not in a.get_title() for a in panels)
    copy = make_predicted(n_libraries=1, n_side=3, n_genes=4, copy=True)
    fig = pl.expression_map(copy, "G1", show=False)
    assert len(_panel_axes(fig)) == 2
    np.testing.assert_allclose(_spot_collections(_panel_axes(fig)[1])[0].get_array(), copy[:, "G1"].X.ravel())


def test_expression_map_into_given_axes():
    adata = make_predicted(n_libraries=1, n_side=3, n_genes=4)
    fig, axes = plt.subplots(1, 2)
    out = pl.expression_map(adata, "G2", ax=axes, show=False)
    assert out == list(axes)
    assert all(len(_spot_collections(a)) == 1 for a in axes)
    with pytest.raises(ValueError, match="2 matplotlib Axes"):
        pl.expression_map(adata, "G2", ax=axes[0], show=False)


def test_expression_map_errors():
    adata = make_predicted(n_libraries=2, n_side=3, n_genes=4)
    with pytest.raises(KeyError, match="lib9"):
        pl.expression_map(adata, "G0", library_id="lib9", show=False)
    with pytest.raises(KeyError, match="NOPE"):
        pl.expression_map(adata, ["G0", "NOPE"], show=False)
    with pytest.raises(KeyError, match="No prediction"):
        pl.expression_map(adata, "G0", key="other", show=False)


# -- pcc_boxplot ------------------------------------------------------------------------------


def _results():
    rng = np.random.default_rng(0)
    rows = []
    for method, shift in (("bleep", 0.1), ("cmrcnet", 0.3)):
        for lib in ("lib0", "lib1"):
            for gene_set in ("heg", "hvg"):
                for g in range(5):
                    rows.append((method, lib, gene_set, f"G{g}", shift + rng.normal(0, 0.05)))
    return pd.DataFrame(rows, columns=["method", "library_id", "gene_set", "gene", "pearson_r"])


def test_pcc_boxplot_structure(tmp_path):
    res = _results()
    fig = pl.pcc_boxplot(res, show=False, save=tmp_path / "box.pdf")
    assert (tmp_path / "box.pdf").stat().st_size > 0
    panels = _panel_axes(fig)
    assert [a.get_title() for a in panels] == ["heg", "hvg"]
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["bleep", "cmrcnet"]
        assert len(ax.patches) == 2  # one box per method
    # one gene set, boxes by slide split by method
    fig = pl.pcc_boxplot(res, x="library_id", hue="method", gene_set="hvg", show=False)
    (ax,) = _panel_axes(fig)
    assert len(ax.patches) == 4
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["bleep", "cmrcnet"]
    # medians drawn are those of the data
    medians = sorted(line.get_ydata()[0] for line in ax.lines if line.get_gid() == "median")
    sub = res[res.gene_set == "hvg"].groupby(["library_id", "method"]).pearson_r.median()
    np.testing.assert_allclose(medians, sorted(sub))


def test_pcc_boxplot_evaluate_output_and_errors(caplog):
    res = _results().drop(columns="method").query("gene_set == 'heg'")
    with caplog.at_level(logging.INFO, logger="stpredict"):
        fig = pl.pcc_boxplot(res, show=False)
    assert "library_id" in caplog.text
    (ax,) = _panel_axes(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lib0", "lib1"]
    fig, given = plt.subplots()
    assert pl.pcc_boxplot(res, ax=given, show=False) is given
    with pytest.raises(KeyError, match="pearson_r"):
        pl.pcc_boxplot(res.drop(columns="pearson_r"), show=False)
    with pytest.raises(KeyError, match="nope"):
        pl.pcc_boxplot(res, gene_set="nope", show=False)
    with pytest.raises(TypeError, match="DataFrame"):
        pl.pcc_boxplot(res.to_dict(), show=False)


# -- gene_correlation -------------------------------------------------------------------------


def test_gene_correlation_structure():
    adata = make_predicted(n_libraries=2, n_side=4, n_genes=8)
    fig = pl.gene_correlation(adata, n_genes=6, show=False)
    panels = _panel_axes(fig)
    assert len(panels) == 2
    assert panels[0].get_title() == "observed"
    assert "predicted" in panels[1].get_title()
    assert "r =" in panels[1].get_title()
    truth = adata.obsm["stpredict_truth"]
    genes = hvg_genes(truth, n=6)
    for ax in panels:
        (im,) = ax.images
        assert im.get_clim() == (-1.0, 1.0)
        assert im.get_array().shape == (6, 6)
    # same order on both panels, the HVGs, and the observed matrix is their correlation
    labels = [t.get_text() for t in panels[0].get_xticklabels()]
    assert labels == [t.get_text() for t in panels[1].get_yticklabels()]
    assert sorted(labels) == sorted(genes)
    expected = np.corrcoef(truth[labels].to_numpy().T)
    np.testing.assert_allclose(panels[0].images[0].get_array(), expected, atol=1e-10)


def test_gene_correlation_order_follows_truth_clusters():
    # two blocks of co-expressed genes, interleaved in the input order
    rng = np.random.default_rng(1)
    adata = make_predicted(n_libraries=1, n_side=5, n_genes=6)
    base = rng.normal(size=(adata.n_obs, 2))
    truth = np.column_stack([base[:, i % 2] + 0.1 * rng.normal(size=adata.n_obs) for i in range(6)])
    adata.obsm["stpredict_truth"] = pd.DataFrame(truth, index=adata.obs_names, columns=adata.var_names)
    ax_fig, axes = plt.subplots(1, 2)
    out = pl.gene_correlation(adata, genes=list(adata.var_names), ax=axes, show=False)
    assert out == list(axes)
    labels = [t.get_text() for t in axes[0].get_xticklabels()]
    groups = [int(g[1:]) % 2 for g in labels]
    assert groups in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])


def test_gene_correlation_errors():
    adata = make_predicted(n_libraries=1, n_side=3, n_genes=4)
    with pytest.raises(ValueError, match="at least 2 genes"):
        pl.gene_correlation(adata, genes=["G0"], show=False)
    with pytest.raises(KeyError, match="NOPE"):
        pl.gene_correlation(adata, genes=["G0", "NOPE"], show=False)
    no_truth = make_predicted(n_libraries=1, n_side=3, n_genes=4, with_truth=False)
    fig = pl.gene_correlation(no_truth, n_genes=3, show=False)
    assert [a.get_title() for a in _panel_axes(fig)] == ["predicted"]


# -- expression_profile -----------------------------------------------------------------------


def test_expression_profile_structure(tmp_path):
    adata = make_predicted(n_libraries=2, n_side=3, n_genes=7)
    fig = pl.expression_profile(adata, show=False, save=tmp_path / "profile.png")
    assert (tmp_path / "profile.png").exists()
    panels = _panel_axes(fig)
    assert len(panels) == 2
    assert "mean" in panels[0].get_title()
    assert "r =" in panels[0].get_title()
    assert "variance" in panels[1].get_title()
    assert "r =" in panels[1].get_title()
    truth, pred = adata.obsm["stpredict_truth"], adata.obsm["stpredict"]
    means = panels[0].collections[0].get_offsets()
    assert len(means) == 7  # one point per gene
    np.testing.assert_allclose(means[:, 0], truth.mean().to_numpy())
    np.testing.assert_allclose(means[:, 1], pred.mean().to_numpy())
    variances = panels[1].collections[0].get_offsets()
    np.testing.assert_allclose(variances[:, 0], truth.var(ddof=0).to_numpy())
    # one slide, a subset of genes
    fig = pl.expression_profile(adata, genes=["G0", "G1", "G2"], library_id="lib1", show=False)
    means = _panel_axes(fig)[0].collections[0].get_offsets()
    lib1 = (adata.obs["library_id"] == "lib1").to_numpy()
    np.testing.assert_allclose(means[:, 0], truth.loc[lib1, ["G0", "G1", "G2"]].mean().to_numpy())


def test_expression_profile_needs_truth():
    adata = make_predicted(n_libraries=1, n_side=3, n_genes=4, with_truth=False)
    with pytest.raises(ValueError, match="no true expression"):
        pl.expression_profile(adata, show=False)


# -- training_history -------------------------------------------------------------------------

HISTORY = [
    {
        "epoch": e,
        "train_loss": 3.0 / e,
        "val_loss": v,
        "train_contrastive": 2.0 / e,
        "val_contrastive": v - 0.5,
        "lr": 1e-4,
    }
    for e, v in zip(range(1, 7), [3.0, 2.0, 1.5, 1.2, 1.4, 1.6])
]


def test_training_history_structure():
    fig = pl.training_history(HISTORY, show=False)
    panels = _panel_axes(fig)
    assert [a.get_title() for a in panels] == ["loss", "contrastive"]
    for ax in panels:
        labels = [line.get_label() for line in ax.lines]
        assert labels[:2] == ["train", "val"]
        assert "best epoch 4" in labels  # lowest val_loss
        best = next(line for line in ax.lines if line.get_label() == "best epoch 4")
        assert best.get_xdata()[0] == 4
    np.testing.assert_allclose(panels[0].lines[0].get_ydata(), [h["train_loss"] for h in HISTORY])


def test_training_history_inputs_and_selection():
    model = SimpleNamespace(history=HISTORY)
    fig = pl.training_history(model, metrics=["lr"], show=False)
    assert [a.get_title() for a in _panel_axes(fig)] == ["lr"]
    # dict of lists, no validation: best epoch from train_loss, epochs counted from 1
    fig, ax = plt.subplots()
    out = pl.training_history({"train_loss": [3.0, 1.0, 2.0]}, ax=ax, show=False)
    assert out is ax
    assert "best epoch 2" in [line.get_label() for line in ax.lines]
    with pytest.raises(KeyError, match="nope"):
        pl.training_history(HISTORY, metrics="nope", show=False)
    with pytest.raises(ValueError, match="empty"):
        pl.training_history([], show=False)
    with pytest.raises(TypeError, match="history"):
        pl.training_history(42, show=False)


def test_show_none_is_not_interactive_under_agg():
    # scanpy convention: show only in interactive sessions; the figure is returned otherwise
    assert not plt.isinteractive()
    assert isinstance(pl.training_history(HISTORY), Figure)


def test_expression_map_on_synthetic_slide():
    import stpredict as stp

    adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=4, n_genes=10, seed=0)
    counts = adata.X.toarray()
    truth = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    adata.obsm["stpredict_truth"] = pd.DataFrame(truth, index=adata.obs_names, columns=adata.var_names)
    adata.obsm["stpredict"] = pd.DataFrame(0.5 * truth + 1, index=adata.obs_names, columns=adata.var_names)
    adata.uns["stpredict"] = {"written_by": "stpredict", "params": {"copy": False}}
    fig = pl.expression_map(adata, "KRT19", library_id="slide1", show=False)
    observed, predicted = _panel_axes(fig)
    assert "r = 1.00" in predicted.get_title()  # a linear function of the truth
    (image,) = observed.images
    height, width = adata.uns["spatial"]["slide1"]["images"]["hires"].shape[:2]
    offsets = _spot_collections(observed)[0].get_offsets()
    assert len(offsets) == 16
    # every spot lies on the image
    assert offsets[:, 0].min() > 0
    assert offsets[:, 0].max() < width
    assert offsets[:, 1].max() < height


def test_uncertainty_map_panels(tmp_path):
    import stpredict as stp

    adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=6, n_genes=12, seed=1)
    train = adata[adata.obs["library_id"] == "slide0"].copy()
    test = adata[adata.obs["library_id"] == "slide1"].copy()
    model = stp.tl.fit(train, preset="tiny", epochs=1, progress=False, device="cpu")
    stp.tl.predict(test, model, k=5, progress=False)
    fig = stp.pl.uncertainty_map(test, model.genes[:2], show=False, save=tmp_path / "u.png")
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert sum("spread" in t for t in titles) == 2
    assert any("out-of-distribution" in t for t in titles)
    assert (tmp_path / "u.png").stat().st_size > 1000
    plain = test.copy()
    stp.tl.predict(plain, model, k=5, key_added="p", uncertainty=False, progress=False)
    with pytest.raises(KeyError, match="uncertainty=True"):
        stp.pl.uncertainty_map(plain, model.genes[0], key="p", show=False)

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

import stpredict as stp
from stpredict.datasets._synthetic import PROGRAM_EFFECTS


@pytest.fixture(scope="module")
def default_synthetic():
    start = time.perf_counter()
    adata = stp.datasets.synthetic()
    return adata, time.perf_counter() - start


def test_convention(default_synthetic):
    adata, _ = default_synthetic
    assert adata.n_obs == 3 * 16 * 16
    assert adata.n_vars == 120
    assert sp.issparse(adata.X)
    assert adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    assert np.all(adata.X.data == np.round(adata.X.data))
    assert adata.X.data.min() >= 0
    assert adata.var_names.is_unique
    assert adata.obs_names.is_unique
    assert {"KRT19", "COL1A1", "MKI67", "ACTA2", "ACTB"} <= set(adata.var_names)
    assert "GENE119" in adata.var_names
    assert adata.obs["library_id"].dtype == "category"
    assert list(adata.obs["library_id"].cat.categories) == ["slide0", "slide1", "slide2"]
    assert adata.obs["array_row"].dtype == np.int64
    assert adata.obs["array_col"].max() == 15
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    assert adata.obsm["programs"].shape == (adata.n_obs, 4)
    assert adata.obsm["programs"].min() >= 0
    assert adata.obsm["programs"].max() <= 1
    assert adata.varm["loadings"].shape == (120, 4)
    assert set(adata.var["kind"]) == {"marker", "mixed", "housekeeping", "noise"}

    for lib in adata.obs["library_id"].cat.categories:
        entry = adata.uns["spatial"][lib]
        hires = entry["images"]["hires"]
        assert hires.dtype == np.uint8
        assert hires.ndim == 3
        assert hires.shape[2] == 3
        assert max(hires.shape) <= 900
        assert max(entry["images"]["lowres"].shape) <= 300
        sf = entry["scalefactors"]
        assert sf["tissue_hires_scalef"] == 1.0
        assert sf["microns_per_pixel"] == 2.0
        assert sf["spot_diameter_fullres"] == pytest.approx(55 / 2)
        xy = adata.obsm["spatial"][(adata.obs["library_id"] == lib).to_numpy()]
        assert xy.min() >= 0
        assert xy[:, 0].max() < hires.shape[1]
        assert xy[:, 1].max() < hires.shape[0]
        # spots 100 µm apart = 50 px at 2 µm/px
        assert np.diff(np.unique(xy[:, 0])) == pytest.approx(50.0)
        assert entry["metadata"]["program_effects"] == list(PROGRAM_EFFECTS)


def test_deterministic():
    kw = {"n_slides": 2, "n_spots_per_side": 6, "n_genes": 20}
    a, b = stp.datasets.synthetic(**kw, seed=3), stp.datasets.synthetic(**kw, seed=3)
    c = stp.datasets.synthetic(**kw, seed=4)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(
        a.uns["spatial"]["slide1"]["images"]["hires"], b.uns["spatial"]["slide1"]["images"]["hires"]
    )
    np.testing.assert_array_equal(a.obsm["programs"], b.obsm["programs"])
    assert (a.X != c.X).nnz > 0
    assert not np.array_equal(a.obsm["programs"], c.obsm["programs"])


def test_slides_differ(default_synthetic):
    adata, _ = default_synthetic
    z = adata.obsm["programs"]
    lib = adata.obs["library_id"].to_numpy()
    assert not np.allclose(z[lib == "slide0"], z[lib == "slide1"])


def _patch_features(adata, half=20):
    feats = []
    for lib in adata.obs["library_id"].cat.categories:
        mask = (adata.obs["library_id"] == lib).to_numpy()
        img = adata.uns["spatial"][lib]["images"]["hires"].astype(np.float64)
        for x, y in adata.obsm["spatial"][mask].astype(int):
            patch = img[max(y - half, 0) : y + half, max(x - half, 0) : x + half]
            feats.append(patch.reshape(-1, 3).mean(axis=0))
    return np.array(feats)


def test_image_reflects_programs(default_synthetic):
    """Learnability proxy: mean colour of the patch around a spot tracks that spot's programmes."""
    adata, _ = default_synthetic
    feats = _patch_features(adata)
    z = adata.obsm["programs"]
    corr = np.array(
        [[abs(np.corrcoef(feats[:, c], z[:, p])[0, 1]) for p in range(z.shape[1])] for c in range(3)]
    )
    best = corr.max(axis=0)
    assert (best > 0.5).sum() >= 2, best
    # eosin programme darkens the green channel (eosin absorbs green)
    assert np.corrcoef(feats[:, 1], z[:, 1])[0, 1] < -0.5


def test_expression_reflects_programs(default_synthetic):
    adata, _ = default_synthetic
    x = adata.X.toarray()
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    z = adata.obsm["programs"]
    for p in range(4):
        markers = np.flatnonzero(
            (adata.var["kind"] == "marker").to_numpy() & (adata.var["program"] == p).to_numpy()
        )
        assert len(markers) > 0
        r = np.corrcoef(x[:, markers].mean(1), z[:, p])[0, 1]
        assert r > 0.7, (p, r)
    hk = (adata.var["kind"] == "housekeeping").to_numpy()
    noise = (adata.var["kind"] == "noise").to_numpy()
    assert x[:, hk].mean() > x[:, noise].mean()


def test_fewer_programs():
    adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=4, n_genes=10, n_programs=2)
    assert adata.obsm["programs"].shape == (16, 2)
    assert adata.varm["loadings"].shape == (10, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_slides": 0}, "n_slides"),
        ({"n_spots_per_side": 1}, "n_spots_per_side"),
        ({"n_programs": 5}, "n_programs"),
        ({"n_genes": 3}, "n_genes"),
        ({"microns_per_pixel": -1.0}, "microns_per_pixel"),
        ({"spot_spacing_um": 2.0}, "px apart"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stp.datasets.synthetic(**kwargs)

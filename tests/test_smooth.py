"""Spatial smoothing of predictions over the spot graph (``stp.tl.predict(..., smooth=)``)."""

from __future__ import annotations

import numpy as np
import pytest
from _builders import synthetic_split

import stpredict as stp
from stpredict.tl._smooth import spatial_smooth, spot_graph


def _square_grid(n: int, pitch: float = 100.0) -> np.ndarray:
    x, y = np.meshgrid(np.arange(n), np.arange(n))
    return np.c_[x.ravel(), y.ravel()].astype(float) * pitch


def test_spot_graph_neighbours_per_slide_and_radius():
    xy = _square_grid(3)
    libs = np.array(["a"] * 9)
    four = spot_graph(xy, libs, radius=1.1)  # the 4 side neighbours
    eight = spot_graph(xy, libs, radius=1.5)  # and the diagonals
    centre = 4
    assert (four[centre] > 0).sum() == 4
    assert (eight[centre] > 0).sum() == 8
    assert (eight[0] > 0).sum() == 3  # a corner
    assert np.allclose(np.asarray(eight.sum(axis=1)).ravel(), 1.0)  # rows are means
    assert four[centre, centre] == 0  # not its own neighbour
    # two slides at the same positions never mix
    both = spot_graph(np.r_[xy, xy], np.array(["a"] * 9 + ["b"] * 9), radius=1.5)
    assert both[:9, 9:].nnz == 0
    assert both[9:, :9].nnz == 0


def test_spatial_smooth_mixes_own_and_neighbour_mean():
    xy = _square_grid(3)
    libs = np.array(["a"] * 9)
    values = np.zeros((9, 2), np.float32)
    values[4] = [9.0, 1.0]  # one bright centre spot
    out = spatial_smooth(values, xy, libs, alpha=0.5, radius=1.1)
    assert np.allclose(out[4], [4.5, 0.5])  # half its own, half its neighbours' (zeros)
    assert np.allclose(out[1], [9.0 / 3 / 2, 1.0 / 3 / 2])  # an edge spot: 3 neighbours, one bright
    assert np.allclose(out[0], 0.0)  # a corner does not touch the centre on the 4-grid
    assert np.array_equal(spatial_smooth(values, xy, libs, alpha=0.0, radius=1.1), values)
    # a constant field is unchanged; a lone spot keeps its values
    assert np.allclose(spatial_smooth(np.ones((9, 2)), xy, libs, alpha=0.7, radius=1.5), 1.0)
    lone = spatial_smooth(np.array([[3.0]]), xy[:1], libs[:1], alpha=0.5, radius=1.5)
    assert lone[0, 0] == 3.0


@pytest.fixture(scope="module")
def fitted():
    train, test = synthetic_split(20, seed=5)
    model = stp.tl.fit(train, preset="tiny", epochs=1, seed=0, progress=False, device="cpu")
    return model, test


def test_predict_smooth_writes_the_smoothed_prediction(fitted):
    model, test = fitted
    plain = stp.tl.predict(test, model, k=5, copy=True, progress=False)
    smoothed = stp.tl.predict(test, model, k=5, copy=True, smooth=0.5, progress=False)
    assert plain is not None
    assert smoothed is not None
    sd = stp.data.SpotData.from_object(test)
    expected = spatial_smooth(np.asarray(plain.X), sd.centers, sd.library_ids, alpha=0.5, radius=1.5)
    assert np.allclose(np.asarray(smoothed.X), expected, atol=1e-5)
    assert not np.allclose(np.asarray(smoothed.X), np.asarray(plain.X))
    params = smoothed.uns["stpredict"]["params"]
    assert params["smooth"] == 0.5
    assert params["smooth_radius"] == 1.5
    assert plain.uns["stpredict"]["params"]["smooth"] == 0.0
    # the spread is the spot's own retrieval's, not smoothed
    assert np.allclose(smoothed.layers["stpredict_std"], plain.layers["stpredict_std"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"smooth": 1.5}, ValueError, r"`smooth` must be in \[0, 1\]"),
        ({"smooth": -0.1}, ValueError, "`smooth` must be a finite non-negative number"),
        ({"smooth": "a lot"}, TypeError, "`smooth` must be a non-negative number"),
        ({"smooth": 0.5, "smooth_radius": 0}, ValueError, "`smooth_radius` .* must be a finite positive"),
        ({"smooth": 0.5, "smooth_radius": float("nan")}, ValueError, "`smooth_radius` .* finite"),
    ],
)
def test_predict_smooth_refuses_bad_values(fitted, kwargs, error, match):
    model, test = fitted
    before = set(test.obsm)
    with pytest.raises(error, match=match):
        stp.tl.predict(test, model, k=5, progress=False, **kwargs)
    assert set(test.obsm) == before  # nothing written


def test_cli_predict_smooth(fitted, tmp_path):
    import anndata as ad

    from stpredict.cli import main

    model, test = fitted
    model.save(tmp_path / "model")
    test.write_h5ad(tmp_path / "test.h5ad")
    out = tmp_path / "pred.h5ad"
    args = ["-q", "predict", str(tmp_path / "test.h5ad"), "--model", str(tmp_path / "model")]
    assert main([*args, "--out", str(out), "--k", "5", "--smooth", "0.5", "--no-progress"]) == 0
    params = ad.read_h5ad(out).uns["stpredict"]["params"]
    assert params["smooth"] == 0.5

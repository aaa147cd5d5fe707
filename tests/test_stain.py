"""Stain matching of slides (``fit(stain_normalize=True)``): HED statistics, the map, fit/predict/save."""

from __future__ import annotations

import numpy as np
import pytest
from _builders import synthetic_split

import stpredict as stp
from stpredict.data import SpotData
from stpredict.data._stain import (
    hed_shift,
    match_stain,
    slide_stain_stats,
    stain_matched,
    stain_stats,
    stain_target,
)

SHIFT = {"scale": (1.3, 0.7, 1.0), "shift": (0.05, -0.05, 0.0)}


def _stained_tissue(seed: int = 0) -> np.ndarray:
    """Pinkish-purple pixels: random H and E concentrations turned into RGB."""
    rng = np.random.default_rng(seed)
    h, e = rng.uniform(0.1, 0.9, (40, 40)), rng.uniform(0.1, 0.7, (40, 40))
    conc = np.stack([h, e, np.zeros((40, 40))], -1)
    return _rgb(conc)


def _rgb(conc: np.ndarray) -> np.ndarray:
    from stpredict.data._stain import STAIN_VECTORS

    od = conc @ STAIN_VECTORS
    return np.round(np.clip(256.0 * np.exp(-od) - 1.0, 0, 255)).astype(np.uint8)


def _shifted(adata, lib: str):
    out = adata.copy()
    images = out.uns["spatial"][lib]["images"]
    for key, img in images.items():
        images[key] = hed_shift(np.asarray(img)[..., :3], SHIFT["scale"], SHIFT["shift"])
    return out


def test_stain_stats_of_tissue_and_of_glass():
    tissue = _stained_tissue()
    stats = stain_stats(tissue)
    assert stats.shape == (2, 3)
    assert stats.dtype == np.float32
    assert 0.3 < stats[0, 0] < 0.7  # haematoxylin ~ U(0.1, 0.9)
    assert (stats[1] > 0).all()
    # blank glass: too few tissue pixels, so every pixel counts (and the std stays positive)
    glass = stain_stats(np.full((20, 20, 3), 250, np.uint8))
    assert np.isfinite(glass).all()
    assert (glass[1] > 0).all()


def test_match_stain_undoes_a_hed_rescaling_and_shift():
    tissue = _stained_tissue()
    moved = hed_shift(tissue, SHIFT["scale"], SHIFT["shift"])
    assert np.abs(moved.astype(int) - tissue).mean() > 10  # the shift is visible
    back = match_stain(moved, stain_stats(moved), stain_stats(tissue))
    assert np.abs(back.astype(int) - tissue).mean() < 2.5
    # identity statistics change nothing (up to rounding)
    same = match_stain(tissue, stain_stats(tissue), stain_stats(tissue))
    assert np.abs(same.astype(int) - tissue).max() <= 1


def test_stain_matched_spots_read_matched_patches_streamed_or_not():
    adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=6, n_genes=10, seed=0)
    moved = _shifted(adata, "slide1")
    sd, sd_moved = SpotData.from_object(adata), SpotData.from_object(moved)
    target = stain_target(slide_stain_stats(sd, patch_size_um=100.0))
    assert target.shape == (2, 3)
    plain = sd.extract_patches(patch_size_um=100.0, size=32, progress=False)
    raw_moved = sd_moved.extract_patches(patch_size_um=100.0, size=32, progress=False)
    matched = stain_matched(sd, target, patch_size_um=100.0)
    matched_moved = stain_matched(sd_moved, target, patch_size_um=100.0)
    a = matched.extract_patches(patch_size_um=100.0, size=32, progress=False).astype(int)
    b = matched_moved.extract_patches(patch_size_um=100.0, size=32, progress=False).astype(int)
    on_slide1 = sd.library_ids == "slide1"
    assert np.abs(raw_moved[on_slide1].astype(int) - plain[on_slide1]).mean() > 10
    assert np.abs(a[on_slide1] - b[on_slide1]).mean() < 3  # the shift is undone
    # the source SpotData is untouched, and streamed patches equal the in-memory ones
    assert np.array_equal(sd.extract_patches(patch_size_um=100.0, size=32, progress=False), plain)
    streamed = stp.data.SlidePatches(matched_moved, patch_size_um=100.0, size=32)
    assert np.array_equal(streamed[np.arange(5)], b[:5])


def test_fit_stain_normalize_stores_the_target_and_predict_uses_it(tmp_path):
    train, test = synthetic_split(n_genes=16, seed=0)
    # colour/texture features: as sensitive to the stain as an image input gets
    kwargs = {"preset": "tiny", "epochs": 3, "seed": 0, "device": "cpu", "progress": False}
    kwargs["image_features"] = "handmade"
    model = stp.tl.fit(train, stain_normalize=True, **kwargs)
    target = np.asarray(model.patch["stain_target"])
    assert target.shape == (2, 3)
    assert "stain_target" not in stp.tl.fit(train, **kwargs).patch  # off by default
    again = stp.models.load(model.save(tmp_path / "m"))
    assert np.allclose(again.patch["stain_target"], target)
    # a re-stained slide is predicted (nearly) as the original; without matching it is not
    for fitted, tolerance in ((again, 0.15), (stp.tl.fit(train, **kwargs), None)):
        pred = stp.tl.predict(test, fitted, k=5, copy=True, progress=False)
        pred_moved = stp.tl.predict(_shifted(test, "slide1"), fitted, k=5, copy=True, progress=False)
        assert pred is not None
        assert pred_moved is not None
        gap = np.abs(np.asarray(pred.X) - np.asarray(pred_moved.X)).mean()
        if tolerance is not None:
            assert gap < tolerance
            matched_gap = gap
        else:
            assert gap > 3 * matched_gap


@pytest.mark.parametrize(
    ("value", "error"),
    [([[0.1, 0.2]], ValueError), ([[0.1, 0.2, 0.3], [0.1, 0.0, 0.1]], ValueError), ("pink", TypeError)],
)
def test_a_model_file_with_bad_stain_statistics_is_refused(value, error):
    from stpredict.models import PatchSpec

    with pytest.raises(error, match="stain_target"):
        PatchSpec.from_dict({"size": 8, "stain_target": value}, what="patch")


def test_fit_refuses_a_non_boolean_stain_normalize():
    train, _ = synthetic_split(n_genes=8, seed=0)
    with pytest.raises(TypeError, match="stain_normalize"):
        stp.tl.fit(train, preset="tiny", epochs=1, stain_normalize="yes", progress=False)


def test_cli_fit_has_a_stain_normalize_flag():
    from stpredict.cli import _fit_options, _parser

    on = _parser().parse_args(["fit", "x.h5ad", "--out", "m", "--stain-normalize"])
    off = _parser().parse_args(["fit", "x.h5ad", "--out", "m"])
    assert _fit_options(on)["stain_normalize"] is True
    assert "stain_normalize" not in _fit_options(off)


def test_stain_normalize_with_precomputed_features_warns(caplog):
    train, _ = synthetic_split(n_genes=8, seed=0)
    train.obsm["X_mine"] = np.random.default_rng(0).normal(size=(train.n_obs, 6)).astype(np.float32)
    with caplog.at_level("WARNING", logger="stpredict"):
        stp.tl.fit(
            train, preset="tiny", epochs=1, image_features="X_mine", stain_normalize=True, progress=False
        )
    assert "does not change the precomputed features 'X_mine'" in caplog.text

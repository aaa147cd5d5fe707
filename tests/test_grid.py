from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import stpredict as stp
from stpredict.tl._grid import grid_spots, tissue_mask

MPP = 2.0  # µm per px of the hand-made images


def _tissue_image(size: int = 200) -> np.ndarray:
    """White glass with a pink/purple square of tissue in the top-left quarter-ish."""
    rng = np.random.default_rng(0)
    img = np.full((size, size, 3), 245, dtype=np.uint8)
    tissue = np.array([190, 110, 170]) + rng.normal(0, 10, (size // 2, size // 2, 3))
    img[: size // 2, : size // 2] = np.clip(tissue, 0, 255).astype(np.uint8)
    return img


@pytest.fixture(scope="module")
def small():
    return stp.datasets.synthetic(n_slides=2, n_spots_per_side=4, n_genes=12)


def test_tissue_mask_colours():
    img = np.zeros((3, 4, 3), dtype=np.uint8)
    img[0] = 250  # white glass
    img[1] = (200, 120, 170)  # pink tissue
    img[2] = 5  # scanner black
    mask = tissue_mask(img)
    assert mask.dtype == bool
    assert mask[1].all()
    assert not mask[0].any()
    assert not mask[2].any()
    # float images in [0, 1] give the same answer
    np.testing.assert_array_equal(tissue_mask(img / 255.0), mask)


def test_grid_on_array_keeps_tissue_only():
    img = _tissue_image()
    grid = grid_spots(img, microns_per_pixel=MPP, spacing_um=40.0, spot_diameter_um=20.0)
    xy = grid.obsm["spatial"]
    assert grid.n_vars == 0
    assert grid.n_obs > 0
    # every pseudo-spot centre lies on the tissue quarter (100 x 100 px)
    assert (xy < 100).all()
    # spacing: neighbours along a row are spacing_um / MPP = 20 px apart
    row = grid.obs["array_row"].to_numpy()
    first = xy[row == row[0]]
    assert np.allclose(np.diff(np.sort(first[:, 0])), 20.0)
    assert (grid.obs["tissue_fraction"] >= 0.5).all()
    sf = grid.uns["spatial"]["image"]["scalefactors"]
    assert sf["microns_per_pixel"] == pytest.approx(MPP)
    assert sf["spot_diameter_fullres"] == pytest.approx(10.0)
    assert grid.uns["spatial"]["image"]["images"]["hires"].shape == img.shape

    full = grid_spots(img, microns_per_pixel=MPP, spacing_um=40.0, tissue_only=False)
    assert full.n_obs == 100  # 200 px / 20 px per side
    assert full.n_obs > 3 * grid.n_obs
    assert full.obs["tissue_fraction"].isna().all()


def test_grid_on_anndata_uses_scalefactors(small):
    grid = grid_spots(small, spacing_um=100.0)
    assert grid.obs["library_id"].cat.categories.tolist() == ["slide0", "slide1"]
    assert grid.obs_names.is_unique
    # the synthetic image is tissue everywhere: a full 100 µm grid (50 px at 2 µm/px)
    size = small.uns["spatial"]["slide0"]["images"]["hires"].shape[0]
    n_side = size // 50
    assert (grid.obs["library_id"] == "slide0").sum() == n_side * n_side
    # the images are shared with the input, not copied
    assert (
        grid.uns["spatial"]["slide0"]["images"]["hires"] is small.uns["spatial"]["slide0"]["images"]["hires"]
    )
    # the input is untouched
    assert "grid_spacing_um" not in small.uns["spatial"]["slide0"]["metadata"]
    one = grid_spots(small, library_id="slide1", spacing_um=150.0)
    assert set(one.obs["library_id"]) == {"slide1"}
    assert one.uns["spatial"]["slide1"]["metadata"]["grid_spacing_um"] == 150.0


def test_grid_lowres_matches_fullres_frame(small):
    hi = grid_spots(small, library_id="slide0", image_key="hires", tissue_only=False)
    lo = grid_spots(small, library_id="slide0", image_key="lowres", tissue_only=False)
    # both are in full-resolution pixels, whatever image was used for the mask
    assert hi.obsm["spatial"].max() == pytest.approx(lo.obsm["spatial"].max(), rel=0.05)


def test_grid_on_spatialdata(small):
    sdata = stp.io.to_spatialdata(small)
    grid = grid_spots(sdata, image_key="slide1_image", spacing_um=100.0)
    assert set(grid.obs["library_id"]) == {"slide1"}
    assert grid.uns["spatial"]["slide1"]["scalefactors"]["microns_per_pixel"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="image elements"):
        grid_spots(sdata)  # two images, none chosen
    with pytest.raises(KeyError, match="nope"):
        grid_spots(sdata, image_key="nope")


def test_grid_errors(small):
    with pytest.raises(ValueError, match="microns_per_pixel"):
        grid_spots(_tissue_image())
    with pytest.raises(ValueError, match="spacing_um"):
        grid_spots(small, spacing_um=0)
    with pytest.raises(KeyError, match="slideX"):
        grid_spots(small, library_id="slideX")
    with pytest.raises(KeyError, match="images"):
        grid_spots(ad.AnnData(np.zeros((2, 2), dtype=np.float32)))
    with pytest.raises(TypeError, match="AnnData"):
        grid_spots("not an image")
    blank = np.full((50, 50, 3), 250, dtype=np.uint8)
    with pytest.raises(ValueError, match="no tissue"):
        grid_spots(blank, microns_per_pixel=1.0, spacing_um=10.0)

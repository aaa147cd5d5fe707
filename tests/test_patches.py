from __future__ import annotations

import numpy as np
import pytest

from stpredict.data import SlideImage
from stpredict.data import _patches as patches_mod
from stpredict.data._patches import extract_image_patches


def _gradient(h: int = 100, w: int = 120) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.full_like(xx, 77)], axis=-1).astype(np.uint8)


def test_centre_and_extent_square_pixels():
    img = _gradient()
    image = SlideImage(img, (1.0, 1.0))
    centers = np.array([[50.5, 40.5], [30.5, 60.5]])
    out = extract_image_patches(image, centers, patch_size_um=21, size=21)
    assert out.shape == (2, 21, 21, 3)
    assert out.dtype == np.uint8
    # same size in and out: an exact copy of the 21 x 21 window around the centre
    np.testing.assert_array_equal(out[0], img[30:51, 40:61])
    np.testing.assert_array_equal(out[1], img[50:71, 20:41])


def test_non_square_pixels_give_non_square_windows():
    img = _gradient(200, 200)
    # 2 µm/px in x, 0.5 µm/px in y: a 20 µm patch is 10 px wide and 40 px high
    image = SlideImage(img, (2.0, 0.5))
    out = extract_image_patches(image, np.array([[100.0, 100.0]]), patch_size_um=20, size=40)[0].astype(int)
    x_span = out[20, -1, 0] - out[20, 0, 0]
    y_span = out[-1, 20, 1] - out[0, 20, 1]
    assert 8 <= x_span <= 10
    assert 37 <= y_span <= 40
    assert abs(out[20, 20, 0] - 100) <= 1
    assert abs(out[20, 20, 1] - 100) <= 1


def test_upsampling_tiny_windows():
    img = _gradient(40, 40)
    image = SlideImage(img, (4.6, 4.2))  # mouse-like: 112 µm = ~24 x 27 px
    out = extract_image_patches(image, np.array([[20.0, 20.0]]), patch_size_um=112, size=224)[0].astype(int)
    assert out.shape == (224, 224, 3)
    # smooth ramps: x increases along columns, y along rows, spanning about 24 and 27 px
    assert (np.diff(out[112, :, 0]) >= 0).all()
    assert (np.diff(out[:, 112, 1]) >= 0).all()
    assert 21 <= out[112, -1, 0] - out[112, 0, 0] <= 25
    assert 24 <= out[-1, 112, 1] - out[0, 112, 1] <= 28


def test_padding_outside_image_is_white():
    img = np.zeros((50, 50, 3), np.uint8)
    image = SlideImage(img, (1.0, 1.0))
    out = extract_image_patches(image, np.array([[0.5, 49.5]]), patch_size_um=20, size=20)[0]
    assert (out[:8, 12:] == 0).all()  # inside: black
    assert (out[:, :8] == 255).all()  # left of the image: white
    assert (out[12:] == 255).all()  # below the image: white


def test_float_and_rgba_images():
    img = _gradient()
    rgba = np.concatenate([img.astype(np.float32) / 255, np.zeros((*img.shape[:2], 1), np.float32)], axis=-1)
    out = extract_image_patches(SlideImage(rgba, (1, 1)), np.array([[50.5, 40.5]]), patch_size_um=5, size=5)
    np.testing.assert_array_equal(out[0], img[38:43, 48:53])


def test_downsampling_is_antialiased():
    # a 1-px checkerboard shrunk 8x averages to grey instead of aliasing to black or white
    yy, xx = np.mgrid[0:256, 0:256]
    board = np.repeat((((xx + yy) % 2) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    out = extract_image_patches(
        SlideImage(board, (1, 1)), np.array([[128.0, 128.0]]), patch_size_um=128, size=16
    )
    assert np.abs(out.astype(int) - 127).max() < 20


class _Recorder:
    """Array-like that records which windows were read."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]


@pytest.mark.parametrize("band_pixels", [64_000_000, 2_000])
def test_lazy_image_reads_only_needed_windows(monkeypatch, band_pixels):
    import dask.array as da

    monkeypatch.setattr(patches_mod, "_BAND_PIXELS", band_pixels)
    img = np.random.default_rng(0).integers(0, 255, (400, 500, 3), dtype=np.uint8)
    rec = _Recorder(img)
    lazy = da.from_array(rec, chunks=(50, 50, 3), asarray=False)
    centers = np.array([[60.3, 50.7], [80.0, 70.0], [420.0, 330.0], [5.0, 395.0]])
    lazy_out = extract_image_patches(SlideImage(lazy, (1.0, 1.0)), centers, patch_size_um=30, size=16)
    eager_out = extract_image_patches(SlideImage(img, (1.0, 1.0)), centers, patch_size_um=30, size=16)
    np.testing.assert_array_equal(lazy_out, eager_out)
    read_px = sum((k[0].stop - k[0].start) * (k[1].stop - k[1].start) for k in rec.reads)
    assert 0 < read_px < img.shape[0] * img.shape[1]
    # windows far apart: with small bands, the chunks between them are never read
    if band_pixels < 10_000:
        assert not any(k[0].start >= 150 and k[0].stop <= 300 for k in rec.reads)


def test_argument_errors():
    image = SlideImage(_gradient(), (1, 1))
    with pytest.raises(ValueError, match="`size` must be a positive integer"):
        extract_image_patches(image, np.zeros((1, 2)), size=0)
    with pytest.raises(ValueError, match="patch_size_um must be a finite positive"):
        extract_image_patches(image, np.zeros((1, 2)), patch_size_um=-1)
    with pytest.raises(ValueError, match="resample"):
        extract_image_patches(image, np.zeros((1, 2)), resample="nearest")
    with pytest.raises(ValueError, match="H x W x 3"):
        SlideImage(np.zeros((10, 10)), (1, 1))
    with pytest.raises(ValueError, match="um_per_px"):
        SlideImage(_gradient(), (0, 1))
    assert extract_image_patches(image, np.zeros((0, 2)), size=8).shape == (0, 8, 8, 3)


@pytest.mark.realdata
@pytest.mark.slow
def test_her2st_patch_throughput(her2st_dir):
    import time

    import stpredict as stp
    from stpredict.data import SpotData

    adata = stp.io.read_legacy_st(
        her2st_dir / "ST-cnts" / "C3.tsv.gz",
        her2st_dir / "ST-spotfiles" / "C3_selection.tsv",
        next((her2st_dir / "ST-imgs" / "C" / "C3").glob("*.jpg")),
        platform="1k",
    )
    sd = SpotData.from_object(adata)
    ux, uy = sd.images[sd.libraries[0]].um_per_px
    assert 0.6 < ux < 0.8
    assert 0.6 < uy < 0.8
    t0 = time.perf_counter()
    patches = sd.extract_patches(patch_size_um=112, size=224, progress=False)
    rate = len(patches) / (time.perf_counter() - t0)
    assert patches.shape == (adata.n_obs, 224, 224, 3)
    assert patches.mean() < 245  # tissue, not padding
    assert rate > 20

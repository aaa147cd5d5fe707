from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from _builders import gradient_image, spatialdata_with_transform, visium_adata

from stpredict.data import DEFAULT_SPOT_DIAMETER_UM, SpotData


# --------------------------------------------------------------------------------------------
# AnnData input
# --------------------------------------------------------------------------------------------
def test_anndata_centres_scale_and_attributes():
    adata = visium_adata(libraries=("a", "b"), hires_scalef=0.5, microns_per_pixel=1.5)
    sd = SpotData.from_object(adata)
    assert sd.libraries == ["a", "b"]
    assert list(sd.obs_names) == list(adata.obs_names)
    np.testing.assert_allclose(sd.centers, adata.obsm["spatial"] * 0.5)
    # µm per hires px = µm per full-res px / scalef
    assert sd.images["a"].um_per_px == pytest.approx((3.0, 3.0))
    assert sd.images["a"].array is adata.uns["spatial"]["a"]["images"]["hires"]
    assert sd.counts.shape == (32, 30)
    assert sd.counts.dtype == np.float32
    assert list(sd.var_names) == list(adata.var_names)
    assert sd.table is adata
    assert sd.spot_diameter_um == pytest.approx(10 * 1.5)
    # array coordinates give the grid: x = array_col, y = array_row
    np.testing.assert_array_equal(sd.grid_coords, adata.obs[["array_col", "array_row"]].to_numpy())


def test_anndata_lowres_image_key_and_single_library_without_column():
    adata = visium_adata(hires_scalef=0.5)
    del adata.obs["library_id"]
    sd = SpotData.from_object(adata, image_key="lowres")
    assert sd.libraries == ["s0"]
    np.testing.assert_allclose(sd.centers, adata.obsm["spatial"] * 0.25)
    assert sd.images["s0"].um_per_px == pytest.approx((4.0, 4.0))
    # without hires the lowres image is used
    adata.uns["spatial"]["s0"]["images"].pop("hires")
    sd = SpotData.from_object(adata)
    assert sd.images["s0"].shape == adata.uns["spatial"]["s0"]["images"]["lowres"].shape[:2]


def test_anndata_pixel_size_sources():
    adata = visium_adata(microns_per_pixel=None, spot_diameter_fullres=11.0, hires_scalef=1.0)
    sd = SpotData.from_object(adata)
    assert sd.images["s0"].um_per_px == pytest.approx((DEFAULT_SPOT_DIAMETER_UM / 11.0,) * 2)
    sd = SpotData.from_object(adata, spot_diameter_um=100.0)
    assert sd.images["s0"].um_per_px == pytest.approx((100 / 11.0,) * 2)
    # per-axis pixel sizes (legacy ST readers) give non-square pixels
    sf = adata.uns["spatial"]["s0"]["scalefactors"]
    sf.update(microns_per_pixel=4.4, microns_per_pixel_x=4.6, microns_per_pixel_y=4.2)
    assert SpotData.from_object(adata).images["s0"].um_per_px == pytest.approx((4.6, 4.2))
    # explicit override wins
    assert SpotData.from_object(adata, microns_per_pixel=(2, 3)).images["s0"].um_per_px == pytest.approx(
        (2, 3)
    )


def test_float_image_is_accepted():
    adata = visium_adata()
    img = adata.uns["spatial"]["s0"]["images"]["hires"]
    adata.uns["spatial"]["s0"]["images"]["hires"] = img.astype(np.float32) / 255
    sd = SpotData.from_object(adata)
    p = sd.extract_patches([0], patch_size_um=4, size=4, progress=False)
    assert p.dtype == np.uint8
    cx, cy = np.round(sd.centers[0]).astype(int)
    np.testing.assert_allclose(p[0, 2, 2], img[cy, cx], atol=2)


def test_anndata_not_modified():
    adata = visium_adata(libraries=("a", "b"))
    before = copy.deepcopy(adata)
    sd = SpotData.from_object(adata)
    sd.extract_patches(patch_size_um=10, size=8, progress=False)
    assert adata.obs.equals(before.obs)
    np.testing.assert_array_equal(adata.obsm["spatial"], before.obsm["spatial"])
    assert list(adata.uns["spatial"]["a"]) == list(before.uns["spatial"]["a"])
    assert (adata.X != before.X).nnz == 0


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def _break(mutate):
    adata = visium_adata(libraries=("a", "b"))
    mutate(adata)
    return adata


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda a: a.uns.pop("spatial"), KeyError, r"uns has no 'spatial'"),
        (lambda a: a.uns["spatial"].pop("b"), KeyError, r"no library 'b'"),
        (lambda a: a.uns["spatial"]["a"].pop("images"), KeyError, r"\['a'\] has no 'images'"),
        (lambda a: a.uns["spatial"]["a"].pop("scalefactors"), KeyError, r"no 'scalefactors'"),
        (
            lambda a: a.uns["spatial"]["a"]["scalefactors"].pop("tissue_hires_scalef"),
            KeyError,
            "tissue_hires_scalef",
        ),
        (lambda a: a.obsm.pop("spatial"), KeyError, r"obsm has no key 'spatial'"),
        (lambda a: a.obs.pop("library_id"), KeyError, r"no column 'library_id'.*2 libraries"),
    ],
)
def test_missing_keys(mutate, error, match):
    with pytest.raises(error, match=match):
        SpotData.from_object(_break(mutate))


def test_missing_pixel_size():
    def mutate(a):
        sf = a.uns["spatial"]["a"]["scalefactors"]
        sf.pop("microns_per_pixel"), sf.pop("spot_diameter_fullres")

    with pytest.raises(KeyError, match="microns_per_pixel.*spot_diameter_fullres"):
        SpotData.from_object(_break(mutate))


def test_spots_outside_image():
    def mutate(a):
        a.obsm["spatial"][3] = [1e6, 10]

    with pytest.raises(ValueError, match=r"slide 'a'.*outside.*a_0_3"):
        SpotData.from_object(_break(mutate))

    def negative(a):
        a.obsm["spatial"][0] = [-1, 10]

    with pytest.raises(ValueError, match="outside"):
        SpotData.from_object(_break(negative))


def test_duplicate_and_missing_obs_names():
    adata = visium_adata()
    names = list(adata.obs_names)
    names[1] = names[0]
    adata.obs_names = names
    with pytest.raises(ValueError, match=r"obs_names has 1 duplicated"):
        SpotData.from_object(adata)
    adata = visium_adata()
    names = list(adata.obs_names)
    names[2] = ""
    adata.obs_names = names
    with pytest.raises(ValueError, match="empty name"):
        SpotData.from_object(adata)


def test_nan_coordinates():
    adata = visium_adata()
    adata.obsm["spatial"][4, 1] = np.nan
    with pytest.raises(ValueError, match=r"obsm\['spatial'\].*NaN.*rows \[4\]"):
        SpotData.from_object(adata)


@pytest.mark.parametrize("shape", [(50, 50), (50, 50, 2), (50, 50, 5), (3, 50, 50)])
def test_bad_image_shape(shape):
    adata = visium_adata()
    adata.uns["spatial"]["s0"]["images"]["hires"] = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match=r"images'\]\['hires'\] must be an H x W x 3"):
        SpotData.from_object(adata)


def test_unknown_image_key_and_wrong_type():
    with pytest.raises(KeyError, match="no image 'fullres'"):
        SpotData.from_object(visium_adata(), image_key="fullres")
    with pytest.raises(TypeError, match="AnnData or a SpatialData"):
        SpotData.from_object(np.zeros((3, 3)))


# --------------------------------------------------------------------------------------------
# expression
# --------------------------------------------------------------------------------------------
def test_expression_layer_and_log_detection(caplog):
    adata = visium_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X.toarray())
    with pytest.raises(ValueError, match="log-transformed.*layer="):
        SpotData.from_object(adata, require_expression=True)
    sd = SpotData.from_object(adata, layer="counts", require_expression=True)
    assert (sd.counts != adata.layers["counts"]).nnz == 0
    # for prediction, unusable counts are dropped with a warning, not an error
    sd = SpotData.from_object(adata)
    assert sd.counts is None
    assert sd.var_names is None
    assert "log-transformed" in caplog.text
    with pytest.raises(KeyError, match="layers has no key 'raw'"):
        SpotData.from_object(adata, layer="raw")


def test_require_expression_without_genes():
    adata = visium_adata()[:, []].copy()
    assert SpotData.from_object(adata).counts is None
    with pytest.raises(ValueError, match="holds no genes"):
        SpotData.from_object(adata, require_expression=True)


# --------------------------------------------------------------------------------------------
# grid coordinates
# --------------------------------------------------------------------------------------------
def test_grid_from_array_coordinates_is_shifted_per_slide():
    adata = visium_adata(libraries=("a", "b"))
    adata.obs["array_row"] += np.where(adata.obs["library_id"] == "b", 10, 3)
    adata.obs["array_col"] += 7
    sd = SpotData.from_object(adata)
    for lib in ("a", "b"):
        g = sd.grid_coords[sd.library_ids == lib]
        assert g.min(axis=0).tolist() == [0, 0]
        assert g.max(axis=0).tolist() == [3, 3]


def test_grid_derived_from_square_and_hex_centres():
    adata = visium_adata(n_side=5)
    expected = adata.obs[["array_col", "array_row"]].to_numpy()
    del adata.obs["array_row"], adata.obs["array_col"]
    rng = np.random.default_rng(0)
    adata.obsm["spatial"] = adata.obsm["spatial"] + rng.normal(0, 0.5, adata.obsm["spatial"].shape)
    sd = SpotData.from_object(adata)
    np.testing.assert_array_equal(sd.grid_coords, expected)

    # hexagonal (Visium-like): odd rows shifted by half a spacing, rows sqrt(3)/2 apart
    rows, cols = np.divmod(np.arange(25), 5)
    x = 30 + 20 * cols + 10 * (rows % 2)
    y = 30 + 20 * np.sqrt(3) / 2 * rows
    adata.obsm["spatial"] = np.column_stack([x, y])
    sd = SpotData.from_object(adata)
    assert len({tuple(g) for g in sd.grid_coords}) == 25  # neighbours stay apart
    np.testing.assert_array_equal(sd.grid_coords[:, 1], rows)
    np.testing.assert_array_equal(sd.grid_coords[:, 0], 2 * cols + rows % 2)


def test_grid_derived_in_micrometres_with_non_square_pixels():
    adata = visium_adata(n_side=4, hires_scalef=1.0)
    expected = adata.obs[["array_col", "array_row"]].to_numpy()
    del adata.obs["array_row"], adata.obs["array_col"]
    # x stretched: 20 px apart in x at 5 µm/px, 25 px apart in y at 4 µm/px -> 100 µm both ways
    adata.obsm["spatial"] = np.column_stack([30 + 20 * expected[:, 0], 30 + 25 * expected[:, 1]]).astype(
        float
    )
    sf = adata.uns["spatial"]["s0"]["scalefactors"]
    sf.update(microns_per_pixel_x=5.0, microns_per_pixel_y=4.0)
    adata.uns["spatial"]["s0"]["images"]["hires"] = gradient_image(140, 140)
    sd = SpotData.from_object(adata)
    np.testing.assert_array_equal(sd.grid_coords, expected)


# --------------------------------------------------------------------------------------------
# subset
# --------------------------------------------------------------------------------------------
def test_subset_by_mask_and_indices():
    adata = visium_adata(libraries=("a", "b"))
    sd = SpotData.from_object(adata)
    sub = sd.subset(sd.library_ids == "b")
    assert sub.libraries == ["b"]
    assert set(sub.images) == {"b"}
    assert sub.n_obs == 16
    assert sub.counts.shape == (16, 30)
    np.testing.assert_array_equal(sub.centers, sd.centers[16:])
    sub2 = sd.subset([20, 3])
    assert list(sub2.obs_names) == [sd.obs_names[20], sd.obs_names[3]]
    assert sub2.libraries == ["b", "a"]
    np.testing.assert_array_equal(sub2.grid_coords, sd.grid_coords[[20, 3]])
    with pytest.raises(ValueError, match="boolean mask must have length 32"):
        sd.subset(np.ones(3, bool))
    with pytest.raises(IndexError):
        sd.subset([99])


# --------------------------------------------------------------------------------------------
# SpatialData input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("multiscale", [False, True])
def test_spatialdata_non_identity_transform(multiscale):
    sdata, expected_px, img = spatialdata_with_transform(
        image_scale=0.5, translation=(10, 20), multiscale=multiscale
    )
    sd = SpotData.from_object(sdata)
    np.testing.assert_allclose(sd.centers, expected_px, atol=1e-9)
    image = sd.images["spots"]
    assert image.is_lazy
    assert image.shape == (200, 240)
    # circle diameter 10 global units = 20 image px -> 55 µm / 20 px
    assert image.um_per_px == pytest.approx((55 / 20, 55 / 20))
    # the patch centre shows the image at the spot centre
    patches = sd.extract_patches(patch_size_um=11 * 2.75, size=11, progress=False)
    c = np.round(expected_px).astype(int)
    np.testing.assert_array_equal(patches[:, 5, 5], img[c[:, 1], c[:, 0]])
    assert sd.counts.shape == (9, 10)
    assert list(sd.obs_names) == list(sdata.tables["table"].obs_names)


def test_spatialdata_anisotropic_transform_gives_non_square_pixels():
    from spatialdata.transformations import Scale, set_transformation

    sdata, _, _ = spatialdata_with_transform(image_scale=1.0, translation=(0, 0))
    set_transformation(sdata.images["he"], Scale([2.0, 1.0], axes=("x", "y")), to_coordinate_system="global")
    sd = SpotData.from_object(sdata, spot_diameter_um=100.0)
    # radius 5 global -> 10 global units = 100 µm; one image px = 2 global in x, 1 in y
    assert sd.images["spots"].um_per_px == pytest.approx((20.0, 10.0))
    sd = SpotData.from_object(sdata, microns_per_pixel=0.5)
    assert sd.images["spots"].um_per_px == (0.5, 0.5)


def test_spatialdata_no_common_coordinate_system():
    sdata, _, _ = spatialdata_with_transform(image_cs="aligned", shapes_cs="global")
    with pytest.raises(ValueError, match="no image shares a coordinate system"):
        SpotData.from_object(sdata)
    with pytest.raises(ValueError, match="share no coordinate system"):
        SpotData.from_object(sdata, image_key="he")
    with pytest.raises(ValueError, match="not in coordinate system 'aligned'"):
        SpotData.from_object(sdata, coordinate_system="aligned")


def test_spatialdata_table_errors():
    sdata, _, _ = spatialdata_with_transform()
    with pytest.raises(KeyError, match="no table 'other'"):
        SpotData.from_object(sdata, table_key="other")
    with pytest.raises(KeyError, match="no image 'nope'"):
        SpotData.from_object(sdata, image_key="nope")
    sdata["spots"].loc[0, "geometry"] = sdata["spots"].loc[1, "geometry"]
    sdata.tables["table"].obs["spot_id"] = np.arange(100, 109)
    with pytest.raises(KeyError, match=r"ids \[100, 101.*lacks in its index"):
        SpotData.from_object(sdata)


def test_spatialdata_spot_outside_image():
    sdata, _, _ = spatialdata_with_transform(image_scale=0.5, translation=(10, 20))
    # global x = 5 -> image x = (5 - 10) / 0.5 < 0
    from shapely.geometry import Point

    sdata["spots"].loc[4, "geometry"] = Point(5.0, 50.0)
    with pytest.raises(ValueError, match=r"outside the 240 x 200 px image.*spot4"):
        SpotData.from_object(sdata)


def test_spatialdata_from_anndata_matches_anndata_path():
    import stpredict as stp

    adata = visium_adata(libraries=("a", "b"), hires_scalef=0.5, microns_per_pixel=2.0)
    sdata = stp.io.to_spatialdata(adata)
    sd_sdata = SpotData.from_object(sdata)
    sd_adata = SpotData.from_object(adata)
    assert sd_sdata.libraries == ["a", "b"]  # slide names from obs["library_id"]
    np.testing.assert_allclose(sd_sdata.centers, sd_adata.centers)
    for lib in ("a", "b"):
        assert sd_sdata.images[lib].um_per_px == pytest.approx(sd_adata.images[lib].um_per_px)
    np.testing.assert_array_equal(sd_sdata.grid_coords, sd_adata.grid_coords)
    p1 = sd_sdata.extract_patches(patch_size_um=20, size=16, progress=False)
    p2 = sd_adata.extract_patches(patch_size_um=20, size=16, progress=False)
    np.testing.assert_array_equal(p1, p2)
    # one slide only via shapes_key; explicit images= mapping
    sub = SpotData.from_object(sdata, shapes_key="b_spots", images={"b": "b_image"})
    assert sub.libraries == ["b"]
    assert sub.n_obs == 16
    with pytest.raises(KeyError, match="sdata.shapes has no element"):
        SpotData.from_object(sdata, shapes_key="c_spots")


def test_spatialdata_ambiguous_image_needs_mapping():
    from spatialdata.transformations import Identity, set_transformation

    import stpredict as stp

    adata = visium_adata(libraries=("a", "b"))
    sdata = stp.io.to_spatialdata(adata)
    set_transformation(sdata.images["b_image"], Identity(), to_coordinate_system="a")
    with pytest.raises(ValueError, match=r"2 images .* pass `images="):
        SpotData.from_object(sdata)
    sd = SpotData.from_object(sdata, images={"a_spots": "a_image"})
    assert sd.images["a"].name == "a_image"


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_mouse_olfactory_bulb_non_square_pixels(mob_dir):
    import stpredict as stp

    adata = stp.io.read_legacy_st(
        mob_dir / "MOB1.tsv", mob_dir / "alignment_table_MOB1.tsv", mob_dir / "MOB1.jpg", platform="2k"
    )
    sd = SpotData.from_object(adata)
    ux, uy = sd.images[sd.libraries[0]].um_per_px
    assert ux > uy  # published JPEG resized differently per axis (~4.6 vs ~4.2 µm/px)
    assert 4.0 < uy < 4.5 < ux < 5.0
    assert (sd.grid_coords >= 0).all()
    patches = sd.extract_patches(np.arange(10), patch_size_um=112, size=64, progress=False)
    assert patches.shape == (10, 64, 64, 3)
    assert patches.std() > 5  # upsampled tissue, not blank
    assert pd.Index(sd.obs_names).is_unique

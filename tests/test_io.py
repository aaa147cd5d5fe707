from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

import stpredict as stp
from stpredict.io._legacy_st import fit_pixel_scale

# Hand-made section: 1k array, 20 px per array step in x and 25 in y, i.e. 10 and 8 µm/px.
PX_X, PX_Y, OFF_X, OFF_Y = 20.0, 25.0, 10.0, 8.0
IMG_W, IMG_H = 140, 130


def _spot_table(rng=None):
    rng = rng or np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(1, 6), np.arange(1, 5), indexing="ij")
    x, y = xs.ravel(), ys.ravel()
    new_x = x + rng.normal(0, 0.02, x.size)
    new_y = y + rng.normal(0, 0.02, y.size)
    return pd.DataFrame(
        {
            "x": x,
            "y": y,
            "new_x": new_x,
            "new_y": new_y,
            "pixel_x": OFF_X + PX_X * new_x,
            "pixel_y": OFF_Y + PX_Y * new_y,
            "selected": 1,
        }
    )


def _write_section(tmp_path, *, spots=None, counts=None, image_size=(IMG_W, IMG_H), gz=True):
    """Write counts/spots/image; return paths. Counts rows: every spot but 1x1, plus 9x9."""
    spots = _spot_table() if spots is None else spots
    if counts is None:
        full = _spot_table()
        ids = [f"{a}x{b}" for a, b in zip(full["x"], full["y"]) if (a, b) != (1, 1)] + ["9x9"]
        rng = np.random.default_rng(1)
        counts = pd.DataFrame(
            rng.poisson(3, (len(ids), 4)), index=ids, columns=["GENEA", "GENEB", "GENEA", "MT-CO1"]
        )
    spots_path = tmp_path / "S1_selection.tsv"
    spots.to_csv(spots_path, sep="\t", index=False)
    counts_path = tmp_path / ("S1.tsv.gz" if gz else "S1.tsv")
    text = counts.to_csv(sep="\t")
    if gz:
        with gzip.open(counts_path, "wt") as fh:
            fh.write(text)
    else:
        counts_path.write_text(text)
    image_path = tmp_path / "S1.jpg"
    rgb = np.random.default_rng(2).integers(0, 255, (image_size[1], image_size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image_path, quality=95)
    return counts_path, spots_path, image_path


def test_read_legacy_st_convention(tmp_path):
    spots = _spot_table()
    spots.loc[(spots.x == 5) & (spots.y == 4), "selected"] = 0
    c, s, i = _write_section(tmp_path, spots=spots)
    adata = stp.io.read_legacy_st(c, s, i, lowres_max_size=50)

    # join: 20 spots, minus 1x1 (no counts), minus 5x4 (not selected); 9x9 has no spot
    assert adata.n_obs == 18
    assert "S1_1x1" not in adata.obs_names
    assert "S1_5x4" not in adata.obs_names
    assert "S1_2x3" in adata.obs_names
    assert sp.issparse(adata.X)
    assert adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    assert list(adata.var_names) == ["GENEA", "GENEB", "GENEA-1", "MT-CO1"]
    assert adata.obs["library_id"].dtype == "category"
    assert set(adata.obs["library_id"]) == {"S1"}
    row = adata.obs.loc["S1_2x3"]
    assert (row["array_col"], row["array_row"]) == (2, 3)
    assert adata.obs["array_row"].dtype == np.int64

    # counts are matched by id, not by order
    raw = pd.read_csv(c, sep="\t", index_col=0)
    pos = adata.obs_names.get_loc("S1_2x3")
    np.testing.assert_array_equal(adata.X[pos].toarray().ravel(), raw.loc["2x3"].to_numpy())
    # centres are the spot table's pixels
    table = spots.set_index(spots.x.astype(str) + "x" + spots.y.astype(str))
    np.testing.assert_allclose(
        adata.obsm["spatial"][pos], table.loc["2x3", ["pixel_x", "pixel_y"]].to_numpy()
    )

    entry = adata.uns["spatial"]["S1"]
    assert entry["images"]["hires"].shape == (IMG_H, IMG_W, 3)
    assert entry["images"]["hires"].dtype == np.uint8
    assert max(entry["images"]["lowres"].shape[:2]) <= 50
    sf = entry["scalefactors"]
    assert sf["tissue_hires_scalef"] == 1.0
    assert sf["tissue_lowres_scalef"] == pytest.approx(50 / IMG_W)
    assert sf["microns_per_pixel_x"] == pytest.approx(200 / PX_X, rel=1e-3)
    assert sf["microns_per_pixel_y"] == pytest.approx(200 / PX_Y, rel=1e-3)
    assert sf["microns_per_pixel"] == pytest.approx((10 + 8) / 2, rel=1e-3)
    assert sf["spot_diameter_fullres"] == pytest.approx(100 / sf["microns_per_pixel"])
    meta = entry["metadata"]
    assert meta["platform"] == "1k"
    assert meta["array_pitch_um"] == 200
    assert meta["spot_diameter_um"] == 100
    assert meta["counts_file"] == str(c)


def test_read_legacy_st_options(tmp_path):
    spots = _spot_table()
    spots.loc[(spots.x == 5) & (spots.y == 4), "selected"] = 0
    c, s, i = _write_section(tmp_path, spots=spots, gz=False)
    adata = stp.io.read_legacy_st(
        c, s, i, library_id="sec", platform="2k", selected_only=False, spot_diameter_um=50.0
    )
    assert adata.n_obs == 19  # the unselected spot is kept
    assert adata.obs_names[0].startswith("sec_")
    sf = adata.uns["spatial"]["sec"]["scalefactors"]
    assert sf["microns_per_pixel_x"] == pytest.approx(100 / PX_X, rel=1e-3)  # 2k: 100 µm unit
    assert sf["spot_diameter_fullres"] == pytest.approx(50 / sf["microns_per_pixel"])
    assert adata.uns["spatial"]["sec"]["metadata"]["platform"] == "2k"


def test_fit_pixel_scale_rotation_and_fallback():
    spots = _spot_table()
    angle = np.deg2rad(3)
    ax, ay = spots["new_x"].to_numpy(), spots["new_y"].to_numpy()
    spots["pixel_x"] = 5 + PX_X * (np.cos(angle) * ax - np.sin(angle) * ay)
    spots["pixel_y"] = 5 + PX_Y * (np.sin(angle) * ax + np.cos(angle) * ay)
    fit = fit_pixel_scale(spots)
    assert fit["array_columns"] == "new_x,new_y"
    assert fit["px_per_step_x"] == pytest.approx(PX_X, rel=1e-6)
    assert fit["px_per_step_y"] == pytest.approx(PX_Y, rel=1e-6)
    # without new_x/new_y the integer coordinates are used
    fit = fit_pixel_scale(spots.drop(columns=["new_x", "new_y"]))
    assert fit["array_columns"] == "x,y"
    assert fit["px_per_step_x"] == pytest.approx(PX_X, rel=0.02)


def test_max_image_pixels_restored(tmp_path):
    from PIL import Image as PILImage

    before = PILImage.MAX_IMAGE_PIXELS
    c, s, i = _write_section(tmp_path)
    stp.io.read_legacy_st(c, s, i)
    assert before == PILImage.MAX_IMAGE_PIXELS


# ---- bad inputs


def test_missing_files(tmp_path):
    c, s, i = _write_section(tmp_path)
    missing = tmp_path / "nope.tsv"
    with pytest.raises(FileNotFoundError, match="counts file .*nope"):
        stp.io.read_legacy_st(missing, s, i)
    with pytest.raises(FileNotFoundError, match="spots file .*nope"):
        stp.io.read_legacy_st(c, missing, i)
    with pytest.raises(FileNotFoundError, match="image file .*nope"):
        stp.io.read_legacy_st(c, s, missing)


def test_bad_arguments(tmp_path):
    c, s, i = _write_section(tmp_path)
    with pytest.raises(ValueError, match="platform"):
        stp.io.read_legacy_st(c, s, i, platform="visium")
    with pytest.raises(ValueError, match="array_pitch_um"):
        stp.io.read_legacy_st(c, s, i, array_pitch_um=-1)
    with pytest.raises(ValueError, match="lowres_max_size"):
        stp.io.read_legacy_st(c, s, i, lowres_max_size=0)
    with pytest.raises(TypeError, match="counts"):
        stp.io.read_legacy_st(None, s, i)


@pytest.mark.parametrize("column", ["x", "pixel_y", "selected"])
def test_missing_column(tmp_path, column):
    c, s, i = _write_section(tmp_path, spots=_spot_table().drop(columns=[column]))
    with pytest.raises(KeyError, match=f"lacks column.*'{column}'"):
        stp.io.read_legacy_st(c, s, i)


def test_selected_not_needed_when_keeping_all(tmp_path):
    c, s, i = _write_section(tmp_path, spots=_spot_table().drop(columns=["selected"]))
    assert stp.io.read_legacy_st(c, s, i, selected_only=False).n_obs == 19


def test_no_overlap(tmp_path):
    counts = pd.DataFrame([[1, 2]], index=["50x50"], columns=["A", "B"])
    c, s, i = _write_section(tmp_path, counts=counts)
    with pytest.raises(ValueError, match="no spot id of counts file"):
        stp.io.read_legacy_st(c, s, i)


def test_duplicate_spot_ids(tmp_path):
    spots = _spot_table()
    c, s, i = _write_section(tmp_path, spots=pd.concat([spots, spots.iloc[[3]]]))
    with pytest.raises(ValueError, match=r"duplicate spot ids .*'1x4'"):
        stp.io.read_legacy_st(c, s, i)
    counts = pd.DataFrame([[1, 2], [3, 4]], index=["2x2", "2x2"], columns=["A", "B"])
    c, s, i = _write_section(tmp_path, counts=counts)
    with pytest.raises(ValueError, match=r"counts file .*duplicate spot ids \['2x2'\]"):
        stp.io.read_legacy_st(c, s, i)


@pytest.mark.parametrize(("value", "message"), [(-1, "negative"), (np.nan, "NaN")])
def test_bad_counts(tmp_path, value, message):
    counts = pd.DataFrame([[1.0, 2.0], [3.0, value]], index=["2x2", "3x3"], columns=["A", "B"])
    c, s, i = _write_section(tmp_path, counts=counts)
    with pytest.raises(ValueError, match=rf"{message}.*\['3x3'\]"):
        stp.io.read_legacy_st(c, s, i)


def test_non_numeric_counts(tmp_path):
    counts = pd.DataFrame([[1, "a"], [3, "b"]], index=["2x2", "3x3"], columns=["A", "B"])
    c, s, i = _write_section(tmp_path, counts=counts)
    with pytest.raises(ValueError, match="non-numeric"):
        stp.io.read_legacy_st(c, s, i)


def test_spots_outside_image(tmp_path):
    c, s, i = _write_section(tmp_path, image_size=(60, 60))
    with pytest.raises(ValueError, match=r"spot centre\(s\) .* outside the 60 x 60 px image"):
        stp.io.read_legacy_st(c, s, i)


def test_undecodable_image(tmp_path):
    c, s, i = _write_section(tmp_path)
    i.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="could not decode image"):
        stp.io.read_legacy_st(c, s, i)


def test_input_files_untouched(tmp_path):
    c, s, i = _write_section(tmp_path)
    before = {p: p.read_bytes() for p in (c, s, i)}
    stp.io.read_legacy_st(c, s, i)
    assert all(p.read_bytes() == b for p, b in before.items())


# ---- to_spatialdata


def test_to_spatialdata():
    from spatialdata.models import get_table_keys
    from spatialdata.transformations import Scale, get_transformation

    adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=4, n_genes=12)
    before = adata.copy()
    sdata = stp.io.to_spatialdata(adata)
    assert set(sdata.images) == {"slide0_image", "slide1_image"}
    assert set(sdata.shapes) == {"slide0_spots", "slide1_spots"}
    img = sdata.images["slide1_image"]
    np.testing.assert_array_equal(
        np.moveaxis(img.values, 0, -1), adata.uns["spatial"]["slide1"]["images"]["hires"]
    )
    tr = get_transformation(img, to_coordinate_system="slide1")
    assert isinstance(tr, Scale)
    np.testing.assert_allclose(tr.scale, [1.0, 1.0])

    shapes = sdata.shapes["slide0_spots"]
    mask = (adata.obs["library_id"] == "slide0").to_numpy()
    np.testing.assert_allclose(
        np.column_stack([shapes.geometry.x, shapes.geometry.y]), adata.obsm["spatial"][mask]
    )
    sf = adata.uns["spatial"]["slide0"]["scalefactors"]
    np.testing.assert_allclose(shapes["radius"], sf["spot_diameter_fullres"] / 2)

    table = sdata.tables["table"]
    region, region_key, instance_key = get_table_keys(table)
    assert sorted(region) == ["slide0_spots", "slide1_spots"]
    assert (table.obs[region_key].astype(str) == "slide" + adata.obs["library_id"].str[5:] + "_spots").all()
    # every table row points to an existing shape
    for reg in region:
        ids = table.obs.loc[table.obs[region_key] == reg, instance_key]
        assert set(ids) == set(sdata.shapes[reg].index)
    assert "images" not in table.uns["spatial"]["slide0"]
    assert table.uns["spatial"]["slide0"]["scalefactors"]["microns_per_pixel"] == 2.0
    # the input is untouched
    assert list(adata.obs.columns) == list(before.obs.columns)
    assert "images" in adata.uns["spatial"]["slide0"]


def test_to_spatialdata_single_slide_lowres_only():
    from spatialdata.transformations import get_transformation

    adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=3, n_genes=8)
    entry = adata.uns["spatial"]["slide0"]
    entry["images"].pop("hires")
    sdata = stp.io.to_spatialdata(adata)
    tr = get_transformation(sdata.images["slide0_image"], to_coordinate_system="global")
    np.testing.assert_allclose(tr.scale, 1 / entry["scalefactors"]["tissue_lowres_scalef"])


def test_to_spatialdata_errors():
    adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=3, n_genes=8)
    with pytest.raises(KeyError, match="no column 'sample'"):
        stp.io.to_spatialdata(adata, library_key="sample")
    bad = adata.copy()
    del bad.uns["spatial"]["slide0"]
    with pytest.raises(KeyError, match="no entry for library_id 'slide0'"):
        stp.io.to_spatialdata(bad)
    with pytest.raises(TypeError, match="expected an AnnData"):
        stp.io.to_spatialdata(adata.to_df())


# ---- real data


@pytest.mark.realdata
@pytest.mark.slow
def test_read_her2st_c3(her2st_dir):
    adata = stp.io.read_legacy_st(
        her2st_dir / "ST-cnts/C3.tsv.gz",
        her2st_dir / "ST-spotfiles/C3_selection.tsv",
        her2st_dir / "ST-imgs/C/C3/5714_HE_BT_D1.jpg",
    )
    assert adata.n_obs == 180  # 182 spots in the spot file, 180 with counts
    assert adata.n_vars > 15000
    sf = adata.uns["spatial"]["C3"]["scalefactors"]
    assert sf["microns_per_pixel"] == pytest.approx(0.69, abs=0.01)
    assert sf["spot_diameter_fullres"] == pytest.approx(145, abs=3)
    hires = adata.uns["spatial"]["C3"]["images"]["hires"]
    assert hires.shape[0] > 9000
    assert hires.shape[1] > 9000
    assert np.all(adata.X.data == np.round(adata.X.data))


@pytest.mark.realdata
def test_read_mob1(mob_dir):
    adata = stp.io.read_legacy_st(
        mob_dir / "MOB1.tsv", mob_dir / "alignment_table_MOB1.tsv", mob_dir / "MOB1.jpg", platform="2k"
    )
    spots = pd.read_csv(mob_dir / "alignment_table_MOB1.tsv", sep="\t")
    assert adata.n_obs == int((spots["selected"] == 1).sum()) == 379
    assert adata.n_vars == 1000
    sf = adata.uns["spatial"]["MOB1"]["scalefactors"]
    assert sf["microns_per_pixel_x"] == pytest.approx(4.6, abs=0.1)
    assert sf["microns_per_pixel_y"] == pytest.approx(4.2, abs=0.1)
    assert adata.uns["spatial"]["MOB1"]["images"]["hires"].shape == (1905, 1905, 3)

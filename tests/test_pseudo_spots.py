"""Visium HD bins and Xenium-style cells / transcripts pooled into pseudo-spots (stp.pp)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from shapely.geometry import box

import stpredict as stp
from stpredict.data import SpotData


def _bins_sdata(adata, *, bin_px: float = 8.0, per_spot: int = 3):
    """The synthetic slide's image with square bins (polygons, as Visium HD) instead of circles.

    Each spot's counts are split into ``per_spot`` x ``per_spot`` bins around its centre, so the
    pseudo-spots pooled back from them are known.
    """
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    lib = str(adata.obs["library_id"].iloc[0])
    entry = adata.uns["spatial"][lib]
    image = Image2DModel.parse(
        np.moveaxis(entry["images"]["hires"], -1, 0), dims=("c", "y", "x"), transformations={lib: Identity()}
    )
    rng = np.random.default_rng(0)
    geoms, rows, spot_of_bin = [], [], []
    counts = sp.csr_matrix(adata.X).toarray()
    offsets = (np.arange(per_spot) - (per_spot - 1) / 2) * bin_px
    for i, (x, y) in enumerate(np.asarray(adata.obsm["spatial"], dtype=float)):
        parts = rng.multinomial(1, [1 / per_spot**2] * per_spot**2, size=counts[i].sum().astype(int))
        genes = np.repeat(np.arange(counts.shape[1]), counts[i].astype(int))
        split = np.zeros((per_spot**2, counts.shape[1]))
        np.add.at(split, (parts.argmax(1), genes), 1)
        for b, (dx, dy) in enumerate((dx, dy) for dy in offsets for dx in offsets):
            geoms.append(
                box(x + dx - bin_px / 2, y + dy - bin_px / 2, x + dx + bin_px / 2, y + dy + bin_px / 2)
            )
            rows.append(split[b])
            spot_of_bin.append(i)
    bins = ShapesModel.parse(
        pd.DataFrame(index=np.arange(len(geoms)))
        .assign(geometry=geoms)
        .pipe(lambda df: __import__("geopandas").GeoDataFrame(df, geometry="geometry")),
        transformations={lib: Identity()},
    )
    table = __import__("anndata").AnnData(
        sp.csr_matrix(np.asarray(rows, dtype=np.float32)),
        obs=pd.DataFrame(
            {
                "region": pd.Categorical([f"{lib}_bins"] * len(geoms)),
                "bin_id": np.arange(len(geoms)),
                "library_id": lib,
            },
            index=[f"bin{i}" for i in range(len(geoms))],
        ),
        var=pd.DataFrame(index=adata.var_names),
    )
    table.uns["spatial"] = {
        lib: {"scalefactors": {"microns_per_pixel": entry["scalefactors"]["microns_per_pixel"]}}
    }
    table = TableModel.parse(table, region=f"{lib}_bins", region_key="region", instance_key="bin_id")
    sdata = SpatialData(images={f"{lib}_image": image}, shapes={f"{lib}_bins": bins}, tables={"table": table})
    return sdata, np.asarray(spot_of_bin)


@pytest.fixture(scope="module")
def slides():
    adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, n_genes=20, seed=5)
    return [adata[adata.obs["library_id"] == s].copy() for s in ("slide0", "slide1")]


def _brute_force(centres, radius, xy, counts):
    d = np.linalg.norm(centres[:, None, :] - xy[None, :, :], axis=2)
    return (d <= radius).astype(float) @ counts


def test_bins_pool_into_pseudo_spots_with_the_right_counts(slides):
    sdata, _ = _bins_sdata(slides[0])
    out = stp.pp.bin_spots(sdata, diameter_um=55, spacing_um=100)
    table = out.tables["table"]
    circles = out.shapes["slide0_bins_pseudo_spots"]
    um = 2.0  # µm per pixel of the synthetic slide, recorded in the bins' table
    assert np.allclose(circles["radius"], 27.5 / um)
    bins_xy = np.column_stack(
        [sdata.shapes["slide0_bins"].centroid.x, sdata.shapes["slide0_bins"].centroid.y]
    )
    centres = np.column_stack([circles.geometry.x, circles.geometry.y])
    expected = _brute_force(centres, 27.5 / um, bins_xy, sdata.tables["table"].X.toarray())
    np.testing.assert_allclose(table.X.toarray(), expected)
    assert set(table.obs["library_id"]) == {"slide0"}  # the bins' slide
    assert {"array_row", "array_col", "n_observations"} <= set(table.obs)
    assert "slide0_image" in out.images
    assert sdata.tables["table"].n_obs == 64 * 9  # the input is untouched


def test_pseudo_spots_on_the_spot_grid_recover_the_spots(slides):
    adata = slides[0]
    sdata, spot_of_bin = _bins_sdata(adata)
    out = stp.pp.bin_spots(sdata, diameter_um=55, spacing_um=100)
    sd = SpotData.from_object(out)
    # 55 µm circles 100 µm apart do not overlap: no count is used twice
    assert out.tables["table"].X.sum() <= sdata.tables["table"].X.sum()
    assert sd.spot_diameter_um == pytest.approx(55.0)
    np.testing.assert_allclose(sd.images["slide0"].um_per_px, (2.0, 2.0))
    assert len(spot_of_bin) == 9 * adata.n_obs


def test_pseudo_spots_fit_and_predict(slides):
    train = stp.pp.bin_spots(_bins_sdata(slides[0])[0], diameter_um=55, spacing_um=50)
    test = stp.pp.bin_spots(_bins_sdata(slides[1])[0], diameter_um=55, spacing_um=50)
    model = stp.tl.fit(train, preset="tiny", epochs=2, seed=0, progress=False)
    stp.tl.predict(test, model=model, progress=False)
    assert np.isfinite(stp.tl.evaluate(test)["pearson_r"]).all()


def test_the_bins_themselves_are_polygon_spots(slides):
    sdata, _ = _bins_sdata(slides[0])
    sd = SpotData.from_object(sdata)
    assert sd.n_obs == 64 * 9
    np.testing.assert_allclose(sd.images["slide0"].um_per_px, (2.0, 2.0))  # from microns_per_pixel
    del sdata.tables["table"].uns["spatial"]
    with pytest.raises(ValueError, match="holds polygons"):
        SpotData.from_object(sdata)


def test_transcripts_pool_by_gene(slides):
    from spatialdata import SpatialData
    from spatialdata.models import PointsModel
    from spatialdata.transformations import Identity

    rng = np.random.default_rng(1)
    n = 5000
    points = pd.DataFrame(
        {
            "x": rng.uniform(0, 400, n),
            "y": rng.uniform(0, 300, n),
            "feature_name": rng.choice(["A", "B", "C"], n),
        }
    )
    sdata = SpatialData(points={"tx": PointsModel.parse(points, transformations={"global": Identity()})})
    with pytest.raises(ValueError, match="microns_per_unit"):
        stp.pp.pseudo_spots(sdata, points_key="tx")
    out = stp.pp.pseudo_spots(sdata, points_key="tx", microns_per_unit=1.0, diameter_um=55, spacing_um=100)
    table = out.tables["table"]
    circles = out.shapes["tx_pseudo_spots"]
    centres = np.column_stack([circles.geometry.x, circles.geometry.y])
    onehot = pd.get_dummies(points["feature_name"]).reindex(columns=list(table.var_names)).to_numpy(float)
    expected = _brute_force(centres, 27.5, points[["x", "y"]].to_numpy(), onehot)
    np.testing.assert_allclose(table.X.toarray(), expected)
    assert table.X.sum() <= n  # 55 µm circles 100 µm apart do not overlap

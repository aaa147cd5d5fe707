"""Space Ranger (Visium) output read by scanpy / squidpy works with fit and predict unchanged."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
from PIL import Image

import stpredict as stp

N_GENES = 12


def _write_counts_h5(path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
    """A filtered_feature_bc_matrix.h5 in Space Ranger's layout (CSC: one column per barcode)."""
    import scipy.sparse as sp

    csc = sp.csc_matrix(counts.T.astype(np.int32))  # genes × barcodes
    with h5py.File(path, "w") as f:
        f.attrs["library_ids"] = np.array([b"custom"])
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"], m["indices"], m["indptr"] = csc.data, csc.indices, csc.indptr
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array([b"Gene Expression"] * len(genes))
        feats["genome"] = np.array([b"GRCh38"] * len(genes))
        feats["_all_tag_keys"] = np.array([b"genome"])


def space_ranger_folder(root, *, seed: int = 0, side: int = 8):
    """A small Visium output folder: counts .h5, tissue positions, scale factors, RGBA PNGs.

    The hires image's colour follows the first programme of the counts, so a model can learn.
    """
    rng = np.random.default_rng(seed)
    spatial = root / "spatial"
    spatial.mkdir(parents=True)
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    n = len(rows)
    pitch = 180.0  # full-resolution px between spot centres (100 µm at ~0.55 µm/px)
    y_full, x_full = 300 + rows * pitch, 300 + cols * pitch + (rows % 2) * pitch / 2
    level = rng.random(n)
    counts = rng.poisson(2 + 20 * np.outer(level, np.linspace(1, 0, N_GENES)) + 2, size=(n, N_GENES))
    barcodes = [f"AAAC{i:04d}-1" for i in range(n)]
    genes = [f"GENE{i}" for i in range(N_GENES)]
    _write_counts_h5(root / "filtered_feature_bc_matrix.h5", counts, barcodes, genes)
    with open(spatial / "tissue_positions_list.csv", "w") as fh:
        for b, r, c, y, x in zip(barcodes, rows, cols, y_full, x_full, strict=True):
            fh.write(f"{b},1,{r},{c},{int(y)},{int(x)}\n")
    hires_scalef, full_side = 0.2, int(600 + side * pitch + pitch)
    (spatial / "scalefactors_json.json").write_text(
        json.dumps(
            {
                "spot_diameter_fullres": 99.0,
                "fiducial_diameter_fullres": 160.0,
                "tissue_hires_scalef": hires_scalef,
                "tissue_lowres_scalef": 0.05,
            }
        )
    )
    side_px = int(full_side * hires_scalef)
    img = np.full((side_px, side_px, 4), 255, np.uint8)
    for yy, xx, lv in zip(y_full * hires_scalef, x_full * hires_scalef, level, strict=True):
        y0, x0 = int(yy) - 12, int(xx) - 12
        img[max(0, y0) : y0 + 24, max(0, x0) : x0 + 24, :3] = (int(255 * (1 - lv)), 60, int(255 * lv))
    Image.fromarray(img, "RGBA").save(spatial / "tissue_hires_image.png")
    Image.fromarray(img[::4, ::4], "RGBA").save(spatial / "tissue_lowres_image.png")
    return root


def _read(reader: str, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's deprecation of read_visium in favour of squidpy
        if reader == "scanpy":
            import scanpy as sc

            return sc.read_visium(path)
        import squidpy as sq

        return sq.read.visium(path)


@pytest.mark.parametrize("reader", ["scanpy", "squidpy"])
def test_space_ranger_output_fits_and_predicts(tmp_path, reader):
    train = _read(reader, space_ranger_folder(tmp_path / "a", seed=0))
    test = _read(reader, space_ranger_folder(tmp_path / "b", seed=1))
    train.var_names_make_unique()
    test.var_names_make_unique()
    assert "library_id" not in train.obs  # what the readers give: one library in uns["spatial"]
    library = next(iter(train.uns["spatial"]))
    assert train.uns["spatial"][library]["images"]["hires"].shape[2] == 4  # RGBA
    model = stp.tl.fit(train, preset="tiny", epochs=3, seed=0, progress=False, n_top_genes=N_GENES)
    assert model.training["libraries"] == [library]
    stp.tl.predict(test, model=model, progress=False)
    assert test.obsm["stpredict"].shape == (test.n_obs, len(model.genes))
    res = stp.tl.evaluate(test, genes="all")
    assert np.isfinite(res["pearson_r"]).all()
    # the pixel size came from the spot diameter (55 µm over 99 px), not from a guess of the image
    sd = stp.data.SpotData.from_object(test)
    um_per_hires_px = 55.0 / 99.0 / 0.2
    assert sd.images[library].um_per_px[0] == pytest.approx(um_per_hires_px, rel=1e-6)


def test_spatialdata_io_visium_fits_and_predicts(tmp_path):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = spatialdata_io.visium(space_ranger_folder(tmp_path / "a", seed=0), dataset_id="a")
        test = spatialdata_io.visium(space_ranger_folder(tmp_path / "b", seed=1), dataset_id="b")
    assert sorted(train.images) == ["a_hires_image", "a_lowres_image"]  # two images for the spots
    model = stp.tl.fit(train, preset="tiny", epochs=2, seed=0, progress=False, n_top_genes=N_GENES)
    sd = stp.data.SpotData.from_object(train)
    assert sd.images["a"].name == "a_hires_image"  # the finer of the two
    stp.tl.predict(test, model=model, progress=False)
    assert np.isfinite(stp.tl.evaluate(test)["pearson_r"]).all()

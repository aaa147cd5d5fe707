"""Small hand-made AnnData / SpatialData objects for the data-layer tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse


def gradient_image(h: int = 120, w: int = 160) -> np.ndarray:
    """RGB uint8 image whose pixel (x, y) encodes its position: R = x % 256, G = y % 256, B = 77."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[..., 0] = xx % 256
    img[..., 1] = yy % 256
    img[..., 2] = 77
    return img


def visium_adata(
    *,
    n_side: int = 4,
    libraries: tuple[str, ...] = ("s0",),
    spacing_px: float = 20.0,
    offset_px: float = 30.0,
    hires_scalef: float = 0.5,
    microns_per_pixel: float | None = 1.0,
    spot_diameter_fullres: float = 10.0,
    n_genes: int = 30,
    seed: int = 0,
) -> ad.AnnData:
    """Square grid of spots per library, hires image at ``hires_scalef`` of full resolution."""
    rng = np.random.default_rng(seed)
    obs, coords, uns = [], [], {}
    size_full = offset_px * 2 + spacing_px * (n_side - 1)
    for lib in libraries:
        for r in range(n_side):
            for c in range(n_side):
                obs.append({"name": f"{lib}_{r}_{c}", "library_id": lib, "array_row": r, "array_col": c})
                coords.append((offset_px + c * spacing_px, offset_px + r * spacing_px))
        hw = int(np.ceil(size_full * hires_scalef)) + 2
        sf = {
            "tissue_hires_scalef": hires_scalef,
            "tissue_lowres_scalef": hires_scalef / 2,
            "spot_diameter_fullres": spot_diameter_fullres,
        }
        if microns_per_pixel is not None:
            sf["microns_per_pixel"] = microns_per_pixel
        uns[lib] = {
            "images": {"hires": gradient_image(hw, hw), "lowres": gradient_image(hw // 2, hw // 2)},
            "scalefactors": sf,
            "metadata": {},
        }
    obs = pd.DataFrame(obs).set_index("name")
    obs.index.name = None
    obs["library_id"] = pd.Categorical(obs["library_id"])
    n = len(obs)
    X = sparse.csr_matrix(rng.poisson(3.0, size=(n, n_genes)).astype(np.float32))
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    adata.obsm["spatial"] = np.asarray(coords, dtype=np.float64)
    adata.uns["spatial"] = uns
    return adata


def spatialdata_with_transform(
    *,
    image_scale: float = 0.5,
    translation: tuple[float, float] = (10.0, 20.0),
    radius: float = 5.0,
    n_side: int = 3,
    image_cs: str = "global",
    shapes_cs: str = "global",
    multiscale: bool = False,
):
    """SpatialData: image placed with Scale(image_scale) then Translation, shapes identity.

    A spot at global (gx, gy) sits at image pixel ((gx - tx) / s, (gy - ty) / s).
    """
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    img = gradient_image(200, 240)
    to_global = Sequence(
        [Scale([image_scale, image_scale], axes=("x", "y")), Translation(list(translation), axes=("x", "y"))]
    )
    image = Image2DModel.parse(
        np.moveaxis(img, -1, 0),
        dims=("c", "y", "x"),
        transformations={image_cs: to_global},
        scale_factors=[2] if multiscale else None,
        chunks=(3, 64, 64),
    )
    tx, ty = translation
    gx = tx + image_scale * np.linspace(40, 200, n_side)
    gy = ty + image_scale * np.linspace(30, 160, n_side)
    xy = np.array([(x, y) for y in gy for x in gx])
    n = len(xy)
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(n, radius), index=np.arange(n), transformations={shapes_cs: Identity()}
    )
    rng = np.random.default_rng(1)
    table = ad.AnnData(
        X=sparse.csr_matrix(rng.poisson(2.0, size=(n, 10)).astype(np.float32)),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["spots"] * n), "spot_id": np.arange(n)},
            index=[f"spot{i}" for i in range(n)],
        ),
    )
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    sdata = SpatialData(images={"he": image}, shapes={"spots": shapes}, tables={"table": table})
    expected_px = np.column_stack([(xy[:, 0] - tx) / image_scale, (xy[:, 1] - ty) / image_scale])
    return sdata, expected_px, img


def synthetic_split(n_genes: int, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    """Two 6 × 6-spot synthetic slides: ``slide0`` to train on, ``slide1`` to predict."""
    import stpredict as stp

    adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=6, n_genes=n_genes, seed=seed)
    train = adata[adata.obs["library_id"] == "slide0"].copy()
    test = adata[adata.obs["library_id"] == "slide1"].copy()
    return train, test

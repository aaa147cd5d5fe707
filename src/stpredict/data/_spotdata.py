"""``SpotData``: one normalised view of spots, images and counts from AnnData or SpatialData."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from stpredict._constants import DEFAULT_SPOT_DIAMETER_UM
from stpredict._logging import logger
from stpredict._validation import (
    check_coordinates,
    check_image,
    check_image_names,
    check_inside,
    check_obs_names,
    check_pair,
    check_positive,
    is_spatialdata,
    spatialdata_table,
)

from ._patches import SlideImage, extract_image_patches

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

#: Spot diameter (µm) assumed when nothing else gives the physical scale (10x Visium spots).

_IMAGE_PREFERENCE = ("hires", "lowres")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _expression(
    table: AnnData, layer: str | None, *, what: str, require: bool
) -> tuple[sparse.csr_matrix | None, pd.Index | None]:
    """Raw counts (CSR float32) and gene names of ``table``; ``None`` when there are none."""
    from stpredict.pp import check_counts

    if layer is not None and layer not in table.layers:
        raise KeyError(f"{what}.layers has no key {layer!r}; available: {list(table.layers)}.")
    X = table.X if layer is None else table.layers[layer]
    name = f"{what}.X" if layer is None else f"{what}.layers[{layer!r}]"
    if X is None or table.n_vars == 0:
        if require:
            raise ValueError(f"{name} holds no genes; expected raw counts (spots x genes) to train on.")
        return None, None
    var_names = pd.Index(table.var_names.astype(str))
    if var_names.has_duplicates and require:
        dup = var_names[var_names.duplicated()].unique().tolist()
        raise ValueError(f"{what}.var_names has duplicated genes {dup[:5]}; call `var_names_make_unique()`.")
    try:
        check_counts(X, name=name)
    except (ValueError, TypeError) as err:
        if require:
            raise
        logger.warning(f"{err} Ignoring the expression (no truth).")
        return None, None
    counts = sparse.csr_matrix(X, dtype=np.float32)  # dense or any sparse format
    return counts, var_names


def _nearest_spacing(xy: np.ndarray) -> tuple[float, float, float]:
    """Median nearest-neighbour distance and the spot spacing along x and y.

    The per-axis spacing is the smallest clearly non-zero offset along that axis between
    neighbouring spots (square grid: the nearest-neighbour distance; hexagonal/checkerboard
    grids: half of it along the staggered axis), so that rounding keeps neighbours apart.
    """
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 1.0, 1.0, 1.0
    k = min(len(xy), 9)
    dist, idx = cKDTree(xy).query(xy, k=k)
    nn = dist[:, 1]
    d = float(np.median(nn[nn > 0])) if (nn > 0).any() else 1.0
    close = (dist[:, 1:] > 0) & (dist[:, 1:] <= 1.5 * d)
    spacing = []
    for axis in (0, 1):
        delta = np.abs(xy[idx[:, 1:], axis] - xy[:, axis][:, None])[close]
        delta = delta[delta > 0.25 * d]
        if len(delta) == 0:
            spacing.append(d)
            continue
        low = np.percentile(delta, 5)
        spacing.append(float(np.median(delta[delta <= 1.3 * low])))
    return d, spacing[0], spacing[1]


def _grid_coords(
    obs: pd.DataFrame, centers: np.ndarray, library_ids: np.ndarray, images: Mapping[str, SlideImage]
) -> np.ndarray:
    """Integer grid (x, y) per spot, >= 0, per slide (see :attr:`SpotData.grid_coords`)."""
    grid = np.zeros((len(centers), 2), dtype=np.int64)
    known = None
    if {"array_col", "array_row"} <= set(obs.columns):
        vals = obs[["array_col", "array_row"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        if np.isfinite(vals).all() and np.array_equal(vals, np.round(vals)):
            known = vals.astype(np.int64)
    for lib in pd.unique(library_ids):
        mask = library_ids == lib
        if known is not None:
            g = known[mask]
        else:
            um = centers[mask] * np.asarray(images[lib].um_per_px)  # physical units (non-square px)
            _, sx, sy = _nearest_spacing(um)
            g = np.round((um - um.min(axis=0)) / np.array([sx, sy])).astype(np.int64)
        grid[mask] = g - g.min(axis=0) if len(g) else g
    return grid


def pixel_size_um(
    sf: Mapping[str, Any],
    *,
    what: str,
    override: tuple[float, float] | None = None,
    spot_diameter_um: float | None = None,
) -> tuple[float, float] | None:
    """µm per full-resolution pixel (x, y) of Visium-style scale factors ``sf``.

    ``override`` when given, else the recorded ``microns_per_pixel(_x/_y)``, else the spot
    diameter (``spot_diameter_um``, default 55 µm) over ``spot_diameter_fullres``; ``None`` when
    none of them is there. ``what`` names ``sf`` in errors.
    """
    if override is not None:
        return override
    recorded = _scalefactor_um(sf, what=what)
    if recorded is not None or sf.get("spot_diameter_fullres") is None:
        return recorded
    d = spot_diameter_um or DEFAULT_SPOT_DIAMETER_UM
    um = d / check_positive(sf["spot_diameter_fullres"], what=f"{what}['spot_diameter_fullres']")
    return um, um


def _scalefactor_um(sf: Mapping[str, Any], *, what: str) -> tuple[float, float] | None:
    """µm per full-resolution pixel (x, y) from Visium-style scale factors, if recorded."""
    if "microns_per_pixel_x" in sf and "microns_per_pixel_y" in sf:
        return (
            check_positive(sf["microns_per_pixel_x"], what=f"{what}['microns_per_pixel_x']"),
            check_positive(sf["microns_per_pixel_y"], what=f"{what}['microns_per_pixel_y']"),
        )
    if "microns_per_pixel" in sf:
        v = check_positive(sf["microns_per_pixel"], what=f"{what}['microns_per_pixel']")
        return v, v
    return None


# --------------------------------------------------------------------------------------------
# SpotData
# --------------------------------------------------------------------------------------------
class SpotData:
    """Spots, their slide images and counts, in one form whatever the input object.

    Build it with :meth:`from_object`. Attributes: ``obs_names`` (unique spot ids),
    ``library_ids`` (slide of each spot), ``libraries`` (slides in order of first appearance),
    ``centers`` (float64 ``(n, 2)`` x, y in pixels of ``images[lib].array``), ``images``
    (``dict[str, SlideImage]``), ``counts`` (CSR raw counts or ``None``), ``var_names``,
    ``grid_coords`` (int64 ``(n, 2)`` integer grid x, y >= 0), ``table`` (the source AnnData,
    never modified) and ``spot_diameter_um``.

    ``grid_coords`` are the array coordinates ``obs[["array_col", "array_row"]]`` when present,
    shifted to start at 0 per slide. Otherwise they are derived per slide from the centres in
    micrometres: the spot spacing along each axis is estimated from nearest neighbours (median
    nearest-neighbour distance; along an axis where rows are staggered, the smallest clear offset
    between neighbours) and ``round((centre - min) / spacing)`` is taken per axis.
    """

    def __init__(
        self,
        *,
        obs_names: pd.Index,
        library_ids: np.ndarray,
        centers: np.ndarray,
        images: dict[str, SlideImage],
        counts: sparse.csr_matrix | None,
        var_names: pd.Index | None,
        grid_coords: np.ndarray,
        table: AnnData,
        spot_diameter_um: float | None,
    ):
        self.obs_names = pd.Index(obs_names)
        self.library_ids = np.asarray(library_ids).astype(str)
        self.libraries = [str(x) for x in pd.unique(self.library_ids)]
        self.centers = np.asarray(centers, dtype=np.float64)
        self.images = dict(images)
        self.counts = counts
        self.var_names = var_names
        self.grid_coords = np.asarray(grid_coords, dtype=np.int64)
        self.table = table
        self.spot_diameter_um = spot_diameter_um

    def __len__(self) -> int:
        return len(self.obs_names)

    @property
    def n_obs(self) -> int:
        """Number of spots."""
        return len(self.obs_names)

    def __repr__(self) -> str:
        genes = "no counts" if self.counts is None else f"{self.counts.shape[1]} genes"
        return f"SpotData({self.n_obs} spots, {len(self.libraries)} slide(s) {self.libraries[:5]}, {genes})"

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_object(
        cls,
        data: Any,
        *,
        library_key: str = "library_id",
        table_key: str | None = None,
        image_key: str | None = None,
        shapes_key: str | Sequence[str] | None = None,
        coordinate_system: str | None = None,
        layer: str | None = None,
        spot_diameter_um: float | None = None,
        require_expression: bool = False,
        images: Mapping[str, str] | None = None,
        microns_per_pixel: float | tuple[float, float] | None = None,
    ) -> SpotData:
        """Read spots from an AnnData (Visium convention) or a SpatialData object.

        **AnnData** (scanpy/squidpy Visium convention, also :func:`stpredict.io.read_legacy_st`
        and :func:`stpredict.datasets.synthetic`): slides from ``obs[library_key]`` (when the
        column is absent, ``uns["spatial"]`` must hold exactly one library); per slide the image
        ``image_key`` or else ``"hires"`` then ``"lowres"`` of ``uns["spatial"][lib]["images"]``;
        centres ``obsm["spatial"] * tissue_<image>_scalef``; µm per image pixel =
        (µm per full-resolution pixel) / scalef, where µm per full-resolution pixel is
        ``microns_per_pixel`` (argument), else ``scalefactors["microns_per_pixel_x"/"_y"]`` or
        ``["microns_per_pixel"]``, else ``spot_diameter_um / spot_diameter_fullres`` with
        ``spot_diameter_um`` defaulting to 55 µm (Visium).

        **SpatialData**: the table ``table_key`` (default: the only table) annotates circle shapes
        (``region``/``region_key``/``instance_key`` from its ``uns["spatialdata_attrs"]``); each
        annotated shapes element (restricted to ``shapes_key`` if given) is one slide. Its image is
        ``images[region]`` (a dict from shapes element or slide name to image element name), else
        ``image_key``, else the only image sharing a coordinate system with the shapes. The
        coordinate system is ``coordinate_system`` or the one both elements share (several are
        fine when they agree). Spot centres in image pixels = inverse(image → cs) ∘ (shapes → cs)
        applied to the circle centres. The finest scale of a multiscale image is used and stays
        lazy (only the windows needed are read). µm per image pixel: ``microns_per_pixel``
        (argument, µm per pixel of that image), else the spot diameter in µm divided by the circle
        diameter in image pixels per axis. The diameter is ``spot_diameter_um``, else the one the
        table records (``uns["spatial"][slide]["scalefactors"]``, as written by
        :func:`stpredict.io.to_spatialdata`), else 55 µm. Slide names are the table's
        ``obs[library_key]`` values when they match the regions one-to-one, else the regions.

        Parameters
        ----------
        data
            :class:`~anndata.AnnData` or :class:`~spatialdata.SpatialData`; never modified.
        library_key
            Column of ``obs`` telling slides apart.
        table_key
            SpatialData table; ignored for AnnData.
        image_key
            Image to read patches from: a key of ``uns["spatial"][lib]["images"]`` (AnnData) or
            an image element name (SpatialData).
        shapes_key
            SpatialData shapes element(s) to use; spots annotating others are dropped.
        coordinate_system
            SpatialData coordinate system linking shapes and image.
        layer
            Layer with raw counts; ``None``: ``X``.
        spot_diameter_um
            Physical spot diameter used to derive the pixel size when nothing more direct is
            recorded (default 55 µm, Visium).
        require_expression
            Raise unless the table holds raw counts (training). Otherwise counts that fail
            :func:`stpredict.pp.check_counts` are ignored with a warning.
        images
            SpatialData only: ``{shapes element or slide name: image element name}``.
        microns_per_pixel
            Override the pixel size: µm per full-resolution pixel (AnnData) or per pixel of the
            image element (SpatialData); a number or an ``(x, y)`` pair.

        Returns
        -------
        The spots.

        Examples
        --------
        >>> import stpredict as stp
        >>> from stpredict.data import SpotData
        >>> adata = stp.datasets.synthetic(n_slides=2)
        >>> sd = SpotData.from_object(adata)
        >>> sd.libraries
        ['slide0', 'slide1']
        >>> sd.extract_patches([0, 1], patch_size_um=100, size=32, progress=False).shape
        (2, 32, 32, 3)
        """
        if spot_diameter_um is not None:
            spot_diameter_um = check_positive(spot_diameter_um, what="spot_diameter_um")
        um_override = (
            None if microns_per_pixel is None else check_pair(microns_per_pixel, what="microns_per_pixel")
        )
        if is_spatialdata(data):
            return _from_spatialdata(
                data,
                library_key=library_key,
                table_key=table_key,
                image_key=image_key,
                shapes_key=shapes_key,
                coordinate_system=coordinate_system,
                layer=layer,
                spot_diameter_um=spot_diameter_um,
                require_expression=require_expression,
                images=images,
                um_override=um_override,
            )
        from anndata import AnnData

        if isinstance(data, AnnData):
            return _from_anndata(
                data,
                library_key=library_key,
                image_key=image_key,
                layer=layer,
                spot_diameter_um=spot_diameter_um,
                require_expression=require_expression,
                um_override=um_override,
            )
        raise TypeError(
            f"SpotData.from_object: expected an AnnData or a SpatialData object, got {type(data).__name__}."
        )

    # ----------------------------------------------------------------------------------------
    def subset(self, mask_or_indices: Any) -> SpotData:
        """The spots selected by a boolean mask or integer indices (images are shared).

        Parameters
        ----------
        mask_or_indices
            Boolean mask of length ``n_obs`` or integer positions.

        Returns
        -------
        A new :class:`SpotData`; ``grid_coords`` are kept as they were.

        Examples
        --------
        >>> import stpredict as stp
        >>> from stpredict.data import SpotData
        >>> sd = SpotData.from_object(stp.datasets.synthetic(n_slides=2))
        >>> sd.subset(sd.library_ids == "slide1").libraries
        ['slide1']
        """
        idx = self._indices(mask_or_indices)
        libs = self.library_ids[idx]
        keep = {lib: self.images[lib] for lib in pd.unique(libs)}
        return SpotData(
            obs_names=self.obs_names[idx],
            library_ids=libs,
            centers=self.centers[idx],
            images=keep,
            counts=None if self.counts is None else self.counts[idx],
            var_names=self.var_names,
            grid_coords=self.grid_coords[idx],
            table=self.table[idx] if self.table.n_obs == self.n_obs else self.table,
            spot_diameter_um=self.spot_diameter_um,
        )

    def _indices(self, which: Any) -> np.ndarray:
        if which is None:
            return np.arange(self.n_obs)
        arr = np.asarray(which)
        if arr.dtype == bool:
            if arr.shape != (self.n_obs,):
                raise ValueError(
                    f"SpotData: boolean mask must have length {self.n_obs}, got shape {arr.shape}."
                )
            return np.flatnonzero(arr)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"SpotData: expected a boolean mask or integer indices, got dtype {arr.dtype}.")
        arr = arr.ravel().astype(np.int64)
        if arr.min() < -self.n_obs or arr.max() >= self.n_obs:
            raise IndexError(f"SpotData: indices out of range for {self.n_obs} spots.")
        return np.where(arr < 0, arr + self.n_obs, arr)

    def extract_patches(
        self,
        indices: Any = None,
        *,
        patch_size_um: float = 112.0,
        size: int = 224,
        progress: bool = True,
        resample: Literal["bilinear", "bicubic"] = "bilinear",
    ) -> np.ndarray:
        """Square image patches of ``patch_size_um`` µm centred on the spots.

        Each window covers ``patch_size_um / um_per_px`` source pixels per axis (non-square
        pixels give non-square windows), is padded with white outside the image and resampled
        (antialiased when shrinking; upsampling small windows works too) to ``size x size``.
        Only the needed windows of a lazy image are read.

        Parameters
        ----------
        indices
            Spots (boolean mask or integer positions); ``None``: all.
        patch_size_um
            Side of the square patch in micrometres.
        size
            Output side in pixels.
        progress
            Show a progress bar.
        resample
            ``"bilinear"`` or ``"bicubic"``.

        Returns
        -------
        ``uint8`` ``(n, size, size, 3)`` RGB patches in the order of ``indices``.

        Examples
        --------
        >>> import stpredict as stp
        >>> from stpredict.data import SpotData
        >>> sd = SpotData.from_object(stp.datasets.synthetic())
        >>> sd.extract_patches(patch_size_um=100, size=64, progress=False).dtype
        dtype('uint8')
        """
        idx = self._indices(indices)
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"extract_patches: `size` must be a positive integer, got {size!r}.")
        out = np.empty((len(idx), int(size), int(size), 3), dtype=np.uint8)
        libs = self.library_ids[idx]
        for lib in pd.unique(libs):
            sel = np.flatnonzero(libs == lib)
            out[sel] = extract_image_patches(
                self.images[lib],
                self.centers[idx[sel]],
                patch_size_um=patch_size_um,
                size=int(size),
                resample=resample,
                progress=progress,
                desc=f"patches {lib}",
            )
        return out


# --------------------------------------------------------------------------------------------
# AnnData
# --------------------------------------------------------------------------------------------
def _from_anndata(
    adata: AnnData,
    *,
    library_key: str,
    image_key: str | None,
    layer: str | None,
    spot_diameter_um: float | None,
    require_expression: bool,
    um_override: tuple[float, float] | None,
) -> SpotData:
    names = check_obs_names(adata.obs_names, what="adata.obs_names")
    n = adata.n_obs
    if n == 0:
        raise ValueError("adata has no spots (n_obs == 0).")
    if "spatial" not in adata.obsm:
        raise KeyError(
            "adata.obsm has no key 'spatial'; expected (n_spots, 2) spot centres x, y in "
            "full-resolution pixels."
        )
    coords = check_coordinates(adata.obsm["spatial"], n, what="adata.obsm['spatial']")
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, Mapping) or len(spatial) == 0:
        raise KeyError(
            "adata.uns has no 'spatial' entry (dict of libraries with 'images' and 'scalefactors'); "
            "expected the scanpy/squidpy Visium convention."
        )
    if library_key in adata.obs:
        col = adata.obs[library_key]
        if col.isna().any():
            raise ValueError(f"adata.obs[{library_key!r}] has {int(col.isna().sum())} missing value(s).")
        library_ids = col.astype(str).to_numpy()
    elif len(spatial) == 1:
        library_ids = np.full(n, str(next(iter(spatial))), dtype=object)
    else:
        raise KeyError(
            f"adata.obs has no column {library_key!r} and adata.uns['spatial'] holds {len(spatial)} "
            f"libraries {list(spatial)[:5]}; pass `library_key=` naming the column of slide names."
        )
    counts, var_names = _expression(adata, layer, what="adata", require=require_expression)

    centers = np.empty_like(coords)
    images: dict[str, SlideImage] = {}
    diameters = []
    for lib in pd.unique(library_ids):
        where = f"adata.uns['spatial'][{lib!r}]"
        if lib not in spatial:
            raise KeyError(
                f"adata.uns['spatial'] has no library {lib!r} (a value of adata.obs[{library_key!r}]); "
                f"available: {list(spatial)[:10]}."
            )
        entry = spatial[lib]
        imgs = entry.get("images") if isinstance(entry, Mapping) else None
        if not isinstance(imgs, Mapping) or not any(v is not None for v in imgs.values()):
            raise KeyError(f"{where} has no 'images' (expected e.g. {{'hires': H x W x 3 array}}).")
        if image_key is not None:
            if imgs.get(image_key) is None:
                raise KeyError(f"{where}['images'] has no image {image_key!r}; available: {list(imgs)}.")
            key = image_key
        else:
            present = [k for k in _IMAGE_PREFERENCE if imgs.get(k) is not None]
            if not present:
                raise KeyError(
                    f"{where}['images'] has neither 'hires' nor 'lowres' (has {list(imgs)}); "
                    "pass `image_key=`."
                )
            key = present[0]
        array = imgs[key]
        if not hasattr(array, "shape"):
            array = np.asarray(array)
        h, w, _ = check_image(array, what=f"{where}['images'][{key!r}]")
        sf = entry.get("scalefactors")
        if not isinstance(sf, Mapping):
            raise KeyError(f"{where} has no 'scalefactors' (expected tissue_{key}_scalef and a pixel size).")
        sf_where = f"{where}['scalefactors']"
        if f"tissue_{key}_scalef" not in sf:
            raise KeyError(f"{sf_where} has no 'tissue_{key}_scalef' (image px per full-resolution px).")
        scalef = check_positive(sf[f"tissue_{key}_scalef"], what=f"{sf_where}['tissue_{key}_scalef']")
        diam_px = sf.get("spot_diameter_fullres")
        um_full = pixel_size_um(sf, what=sf_where, override=um_override, spot_diameter_um=spot_diameter_um)
        if um_full is None:
            raise KeyError(
                f"{sf_where} has neither 'microns_per_pixel' nor 'spot_diameter_fullres'; cannot "
                "tell the pixel size. Pass `microns_per_pixel=`."
            )
        if diam_px is not None:
            diameters.append(float(diam_px) * float(np.mean(um_full)))
        mask = library_ids == lib
        centers[mask] = coords[mask] * scalef
        check_inside(centers[mask], h, w, names[mask], what=f"slide {lib!r} (image {key!r})")
        images[lib] = SlideImage(array, (um_full[0] / scalef, um_full[1] / scalef), name=f"{lib}/{key}")

    obs = adata.obs
    grid = _grid_coords(obs, centers, library_ids, images)
    spot_um = spot_diameter_um or (float(np.median(diameters)) if diameters else None)
    return SpotData(
        obs_names=names,
        library_ids=library_ids,
        centers=centers,
        images=images,
        counts=counts,
        var_names=var_names,
        grid_coords=grid,
        table=adata,
        spot_diameter_um=spot_um,
    )


# --------------------------------------------------------------------------------------------
# SpatialData
# --------------------------------------------------------------------------------------------
def _affine(element: Any, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)


def _systems(element: Any) -> set[str]:
    from spatialdata.transformations import get_transformation

    return set(get_transformation(element, get_all=True))


def _finest(element: Any, *, what: str):
    """The finest-scale DataArray of a single- or multiscale image, as a lazy ``H x W x C`` array."""
    arr = element
    if not hasattr(element, "dims") or hasattr(element, "children"):  # multiscale DataTree
        best, best_px = None, -1
        for child in element.children.values():
            for var in child.ds.data_vars.values():
                px = int(var.sizes.get("y", 0)) * int(var.sizes.get("x", 0))
                if px > best_px:
                    best, best_px = var, px
        if best is None:
            raise ValueError(f"{what} is a multiscale image without any scale.")
        arr = best
    dims = tuple(arr.dims)
    if set(dims) != {"c", "y", "x"}:
        raise ValueError(f"{what} must be a 2-D image with dims ('c', 'y', 'x'), got dims {dims}.")
    return arr.transpose("y", "x", "c").data


def _finest_image(sdata: Any, gdf: Any, systems: set[str], *, what: str, region: str) -> str:
    """The image sharing a coordinate system with the shapes: the only one, or the finest level.

    Several images that cover the same region (spatialdata-io's Visium ``hires`` and ``lowres``)
    are resolutions of one slide: the finest is read. Images covering different regions are
    ambiguous: an error asks for ``images=`` / ``image_key=``.
    """
    cands = [k for k, el in sdata.images.items() if _systems(el) & systems]
    hint = f"pass `images={{{region!r}: <image name>}}` or `image_key=`."
    if not cands:
        raise ValueError(f"{what}: no image shares a coordinate system with it ({sorted(systems)}); {hint}")
    if len(cands) == 1:
        return cands[0]

    def footprint(name: str) -> tuple[np.ndarray, float]:
        """The image's corners in shape units, and its pixels per shape unit."""
        element = sdata.images[name]
        cs = sorted(_systems(element) & systems)[0]
        to_px = np.linalg.inv(_affine(element, cs)) @ _affine(gdf, cs)
        h, w = _finest(element, what=name).shape[:2]
        to_shape = np.linalg.inv(to_px)
        corners = np.array([[0, 0, 1], [w, h, 1]], dtype=np.float64) @ to_shape.T
        return corners[:, :2], float(abs(np.linalg.det(to_px[:2, :2])))

    prints = {name: footprint(name) for name in cands}
    ref = prints[cands[0]][0]
    size = float(np.abs(ref[1] - ref[0]).max())
    same_region = all(np.allclose(c, ref, atol=0.02 * size) for c, _ in prints.values())
    ranked = sorted(cands, key=lambda name: prints[name][1], reverse=True)
    if not same_region or np.isclose(prints[ranked[0]][1], prints[ranked[1]][1], rtol=1e-6):
        raise ValueError(f"{what}: {len(cands)} images {cands} share a coordinate system with it; {hint}")
    logger.info(f"SpotData: {what} is read on {ranked[0]!r}, the finest resolution of {cands}")
    return ranked[0]


def _centres_and_radii(gdf: Any, pos: np.ndarray, *, what: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Centres ``(n, 2)`` and radii of the shapes at ``pos``, and whether they are polygons.

    Circles as given; polygons (Visium HD squares, cells) by their centroid and the radius of the
    circle of the same area.
    """
    geometry = gdf.geometry.iloc[pos]
    polygons = "radius" not in gdf.columns
    if polygons:
        kinds = set(geometry.geom_type)
        if not kinds <= {"Polygon", "MultiPolygon"}:
            raise ValueError(
                f"{what} has no 'radius' column and geometries {sorted(kinds)}; expected circles or polygons."
            )
        centres = geometry.centroid
        radius = np.sqrt(geometry.area.to_numpy(np.float64) / np.pi)
    else:
        centres = geometry
        radius = gdf["radius"].to_numpy(np.float64)[pos]
    xy = check_coordinates(
        np.column_stack([centres.x.to_numpy(), centres.y.to_numpy()]), len(pos), what=f"{what} centres"
    )
    if not np.isfinite(radius).all() or (radius <= 0).any():
        raise ValueError(f"{what}: shape sizes (radius, or polygon area) must be finite and positive.")
    return xy, radius, polygons


def _has_pixel_size(uns_spatial: Mapping[str, Any], lib: str, region: str) -> bool:
    entry = uns_spatial.get(lib, uns_spatial.get(region, {}))
    sf = entry.get("scalefactors", {}) if isinstance(entry, Mapping) else {}
    return any(k in sf for k in ("microns_per_pixel", "microns_per_pixel_x"))


def _from_spatialdata(
    sdata: Any,
    *,
    library_key: str,
    table_key: str | None,
    image_key: str | None,
    shapes_key: str | Sequence[str] | None,
    coordinate_system: str | None,
    layer: str | None,
    spot_diameter_um: float | None,
    require_expression: bool,
    images: Mapping[str, str] | None,
    um_override: tuple[float, float] | None,
) -> SpotData:
    table_key, table = spatialdata_table(sdata, table_key)
    what = f"sdata.tables[{table_key!r}]"
    region_key, instance_key = _annotation_keys(table, what)
    check_image_names(sdata, images, image_key)
    table, regions = _annotated_regions(sdata, table, regions=table.obs[region_key].astype(str).to_numpy(),
                                        shapes_key=shapes_key, what=what)  # fmt: skip
    names = check_obs_names(table.obs_names, what=f"{what}.obs_names")
    if table.n_obs == 0:
        raise ValueError(f"{what} has no spots.")
    counts, var_names = _expression(table, layer, what=what, require=require_expression)
    ctx = _SdataContext(
        sdata, table, what, instance_key, images, image_key, coordinate_system, spot_diameter_um, um_override,
        uns_spatial=table.uns.get("spatial") if isinstance(table.uns.get("spatial"), Mapping) else {},
    )  # fmt: skip
    centers = np.empty((table.n_obs, 2), dtype=np.float64)
    library_ids = np.empty(table.n_obs, dtype=object)
    slide_images: dict[str, SlideImage] = {}
    diameters = []
    for region, lib in _library_names(table, regions, library_key).items():
        mask = regions == region
        centers[mask], slide_images[lib], diameter = ctx.slide(region, lib, mask, names[mask])
        library_ids[mask] = lib
        if diameter is not None:
            diameters.append(diameter)
    library_ids = library_ids.astype(str)
    return SpotData(
        obs_names=names,
        library_ids=library_ids,
        centers=centers,
        images=slide_images,
        counts=counts,
        var_names=var_names,
        grid_coords=_grid_coords(table.obs, centers, library_ids, slide_images),
        table=table,
        spot_diameter_um=spot_diameter_um or (float(np.median(diameters)) if diameters else None),
    )


def _annotation_keys(table: Any, what: str) -> tuple[str, str]:
    """The table's ``region_key`` and ``instance_key`` (``uns['spatialdata_attrs']``), checked."""
    attrs = table.uns.get("spatialdata_attrs")
    if not isinstance(attrs, Mapping) or "region_key" not in attrs or "instance_key" not in attrs:
        raise KeyError(f"{what}.uns has no 'spatialdata_attrs' with 'region_key' and 'instance_key'.")
    for key in (attrs["region_key"], attrs["instance_key"]):
        if key not in table.obs:
            raise KeyError(f"{what}.obs has no column {key!r} (named in uns['spatialdata_attrs']).")
    return attrs["region_key"], attrs["instance_key"]


def _annotated_regions(sdata: Any, table: Any, *, regions: np.ndarray, shapes_key: Any, what: str):
    """The table's spots on the shapes elements ``shapes_key`` (all when ``None``), and their regions."""
    if shapes_key is None:
        return table, regions
    wanted = [shapes_key] if isinstance(shapes_key, str) else [str(s) for s in shapes_key]
    missing = [s for s in wanted if s not in sdata.shapes]
    if missing:
        raise KeyError(f"sdata.shapes has no element(s) {missing}; available: {list(sdata.shapes)}.")
    keep = np.isin(regions, wanted)
    if not keep.any():
        raise ValueError(
            f"{what} annotates none of the shapes {wanted} (its regions: {list(pd.unique(regions))})."
        )
    if keep.all():
        return table, regions
    logger.info(
        f"SpotData: using {int(keep.sum())} of {table.n_obs} spots of {what} (shapes_key={shapes_key!r})"
    )
    return table[keep], regions[keep]


def _library_names(table: Any, regions: np.ndarray, library_key: str) -> dict[str, str]:
    """Region → slide name: ``obs[library_key]`` when it matches the regions one-to-one, else the region."""
    lib_of = {str(r): str(r) for r in pd.unique(regions)}
    if library_key in table.obs and not table.obs[library_key].isna().any():
        pairs = pd.DataFrame(
            {"r": regions, "l": table.obs[library_key].astype(str).to_numpy()}
        ).drop_duplicates()
        if pairs["r"].is_unique and pairs["l"].is_unique:
            lib_of = dict(zip(pairs["r"], pairs["l"], strict=True))
    return lib_of


@dataclass
class _SdataContext:
    """What places one region's spots on its image: the table, the image choice, the pixel size."""

    sdata: Any
    table: Any
    what: str
    instance_key: str
    images: Mapping[str, str] | None
    image_key: str | None
    coordinate_system: str | None
    spot_diameter_um: float | None
    um_override: tuple[float, float] | None
    uns_spatial: Mapping[str, Any]

    def slide(self, region: str, lib: str, mask: np.ndarray, names: pd.Index):
        """The region's spot centres in image pixels, its :class:`SlideImage`, its spot diameter (µm)."""
        gdf, xy, radius, polygons = self._shapes(region, lib, mask)
        swhat = f"sdata.shapes[{region!r}]"
        img_name, wanted_cs = self._image_name(gdf, region, lib, swhat)
        element = self.sdata.images[img_name]
        iwhat = f"sdata.images[{img_name!r}]"
        to_px = _shape_to_pixels(gdf, element, wanted_cs, self.coordinate_system, swhat, iwhat)
        pix = xy @ to_px[:2, :2].T + to_px[:2, 2]
        array = _finest(element, what=iwhat)
        h, w, _ = check_image(array, what=iwhat)
        check_inside(pix, h, w, names, what=f"slide {lib!r} ({swhat} on {iwhat})")
        if self.um_override is not None:
            return pix, SlideImage(array, self.um_override, name=f"{img_name}"), None
        um_shape = self._shape_um(radius, polygons, region, lib)
        step = np.linalg.inv(to_px[:2, :2])  # a one-pixel step of the image along x / y, in shape units
        um_x, um_y = (float(np.hypot(um_shape[0] * step[0, a], um_shape[1] * step[1, a])) for a in (0, 1))
        um_img = (um_x, um_y)
        diameter = 2 * float(np.median(radius)) * float(np.mean(um_shape))
        return pix, SlideImage(array, um_img, name=f"{img_name}"), diameter

    def _shapes(self, region: str, lib: str, mask: np.ndarray):
        """The region's shapes element, and the centres and radii of the table's spots on it."""
        sdata, what, swhat = self.sdata, self.what, f"sdata.shapes[{region!r}]"
        if region not in sdata.shapes:
            raise KeyError(
                f"{what} annotates region {region!r}, which is not a shapes element of sdata "
                f"(shapes: {list(sdata.shapes)}); expected circle shapes."
            )
        gdf = sdata.shapes[region]
        ids = self.table.obs[self.instance_key].to_numpy()[mask]
        pos = pd.Index(gdf.index).get_indexer(ids)
        if (pos < 0).any():
            raise KeyError(
                f"{what}.obs[{self.instance_key!r}] has ids {ids[pos < 0][:5].tolist()} that {swhat} "
                "lacks in its index."
            )
        xy, radius, polygons = _centres_and_radii(gdf, pos, what=swhat)
        sized = self.um_override is not None or self.spot_diameter_um is not None
        if polygons and not sized and not _has_pixel_size(self.uns_spatial, lib, region):
            raise ValueError(
                f"{swhat} holds polygons (e.g. Visium HD bins) and nothing gives their pixel size: "
                f"record 'microns_per_pixel' in {what}.uns['spatial'][{lib!r}]['scalefactors'], or pass "
                "`microns_per_pixel=` or `spot_diameter_um=` (the bin side)."
            )
        return gdf, xy, radius, polygons

    def _image_name(self, gdf: Any, region: str, lib: str, swhat: str) -> tuple[str, set[str]]:
        """The image of a region (``images``, ``image_key``, else the finest covering one) and the systems."""
        name = (self.images or {}).get(region, (self.images or {}).get(lib)) or self.image_key
        shp_cs = _systems(gdf)
        cs = self.coordinate_system
        if cs is not None and cs not in shp_cs:
            raise ValueError(
                f"{swhat} is not in coordinate system {cs!r}; its coordinate systems: {sorted(shp_cs)}."
            )
        wanted_cs = {cs} if cs is not None else shp_cs
        if name is None:
            name = _finest_image(self.sdata, gdf, wanted_cs, what=swhat, region=region)
        return name, wanted_cs

    def _shape_um(self, radius: np.ndarray, polygons: bool, region: str, lib: str) -> tuple[float, float]:
        """µm per shape unit along x / y: the spot diameter given, the recorded pixel size, or 55 µm."""
        r = float(np.median(radius))
        sf = self.uns_spatial.get(lib, self.uns_spatial.get(region, {}))
        sf = sf.get("scalefactors", {}) if isinstance(sf, Mapping) else {}
        where = f"{self.what}.uns['spatial'][{lib!r}]['scalefactors']"
        recorded = _scalefactor_um(sf, what=where) if sf else None
        diam_full = sf.get("spot_diameter_fullres")
        if self.spot_diameter_um is not None:
            return (self.spot_diameter_um / (2 * r),) * 2
        if recorded is not None and (
            polygons or (diam_full is not None and np.isclose(2 * r, float(diam_full), rtol=0.01))
        ):
            return recorded  # circles in full-resolution pixels of a recorded pixel size
        d = DEFAULT_SPOT_DIAMETER_UM
        if recorded is not None and diam_full is not None:
            d = float(diam_full) * float(np.mean(recorded))
        return (d / (2 * r),) * 2


def _shape_to_pixels(gdf: Any, element: Any, wanted_cs: set[str], cs: str | None, swhat: str, iwhat: str):
    """The affine map from shape coordinates to image pixels, the same in every shared system."""
    common = sorted(_systems(element) & wanted_cs)
    if not common:
        raise ValueError(
            f"{swhat} (coordinate systems {sorted(_systems(gdf))}) and {iwhat} (coordinate systems "
            f"{sorted(_systems(element))}) share no coordinate system"
            + (f" named {cs!r}" if cs else "")
            + "; add a transformation linking them."
        )
    maps = [np.linalg.inv(_affine(element, c)) @ _affine(gdf, c) for c in common]
    if any(not np.allclose(m, maps[0], rtol=1e-6, atol=1e-6) for m in maps[1:]):
        raise ValueError(
            f"{swhat} and {iwhat} are linked differently in coordinate systems {common}; "
            "pass `coordinate_system=`."
        )
    return maps[0]


class LazyPatches:
    """What the lazy patch arrays share: ``uint8``, 4-D, one row per entry of ``indices``.

    Subclasses (:class:`SlidePatches`, :class:`~stpredict.data._patch_cache.CachedPatches`) set
    ``indices``, define ``shape``, ``subset`` and ``__getitem__``; ``PatchDataset`` takes any.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(n, side, side, 3)``."""
        raise NotImplementedError

    def subset(self, which: Any) -> LazyPatches:
        """The patches at positions ``which`` of this set, still unread."""
        raise NotImplementedError

    def __getitem__(self, which: Any) -> np.ndarray:
        raise NotImplementedError


class SlidePatches(LazyPatches):
    """The patches of some spots, cut from their slide images only when read (a lazy array).

    ``patches[i]`` reads one ``(size, size, 3)`` uint8 patch; ``patches[a:b]`` (or an integer
    array) reads those rows as an ``(n, size, size, 3)`` array; :meth:`subset` selects spots
    without reading anything. It pickles with its :class:`SpotData`, so DataLoader workers cut
    their own patches (lazy dask/zarr images are pickled as their recipe, not their pixels).

    Parameters
    ----------
    spots
        Where the spots and images are.
    indices
        Positions of the spots in ``spots`` (default: all).
    patch_size_um, size
        As in :meth:`SpotData.extract_patches`.

    Examples
    --------
    >>> import stpredict as stp
    >>> from stpredict.data import SlidePatches, SpotData
    >>> sd = SpotData.from_object(stp.datasets.synthetic(n_slides=1, n_spots_per_side=4))
    >>> lazy = SlidePatches(sd, patch_size_um=100, size=16)
    >>> lazy.shape, lazy[0].shape
    ((16, 16, 16, 3), (16, 16, 3))
    """

    def __init__(self, spots: SpotData, indices: Any = None, *, patch_size_um: float, size: int) -> None:
        self.spots = spots
        self.indices = spots._indices(indices)
        self.patch_size_um = float(check_positive(patch_size_um, what="SlidePatches: `patch_size_um`"))
        self.size = int(size)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.indices), self.size, self.size, 3)

    def subset(self, which: Any) -> SlidePatches:
        """The patches at positions ``which`` of this set, still unread."""
        return SlidePatches(
            self.spots, self.indices[np.asarray(which)], patch_size_um=self.patch_size_um, size=self.size
        )

    def read(self, which: Any = slice(None), *, progress: bool = False) -> np.ndarray:
        """Cut the patches at positions ``which`` of this set: ``(n, size, size, 3)`` uint8."""
        idx = self.indices[which]
        return self.spots.extract_patches(
            idx, patch_size_um=self.patch_size_um, size=self.size, progress=progress
        )

    def __getitem__(self, which: Any) -> np.ndarray:
        if isinstance(which, int | np.integer):
            return self.read(np.array([int(which)]))[0]
        return self.read(which)

    def __repr__(self) -> str:
        return f"SlidePatches({len(self)} spots, {self.patch_size_um:g} µm → {self.size} px, unread)"

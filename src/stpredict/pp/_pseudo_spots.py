"""Pool cells, bins or transcripts into a grid of spot-sized pseudo-spots (Visium HD, Xenium, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from stpredict._logging import logger
from stpredict._validation import check_key, check_positive, spatialdata_table

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

__all__ = ["bin_spots", "pseudo_spots"]


def _um_per_unit(table: Any, names: list[str], given: float | None, *, what: str) -> float:
    """µm per coordinate unit: given, or the ``microns_per_pixel`` scale factor the table records."""
    if given is not None:
        return check_positive(given, what="pseudo_spots: `microns_per_unit`")
    spatial = table.uns.get("spatial") if table is not None else None
    for name in names:
        entry = spatial.get(name) if isinstance(spatial, Mapping) else None
        sf = entry.get("scalefactors", {}) if isinstance(entry, Mapping) else {}
        if "microns_per_pixel" in sf:
            return check_positive(sf["microns_per_pixel"], what=f"{what}.uns['spatial'][{name!r}]")
    raise ValueError(
        f"pseudo_spots: nothing in {what} gives the size of a coordinate unit in µm (no "
        "uns['spatial'][<slide>]['scalefactors']['microns_per_pixel']); pass `microns_per_unit=` "
        "(e.g. 1.0 for Xenium, whose coordinates are µm)."
    )


def _hex_grid(xy: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres of a Visium-like hexagonal lattice covering ``xy``, with ``array_row``/``array_col``."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    dy = spacing * np.sqrt(3) / 2
    n_rows = int(np.ceil((hi[1] - lo[1]) / dy)) + 1
    n_cols = int(np.ceil((hi[0] - lo[0]) / spacing)) + 2
    r_grid, c_grid = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    r, c = r_grid.ravel(), c_grid.ravel()
    x = lo[0] + c * spacing + (r % 2) * spacing / 2
    y = lo[1] + r * dy
    return np.column_stack([x, y]), r, 2 * c + (r % 2)


def _membership(centres: np.ndarray, xy: np.ndarray, radius: float) -> sparse.csr_matrix:
    """``(n_centres, n_obs)`` 0/1 matrix: observation ``j`` lies within ``radius`` of centre ``i``."""
    from scipy.spatial import cKDTree

    hits = cKDTree(xy).query_ball_point(centres, r=radius)
    rows = np.repeat(np.arange(len(centres)), [len(h) for h in hits])
    cols = np.fromiter((j for h in hits for j in h), dtype=np.int64, count=len(rows))
    return sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(centres), len(xy)))


def _observations_of_table(sdata: Any, table_key: str | None, library_key: str) -> list[dict[str, Any]]:
    """Per shapes element annotated by the table: centroids, counts (CSR), genes, transformations."""
    from spatialdata.transformations import get_transformation

    from stpredict.data._spotdata import _centres_and_radii

    key, table = spatialdata_table(sdata, table_key, what="sdata")
    attrs = table.uns.get("spatialdata_attrs", {})
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if region_key not in table.obs or instance_key not in table.obs:
        raise KeyError(f"sdata.tables[{key!r}] does not annotate shapes (no region/instance columns).")
    regions = table.obs[region_key].astype(str).to_numpy()
    out = []
    for region in pd.unique(regions):
        if region not in sdata.shapes:
            raise KeyError(f"sdata.tables[{key!r}] annotates {region!r}, which is not a shapes element.")
        mask = regions == region
        gdf = sdata.shapes[region]
        pos = pd.Index(gdf.index).get_indexer(table.obs[instance_key].to_numpy()[mask])
        if (pos < 0).any():
            raise KeyError(f"sdata.shapes[{region!r}] lacks instances that sdata.tables[{key!r}] annotates.")
        xy, _, _ = _centres_and_radii(gdf, pos, what=f"sdata.shapes[{region!r}]")
        libs = table.obs[library_key].astype(str)[mask].unique().tolist() if library_key in table.obs else []
        out.append(
            {
                "source": region,
                "library": libs[0] if len(libs) == 1 else region,  # the slide, when it is one
                "names": [region, *libs],  # where the table's uns['spatial'] may record the pixel size
                "xy": xy,
                "counts": sparse.csr_matrix(table.X[mask]),
                "genes": pd.Index(table.var_names.astype(str)),
                "transformations": get_transformation(gdf, get_all=True),
                "table": table,
                "what": f"sdata.tables[{key!r}]",
            }
        )
    return out


def _observations_of_points(sdata: Any, points_key: str, gene_key: str) -> list[dict[str, Any]]:
    """Transcripts of a points element: their positions and a one-hot gene matrix."""
    from spatialdata.transformations import get_transformation

    if points_key not in sdata.points:
        raise KeyError(f"sdata.points has no element {points_key!r}; available: {list(sdata.points)}.")
    frame = sdata.points[points_key]
    missing = [c for c in ("x", "y", gene_key) if c not in frame.columns]
    if missing:
        raise KeyError(f"sdata.points[{points_key!r}] lacks column(s) {missing} (x, y and the gene).")
    df = frame[["x", "y", gene_key]].compute() if hasattr(frame, "compute") else frame
    genes = pd.Categorical(df[gene_key].astype(str))
    onehot = sparse.csr_matrix(
        (np.ones(len(df), np.float32), (np.arange(len(df)), genes.codes)),
        shape=(len(df), len(genes.categories)),
    )
    tables = list(sdata.tables.values())
    return [
        {
            "source": points_key,
            "library": points_key,
            "names": [points_key],
            "xy": df[["x", "y"]].to_numpy(np.float64),
            "counts": onehot,
            "genes": pd.Index(genes.categories.astype(str)),
            "transformations": get_transformation(frame, get_all=True),
            "table": tables[0] if len(tables) == 1 else None,
            "what": f"sdata.points[{points_key!r}]",
        }
    ]


def pseudo_spots(
    sdata: SpatialData,
    *,
    diameter_um: float = 55.0,
    spacing_um: float = 100.0,
    table_key: str | None = None,
    library_key: str = "library_id",
    points_key: str | None = None,
    gene_key: str = "feature_name",
    microns_per_unit: float | None = None,
    min_count: int = 1,
    key_added: str = "pseudo_spots",
) -> SpatialData:
    """Pool cells, bins or transcripts into circular pseudo-spots on a Visium-like grid.

    A hexagonal lattice of centres ``spacing_um`` apart covers each source; every observation
    (a cell or bin: the centroid of its shape; a transcript: its position) within ``diameter_um / 2``
    of a centre adds its counts to that pseudo-spot, as HEST does for its Xenium samples. The
    pseudo-spots are circles in the source's own coordinates (its transformations are kept), so
    the images of ``sdata`` line up with them, and :func:`stpredict.tl.fit` takes the result as it
    takes Visium.

    Parameters
    ----------
    sdata
        SpatialData with a table annotating shapes (cells, Visium HD bins as squares or polygons),
        or with a points element of transcripts (``points_key``).
    diameter_um, spacing_um
        Pseudo-spot diameter and centre-to-centre distance (Visium: 55 and 100).
    table_key
        The table of the cells/bins (default: the only input table).
    library_key
        Column of the table naming the slide (where ``uns["spatial"]`` records its pixel size).
    points_key
        Pool the transcripts of this points element instead (``x``, ``y``, ``gene_key``).
    gene_key
        Column of the points naming the gene of each transcript.
    microns_per_unit
        Size of one coordinate unit in µm; default: ``microns_per_pixel`` from the table's
        ``uns["spatial"][<slide>]["scalefactors"]`` (an error when nothing records it; Xenium
        coordinates are µm: pass ``1.0``).
    min_count
        Keep pseudo-spots with at least this many counts.
    key_added
        Shapes elements are named ``"<source>_<key_added>"``.

    Returns
    -------
    A new SpatialData: the images of ``sdata`` (shared, not copied), one circles element per
    source, and a table ``"table"`` of summed counts with ``obs["library_id"]``,
    ``array_row``/``array_col`` and ``n_observations``; the slide is the source's ``library_key``
    when it has one, else the source element's name. ``sdata`` is not modified.
    """
    from spatialdata import SpatialData

    check_key(key_added, what="pseudo_spots: `key_added`")
    diameter_um = check_positive(diameter_um, what="pseudo_spots: `diameter_um`")
    spacing_um = check_positive(spacing_um, what="pseudo_spots: `spacing_um`")
    sources = (
        _observations_of_points(sdata, points_key, gene_key)
        if points_key is not None
        else _observations_of_table(sdata, table_key, library_key)
    )
    shapes, tables = {}, []
    for src in sources:
        um = _um_per_unit(src["table"], src["names"], microns_per_unit, what=src["what"])
        element, circles, table = _pool(src, diameter_um / um, spacing_um / um, um, min_count, key_added)
        shapes[element] = circles
        tables.append(table)
    return SpatialData(
        images=dict(sdata.images), shapes=shapes, tables={"table": _join(tables, list(shapes))}
    )


def _pool(src: dict[str, Any], diameter: float, spacing: float, um: float, min_count: int, key_added: str):
    """One source's pseudo-spots: the element name, its circles and its table."""
    import anndata as ad
    from spatialdata.models import ShapesModel

    centres, rows, cols = _hex_grid(src["xy"], spacing)
    member = _membership(centres, src["xy"], diameter / 2)
    counts = (member @ src["counts"]).tocsr()
    keep = np.flatnonzero(np.asarray(counts.sum(axis=1)).ravel() >= min_count)
    name = f"{src['source']}_{key_added}"
    lib = src["library"]
    table = ad.AnnData(
        X=counts[keep],
        obs=pd.DataFrame(
            {
                "library_id": lib,
                "array_row": rows[keep],
                "array_col": cols[keep],
                "n_observations": np.asarray(member[keep].sum(axis=1)).ravel().astype(np.int64),
                "region": name,
                "spot_id": np.arange(len(keep), dtype=np.int64),
            },
            index=[f"{name}_{i}" for i in range(len(keep))],
        ),
        var=pd.DataFrame(index=src["genes"]),
    )
    table.uns["spatial"] = {
        lib: {"scalefactors": {"spot_diameter_fullres": diameter, "microns_per_pixel": um}}
    }
    circles = ShapesModel.parse(
        centres[keep],
        geometry=0,
        radius=np.full(len(keep), diameter / 2),
        index=np.arange(len(keep), dtype=np.int64),
        transformations=dict(src["transformations"]),
    )
    logger.info(
        f"pseudo_spots: {len(keep)} pseudo-spots of {diameter * um:g} µm from {src['what']} "
        f"({int(member[keep].sum())} observation memberships) → shapes {name!r}"
    )
    return name, circles, table


def _join(tables: list[Any], regions: list[str]) -> Any:
    import anndata as ad
    from spatialdata.models import TableModel

    table = tables[0] if len(tables) == 1 else ad.concat(tables, join="outer", fill_value=0)
    table.uns["spatial"] = {k: v for t in tables for k, v in t.uns["spatial"].items()}
    table.obs["region"] = pd.Categorical(table.obs["region"], categories=regions)
    return TableModel.parse(table, region=regions, region_key="region", instance_key="spot_id")


def bin_spots(
    sdata: SpatialData,
    *,
    diameter_um: float = 55.0,
    spacing_um: float = 100.0,
    table_key: str | None = None,
    microns_per_unit: float | None = None,
    min_count: int = 1,
    key_added: str = "pseudo_spots",
) -> SpatialData:
    """Aggregate Visium HD bins (square or polygon shapes of 2/8/16 µm) into spot-sized pseudo-spots.

    :func:`pseudo_spots` for a table of bins: each bin (its centroid) joins the pseudo-spots whose
    centre is within ``diameter_um / 2``. The µm size of a coordinate unit comes from the table's
    ``microns_per_pixel`` scale factor (as spatialdata-io records it for Visium HD) unless given.
    Parameters and result as in :func:`pseudo_spots`.
    """
    return pseudo_spots(
        sdata,
        diameter_um=diameter_um,
        spacing_um=spacing_um,
        table_key=table_key,
        microns_per_unit=microns_per_unit,
        min_count=min_count,
        key_added=key_added,
    )

"""Precomputed image features of spots (``fit(image_features=...)``): where they are read from."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stpredict._validation import check_key, check_matrix, is_spatialdata

__all__ = ["HANDMADE", "handmade_features", "spot_features"]

# `image_features=` names computed from the pixels on the fly: the image-kNN baseline's hand-made
# colour/texture features of the spot's patch, and of patches this many times wider around it.
HANDMADE: dict[str, tuple[float, ...]] = {"handmade": (1.0,), "handmade_context": (1.0, 3.0)}
_HANDMADE_PX = 64  # side the patches are resampled to before the features are computed


def handmade_features(sd: Any, key: str, *, patch_size_um: float, progress: bool = False) -> np.ndarray:
    """The hand-made features named ``key`` (see :data:`HANDMADE`) of every spot of ``sd``."""
    from stpredict.baselines import image_features

    from ._spotdata import SlidePatches

    blocks = []
    for scale in HANDMADE[key]:
        patches = SlidePatches(sd, patch_size_um=patch_size_um * scale, size=_HANDMADE_PX)
        rows = [image_features(patches[i : i + 2048]) for i in range(0, len(patches), 2048)]
        blocks.append(np.concatenate(rows))
    return np.hstack(blocks).astype(np.float32)


def spot_features(
    sd: Any, key: str, data: Any = None, *, what: str, patch_size_um: float | None = None
) -> np.ndarray:
    """The ``(n_spots, F)`` float32 features of ``sd``'s spots, in ``sd.obs_names`` order.

    Read from ``obsm[key]`` of the spots' table, or, for a SpatialData ``data``, from its table
    ``key`` (rows named by spot id, features in ``X``, as LazySlide / sopa style pipelines write);
    the names of :data:`HANDMADE` are computed from the pixels (patches of ``patch_size_um``).
    """
    key = check_key(key, what=f"{what}: `image_features`")
    if key in HANDMADE:
        if patch_size_um is None:
            raise ValueError(f"{what}: image_features={key!r} is computed from patches; give patch_size_um.")
        return handmade_features(sd, key, patch_size_um=patch_size_um)
    table = sd.table
    if key in table.obsm:
        values, names, where = table.obsm[key], table.obs_names, f"obsm[{key!r}]"
    elif is_spatialdata(data) and key in data.tables:
        feats = data.tables[key]
        values, names, where = feats.X, feats.obs_names, f"sdata.tables[{key!r}].X"
    else:
        tables = f" or a table of the SpatialData (has {list(data.tables)})" if is_spatialdata(data) else ""
        raise KeyError(
            f"{what}: image_features={key!r} is not in the spots' table's obsm (has {list(table.obsm)})"
            f"{tables}; expected (n_spots, n_features) patch embeddings."
        )
    matrix = check_matrix(values, what=f"{what}: {where}")  # arrays, sparse matrices, DataFrames
    if len(matrix) != len(names):
        raise ValueError(f"{what}: {where} has {len(matrix)} rows for {len(names)} spots.")
    order = pd.Index(names.astype(str)).get_indexer(pd.Index(sd.obs_names).astype(str))
    if (order < 0).any():
        missing = pd.Index(sd.obs_names)[order < 0][:5].tolist()
        raise KeyError(f"{what}: {where} has no row for {int((order < 0).sum())} spot(s), e.g. {missing}.")
    return np.ascontiguousarray(matrix[order])

"""Precomputed image features of spots (``fit(image_features=...)``): where they are read from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stpredict._validation import check_key, check_matrix, is_spatialdata

__all__ = ["HANDMADE", "ViewAugmentation", "handmade_features", "slide_standardized", "spot_features"]

# A slide's features are standardised on its own spots (`fit(slide_standardize=True)`): fewer
# spots than this give noisy statistics (a warning), fewer than 2 none at all (an error).
FEW_SLIDE_SPOTS = 30


@dataclass(frozen=True)
class Handmade:
    """A set of hand-made features computed from the pixels: which descriptor, at what size and scales.

    ``texture``: :func:`~stpredict.baselines.texture_features` instead of the image-kNN baseline's
    :func:`~stpredict.baselines.image_features`; ``px``: the side patches are resampled to;
    ``scales``: the spot's patch (1) and patches this many times wider around it.
    """

    px: int
    scales: tuple[float, ...]
    texture: bool = False

    def describe(self, patches: np.ndarray) -> np.ndarray:
        """The descriptor of ``(n, px, px, 3)`` patches."""
        from stpredict.baselines import image_features, texture_features

        return texture_features(patches) if self.texture else image_features(patches)


# `image_features=` names computed from the pixels on the fly: the image-kNN baseline's colour/
# texture features of the spot's patch (and of a 3x wider one), or the richer texture descriptor
# of the spot's patch and a 2x wider one
HANDMADE: dict[str, Handmade] = {
    "handmade": Handmade(64, (1.0,)),
    "handmade_context": Handmade(64, (1.0, 3.0)),
    "texture": Handmade(128, (1.0, 2.0), texture=True),
}


@dataclass(frozen=True)
class ViewAugmentation:
    """How the augmented views of hand-made features are drawn (``fit(feature_views=...)``).

    View 0 is the spot's patch as predicted on; view ``v ≥ 1`` is the patch shifted by up to
    ``translate / 2`` of its side along each axis and HED-jittered by ``stain_jitter`` (as the
    pixel models' augmentation), drawn from ``seed``.
    """

    views: int
    translate: float
    stain_jitter: float
    seed: int


def handmade_features(
    sd: Any, key: str, *, patch_size_um: float, augment: ViewAugmentation | None = None
) -> np.ndarray:
    """The hand-made features named ``key`` (see :data:`HANDMADE`) of every spot of ``sd``.

    ``(n, F)`` float32; with ``augment``, ``(n, V, F)``: the features of ``V`` views of each patch.
    """
    from ._spotdata import SlidePatches

    spec = HANDMADE[key]
    views = 1 if augment is None else augment.views
    margin = 0 if augment is None else round(spec.px * augment.translate)
    window = spec.px + margin
    per_scale = []
    for scale in spec.scales:
        patches = SlidePatches(sd, patch_size_um=patch_size_um * scale * window / spec.px, size=window)
        chunks = []  # (chunk, V, F): each chunk of patches is cut once for all its views
        for start in range(0, len(patches), 2048):
            cut = patches[start : start + 2048]
            chunks.append(
                np.stack([spec.describe(_view(cut, v, augment, start, spec.px)) for v in range(views)], 1)
            )
        per_scale.append(np.concatenate(chunks))
    out = np.concatenate(per_scale, axis=2).astype(np.float32)
    return out[:, 0] if augment is None else out


def _view(cut: np.ndarray, view: int, augment: ViewAugmentation | None, start: int, px: int) -> np.ndarray:
    """View ``view`` of patches ``cut`` (rows ``start:``): the central crop, or a shifted, jittered one.

    ``px``: the side of the crop (the descriptor's patch size).
    """
    from ._stain import hed_shift

    room = cut.shape[1] - px
    if augment is None or view == 0:
        y = x = room // 2
        return cut[:, y : y + px, x : x + px]
    rng = np.random.default_rng([augment.seed, view, start])
    out = np.empty((len(cut), px, px, 3), dtype=np.uint8)
    for i, (y, x) in enumerate(rng.integers(0, room + 1, size=(len(cut), 2))):
        u = rng.uniform(-1.0, 1.0, size=6) * augment.stain_jitter
        crop = cut[i, y : y + px, x : x + px]
        out[i] = hed_shift(crop, 1.0 + u[:3], u[3:]) if augment.stain_jitter else crop
    return out


def spot_features(
    sd: Any,
    key: str,
    data: Any = None,
    *,
    what: str,
    patch_size_um: float | None = None,
    augment: ViewAugmentation | None = None,
) -> np.ndarray:
    """The ``(n_spots, F)`` float32 features of ``sd``'s spots, in ``sd.obs_names`` order.

    Read from ``obsm[key]`` of the spots' table, or, for a SpatialData ``data``, from its table
    ``key`` (rows named by spot id, features in ``X``, as LazySlide / sopa style pipelines write);
    the names of :data:`HANDMADE` are computed from the pixels (patches of ``patch_size_um``;
    ``(n_spots, V, F)`` with ``augment``, which only they take: ``fit`` refuses it for other keys).
    """
    key = check_key(key, what=f"{what}: `image_features`")
    if key in HANDMADE:
        if patch_size_um is None:
            raise ValueError(f"{what}: image_features={key!r} is computed from patches; give patch_size_um.")
        return handmade_features(sd, key, patch_size_um=patch_size_um, augment=augment)
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


def slide_standardized(features: np.ndarray, library_ids: np.ndarray, *, what: str) -> np.ndarray:
    """``features`` with each slide's spots centred and scaled by that slide's own mean and std.

    ``(n, F)`` or ``(n, V, F)`` views (the statistics are those of view 0, the patch as predicted
    on); ``library_ids``: the slide of each row. A feature constant within a slide becomes 0.
    Removes what shifts or scales a feature on every spot of a slide alike (stain batch, scanner,
    section thickness), at the cost of needing the slide's spots together.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.data import slide_standardized
    >>> feats = np.array([[1.0], [3.0], [10.0], [30.0]])
    >>> slide_standardized(feats, np.array(["a", "a", "b", "b"]), what="example").ravel()
    array([-1.,  1., -1.,  1.], dtype=float32)
    """
    from stpredict._logging import logger

    library_ids = np.asarray(library_ids)
    if len(library_ids) != len(features):
        raise ValueError(f"{what}: {len(features)} feature rows for {len(library_ids)} spots.")
    out = np.empty(features.shape, dtype=np.float32)
    for lib in pd.unique(library_ids):
        rows = library_ids == lib
        n = int(rows.sum())
        if n < 2:
            raise ValueError(
                f"{what}: slide {str(lib)!r} has {n} spot(s); slide_standardize needs at least 2 spots per "
                "slide (its features are standardised on the slide's own spots)."
            )
        if n < FEW_SLIDE_SPOTS:
            logger.warning(
                f"{what}: slide {str(lib)!r} has only {n} spots: its per-slide feature statistics are noisy."
            )
        block = features[rows].astype(np.float64)
        first = block[:, 0] if block.ndim == 3 else block
        mean, std = first.mean(axis=0), first.std(axis=0)
        std = np.where(std > 1e-6 * (1.0 + np.abs(mean)), std, 1.0)  # constant feature: centred only
        out[rows] = (block - mean) / std
    return out

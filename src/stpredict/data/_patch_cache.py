"""An on-disk (zarr) cache of the training patches, for many epochs over slides too large for RAM.

:func:`cached_patches` cuts every spot's patch once, batch by batch (memory bounded by a batch),
into ``<folder>/patches-<key>.zarr`` (one chunk per patch), and returns :class:`CachedPatches`,
which DataLoader workers read item by item like :class:`~stpredict.data.SlidePatches`, without
decoding or resampling the slide again. ``key`` is a digest of everything the pixels depend on
(spots, centres, images, pixel sizes, stain maps, patch size); a later fit with the same key reads
the cache after checking a few patches against freshly cut ones, and a mismatch rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from stpredict._logging import logger

from ._spotdata import LazyPatches

__all__ = ["CachedPatches", "cached_patches", "patch_cache_key"]

_FORMAT = 1
_BATCH = 256
_CHECKED = 8  # patches compared with freshly cut ones before a cache is reused


class CachedPatches(LazyPatches):
    """Patches of some spots stored in a zarr array ``(n, size, size, 3)``, read when indexed.

    ``patches[i]`` is one ``(size, size, 3)`` uint8 patch, ``patches[idx]`` several;
    :meth:`subset` selects spots and :meth:`central` a central crop without reading. Pickles as
    the store's path (for workers).
    """

    def __init__(self, path: str | os.PathLike, indices: Any = None, crop: int | None = None) -> None:
        import zarr

        self.path = Path(path)
        self.array = zarr.open_array(str(self.path), mode="r")
        n, side = int(self.array.shape[0]), int(self.array.shape[1])
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        self.crop = side if crop is None else int(crop)
        self._offset = (side - self.crop) // 2

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.indices), self.crop, self.crop, 3)

    def subset(self, which: Any) -> CachedPatches:
        """The patches at positions ``which`` of this set, still unread."""
        return CachedPatches(self.path, self.indices[np.asarray(which)], self.crop)

    def central(self, size: int) -> CachedPatches:
        """The central ``size`` × ``size`` crop of every patch, still unread."""
        return CachedPatches(self.path, self.indices, size)

    def _row(self, i: int) -> np.ndarray:
        o, c = self._offset, self.crop
        return np.asarray(self.array[int(i), o : o + c, o : o + c])

    def __getitem__(self, which: Any) -> np.ndarray:
        if isinstance(which, int | np.integer):
            return self._row(self.indices[int(which)])
        rows = np.atleast_1d(self.indices[which])
        out = np.empty((len(rows), self.crop, self.crop, 3), np.uint8)
        for j, i in enumerate(rows):
            out[j] = self._row(i)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "indices": self.indices, "crop": self.crop}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["indices"], state["crop"])  # type: ignore[misc]


def patch_cache_key(spots: Any, *, patch_size_um: float, size: int) -> str:
    """Hex digest of what the patches of ``spots`` depend on (not their pixels: see the check)."""
    images = {
        str(lib): {
            "shape": [int(v) for v in image.array.shape],
            "um_per_px": [float(v) for v in image.um_per_px],
            "name": image.name,
            "stain_map": None if image.stain_map is None else np.asarray(image.stain_map).round(6).tolist(),
        }
        for lib, image in spots.images.items()
    }
    spec = {
        "format": _FORMAT,
        "obs_names": [str(v) for v in spots.obs_names],
        "library_ids": [str(v) for v in spots.library_ids],
        "centers": np.asarray(spots.centers, np.float64).round(3).tolist(),
        "images": images,
        "patch_size_um": float(patch_size_um),
        "size": int(size),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cached_patches(
    spots: Any, *, patch_size_um: float, size: int, folder: str | os.PathLike, progress: bool = True
) -> CachedPatches:
    """Every spot's patch from the cache in ``folder``, cut and written there first if needed."""
    from ._spotdata import SlidePatches

    fresh = SlidePatches(spots, patch_size_um=patch_size_um, size=size)
    folder = Path(folder)
    key = patch_cache_key(spots, patch_size_um=patch_size_um, size=size)
    path = folder / f"patches-{key[:20]}.zarr"
    if path.exists():
        if _matches(path, fresh, key):
            logger.info(f"fit: reading {len(fresh)} patches from the cache {path}")
            return CachedPatches(path)
        logger.warning(f"fit: the patch cache {path} does not match these slides; rebuilding it")
        shutil.rmtree(path)
    _write(path, fresh, key, progress)
    logger.info(f"fit: wrote {len(fresh)} patches ({size} px) to the cache {path}")
    return CachedPatches(path)


def _matches(path: Path, fresh: Any, key: str) -> bool:
    """Whether the store is complete, has this key and holds the same pixels for a few spots."""
    import zarr

    try:
        array = zarr.open_array(str(path), mode="r")
        attrs = dict(array.attrs)
    except Exception:  # noqa: BLE001 - anything unreadable is rebuilt
        return False
    if attrs.get("stpredict_patch_cache") != _FORMAT or attrs.get("key") != key or not attrs.get("complete"):
        return False
    if tuple(array.shape) != tuple(fresh.shape):
        return False
    rows = np.unique(np.linspace(0, len(fresh) - 1, min(_CHECKED, len(fresh))).astype(int))
    return all(np.array_equal(np.asarray(array[int(i)]), fresh[int(i)]) for i in rows)


def _write(path: Path, fresh: Any, key: str, progress: bool) -> None:
    """Cut the patches batch by batch into a temporary store, then move it into place."""
    import zarr

    from stpredict._progress import progress as progress_bar

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    n, s = len(fresh), fresh.size
    array = zarr.open_array(str(tmp), mode="w", shape=(n, s, s, 3), chunks=(1, s, s, 3), dtype="uint8")
    array.attrs.update({"stpredict_patch_cache": _FORMAT, "key": key, "complete": False})
    try:
        starts = range(0, n, _BATCH)
        for start in progress_bar(starts, desc="caching patches", unit="batch", enabled=progress):
            array[start : start + _BATCH] = fresh.read(slice(start, start + _BATCH))
        array.attrs["complete"] = True
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

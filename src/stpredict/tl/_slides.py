"""``stp.tl.predict_slides``: many whole slides, one SpatialData of predictions each.

Resumable (finished slides are skipped) and shared out across processes (``torchrun`` ranks).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stpredict._logging import logger
from stpredict.io._wsi import slide_name

if TYPE_CHECKING:  # pragma: no cover
    from stpredict.models import STPredictModel

__all__ = ["predict_slides"]


def predict_slides(
    slides: Sequence[str | os.PathLike],
    model: STPredictModel | str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    grid_spacing_um: float = 100.0,
    k: int | None = None,
    device: str = "auto",
    microns_per_pixel: float | None = None,
    progress: bool = True,
) -> list[Path]:
    """Predict whole slides on a grid of pseudo-spots, one ``<slide>.zarr`` each in ``out_dir``.

    Each slide is read lazily (:func:`stpredict.io.read_wsi`), predicted with
    :func:`stpredict.tl.predict` (``grid_spacing_um``) and written as a SpatialData with the
    pseudo-spots (circle shapes, full-resolution pixels of the slide) and the table of predictions
    (:func:`stpredict.io.to_spatialdata` without images: the slide stays in its own file). A slide
    whose output exists is skipped, and an output appears only once complete (written beside it,
    then renamed), so an interrupted run continues where it stopped. Under ``torchrun`` (or with
    ``RANK`` / ``WORLD_SIZE`` set) process ``r`` of ``n`` takes the slides ``r, r + n, ...``.

    Parameters
    ----------
    slides
        Whole-slide image files (pyramidal TIFF, SVS, ...).
    model
        A fitted model or the folder of a saved one.
    out_dir
        Folder of the outputs (created).
    grid_spacing_um
        Distance between pseudo-spots (µm).
    k
        Neighbours retrieved per spot (default: the model's).
    device
        Where to embed (``"auto"``: a GPU when there is one; under torchrun, ``cuda:LOCAL_RANK``).
    microns_per_pixel
        Pixel size for slides whose files do not record it.
    progress
        Log a line per slide.

    Returns
    -------
    The outputs of this process's slides (written now or found from an earlier run).

    Examples
    --------
    >>> import stpredict as stp
    >>> stp.tl.predict_slides(["a.svs", "b.svs"], "my-model", out_dir="predictions")  # doctest: +SKIP
    """
    from stpredict.io import read_wsi, to_spatialdata
    from stpredict.models import load

    from ._predict import predict

    mine = _my_share([Path(s) for s in slides])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load(model) if isinstance(model, str | os.PathLike) else model
    device = _local_device(device)
    written = []
    for i, slide in enumerate(mine, start=1):
        target = out / f"{slide_name(slide)}.zarr"
        if target.exists():
            logger.info(f"predict_slides: {slide.name} done already ({target}); skipped")
        else:
            sdata = read_wsi(slide, microns_per_pixel=microns_per_pixel)
            result = predict(
                sdata, model, grid_spacing_um=grid_spacing_um, k=k, device=device, progress=False
            )
            assert result is not None  # a grid prediction is a new AnnData
            _write_once(to_spatialdata(result, images=False), target)
            if progress:
                logger.info(
                    f"predict_slides: {i}/{len(mine)} {slide.name}: {result.n_obs} pseudo-spots → {target}"
                )
        written.append(target)
    return written


def _my_share(slides: list[Path]) -> list[Path]:
    """The slides of this process: every ``WORLD_SIZE``-th from ``RANK`` (all on one process)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"predict_slides: RANK={rank} is not in [0, WORLD_SIZE={world}).")
    missing = [str(s) for s in slides if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"predict_slides: no such slide file(s): {missing}.")
    names = [slide_name(s) for s in slides]
    if len(set(names)) != len(names):
        raise ValueError(f"predict_slides: slides would share an output name: {sorted(names)}.")
    return slides[rank::world]


def _local_device(device: str) -> str:
    """``device`` resolved; under ``torchrun``, this process's GPU (``LOCAL_RANK``)."""
    import torch

    from stpredict._distributed import local_device

    from ._fit import resolve_device

    return str(local_device(torch.device(resolve_device(device))))


def _write_once(sdata: Any, target: Path) -> None:
    """Write beside ``target``, then rename: ``target`` exists only once it is complete."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        sdata.write(tmp)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Global settings (``stp.settings``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ._logging import logger

_VERBOSITY = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class Settings:
    """Package-wide settings.

    Attributes
    ----------
    device
        ``"auto"`` (cuda → mps → cpu), or any torch device string.
    seed
        Default random seed for training and data splits.
    num_workers
        Default number of data-loading worker processes (``0`` loads in the main process).
    device_augment
        Where the training augmentation (flips, rotations, HED stain jitter) of image patches runs:
        ``None`` (default) on the training device when it is a GPU, in the DataLoader otherwise;
        ``True`` / ``False`` force it. The random draws are the same either way.
    tile_cache_mb
        MiB of decoded tiles of chunked (zarr / dask) slide images kept per process, so that
        neighbouring patches decode a tile once (``0``: off; each DataLoader worker has its own).
    datasetdir
        Cache folder for downloaded datasets. Defaults to ``$STPREDICT_DATA_DIR`` or the
        platform cache (``pooch.os_cache("stpredict")``).
    max_epochs
        Upper limit on the epochs of every :func:`stpredict.tl.fit` (``None``: no limit). Defaults
        to ``$STPREDICT_MAX_EPOCHS``; meant for smoke runs of scripts and documentation (CI
        executes the README with ``STPREDICT_MAX_EPOCHS=1``), never for real training.
    datasets_url
        Base URL of a mirror laid out like the published data (``<url>/her2st/ST-cnts/C2.tsv.gz``).
        Defaults to ``$STPREDICT_DATASETS_URL``; ``None`` uses the public URLs.
    """

    def __init__(self) -> None:
        self.device: str = "auto"
        self.seed: int = 0
        self.num_workers: int = 0
        self.tile_cache_mb: float = 256
        self.device_augment: bool | None = None
        self._datasetdir: Path | None = None
        self._datasets_url: str | None = None
        self._max_epochs: int | None = None
        self._verbosity = 2
        self.verbosity = 2

    @property
    def verbosity(self) -> int:
        """0 errors, 1 warnings, 2 info (default), 3 debug."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        if value not in _VERBOSITY:
            raise ValueError(f"settings.verbosity must be one of {sorted(_VERBOSITY)}, got {value!r}.")
        self._verbosity = value
        logger.setLevel(_VERBOSITY[value])

    @property
    def datasetdir(self) -> Path:
        """Cache folder for downloaded datasets."""
        if self._datasetdir is not None:
            return self._datasetdir
        env = os.environ.get("STPREDICT_DATA_DIR")
        if env:
            return Path(env)
        import pooch

        return Path(pooch.os_cache("stpredict"))

    @datasetdir.setter
    def datasetdir(self, value: str | os.PathLike | None) -> None:
        self._datasetdir = None if value is None else Path(value)

    @property
    def datasets_url(self) -> str | None:
        """Base URL of a dataset mirror (``None``: the public URLs)."""
        if self._datasets_url is not None:
            return self._datasets_url
        return os.environ.get("STPREDICT_DATASETS_URL") or None

    @datasets_url.setter
    def datasets_url(self, value: str | None) -> None:
        self._datasets_url = value

    @property
    def max_epochs(self) -> int | None:
        """Cap on the epochs of every fit (``None``: none)."""
        if self._max_epochs is not None:
            return self._max_epochs
        env = os.environ.get("STPREDICT_MAX_EPOCHS")
        if not env:
            return None
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"$STPREDICT_MAX_EPOCHS must be a positive integer, got {env!r}.")
        return int(env)

    @max_epochs.setter
    def max_epochs(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"settings.max_epochs must be a positive integer or None, got {value!r}.")
        self._max_epochs = value

    def __repr__(self) -> str:
        return (
            f"stpredict settings: device={self.device!r}, seed={self.seed}, "
            f"num_workers={self.num_workers}, verbosity={self.verbosity}, "
            f"datasetdir={str(self.datasetdir)!r}, datasets_url={self.datasets_url!r}"
        )


settings = Settings()

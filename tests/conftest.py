"""Shared fixtures. Real-data tests read ../shared/data and skip when it is absent."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

_DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("STPREDICT_SHARED_DATA", _DEFAULT_SHARED))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set STPREDICT_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real her2st and mouse olfactory bulb files."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def her2st_dir(shared_data) -> Path:
    return _need(shared_data / "her2st")


@pytest.fixture(scope="session")
def mob_dir(shared_data) -> Path:
    return _need(shared_data / "stutility-mob")


@pytest.fixture(autouse=True)
def _propagate_stpredict_logs():
    """Let pytest's ``caplog`` see the package logger (which does not propagate by default)."""
    import stpredict as stp

    logger = logging.getLogger("stpredict")
    old, verbosity = logger.propagate, stp.settings.verbosity
    logger.propagate = True
    yield
    logger.propagate = old
    stp.settings.verbosity = verbosity


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's dataset cache from tests."""
    monkeypatch.setenv("STPREDICT_DATA_DIR", str(tmp_path_factory.getbasetemp() / "stpredict-cache"))


@pytest.fixture(scope="module")
def slides():
    """Train (slides 0, 1) and test (slide 2) synthetic slides with ``obsm["X_feat"]``: 24 features
    per spot, the 4 expression programmes and 20 noise columns (precomputed image features)."""
    import numpy as np

    import stpredict as stp

    adata = stp.datasets.synthetic(n_slides=3, n_spots_per_side=8, n_genes=30, seed=4)
    rng = np.random.default_rng(0)
    programs = np.asarray(adata.obsm["programs"], dtype=np.float32)
    adata.obsm["X_feat"] = np.hstack([programs, rng.normal(size=(adata.n_obs, 20)).astype(np.float32)])
    train = adata[adata.obs["library_id"] != "slide2"].copy()
    test = adata[adata.obs["library_id"] == "slide2"].copy()
    return train, test

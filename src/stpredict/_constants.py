"""Names of what the package writes (see docs/design.md, "The results contract")."""

from __future__ import annotations

from typing import Literal

__all__ = [
    "DEFAULT_KEY",
    "TRUTH_LAYER",
    "WRITTEN_BY",
    "Weighting",
    "ood_key",
    "std_key",
    "truth_key",
]

DEFAULT_KEY = "stpredict"  # default `key_added` of predict / evaluate
WRITTEN_BY = "stpredict"  # uns[key]["written_by"] of every result the package writes
TRUTH_LAYER = "truth"  # layers[TRUTH_LAYER] of a copy=True result: the measured expression

Weighting = Literal["mean", "inverse_distance2", "softmax"]
WEIGHTINGS: tuple[str, ...] = ("mean", "inverse_distance2", "softmax")


def truth_key(key: str) -> str:
    """``obsm`` key of the measured expression next to the prediction ``obsm[key]``."""
    return f"{key}_truth"


def std_key(key: str) -> str:
    """``obsm`` key (or layer of a copy=True result) of the per-gene spread of the retrieved spots."""
    return f"{key}_std"


def ood_key(key: str) -> str:
    """``obs`` column of the per-spot out-of-distribution score."""
    return f"{key}_ood"

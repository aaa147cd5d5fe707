"""Names of what the package writes (see docs/design.md, "The results contract")."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "DEFAULT_KEY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
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

# RGB statistics the image encoders normalise with (timm's ImageNet defaults)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Weighting = Literal["mean", "inverse_distance2", "softmax"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)


def truth_key(key: str) -> str:
    """``obsm`` key of the measured expression next to the prediction ``obsm[key]``."""
    return f"{key}_truth"


def std_key(key: str) -> str:
    """``obsm`` key (or layer of a copy=True result) of the per-gene spread of the retrieved spots."""
    return f"{key}_std"


def ood_key(key: str) -> str:
    """``obs`` column of the per-spot out-of-distribution score."""
    return f"{key}_ood"

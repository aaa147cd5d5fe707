"""Names of what the package writes (see docs/design.md, "The results contract")."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_SPOT_DIAMETER_UM",
    "GENE_SETS",
    "Baseline",
    "GeneSet",
    "Method",
    "PresetName",
    "SelectEpoch",
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

DEFAULT_SPOT_DIAMETER_UM = 55.0  # a Visium spot: the pixel size when only spot_diameter_fullres is known

# RGB statistics the image encoders normalise with (timm's ImageNet defaults)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Names of the registries, as types (tests check they match stpredict.models.METHODS / PRESETS and
# stpredict.tl._runners.BASELINES)
Method = Literal["cmrcnet", "bleep", "mclstexp"]
PresetName = Literal["auto", "paper", "paper-vitb", "cpu", "tiny"]
Baseline = Literal["random", "oracle", "image_knn", "image_ridge"]
SelectEpoch = Literal["val_loss", "val_pearson"]

# Gene sets stp.tl.evaluate chooses per slide: highly expressed, highly variable, all genes
GeneSet = Literal["heg", "hvg", "all"]
GENE_SETS: tuple[str, ...] = get_args(GeneSet)

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

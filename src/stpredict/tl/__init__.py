"""Tools: fit a model, predict expression, evaluate and cross-validate."""

from ._cv import CrossValidationResult, cross_validate
from ._evaluate import evaluate
from ._fit import fit
from ._grid import grid_spots
from ._predict import predict
from ._slides import predict_slides

__all__ = [
    "fit",
    "predict",
    "predict_slides",
    "evaluate",
    "cross_validate",
    "CrossValidationResult",
    "grid_spots",
]

"""Tools: fit a model, predict expression, evaluate and cross-validate."""

from ._cv import cross_validate
from ._evaluate import evaluate
from ._fit import fit
from ._predict import predict

__all__ = ["fit", "predict", "evaluate", "cross_validate"]

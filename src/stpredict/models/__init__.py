"""Image–expression retrieval models (CMRCNet, BLEEP, mclSTExp) and the fitted-model format.

``METHODS`` maps a method name to its :class:`RetrievalModule` class; :class:`STPredictModel`
wraps a trained module with its genes, patch parameters and reference bank, and
:func:`load` reads a model saved with :meth:`STPredictModel.save`.
"""

from __future__ import annotations

from ._base import ContrastiveModule, RetrievalModule, STPredictModel
from ._encoders import FeatureEncoder, ImageEncoder, build_image_encoder
from ._io import FORMAT_NAME, FORMAT_VERSION
from ._losses import info_nce_loss, reconstruction_loss, soft_clip_loss
from .bleep import BLEEP
from .cmrcnet import CMRCNet
from .mclstexp import MclSTExp

METHODS: dict[str, type[RetrievalModule]] = {"cmrcnet": CMRCNet, "bleep": BLEEP, "mclstexp": MclSTExp}
"""Method name → module class."""

load = STPredictModel.load

__all__ = [
    "METHODS",
    "STPredictModel",
    "load",
    "RetrievalModule",
    "ContrastiveModule",
    "CMRCNet",
    "BLEEP",
    "MclSTExp",
    "ImageEncoder",
    "build_image_encoder",
    "FeatureEncoder",
    "soft_clip_loss",
    "info_nce_loss",
    "reconstruction_loss",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

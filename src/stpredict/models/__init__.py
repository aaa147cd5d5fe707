"""Image–expression retrieval models (CMRCNet, BLEEP, mclSTExp) and the fitted-model format.

``METHODS`` maps a method name to its :class:`RetrievalModule` class (built from each class's
``name``); each class's ``presets`` map a preset name to a typed :class:`Preset` (network,
training and retrieval defaults). :class:`STPredictModel` wraps a trained module with its genes,
:class:`PatchSpec`, :class:`RetrievalSpec`, :class:`Normalization` and :class:`ReferenceBank`;
:func:`load` reads a model saved with :meth:`STPredictModel.save`; :class:`Ensemble` holds several
networks of one method that retrieve together (``tl.fit(n_members=...)``).
"""

from __future__ import annotations

from ._base import ContrastiveModule, RetrievalModule
from ._encoders import FeatureEncoder, ImageEncoder, build_image_encoder
from ._ensemble import Ensemble
from ._fitted import STPredictModel
from ._io import FORMAT_NAME, FORMAT_VERSION
from ._losses import info_nce_loss, reconstruction_loss, soft_clip_loss
from ._registry import METHODS, PRESETS
from ._specs import Normalization, PatchSpec, Preset, ReferenceBank, RetrievalSpec, TrainingSpec
from .bleep import BLEEP
from .cmrcnet import CMRCNet
from .mclstexp import MclSTExp

load = STPredictModel.load

__all__ = [
    "METHODS",
    "PRESETS",
    "STPredictModel",
    "load",
    "Ensemble",
    "RetrievalModule",
    "ContrastiveModule",
    "CMRCNet",
    "BLEEP",
    "MclSTExp",
    "Preset",
    "TrainingSpec",
    "RetrievalSpec",
    "PatchSpec",
    "Normalization",
    "ReferenceBank",
    "ImageEncoder",
    "build_image_encoder",
    "FeatureEncoder",
    "soft_clip_loss",
    "info_nce_loss",
    "reconstruction_loss",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

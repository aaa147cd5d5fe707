"""The presets every method shares: the authors' recipes at 224 px, the CPU tower, the test size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ._specs import Preset, RetrievalSpec, TrainingSpec

__all__ = ["CPU_IMAGE_TOWER", "CPU_TRAINING", "PROJECTION_TRAINING", "method_presets"]

# The `cpu` preset's image tower, shared by every method: a half-width ResNet-18 from scratch at
# 64 px (a 2 × 2 map + the pooled token), ~240 training images/s on 2 cores. Chosen by the her2st
# ablation (docs/her2st.md): faster and better than the narrow ViT at 112 px it replaces.
CPU_IMAGE_TOWER: Mapping[str, Any] = {
    "backbone": "resnet18",
    "backbone_kwargs": {"channels": [32, 64, 128, 256]},
    "image_size": 64,
    "pretrained": False,
}

# The authors' training of the projection-head models (BLEEP's code, reused by CMRCNet's)
PROJECTION_TRAINING = TrainingSpec()

# The `cpu` recipe (stpredict.tl._recipe), measured in the same ablation, on top of a method's own.
# 100 epochs, not 30: from pixels the network is still learning at 30 (her2st HEG r of CMRCNet
# 0.224 -> 0.301, BLEEP 0.189 -> 0.29, ~2 min of fit per fold on 2 cores; docs/her2st.md, seventh step)
CPU_TRAINING: Mapping[str, Any] = {
    "epochs": 100,
    "lr": 1e-3,
    "lr_min": 1e-5,
    "stain_jitter": 0.05,
    "translate": 0.25,
    "tta": True,
    "select_epoch": "val_pearson",
}


def method_presets(
    networks: Mapping[str, Mapping[str, Any]],
    training: TrainingSpec,
    retrieval: RetrievalSpec,
    *,
    cpu_training: Mapping[str, Any] | None = None,
) -> dict[str, Preset]:
    """A method's presets from its networks per preset and its authors' training and retrieval.

    ``cpu`` trains with :data:`CPU_TRAINING` (updated by the method's ``cpu_training``), ``tiny``
    with 2 epochs of batches of 16; every other preset (the paper's) with ``training`` as given.
    """
    cpu = replace(training, **{**CPU_TRAINING, **(cpu_training or {})})
    recipes = {"cpu": cpu, "tiny": replace(training, epochs=2, batch_size=16)}
    return {
        name: Preset(network=dict(network), training=recipes.get(name, training), retrieval=retrieval)
        for name, network in networks.items()
    }

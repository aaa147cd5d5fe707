"""``stp.tl.fit``: train an image–expression retrieval model and build its reference bank."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from stpredict._logging import logger
from stpredict._settings import settings
from stpredict._validation import check_flag, check_image_input, check_int, check_number, check_some_counts

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

    from stpredict._constants import Method, PresetName, SelectEpoch
    from stpredict.models import STPredictModel

# The model fitted last in this session; `stp.tl.predict(data)` uses it when no model is given.
_LAST_MODEL: dict[str, Any] = {"model": None}
MEMBER_SEED_STRIDE = 1000  # member j of an ensemble is trained with seed + 1000 j


def last_model() -> STPredictModel:
    """The model returned by the latest :func:`fit` call of this session."""
    model = _LAST_MODEL["model"]
    if model is None:
        raise ValueError(
            "No model given and none fitted in this session: pass `model=` (an STPredictModel or the "
            "folder of a saved one) or run `stp.tl.fit` first."
        )
    return model


def _patch_cache_folder(folder: Any, image_features: str | None) -> Path | None:
    """``fit(patch_cache=)`` checked: a folder (created when the patches are written) or ``None``."""
    if folder is None:
        return None
    if image_features is not None:
        raise ValueError(
            f"fit: `patch_cache` stores image patches, but `image_features={image_features!r}` trains on "
            "features; pass one of them."
        )
    if not isinstance(folder, str | os.PathLike):
        raise TypeError(f"fit: `patch_cache` must be a folder path, got {type(folder).__name__}.")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"fit: `patch_cache` {str(path)!r} exists and is not a folder.")
    return path


def _optional(check, value: Any, name: str, **kwargs: Any) -> Any:
    """``None`` (keep the preset's value) or ``value`` validated by ``check`` as ``fit``'s ``name``."""
    return None if value is None else check(value, what=f"fit: `{name}`", **kwargs)


def resolve_device(device: str | None) -> str:
    """The device name :func:`fit` and :func:`predict` use (see :func:`stpredict._device.resolve_device`)."""
    from stpredict._device import resolve_device as _resolve

    return str(_resolve(device))


def gene_indices(var_names: Sequence[str], genes: Sequence[str], what: str) -> np.ndarray:
    """Column of each gene in ``var_names``; a :class:`KeyError` names the missing ones."""
    import pandas as pd

    index = pd.Index([str(v) for v in var_names])
    pos = index.get_indexer(list(genes))
    if (pos < 0).any():
        missing = [g for g, p in zip(genes, pos) if p < 0]
        raise KeyError(f"{what} lacks {len(missing)} of the genes, e.g. {missing[:5]}.")
    return pos


def model_expression(model: STPredictModel, sd) -> tuple[np.ndarray | None, list[str]]:
    """The counts of ``model.genes`` in ``sd``, normalised as the model's bank (target sum, log1p).

    Returns ``(expression, [])``, or ``(None, missing genes)`` when ``sd`` lacks some of them.
    """
    import pandas as pd

    from stpredict.pp import normalize_matrix

    var = pd.Index([str(v) for v in sd.var_names])
    missing = [g for g in model.genes if g not in var]
    if missing:
        return None, missing
    counts = sd.counts[:, gene_indices(var, model.genes, "the data")]
    target_sum = model.normalization.target_sum
    return np.asarray(normalize_matrix(counts, target_sum=target_sum), dtype=np.float32), []


def default_target_sum(counts) -> float:
    """Median total count of the spots with any counts (scanpy's ``normalize_total`` default)."""
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    totals = totals[totals > 0]
    if len(totals) == 0:
        raise ValueError("fit: every spot has zero counts for the selected genes; nothing to learn from.")
    return float(np.median(totals))


# Training images/s of the `paper` preset on 2 CPU cores (benchmarks/bench.py), for the warning below.
_PAPER_CPU_IMAGES_PER_S = 3.0


def resolve_preset(preset: str, device: str) -> str:
    """``"auto"`` → ``"paper"`` on a GPU, ``"cpu"`` otherwise (logged); warns for ``"paper"`` on a CPU."""
    if not isinstance(preset, str):
        raise TypeError(f"fit: `preset` must be a string, got {type(preset).__name__}.")
    on_gpu = not device.startswith("cpu")
    if preset == "auto":
        preset = "paper" if on_gpu else "cpu"
        logger.info(f"fit: preset='auto' → {preset!r} (device {device})")
    elif preset.startswith("paper") and not on_gpu:
        logger.warning(
            f"fit: preset={preset!r} on a CPU trains a ViT/ResNet at 224 px for 60+ epochs: at about "
            f"{_PAPER_CPU_IMAGES_PER_S:.0f} images/s on 2 cores that is ~{_paper_hours(1000):.1f} h per "
            "1,000 spots. preset='cpu' (or 'auto') is made for CPUs."
        )
    return preset


def _paper_hours(n_spots: int, epochs: int = 60) -> float:
    return n_spots * epochs / _PAPER_CPU_IMAGES_PER_S / 3600


def fit(
    data: AnnData | SpatialData,
    *,
    method: Method = "cmrcnet",
    preset: PresetName = "auto",
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    image_size: int | None = None,
    patch_size_um: float = 112.0,
    stain_normalize: bool = False,
    val_fraction: float = 0.2,
    stain_jitter: float | None = None,
    translate: float | None = None,
    tta: bool | None = None,
    select_epoch: SelectEpoch | None = None,
    device: str = "auto",
    seed: int | None = None,
    n_members: int = 1,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    num_workers: int | None = None,
    library_key: str = "library_id",
    table_key: str | None = None,
    layer: str | None = None,
    pretrained: bool = False,
    weights_path: str | os.PathLike | None = None,
    freeze_backbone: bool = False,
    image_features: str | None = None,
    feature_views: int = 1,
    feature_components: int | None = None,
    slide_standardize: bool = False,
    stream: bool | None = None,
    patch_cache: str | os.PathLike | None = None,
    compile: bool = False,
    progress: bool = True,
    **model_kwargs: Any,
) -> STPredictModel:
    """Train an image → expression retrieval model on slides with H&E and expression.

    Steps: read the spots (:class:`stpredict.data.SpotData`); choose the genes
    (:func:`stpredict.pp.select_genes`, or ``genes``); normalise their counts
    (:func:`stpredict.pp.normalize_matrix`, ``normalize_total`` to the median total count of the
    chosen genes, recorded in the model, then ``log1p``); cut an H&E patch of ``patch_size_um``
    around every spot, resampled to the model's image size; hold out a random ``val_fraction`` of
    the spots for validation (it picks the best epoch); train with
    :func:`stpredict.train.train_module`; and store in the model a **reference bank** with the
    expression embeddings and normalised expression of *all* spots (training and validation).

    **Presets.** ``preset="auto"`` (the default) is ``"paper"`` on a GPU and ``"cpu"`` otherwise
    (the choice is logged). ``"paper"`` uses the hyper-parameters published by the method's
    authors: a ViT/ResNet backbone at 224 px, 60+ epochs: it needs a GPU (on a CPU a warning says
    how long it would take). ``"cpu"`` is a small backbone at a small image size for a few
    minutes on a laptop; ``"tiny"`` is for smoke tests. Every hyper-parameter can
    be overridden: the training ones by keyword (``epochs``, ``batch_size``, ``lr``, ...), the
    network's through ``**model_kwargs`` (keys of ``METHODS[method].default_config(preset)``).

    Parameters
    ----------
    data
        AnnData in the Visium convention (one or many slides, told apart by ``obs[library_key]``,
        raw counts in ``X`` or ``layers[layer]``, images in ``uns["spatial"]``), or a SpatialData
        object (a table annotating spot shapes, and images).
    method
        ``"cmrcnet"`` (default), ``"bleep"`` or ``"mclstexp"``.
    preset
        ``"auto"``, ``"paper"``, ``"cpu"`` or ``"tiny"`` (see above).
    genes
        Genes to predict; default: the union over slides of each slide's top ``n_top_genes``
        highly variable genes, restricted to genes detected in every slide.
    n_top_genes
        Highly variable genes per slide when ``genes`` is ``None``.
    epochs, batch_size, lr, weight_decay
        Training settings; ``None`` takes the preset's value.
    image_size
        Side (px) of the patches fed to the network; ``None`` takes the preset's value.
    patch_size_um
        Physical side of a patch (µm) around each spot centre.
    stain_normalize
        Match each slide's stain to the training slides': the mean and std of its haematoxylin,
        eosin and DAB concentrations (colour deconvolution, over the tissue pixels of up to 256
        spot patches) are mapped to the training slides' average (Reinhard-style, in HED space),
        at fit and, with the statistics stored in the model, at predict. Guards against a slide
        stained or scanned differently (``docs/her2st.md`` measures it); off by default.
    val_fraction
        Share of spots held out for validation, chosen at random with ``seed``; ``0`` trains on
        every spot and picks the epoch with the lowest training loss.
    device
        ``"auto"`` takes ``stp.settings.device`` (itself ``"auto"`` by default: CUDA, then Apple
        MPS, then CPU), or a torch device name.
    seed
        Seed of the split, the initialisation and the shuffling; ``None``: ``stp.settings.seed``.
    n_members
        Train this many networks, member ``j`` with seed ``seed + 1000 j`` (its own validation
        split, initialisation and shuffling), and retrieve with all of them: a query's similarity
        to a bank spot is the mean of the members' cosine similarities. Costs ``n_members`` times
        the training and embedding time; on her2st three members of the best feature recipe gain
        more than the seed spread (``docs/her2st.md``). ``1``: one network.
    checkpoint_dir
        Folder to write a checkpoint to after every epoch; needed to ``resume``. With
        ``n_members > 1`` member ``j ≥ 1`` checkpoints in its subfolder ``member-<j>``.
    resume
        Continue an interrupted run from ``checkpoint_dir`` (same data and settings).
    num_workers
        Data-loading processes; ``None``: ``stp.settings.num_workers``.
    library_key
        Column of ``obs`` telling slides apart.
    table_key
        SpatialData: the table with the spots (default: the only one).
    layer
        Layer of the table with raw counts (default: ``X``).
    stain_jitter, translate, tta, select_epoch
        Training recipe; ``None`` takes the preset's value (:mod:`stpredict.tl._recipe`).
        ``stain_jitter``: σ of the random HED stain scaling/shift of training patches (``0``:
        off). ``translate``: how far (a fraction of the patch side) the training crop may move
        around the spot centre. ``tta``: at prediction, average the embeddings of the 8
        flips/rotations of each patch. ``select_epoch``: ``"val_loss"`` or ``"val_pearson"``
        (keep the epoch whose validation spots are best predicted by retrieval from the training
        spots: mean Pearson r over the training spots' 50 most expressed genes).
    pretrained
        Start the image backbone from timm's pretrained weights (downloads them).
    weights_path
        Start the image backbone from a local state dict (``.safetensors`` or a torch file).
    freeze_backbone
        Keep the image backbone's weights fixed (use with ``pretrained`` or ``weights_path``, e.g.
        a pathology foundation model): each patch and its 8 flips/rotations are embedded **once**,
        cached, and only the heads are trained, so an epoch costs no backbone pass. Stain jitter
        and translation are off (the cache is made once); flips/rotations remain augmentation.
    image_features
        Train on precomputed patch embeddings instead of pixels: the key of ``obsm`` of the spots'
        table (e.g. ``"X_uni"``), or of a SpatialData table whose rows are named by spot id (as
        LazySlide / sopa style pipelines write). The image tower is then a projection of the
        standardised features (``backbone="features"``); no patch is cut, and
        :func:`~stpredict.tl.predict` reads the same key from the slides it predicts.
        ``"handmade"`` computes the image-kNN baseline's colour/texture features of each spot's
        patch from the pixels instead (at fit and at predict), ``"handmade_context"`` adds those
        of a 3× wider patch around it, and ``"texture"`` the richer descriptor of
        :func:`stpredict.baselines.texture_features` of the spot's patch and a 2× wider one (732
        numbers; use it with ``feature_components``; see ``docs/her2st.md`` for what they give).
    feature_views
        With ``image_features="handmade"`` / ``"handmade_context"``: compute the features of this
        many views of each spot's patch, the first as it is, the others shifted by up to
        ``translate`` and HED-jittered by ``stain_jitter`` (the recipe's, e.g. the ``cpu``
        preset's 0.25 and 0.05); each training item reads a random view (augmentation for a
        network that never sees pixels). The reference bank and predictions use the first view.
    feature_components
        With ``image_features``: project the standardised features on their first this many
        principal axes, fitted on the training spots and stored in the model (see
        :class:`stpredict.models.FeatureEncoder`). ``None``: the features as they are.
    slide_standardize
        With ``image_features``: centre and scale each slide's features by that slide's own mean
        and std over its spots, at fit and at :func:`~stpredict.tl.predict` (which then needs
        the slide's spots together, at least 30 for stable statistics). Removes what shifts a
        whole section's features (stain, scanner, thickness); on her2st and MOB it lifts the
        texture recipe beyond the seed spread (``docs/her2st.md``). Off by default.
    stream
        Cut the training patches from the slides as batches are read (memory independent of the
        number of spots; DataLoader workers read in parallel with ``num_workers``) instead of all
        at once. ``None``: stream when the patches would take more than 2 GiB.
    patch_cache
        A folder for an on-disk (zarr) cache of the training patches: they are cut once, batch by
        batch, into ``patches-<key>.zarr`` there (``key``: a digest of the spots, images, stain
        maps and patch size), and every epoch reads them from it instead of the slides. A later
        fit of the same slides reuses it (after checking a few patches); other slides get their
        own. For many epochs over slides too large for memory.
    compile
        Train the module compiled with :func:`torch.compile` (faster steps on a GPU after a
        minute of compiling; the saved model is the same).
    progress
        Show progress bars.
    **model_kwargs
        Network hyper-parameters overriding the preset's (e.g. ``dim=128``, ``backbone="resnet18"``).

    Returns
    -------
    The fitted :class:`stpredict.models.STPredictModel`, with ``history`` (one dict per epoch),
    ``training`` (the settings used, ``best_epoch``, ``checkpoint_dir``, ``interrupted``) and the
    reference bank. It is also remembered as the session's last model, which
    :func:`stpredict.tl.predict` uses when called without ``model``.

    If training is interrupted (Ctrl-C) after at least one epoch, the model is built from the
    best epoch so far and returned with a warning; ``resume=True`` (with the same
    ``checkpoint_dir``) continues the run.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, n_genes=40)
    >>> model = stp.tl.fit(adata, preset="tiny", epochs=1, progress=False)
    >>> len(model.genes) <= 40
    True
    """
    plan = _plan(
        method, preset, device, image_size, pretrained, weights_path, model_kwargs,
        freeze_backbone=freeze_backbone,
        image_features=image_features, feature_views=feature_views,
        feature_components=feature_components, slide_standardize=slide_standardize, seed=seed,
        num_workers=num_workers, resume=resume,
        checkpoint_dir=checkpoint_dir, n_top_genes=n_top_genes, patch_size_um=patch_size_um,
        library_key=library_key, stream=stream, progress=progress, stain_normalize=stain_normalize,
        compile=compile, patch_cache=patch_cache, n_members=n_members,
        overrides={
            "epochs": _optional(check_int, epochs, "epochs"),
            "batch_size": _optional(check_int, batch_size, "batch_size"),
            "lr": _optional(check_number, lr, "lr"),
            "weight_decay": _optional(check_number, weight_decay, "weight_decay", positive=False),
            "val_fraction": val_fraction, "stain_jitter": stain_jitter, "translate": translate,
            "tta": tta, "select_epoch": select_epoch,
        },
    )  # fmt: skip
    sd, expr, features, stain = _training_data(plan, data, genes, table_key=table_key, layer=layer)
    runs = _train_members(plan, sd, expr, features)
    model = _fitted_model(plan, runs, sd, expr, stain)
    _LAST_MODEL["model"] = model
    best = ", ".join(f"{r.result.best_epoch} of {r.result.epochs_run}" for r in runs)
    logger.info(f"fit: done; reference bank of {len(sd.obs_names)} spots, best epoch {best}")
    return model


@dataclass
class _FitPlan:
    """The validated settings of one :func:`fit` (everything checked before any data is read)."""

    method: str
    cls: type
    config: dict[str, Any]
    preset: str
    device: str
    seed: int
    num_workers: int
    resume: bool
    checkpoint_dir: str | os.PathLike | None
    n_top_genes: int
    patch_size_um: float
    image_features: str | None
    feature_views: int
    feature_components: int | None
    slide_standardize: bool
    freeze_backbone: bool
    library_key: str
    stream: bool | None
    progress: bool
    stain_normalize: bool
    compile: bool
    patch_cache: str | os.PathLike | None
    n_members: int
    overrides: dict[str, Any]
    member: int = 0  # which member of an ensemble this plan trains


def _plan(
    method, preset, device, image_size, pretrained, weights_path, model_kwargs, **options: Any
) -> _FitPlan:
    """Step 1: the network's config and every setting, validated."""
    dev = resolve_device(device)
    cls, config, preset = _network_config(
        method, preset, dev, image_size, pretrained, weights_path, model_kwargs
    )
    weights = config.get("pretrained", False), config.get("weights_path")  # hub backbones resolved
    check_image_input(options["freeze_backbone"], options["image_features"], *weights, what="fit")
    config["freeze_backbone"] = bool(options["freeze_backbone"])
    seed = _optional(
        check_int, settings.seed if options["seed"] is None else options["seed"], "seed", minimum=0
    )
    workers = settings.num_workers if options["num_workers"] is None else options["num_workers"]
    if options["resume"] and options["checkpoint_dir"] is None:
        raise ValueError("fit: `resume=True` needs `checkpoint_dir` (the folder of the interrupted run).")
    return _FitPlan(
        method=method, cls=cls, config=config, preset=preset, device=dev, seed=seed,
        num_workers=_optional(check_int, workers, "num_workers", minimum=0),
        resume=bool(options["resume"]), checkpoint_dir=options["checkpoint_dir"],
        n_top_genes=check_int(options["n_top_genes"], what="fit: `n_top_genes`"),
        patch_size_um=_optional(check_number, options["patch_size_um"], "patch_size_um"),
        image_features=options["image_features"],
        feature_views=_feature_views(options["feature_views"], options["image_features"]),
        feature_components=_feature_components(options["feature_components"], options["image_features"]),
        slide_standardize=_slide_standardize(options["slide_standardize"], options["image_features"]),
        freeze_backbone=bool(options["freeze_backbone"]),
        library_key=options["library_key"], stream=options["stream"], progress=options["progress"],
        stain_normalize=check_flag(options["stain_normalize"], what="fit: `stain_normalize`"),
        compile=check_flag(options["compile"], what="fit: `compile`"),
        patch_cache=_patch_cache_folder(options["patch_cache"], options["image_features"]),
        n_members=_n_members(options["n_members"]), overrides=options["overrides"],
    )  # fmt: skip


def _feature_views(value: Any, image_features: str | None) -> int:
    from stpredict.data._features import HANDMADE

    views = check_int(value, what="fit: `feature_views`")
    if views > 1 and image_features not in HANDMADE:
        raise ValueError(
            f"fit: feature_views={views} augments features computed from the pixels; it needs "
            f"image_features in {sorted(HANDMADE)}, got {image_features!r}."
        )
    return views


def _feature_components(value: Any, image_features: str | None) -> int | None:
    if value is None:
        return None
    components = check_int(value, what="fit: `feature_components`")
    if image_features is None:
        raise ValueError(
            f"fit: feature_components={components} reduces precomputed features; it needs image_features=."
        )
    return components


def _slide_standardize(value: Any, image_features: str | None) -> bool:
    on = check_flag(value, what="fit: `slide_standardize`")
    if on and image_features is None:
        raise ValueError("fit: slide_standardize=True standardises image features; it needs image_features=.")
    return on


def _view_augmentation(plan: _FitPlan):
    """The feature views' augmentation: the recipe's translation and stain jitter (``None``: 1 view)."""
    from stpredict.data._features import ViewAugmentation
    from stpredict.models import METHODS

    from ._recipe import Recipe

    if plan.feature_views == 1:
        return None
    # the recipe step 3 resolves (and validates) from the same preset defaults and overrides
    defaults = {
        **METHODS[plan.method].presets[plan.preset].training.to_dict(),
        "image_size": plan.config["image_size"],
    }
    recipe = Recipe.resolve(defaults, plan.overrides, max_epochs=None)
    translate, jitter = recipe.translate, recipe.stain_jitter
    if translate == 0 and jitter == 0:
        raise ValueError(
            f"fit: feature_views={plan.feature_views} with translate=0 and stain_jitter=0 gives "
            "identical views; set either (e.g. translate=0.25, stain_jitter=0.05)."
        )
    return ViewAugmentation(plan.feature_views, translate, jitter, plan.seed)


def _n_members(value: Any) -> int:
    from stpredict.models._io import MAX_MEMBERS

    n = check_int(value, what="fit: `n_members`")
    if n > MAX_MEMBERS:
        raise ValueError(f"fit: n_members={n}; at most {MAX_MEMBERS} networks fit in one saved model.")
    return n


def _training_data(plan: _FitPlan, data, genes, *, table_key, layer):
    """Step 2: the spots, their expression, precomputed features, the stain target if any.

    With ``stain_normalize`` the spots' patches are read stain-matched to the target.
    """
    from stpredict.data import SpotData
    from stpredict.data._features import HANDMADE
    from stpredict.data._stain import slide_stain_stats, stain_matched, stain_target

    sd = SpotData.from_object(
        data, library_key=plan.library_key, table_key=table_key, layer=layer, require_expression=True
    )
    stain = None
    if plan.stain_normalize:  # each slide's statistics, read once: the target is their mean
        stats = slide_stain_stats(sd, patch_size_um=plan.patch_size_um)
        stain = stain_target(stats)
        sd = stain_matched(sd, stain, patch_size_um=plan.patch_size_um, stats=stats)
        logger.info(f"fit: stain of {len(sd.libraries)} slide(s) matched to their mean HED statistics")
        if plan.image_features is not None and plan.image_features not in HANDMADE:
            logger.warning(
                f"fit: `stain_normalize` does not change the precomputed features "
                f"{plan.image_features!r} (only patches cut by stpredict are matched)."
            )
    expr = _expression(sd, genes, plan.n_top_genes, plan.library_key)
    features = None if plan.image_features is None else _read_features(sd, plan, data)
    return sd, expr, features, stain


class _Run(NamedTuple):
    """One trained member: its seed, module, recipe, datasets (split) and training result."""

    seed: int
    module: Any
    recipe: Any
    parts: Any
    result: Any


def _train_members(plan: _FitPlan, sd, expr: _Expression, features: np.ndarray | None) -> list[_Run]:
    """Steps 3–5 once per member; an interruption (Ctrl-C) ends the ensemble at the members so far.

    Only the first member keeps its datasets (the model's patches and split sizes are its).
    """
    runs: list[_Run] = []
    for j, member in enumerate(_member_plans(plan)):
        if plan.n_members > 1:
            logger.info(f"fit: member {j + 1} of {plan.n_members} (seed {member.seed})")
        try:
            module, recipe = _network_and_recipe(member, expr, features)
            parts = _datasets(member, sd, expr, module, recipe, features)
            result = _train(member, module, recipe, parts, sd, expr)
        except KeyboardInterrupt:
            if not runs:
                raise
            result = None
        if result is not None:
            runs.append(_Run(member.seed, module, recipe, parts if j == 0 else None, result))
        if len(runs) < plan.n_members and (result is None or result.interrupted):
            logger.warning(
                f"fit: interrupted; the model holds the {len(runs)} member(s) trained so far, "
                f"not {plan.n_members}."
            )
            break
    return runs


def _member_plans(plan: _FitPlan) -> list[_FitPlan]:
    """Each member's plan: member j has seed ``seed + 1000 j``.

    Member j ≥ 1 checkpoints in ``checkpoint_dir/member-<j>`` and resumes only from a checkpoint
    there (a member the interruption never reached starts afresh).
    """
    from stpredict.train import CHECKPOINT_NAME

    plans = [plan]
    for j in range(1, plan.n_members):
        folder = None if plan.checkpoint_dir is None else Path(plan.checkpoint_dir) / f"member-{j}"
        resume = plan.resume and folder is not None and (folder / CHECKPOINT_NAME).exists()
        seed = plan.seed + MEMBER_SEED_STRIDE * j
        plans.append(dataclasses.replace(plan, seed=seed, checkpoint_dir=folder, resume=resume, member=j))
    return plans


def _network_and_recipe(plan: _FitPlan, expr: _Expression, features: np.ndarray | None):
    """Step 3: the untrained module (seeded) and the training recipe of its preset and the overrides."""
    import torch

    from ._recipe import Recipe

    torch.manual_seed(plan.seed)
    module = plan.cls(len(expr.genes), **plan.config)
    recipe = Recipe.resolve(module.training_defaults, plan.overrides, max_epochs=settings.max_epochs)
    return module, recipe.for_input(
        features=features is not None, frozen=plan.freeze_backbone, views=plan.feature_views
    )


def _datasets(plan: _FitPlan, sd, expr: _Expression, module, recipe, features: np.ndarray | None):
    """Step 4: the image input (patches, cached or precomputed features), the split, the datasets."""
    import torch

    from ._recipe import build_datasets

    parts = build_datasets(
        sd, expr.values, module, recipe, patch_size_um=plan.patch_size_um, seed=plan.seed,
        progress=plan.progress, features=features, device=plan.device, stream=plan.stream,
        patch_cache=plan.patch_cache,
    )  # fmt: skip
    if features is not None:
        module.image_encoder.fit_standardisation(torch.from_numpy(first_view(features)[parts.train_idx]))
    logger.info(
        f"fit: training {plan.method} ({plan.preset!r} preset) on {parts.n_train} spots, validating on "
        f"{parts.n_val}, {recipe.epochs} epoch(s) of batch {recipe.batch_size} on {plan.device}"
        + (f"; checkpoints in {plan.checkpoint_dir}" if plan.checkpoint_dir is not None else "")
    )
    return parts


def _train(plan: _FitPlan, module, recipe, parts, sd, expr: _Expression):
    """Step 5: the training loop (checkpointed, resumable), then the best epoch's weights."""
    from stpredict.train import train_module

    from ._recipe import retrieval_score

    fingerprint = {
        "method": plan.method,
        "config": plan.config,
        "genes": list(expr.genes),
        "target_sum": expr.target_sum,
        "patch_size_um": plan.patch_size_um,
        "image_features": plan.image_features,
        **({"feature_views": plan.feature_views} if plan.feature_views > 1 else {}),
        "stain_normalize": plan.stain_normalize,
        **({"slide_standardize": True} if plan.slide_standardize else {}),
        "image_size": recipe.image_size,
        "recipe": recipe.fingerprint(),
        "n_spots": len(sd.obs_names),
        "obs_names_head": [str(x) for x in sd.obs_names[:5]],
    }
    score = retrieval_score(parts, recipe) if recipe.select_epoch == "val_pearson" else None
    result = train_module(
        module, parts.train, parts.val, **recipe.loop_kwargs(), device=plan.device, seed=plan.seed,
        checkpoint_dir=plan.checkpoint_dir, resume=plan.resume, fingerprint=fingerprint,
        num_workers=plan.num_workers, compile=plan.compile, batch_sampler=parts.batch_sampler,
        progress=plan.progress, score=score, batch_transform=parts.batch_transform,
    )  # fmt: skip
    root = plan.checkpoint_dir  # what the user passed: member j ≥ 1 checkpoints in root/member-<j>
    if plan.member and root is not None:
        root = Path(root).parent
    _restore_best(module, result, recipe.epochs, root)
    return result


def _network_config(method, preset, device, image_size, pretrained, weights_path, model_kwargs):
    """The module class, its validated hyper-parameters and the resolved preset name."""
    from stpredict.models import METHODS

    if method not in METHODS:
        raise ValueError(f"fit: `method` must be one of {sorted(METHODS)}, got {method!r}.")
    cls = METHODS[method]
    preset = resolve_preset(preset, device)
    config = cls.default_config(preset)  # raises on an unknown preset
    allowed = set(cls.hyperparameters()) | set(config)
    unknown = sorted(set(model_kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"fit: unknown hyper-parameter(s) {unknown} for method {method!r}; expected some of "
            f"{sorted(allowed - {'preset', 'pretrained', 'weights_path', 'image_size'})} (training "
            "settings, `image_size`, `pretrained` and `weights_path` are keywords of `fit`)."
        )
    config.update(model_kwargs)
    if pretrained and weights_path is not None:
        raise ValueError("fit: give either `pretrained=True` or `weights_path=`, not both.")
    image_size = _optional(check_int, image_size, "image_size", minimum=8)
    if image_size is not None:
        config["image_size"] = image_size
    if pretrained:
        config["pretrained"] = True
    if weights_path is not None:
        config["weights_path"] = str(weights_path)
    _resolve_hub(config, image_size is not None, model_kwargs.get("backbone_kwargs") or {})
    return cls, config, preset


def _resolve_hub(config: dict[str, Any], image_size_given: bool, user_kwargs: dict[str, Any]) -> None:
    """An ``hf-hub:`` / ``local-dir:`` backbone becomes its timm architecture, arguments and weights file.

    The folder's ``model_args`` replace the preset's backbone arguments; the user's
    ``backbone_kwargs`` override single entries.
    """
    from stpredict.models._encoders import HUB_PREFIXES, resolve_hub_backbone

    name = config.get("backbone")
    if not isinstance(name, str) or not name.startswith(HUB_PREFIXES):
        return
    if config.get("weights_path") is not None:
        raise ValueError(f"fit: backbone={name!r} brings its weights; do not also pass `weights_path`.")
    hub = resolve_hub_backbone(name)
    args = {**hub.model_args, **user_kwargs}
    size = args.pop("img_size", None)
    if size is not None and not image_size_given:
        config["image_size"] = int(size if np.ndim(size) == 0 else size[0])
    config.update(
        backbone=hub.architecture, backbone_kwargs=args, weights_path=str(hub.weights), pretrained=False
    )
    logger.info(f"fit: backbone {name} → timm {hub.architecture!r} {args}, weights {hub.weights}")


def _read_features(sd, plan: _FitPlan, data) -> np.ndarray:
    """The spots' precomputed features, ``(n, F)`` or ``(n, V, F)`` views; the tower becomes "features"."""
    from stpredict.data._features import slide_standardized, spot_features
    from stpredict.models._encoders import FEATURES

    key, augment = plan.image_features, _view_augmentation(plan)
    assert key is not None
    features = spot_features(sd, key, data, what="fit", patch_size_um=plan.patch_size_um, augment=augment)
    if plan.slide_standardize:
        features = slide_standardized(features, sd.library_ids, what="fit")
        logger.info(f"fit: features of each of {len(sd.libraries)} slide(s) standardised on its own spots")
    width = int(features.shape[-1])
    if plan.feature_components is not None and plan.feature_components > width:
        raise ValueError(
            f"fit: feature_components={plan.feature_components} is more than the {width} features of {key!r}."
        )
    components = {} if plan.feature_components is None else {"components": plan.feature_components}
    plan.config.update(backbone=FEATURES, backbone_kwargs={"in_features": width, **components})
    plan.config.update(pretrained=False, weights_path=None)
    views = "" if augment is None else f" (and {augment.views - 1} augmented views for training)"
    logger.info(f"fit: image input: {width} precomputed features per spot from {key!r}{views}")
    return features


def first_view(features: np.ndarray) -> np.ndarray:
    """``(n, F)`` features as they are: view 0 of ``(n, V, F)`` feature views."""
    return features[:, 0] if features.ndim == 3 else features


class _Expression(NamedTuple):
    """The chosen genes, their log-normalised expression (float32) and the normalisation's target sum."""

    genes: list[str]
    values: np.ndarray
    target_sum: float


def _expression(sd, genes, n_top_genes: int, library_key: str) -> _Expression:
    """Choose the genes and normalise their counts (``normalize_total`` to the median, ``log1p``)."""
    import anndata as ad
    import pandas as pd

    from stpredict.pp import normalize_matrix, select_genes

    check_some_counts(sd.counts, sd.library_ids, what="fit", library_key=library_key)
    counts_view = ad.AnnData(
        X=sd.counts,
        obs=pd.DataFrame({library_key: pd.Categorical(sd.library_ids)}, index=sd.obs_names),
        var=pd.DataFrame(index=sd.var_names),
    )
    gene_list = select_genes(counts_view, n_top_genes=n_top_genes, library_key=library_key, genes=genes)
    if len(gene_list) == 0:
        raise ValueError("fit: no genes selected; pass `genes=` or lower the filters.")
    counts = sd.counts[:, gene_indices(sd.var_names, gene_list, "the data")]
    target_sum = default_target_sum(counts)
    expression = np.asarray(normalize_matrix(counts, target_sum=target_sum), dtype=np.float32)
    how = "given" if genes is not None else f"top {n_top_genes} HVG per slide"
    logger.info(
        f"fit: {len(sd.obs_names)} spots from {len(sd.libraries)} slide(s), {len(gene_list)} genes "
        f"({how}), normalised to {target_sum:.0f} counts + log1p"
    )
    return _Expression(list(gene_list), expression, target_sum)


def _restore_best(module, result, epochs: int, checkpoint_dir) -> None:
    """Load the best epoch's weights; warn when training was interrupted."""
    if result.best_state:
        module.load_state_dict(result.best_state)
    if result.interrupted:
        how = (
            f"; `resume=True` with checkpoint_dir={str(checkpoint_dir)!r} continues it."
            if checkpoint_dir
            else "."
        )
        logger.warning(
            f"fit: training was interrupted after {result.epochs_run} of {epochs} epoch(s); returning the "
            f"model of the best epoch so far ({result.best_epoch}){how}"
        )


def _fitted_model(
    plan: _FitPlan, runs: list[_Run], sd, expr: _Expression, stain: np.ndarray | None
) -> STPredictModel:
    """Step 6: the :class:`STPredictModel` (the members' ensemble) with its reference bank of every spot.

    Patches, split sizes and history are the first member's.
    """
    from stpredict.models import STPredictModel
    from stpredict.models._ensemble import Ensemble

    _, module, recipe, parts, result = runs[0]
    if len(runs) > 1:
        module = Ensemble([run.module for run in runs])
    model = STPredictModel(
        plan.method,
        module,
        genes=expr.genes,
        normalization={"target_sum": expr.target_sum, "log1p": True},
        patch={
            "patch_size_um": plan.patch_size_um,
            "size": recipe.image_size,
            "tta": recipe.tta,
            "features": plan.image_features,
            "stain_target": None if stain is None else stain.tolist(),
            "slide_standardize": plan.slide_standardize,
        },
        history=result.history,
        training={
            "preset": plan.preset,
            **recipe.fingerprint(),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "n_train": parts.n_train,
            "n_val": parts.n_val,
            "seed": plan.seed,
            "device": plan.device,
            "checkpoint_dir": None if plan.checkpoint_dir is None else str(plan.checkpoint_dir),
            "interrupted": len(runs) < plan.n_members or any(bool(r.result.interrupted) for r in runs),
            "library_key": plan.library_key,
            "libraries": list(sd.libraries),
            **({"feature_views": plan.feature_views} if plan.feature_views > 1 else {}),
            **_members_record(plan, runs),
        },
    )
    model.set_bank(
        expr.values,
        library_id=np.asarray(sd.library_ids).astype(str),
        obs_names=np.asarray(sd.obs_names).astype(str),
        coords=parts.coords,
        device=plan.device,
    )
    inputs = (
        first_view(parts.features)
        if plan.image_features is not None
        else parts.central_patches(recipe.image_size, plan.patch_size_um)
    )
    model.retrieval.ood_reference = _ood_reference(model, inputs, plan.device)
    model.module.to("cpu")
    return model


def _members_record(plan: _FitPlan, runs: list[_Run]) -> dict[str, Any]:
    """``training["members"]``: each member's seed and epochs, for an ensemble."""
    if plan.n_members == 1:
        return {}
    return {
        "n_members": len(runs),
        "members": [
            {
                "seed": run.seed,
                "best_epoch": run.result.best_epoch,
                "epochs_run": run.result.epochs_run,
                "interrupted": bool(run.result.interrupted),
            }
            for run in runs
        ],
    }


def _ood_reference(model: STPredictModel, inputs: np.ndarray, device: str) -> dict[str, float]:
    """The training spots' image-to-bank similarity (themselves left out): the OOD yardstick.

    ``inputs``: the spots' patches, or their precomputed features for a ``backbone="features"`` model.
    """
    from stpredict.retrieval import ood_reference, topk_cosine

    assert model.bank is not None  # set just before
    keys = model.bank.embeddings
    k = min(model.retrieval.k, len(keys) - 1)
    if k < 1:
        return {"median": 1.0, "scale": 1.0}
    queries = model.embed_inputs(inputs, device=device, progress=False)
    idx, sims = topk_cosine(queries, keys, k + 1, device=device)
    not_self = idx != np.arange(len(idx))[:, None]
    rows = [s[m][:k] for s, m in zip(sims, not_self)]
    return ood_reference(np.stack(rows))

"""``stp.tl.predict``: expression of every spot from its H&E patch, by retrieval over the bank."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict._constants import WEIGHTINGS, Weighting, ood_key, std_key, truth_key
from stpredict._logging import logger
from stpredict._validation import (
    check_int,
    check_key,
    check_positive,
    check_smoothing,
    is_spatialdata,
    spatialdata_table,
)

from ._fit import last_model, model_expression, resolve_device
from ._results import (
    Result,
    add_table,
    as_anndata,
    check_key_writable,
    check_table_writable,
    entry,
    write_inplace,
)
from ._results import own_libraries as own_libraries  # re-exported for the CLI demo

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

    from stpredict.models import STPredictModel


def _resolve_model(model: Any) -> STPredictModel:
    from stpredict.models import STPredictModel

    if model is None:
        return last_model()
    if isinstance(model, str | os.PathLike):
        from stpredict.models import load

        return load(model)
    if not isinstance(model, STPredictModel):
        raise TypeError(
            "predict: `model` must be an STPredictModel or the folder of a saved one, "
            f"got {type(model).__name__}."
        )
    return model


def _has_spots(data: Any, table_key: str | None) -> bool:
    """Whether the input has spots to annotate (a non-empty table with spot positions)."""
    if is_spatialdata(data):
        return len(data.tables) > 0 and all(t.n_obs > 0 for t in data.tables.values())
    return getattr(data, "n_obs", 0) > 0 and "spatial" in getattr(data, "obsm", {})


def _clean(value: Any) -> Any:
    """``uns``-writable (h5ad / zarr) version of a parameter: no ``None``, plain Python types."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _model_summary(model: STPredictModel) -> dict[str, Any]:
    training = model.training
    return _clean(
        {
            "method": model.method,
            "preset": model.config.get("preset"),
            "n_genes": len(model.genes),
            "embedding_dim": int(model.embedding_dim),
            "bank_size": 0 if model.bank is None else len(model.bank.expression),
            "bank_libraries": [] if model.bank is None else sorted(set(model.bank.library_id.tolist())),
            "patch_size_um": model.patch.patch_size_um,
            "image_size": model.patch.size,
            "target_sum": model.normalization.target_sum,
            "epochs_run": training.get("epochs_run"),
            "best_epoch": training.get("best_epoch"),
            "interrupted": training.get("interrupted"),
        }
    )


def _table_of(data: Any, table_key: str | None) -> AnnData:
    """The input's AnnData (the table holding the spots of a SpatialData)."""
    if not is_spatialdata(data):
        return data
    return spatialdata_table(data, table_key, what="data")[1]


def predict(
    data: AnnData | SpatialData,
    model: STPredictModel | str | os.PathLike | None = None,
    *,
    k: int | None = None,
    weighting: Weighting | None = None,
    temperature: float | None = None,
    key_added: str = "stpredict",
    copy: bool = False,
    overwrite: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    library_key: str = "library_id",
    table_key: str | None = None,
    grid_spacing_um: float | None = None,
    uncertainty: bool = True,
    smooth: float = 0.0,
    smooth_radius: float = 1.5,
    progress: bool = True,
) -> AnnData | None:
    """Predict the expression of every spot from its H&E patch.

    Each spot's patch (the same physical size, pixel size and normalisation as in training) is
    embedded by the model's image encoder; the ``k`` reference-bank spots whose expression
    embeddings are most cosine-similar are retrieved (:func:`stpredict.retrieval.retrieve`) and
    their normalised expression is averaged (``weighting``). Works on slides with or without
    measured expression. A model fitted with ``stain_normalize=True`` first matches each slide's
    stain statistics to its training slides' (``model.patch["stain_target"]``); one fitted with
    ``slide_standardize=True`` standardises each slide's features on that slide's spots, so
    predict a slide's spots together, not a few at a time.

    Results (see the design page, "Writing results"):

    - ``obsm[key_added]``: DataFrame (index ``obs_names``, columns the model's genes), log-normalised
      predicted expression;
    - ``obsm[key_added + "_truth"]``: the measured expression of the same genes, normalised like
      the bank (the model's ``target_sum``, then ``log1p``), when the input has counts for all of them;
    - ``layers[key_added]`` when the model's genes equal ``var_names`` (as a set);
    - ``uns[key_added] = {"written_by": "stpredict", "params": {...}}``: method, k, weighting, genes,
      a summary of the model and a timestamp;
    - with ``uncertainty`` (default): ``obsm[key_added + "_std"]``, per spot and gene the standard
      deviation of the ``k`` retrieved spots' expression around the prediction (weighted like it),
      and ``obs[key_added + "_ood"]``, an out-of-distribution score per spot: how much less similar
      the spot's neighbours are than the training spots' own neighbours, in robust z units (about 0
      for familiar tissue, large for patches unlike anything in the bank). In a ``copy=True`` result
      the spread is ``layers[key_added + "_std"]`` and the score ``obs[key_added + "_ood"]``.

    An existing ``key_added`` written by stpredict is replaced with a warning; anything else under
    it raises unless ``overwrite=True``. Everything is validated before anything is written.

    For a SpatialData input a new table ``tables[key_added]`` is added, annotating the same shapes as
    the input table (same ``region``, ``region_key`` and ``instance_key``); it has the layout of a
    ``copy=True`` result (``X`` = prediction, ``layers["truth"]``).

    Parameters
    ----------
    data
        AnnData in the Visium convention, or a SpatialData object (images and a table of spots).
        With ``grid_spacing_um``, an input with images only (see below).
    model
        A fitted :class:`~stpredict.models.STPredictModel`, or the folder of a saved one; ``None``:
        the model fitted last in this session.
    k
        Bank spots retrieved per query; default: the model's (50 for CMRCNet), at most the bank size.
    weighting
        ``"mean"``, ``"inverse_distance2"`` (mclSTExp) or ``"softmax"``; default: the model's.
    temperature
        ``τ`` of ``weighting="softmax"``: weights ``∝ exp(cosine similarity / τ)``; default: the
        model's (1 when it has none, which is close to a plain mean).
    key_added
        Where results are written.
    copy
        Return a new AnnData instead of writing into ``data``: ``X`` = prediction (float32,
        ``var_names`` = the model's genes), ``obs``, ``obsm["spatial"]`` and ``uns["spatial"]``
        carried over, ``layers["truth"]`` when the truth is known, and ``uns[key_added]`` with
        ``params["copy"] = True``. Ready for ``sc.pp.pca`` / ``sc.pp.neighbors`` / ``sc.tl.leiden``.
    overwrite
        Replace entries under ``key_added`` that stpredict did not write.
    batch_size
        Patches embedded per forward pass; ``None``: 256 on a GPU, fewer for large patches on a
        CPU (:meth:`~stpredict.models.STPredictModel.embed_images`).
    device
        ``"auto"`` (``stp.settings.device``: CUDA, then MPS, then CPU) or a torch device name.
    library_key
        Column of ``obs`` telling slides apart.
    table_key
        SpatialData: the table with the spots (default: the only one).
    grid_spacing_um
        Predict on a regular grid of pseudo-spots this far apart (µm) over the tissue
        (:func:`stpredict.tl._grid.grid_spots`) instead of the input's spots, e.g. for an H&E image
        without spots. There is nothing to annotate in place then, so a new AnnData is returned,
        as with ``copy=True``.
    uncertainty
        Also write the spread of the retrieved spots and the out-of-distribution score (see above).
    smooth
        Spatial smoothing weight ``α`` in ``[0, 1]``: each spot's prediction becomes
        ``(1 − α)·own + α·mean of its neighbours`` (spots of the same slide within
        ``smooth_radius`` spot pitches; pitch: the slide's median nearest-spot distance). ``0``
        (default): off. The spread and the OOD score stay those of the spot's own retrieval. On
        her2st C2–C5 (leave one section out, image-feature k-NN) ``α = 0.5`` raised HEG r from
        0.276 to 0.302 (``benchmarks/her2st_smoothing.py``); it blurs sharp boundaries.
    smooth_radius
        Neighbourhood of ``smooth`` in spot pitches (1.5: the 8 nearest on a square grid, the 6
        nearest on a hexagonal one).
    progress
        Show progress bars.

    Returns
    -------
    ``None`` (results written into ``data``), or the new AnnData with ``copy=True`` or
    ``grid_spacing_um``.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, n_genes=40)
    >>> train = adata[adata.obs["library_id"] == "slide0"].copy()
    >>> test = adata[adata.obs["library_id"] == "slide1"].copy()
    >>> model = stp.tl.fit(train, preset="tiny", epochs=1, progress=False)
    >>> stp.tl.predict(test, model, k=5, progress=False)
    >>> test.obsm["stpredict"].shape == (test.n_obs, len(model.genes))
    True
    """
    from stpredict.data import SpotData

    # ---- validate the input and the arguments before loading the model or computing anything
    check_key(key_added, what="predict: `key_added`")
    if batch_size is not None:
        check_int(batch_size, what="predict: `batch_size`")
    smooth, smooth_radius = check_smoothing(smooth, smooth_radius, what="predict")
    if weighting is not None and weighting not in WEIGHTINGS:
        raise ValueError(f"predict: `weighting` must be one of {WEIGHTINGS}, got {weighting!r}.")
    if temperature is not None:
        check_positive(temperature, what="predict: `temperature`")
    dev = resolve_device(device)
    if grid_spacing_um is not None:
        from ._grid import grid_spots

        data = grid_spots(data, spacing_um=grid_spacing_um, library_key=library_key)
        copy, table_key = True, None
        logger.info(f"predict: {data.n_obs} pseudo-spots {grid_spacing_um:g} µm apart (grid)")
    elif not _has_spots(data, table_key):
        raise ValueError(
            "predict: the input has no spots (no table, or no obsm['spatial']); pass `grid_spacing_um=` to "
            "predict on a grid of pseudo-spots over the tissue."
        )
    sdata_out = is_spatialdata(data) and not copy
    table = _table_of(data, table_key)
    if sdata_out:
        check_table_writable(data, key_added, overwrite)
    elif not copy:
        check_key_writable(table, key_added, overwrite=overwrite)
    sd = SpotData.from_object(data, library_key=library_key, table_key=table_key)
    obs_names = pd.Index(sd.obs_names)

    model = _resolve_model(model)
    k, weighting = _retrieval_settings(model, k, weighting)
    if temperature is None:
        temperature = 1.0 if model.retrieval.temperature is None else model.retrieval.temperature

    # ---- truth: the model genes' counts, normalised like the bank
    truth = None
    if sd.counts is not None and sd.var_names is not None and sd.counts.shape[1] > 0:
        truth, missing = model_expression(model, sd)
        if missing:
            logger.info(f"predict: the data lacks {len(missing)} of the model's genes; no truth written")

    # ---- embed, retrieve, write
    result = _retrieve(
        model, sd, data, obs_names, truth, (k, weighting, temperature), dev, batch_size, uncertainty, progress
    )
    if smooth > 0:
        result = _smoothed(result, sd, smooth, smooth_radius)
    params = _clean(
        {
            "method": model.method,
            "k": int(k),
            "weighting": weighting,
            "temperature": float(temperature),
            "genes": list(model.genes),
            "n_spots": int(len(obs_names)),
            "library_key": library_key,
            "truth": truth is not None,
            "uncertainty": result.std is not None,
            "ood": result.ood is not None,
            "copy": bool(copy),
            "grid_spacing_um": None if grid_spacing_um is None else float(grid_spacing_um),
            "smooth": smooth,
            "smooth_radius": smooth_radius if smooth > 0 else None,
            "model": _model_summary(model),
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    return _write_result(data, table, sd, result, key_added, entry(params), copy=copy, sdata_out=sdata_out)


def _smoothed(result: Result, sd, alpha: float, radius: float) -> Result:
    """The prediction smoothed over the spot graph (:func:`stpredict.tl._smooth.spatial_smooth`)."""
    from ._smooth import spatial_smooth

    pred = result.prediction
    values = spatial_smooth(pred.to_numpy(), sd.centers, sd.library_ids, alpha=alpha, radius=radius)
    logger.info(f"predict: prediction smoothed over neighbours within {radius:g} spot pitches (α={alpha:g})")
    return replace(result, prediction=pd.DataFrame(values, index=pred.index, columns=pred.columns))


def _image_input(model, sd, data) -> Any:
    """The spots' patches, or their precomputed features for a model fitted with ``image_features``."""
    if model.patch.stain_target is not None:
        from stpredict.data._stain import stain_matched

        target = np.asarray(model.patch.stain_target, np.float32)
        sd = stain_matched(sd, target, patch_size_um=model.patch.patch_size_um)
        logger.info(f"predict: stain of {len(sd.libraries)} slide(s) matched to the model's training slides")
    key = model.patch.features
    if key:
        from stpredict.data._features import slide_standardized, spot_features

        features = spot_features(sd, key, data, what="predict", patch_size_um=model.patch.patch_size_um)
        if not model.patch.slide_standardize:
            return features
        logger.info(f"predict: features of each of {len(sd.libraries)} slide(s) standardised on its spots")
        return slide_standardized(features, sd.library_ids, what="predict")
    from stpredict.data import SlidePatches

    # read batch by batch while embedding: memory is bounded by the batch, not the slide
    return SlidePatches(sd, patch_size_um=model.patch.patch_size_um, size=model.patch.size)


def _retrieve(
    model, sd, data, obs_names, truth, settings, device, batch_size, uncertainty, progress
) -> Result:
    """Embed the spots' patches and retrieve their expression (and spread, OOD score) from the bank.

    ``settings``: ``(k, weighting, temperature)``.
    """
    from stpredict.retrieval import ood_score, retrieve

    k, weighting, temperature = settings

    queries = model.embed_inputs(
        _image_input(model, sd, data), batch_size=batch_size, device=device, progress=progress
    )
    model.module.to("cpu")
    found = retrieve(
        queries,
        model.bank.embeddings,
        model.bank.expression,
        int(k),
        weighting=weighting,
        temperature=float(temperature),
        device=device,
        spread=uncertainty,
    )
    genes = pd.Index(model.genes)

    def frame(values):
        return (
            None
            if values is None
            else pd.DataFrame(np.asarray(values, np.float32), index=obs_names, columns=genes)
        )

    reference = model.retrieval.ood_reference
    ood = None
    if uncertainty and reference:
        ood = pd.Series(ood_score(found.similarities, reference), index=obs_names)
    elif uncertainty:
        logger.info("predict: the model has no OOD reference (saved by an older stpredict); no OOD score")
    return Result(frame(found.prediction), frame(truth), frame(found.spread), ood)


def _write_result(
    data, table, sd, result: Result, key: str, result_entry: dict, *, copy: bool, sdata_out: bool
):
    """In place, as a new AnnData, or as a new SpatialData table; log what went where."""
    libs = ", ".join(map(str, sd.libraries))
    n, g = result.prediction.shape
    if copy or sdata_out:
        out = as_anndata(table, sd, result, key, result_entry)
        if sdata_out:
            return add_table(data, table, out, key, libs)
        logger.info(f"predict: {n} spots x {g} genes from {libs} → new AnnData")
        return out
    write_inplace(table, result, key, result_entry)
    written = [f"obsm[{key!r}]"]
    written += [f"obsm[{name!r}]" for name in (truth_key(key), std_key(key)) if name in table.obsm]
    written += [f"layers[{key!r}]"] if key in table.layers else []
    written += [f"obs[{ood_key(key)!r}]"] if ood_key(key) in table.obs else []
    logger.info(f"predict: {n} spots x {g} genes from {libs} → {', '.join(written)}, uns[{key!r}]")
    return None


def _retrieval_settings(model, k, weighting) -> tuple[int, Weighting]:
    """``k`` and ``weighting`` checked against the model (``None``: the model's own)."""
    if model.bank is None:
        raise ValueError("predict: the model has no reference bank; fit it with `stp.tl.fit`.")
    n_bank = len(model.bank.expression)
    if k is None:
        k = model.retrieval.k
        if k > n_bank:
            logger.warning(
                f"predict: the model's k={k} exceeds its bank of {n_bank} spots; using k={n_bank}."
            )
            k = n_bank
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"predict: `k` must be a positive integer, got {k!r}.")
    if k > n_bank:
        raise ValueError(f"predict: k={k} is larger than the model's reference bank ({n_bank} spots).")
    return int(k), model.retrieval.weighting if weighting is None else weighting

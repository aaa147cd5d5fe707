"""``stp.tl.cross_validate``: slide-level cross-validation of methods and baselines."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict._constants import GENE_SETS
from stpredict._logging import logger
from stpredict._validation import check_int, check_not_set, check_obs_column, check_positive, check_smoothing
from stpredict.data._features import slide_standardized

from ._runners import _KEY, BASELINES, Fold, MethodRunner, Runner

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from stpredict._constants import Baseline, GeneSet, Method, Weighting
    from stpredict.data import SpotData
    from stpredict.models import STPredictModel

_GENE_SETS = GENE_SETS
_PER_GENE_COLUMNS = ["method", "fold", "library_id", "gene_set", "gene", "pearson_r", "mse", "mae"]


# --------------------------------------------------------------------------------------------
# result object
# --------------------------------------------------------------------------------------------
def _fmt(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not np.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass
class CrossValidationResult:
    """Result of :func:`stpredict.tl.cross_validate`.

    Attributes
    ----------
    per_gene
        Tidy table, one row per method, fold, held-out slide, gene set and gene: ``method``,
        ``fold``, ``library_id``, ``gene_set``, ``gene``, ``pearson_r``, ``mse``, ``mae``.
    per_fold
        Mean Pearson r per ``method``, ``fold`` and ``gene_set``: the mean over the genes of the
        set per held-out slide, then over the fold's slides (column ``pearson_r``; ``n_slides``).
    summary
        Table-1 layout: rows = methods and baselines, columns = gene sets; the mean over folds
        of :attr:`per_fold`.
    summary_std
        Standard deviation over folds (``NaN`` with a single fold), same layout as ``summary``.
    folds
        Held-out slides (values of ``groups``) of each fold.
    genes
        The genes every fold and method was trained and evaluated on.
    timings
        Seconds per ``method`` and ``fold`` for ``fit`` and ``predict`` (baselines: ``predict``).
    models
        ``{(method, fold): STPredictModel}`` when ``keep_models=True``, else empty.
    params
        The arguments of the run.
    """

    per_gene: pd.DataFrame
    per_fold: pd.DataFrame
    summary: pd.DataFrame
    summary_std: pd.DataFrame
    folds: list[list[str]]
    genes: list[str]
    timings: pd.DataFrame
    models: dict[tuple[str, int], STPredictModel] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def table(self, digits: int = 4) -> pd.DataFrame:
        """The summary as strings ``"mean ± std"`` (rows methods, columns gene sets in upper case)."""
        out = pd.DataFrame(index=self.summary.index)
        for col in self.summary.columns:
            out[col.upper() if col in _GENE_SETS else col] = [
                _fmt(m, s, digits) for m, s in zip(self.summary[col], self.summary_std[col])
            ]
        out.index.name = "method"
        return out

    def to_markdown(self, digits: int = 4) -> str:
        """Markdown table of the summary: mean Pearson r over slides then folds, ± std over folds.

        Examples
        --------
        >>> print(res.to_markdown())  # doctest: +SKIP
        | method | HEG | HVG |
        | --- | --- | --- |
        | cmrcnet | 0.3120 ± 0.0210 | 0.3010 ± 0.0150 |
        """
        tab = self.table(digits)
        header = ["method", *tab.columns]
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
        for name, row in tab.iterrows():
            lines.append("| " + " | ".join([str(name), *row.astype(str)]) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (means, standard deviations, per-fold numbers, folds, genes, timings)."""

        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and not np.isfinite(x) else x

        return {
            "summary": {
                m: {s: clean(float(v)) for s, v in row.items()} for m, row in self.summary.iterrows()
            },
            "summary_std": {
                m: {s: clean(float(v)) for s, v in row.items()} for m, row in self.summary_std.iterrows()
            },
            "per_fold": [
                {k: (clean(v) if isinstance(v, float) else v) for k, v in rec.items()}
                for rec in self.per_fold.to_dict(orient="records")
            ],
            "folds": [list(map(str, f)) for f in self.folds],
            "genes": list(self.genes),
            "timings": self.timings.to_dict(orient="records"),
            "params": self.params,
        }

    def __repr__(self) -> str:
        n_methods = len(self.summary.index)
        head = (
            f"CrossValidationResult: {len(self.folds)} folds, {n_methods} methods/baselines, "
            f"{len(self.genes)} genes; mean Pearson r over slides then folds (± std over folds)\n"
        )
        return head + self.table().to_string()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _parse_methods(method: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """``"cmrcnet"`` / list / mapping label → method or (method, kwargs) → {label: (method, kwargs)}."""
    from stpredict.models import METHODS

    if isinstance(method, str):
        method = [method]
    if isinstance(method, Mapping):
        items = list(method.items())
    elif isinstance(method, Sequence):
        items = [(m, m) for m in method]
    else:
        raise TypeError(
            f"`method` must be a method name, a list of names or a mapping label → name or (name, kwargs); "
            f"got {type(method).__name__}."
        )
    if not items:
        raise ValueError("`method` is empty; expected at least one method.")
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for label, spec in items:
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, Sequence) and len(spec) == 2 and isinstance(spec[1], Mapping):
            name, kwargs = spec[0], dict(spec[1])
        else:
            raise TypeError(
                f"`method[{label!r}]` must be a method name or a (name, kwargs) pair, got {spec!r}."
            )
        if name not in METHODS:
            raise ValueError(f"Unknown method {name!r} (for {label!r}); expected one of {sorted(METHODS)}.")
        label = str(label)
        if label in out or label in BASELINES or label.startswith("oracle"):
            raise ValueError(f"Method label {label!r} is duplicated or clashes with a baseline name.")
        out[label] = (name, kwargs)
    return out


def _make_folds(groups: np.ndarray, n_folds: int | None, seed: int) -> list[list[str]]:
    """Slide-level folds: leave one group out up to 5 groups, else min(n, 5) (or n_folds) folds."""
    uniq = list(pd.unique(groups))
    n = len(uniq)
    if n < 2:
        raise ValueError(f"Cross-validation needs at least 2 groups (slides), found {n}: {uniq}.")
    if n_folds is None:
        n_folds = min(n, 5)
    if not isinstance(n_folds, int | np.integer) or isinstance(n_folds, bool) or not 2 <= n_folds <= n:
        raise ValueError(
            f"`n_folds` must be an integer between 2 and the number of groups ({n}), got {n_folds!r}."
        )
    if n_folds == n:  # leave one out, in order of appearance
        return [[str(g)] for g in uniq]
    order = np.random.default_rng(seed).permutation(n)
    return [[str(uniq[i]) for i in sorted(part)] for part in np.array_split(order, n_folds)]


def _subset(adata: AnnData, mask: np.ndarray, library_key: str) -> AnnData:
    """A light AnnData of some spots that shares (does not copy) the slide images."""
    import anndata as ad

    data: Any = adata  # anndata 0.13 types X/obs as unions of backed formats

    obs = data.obs.loc[mask].copy()
    for col in obs.columns:
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            obs[col] = obs[col].cat.remove_unused_categories()
    libs = set(obs[library_key].astype(str)) if library_key in obs else set()
    uns = {k: v for k, v in data.uns.items() if k != "spatial"}
    if "spatial" in data.uns:
        uns["spatial"] = {lib: v for lib, v in data.uns["spatial"].items() if lib in libs or not libs}
    return ad.AnnData(
        X=data.X[mask],
        obs=obs,
        var=data.var.copy(),
        obsm={key: value[mask] for key, value in data.obsm.items()},
        layers={
            key: data.layers[key][mask] for key in data.layers if key is not None
        },  # 0.13: X is layers[None]
        uns=uns,
    )


def _arrays_adata(pred: np.ndarray, truth: pd.DataFrame, libraries: pd.Series) -> AnnData:
    """A minimal ``copy=True``-style result so baselines go through :func:`stp.tl.evaluate`."""
    from ._results import arrays_result

    return arrays_result(pred, truth, libraries, _KEY, {})


def _evaluate(adata: AnnData, sets: dict[str, Any], n_genes: int, label: str, fold: int) -> pd.DataFrame:
    from ._evaluate import evaluate

    table = evaluate(adata, key=_KEY, genes=sets, n_genes=n_genes, library_key="library_id")
    table.insert(0, "fold", fold)
    table.insert(0, "method", label)
    return table


def _accepts(func: Any, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class _FeatureCache:
    """Hand-made image features per spot, extracted once per slide and reused across folds/methods.

    With a stain target (the reference model was fitted with ``stain_normalize=True``) the
    features are those of the slide's patches matched to that target, as the model saw them;
    they are cached per (slide, target).
    """

    def __init__(self, adata: AnnData, library_key: str, spot_kwargs: dict[str, Any], key: str = "handmade"):
        self.adata, self.library_key, self.spot_kwargs, self.key = adata, library_key, spot_kwargs, key
        self.features: dict[tuple[str, tuple[float, ...] | None], np.ndarray] = {}
        self.stain_stats: dict[str, np.ndarray] = {}
        self.patch_size_um: float | None = None
        self._spots: SpotData | None = None
        self._rows: np.ndarray | None = None

    def get(
        self,
        obs_names: Sequence[str],
        patch_size_um: float,
        stain_target: Any = None,
        *,
        per_slide: bool = False,
    ) -> np.ndarray:
        """Features of the spots ``obs_names`` (rows in that order).

        ``per_slide``: each slide's features standardised on all its spots (as ``fit`` and
        ``predict`` do with ``slide_standardize=True``).
        """
        if self.patch_size_um is not None and patch_size_um != self.patch_size_um:
            self.features.clear()  # a method with another patch size: recompute
            self.stain_stats.clear()
        self.patch_size_um = patch_size_um
        sd = self._spot_data()
        names = pd.Index(np.asarray(obs_names).astype(str))
        pos = sd.obs_names.astype(str).get_indexer(names)
        if (pos < 0).any():
            raise KeyError(
                f"image_knn: spots {list(names[pos < 0][:5])} are not in the cross-validated data."
            )
        target = None if stain_target is None else np.asarray(stain_target, np.float32)
        tag = None if target is None else tuple(np.round(target.ravel(), 6).tolist())
        needed = pd.unique(sd.library_ids[pos])
        for lib in needed:
            if (lib, tag) not in self.features:
                self.features[lib, tag] = self._slide_features(lib, patch_size_um, target)
        out = np.empty((len(pos), self.features[needed[0], tag].shape[1]), dtype=np.float32)
        row = self._row_in_slide()
        for lib in needed:
            sel = sd.library_ids[pos] == lib
            block = self.features[lib, tag]
            if per_slide:
                block = slide_standardized(block, np.repeat(lib, len(block)), what="cross_validate")
            out[sel] = block[row[pos[sel]]]
        return out

    def _row_in_slide(self) -> np.ndarray:
        """Each spot's row among its slide's spots (the row of its slide's feature block)."""
        if self._rows is None:
            codes = pd.factorize(self._spot_data().library_ids)[0]
            self._rows = pd.Series(codes).groupby(codes).cumcount().to_numpy()
        return self._rows

    def _spot_data(self) -> SpotData:
        from stpredict.data import SpotData

        if self._spots is None:
            self._spots = SpotData.from_object(self.adata, library_key=self.library_key, **self.spot_kwargs)
        return self._spots

    def _slide_features(self, lib: str, size: float, target: np.ndarray | None) -> np.ndarray:
        """``(n_lib, F)`` features of slide ``lib``'s spots (in their order).

        Patches of ``size`` µm, stain-matched to ``target`` when one is given.
        """
        from stpredict.data._features import spot_features
        from stpredict.data._stain import slide_stain_stats, stain_matched

        sd = self._spot_data()
        idx = np.flatnonzero(sd.library_ids == lib)
        t0 = time.perf_counter()
        slide = sd.subset(idx)
        if target is not None:
            if lib not in self.stain_stats:  # the same statistics fit and predict compute
                self.stain_stats.update(slide_stain_stats(slide, patch_size_um=size))
            slide = stain_matched(slide, target, patch_size_um=size, stats={lib: self.stain_stats[lib]})
        feats = spot_features(slide, self.key, self.adata, what="cross_validate", patch_size_um=size)
        matched = "" if target is None else ", stain-matched to the fold's training slides"
        logger.info(
            f"cross_validate: image features of slide {str(lib)!r} ({len(idx)} spots{matched}) "
            f"in {time.perf_counter() - t0:.1f} s."
        )
        return np.asarray(feats, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# cross_validate
# --------------------------------------------------------------------------------------------
def cross_validate(
    data: AnnData,
    *,
    groups: str = "library_id",
    n_folds: int | None = None,
    method: Method | Sequence[str] | Mapping[str, Any] = "cmrcnet",
    k: int = 50,
    weighting: Weighting | None = None,
    temperature: float | None = None,
    baselines: Sequence[Baseline] = ("random", "oracle", "image_knn"),
    baseline_features: str = "handmade",
    gene_sets: Sequence[GeneSet] = ("heg", "hvg"),
    markers: Sequence[str] | None = None,
    n_genes: int = 50,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    seed: int = 0,
    smooth: float = 0.0,
    smooth_radius: float = 1.5,
    keep_models: bool = False,
    progress: bool = True,
    **fit_kwargs: Any,
) -> CrossValidationResult:
    """Cross-validate methods and baselines at the slide level.

    For each fold, every method is fitted (:func:`stpredict.tl.fit`) on the training slides,
    predicts the held-out slide(s) (:func:`stpredict.tl.predict` with ``copy=True``) and is
    evaluated per held-out slide (:func:`stpredict.tl.evaluate`: per-gene Pearson r over the
    slide's own top-``n_genes`` HEG/HVG and optional markers). The baselines run on the same
    fold, reference bank (the fitted model's), genes and ``k``:

    - ``"random"``: the mean of ``k`` random bank spots (floor, r ≈ 0);
    - ``"oracle"``: retrieval with the embedding of the *true* held-out expression, per fitted
      method (``"oracle (cmrcnet)"``; the ceiling for retrieval with that bank and ``k``);
    - ``"image_knn"``: k-NN on hand-made colour/texture features
      (:class:`stpredict.baselines.ImageFeatureKNN`) of the same training patches (stain-matched
      like the model's when the first method is fitted with ``stain_normalize=True``, and on the
      model's number of principal axes when it reads the same features with
      ``feature_components``);
    - ``"image_ridge"``: PCA + ridge regression on those features
      (:class:`stpredict.baselines.ImageFeatureRidge`).

    Folds follow the papers: leave one slide out when there are at most 5 slides, else 5 folds
    of slides (``n_folds`` to choose). **Genes are selected once on all slides**
    (:func:`stpredict.pp.select_genes`, union of per-slide HVGs detected in every slide) so that
    every fold and method uses the same gene list; this peeks at the held-out slides' gene
    variability (not their images), as the authors' pipelines do. Pass ``genes`` to fix the list.

    Parameters
    ----------
    data
        AnnData (Visium convention, see :doc:`/design`) with raw counts and several slides.
    groups
        ``obs`` column whose values are kept together in a fold (slides; or patients, to keep all
        sections of a patient together).
    n_folds
        Number of folds; default ``min(n_groups, 5)`` (leave one out up to 5 groups).
    method
        A method name (:data:`stpredict.models.METHODS`), a list of names, or a mapping
        label → name or ``(name, model_kwargs)`` to compare variants, e.g.
        ``{"cmrcnet": "cmrcnet", "contrastive only": ("cmrcnet", {"reconstruction": None})}``.
        All run on the same genes, folds and ``k``.
    k
        Reference spots retrieved per query, for every method and baseline.
    weighting
        Aggregation of the ``k`` spots for the methods and the oracle; ``None``: each model's default.
    temperature
        ``τ`` of ``weighting="softmax"`` (see :func:`stpredict.tl.predict`); ``None``: each model's.
    baselines
        Any of ``"random"``, ``"oracle"``, ``"image_knn"``, ``"image_ridge"``.
    baseline_features
        The image features of ``"image_knn"`` / ``"image_ridge"``: ``"handmade"`` (colour/texture
        features of each spot's patch), ``"handmade_context"`` (plus a 3× wider patch),
        ``"texture"`` (:func:`stpredict.baselines.texture_features` of the patch and a 2× wider
        one), or an ``obsm`` key of precomputed embeddings (as for ``fit(image_features=...)``).
    gene_sets
        Gene sets to report: ``"heg"``, ``"hvg"`` (chosen per held-out slide) and/or ``"all"``.
    markers
        Marker genes reported as the set ``"markers"``; added to the selected genes when missing.
    n_genes
        Size of the HEG/HVG sets (50 in the papers).
    genes
        Genes to train and evaluate on (default: selected once, see above).
    n_top_genes
        HVGs per slide for the gene selection.
    seed
        Seed of fold assignment, training (``fit(seed=...)``) and the random baseline.
    smooth, smooth_radius
        Spatial smoothing of every row's predictions (methods, oracle and baselines alike), as
        ``stp.tl.predict(..., smooth=, smooth_radius=)`` does: each held-out spot's prediction
        becomes ``(1 - smooth) * own + smooth * mean of its neighbours`` within ``smooth_radius``
        spot pitches on its slide. ``0``: off.
    keep_models
        Keep the fitted models in ``result.models`` (memory!).
    progress
        Progress bar over folds (the inner fits and predictions run without bars).
    **fit_kwargs
        Passed to every :func:`stpredict.tl.fit` (e.g. ``preset``, ``epochs``, ``batch_size``,
        ``device``, ``library_key``, ``layer``, ``patch_size_um``); per-method ``model_kwargs``
        from ``method`` are added.

    Returns
    -------
    :class:`~stpredict.tl._cv.CrossValidationResult` with ``per_gene``, ``per_fold``, ``summary``
    (methods × gene sets, mean over slides then folds), ``summary_std`` (over folds),
    ``to_markdown()``.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=3, n_spots_per_side=8, n_genes=40)
    >>> res = stp.tl.cross_validate(
    ...     adata, method=["cmrcnet", "bleep"], preset="tiny", epochs=2, k=10, n_genes=10
    ... )  # doctest: +SKIP
    >>> res.summary  # doctest: +SKIP
    >>> print(res.to_markdown())  # doctest: +SKIP
    """
    library_key = fit_kwargs.get("library_key", "library_id")
    if not (hasattr(data, "obs") and hasattr(data, "X")):
        raise TypeError(
            f"`data` must be an AnnData with several slides, got {type(data).__name__} "
            "(for a SpatialData, cross-validate its table with the images in uns['spatial'])."
        )
    check_obs_column(data, groups, what="groups")
    check_obs_column(data, library_key, what="library_key")
    check_int(k, what="cross_validate: `k`")
    smooth, smooth_radius = check_smoothing(smooth, smooth_radius, what="cross_validate")
    if temperature is not None:
        temperature = check_positive(temperature, what="cross_validate: `temperature`")
    check_not_set(fit_kwargs, ("genes", "method", "seed", "progress", "copy"), what="cross_validate")
    methods = _parse_methods(method)
    baseline_names = _parse_baselines(baselines)
    sets = _gene_sets(data, gene_sets, markers)
    group_values = data.obs[groups].astype(str).to_numpy()
    folds = _make_folds(group_values, n_folds, seed)
    gene_list = _cv_genes(data, genes, sets.get("markers"), n_top_genes, library_key, fit_kwargs.get("layer"))
    logger.info(
        f"cross_validate: {len(folds)} folds over {len(pd.unique(group_values))} groups ({groups!r}), "
        f"{len(gene_list)} genes, methods {list(methods)}, baselines {list(baseline_names)}, k={k}."
    )
    spot_kwargs = {key: fit_kwargs[key] for key in ("table_key",) if key in fit_kwargs}
    models: dict[tuple[str, int], Any] = {}
    runners = _build_runners(
        methods, baseline_names, {**fit_kwargs, "genes": gene_list}, (weighting, temperature),
        _FeatureCache(data, library_key, spot_kwargs, baseline_features),
        keep=(lambda label, fold, model: models.__setitem__((label, fold), model)) if keep_models else None,
    )  # fmt: skip
    from stpredict._progress import progress as progress_bar

    tables, timings = [], []
    for index, held_out in enumerate(
        progress_bar(folds, desc="cross-validation folds", unit="fold", enabled=progress)
    ):
        test_mask = np.isin(group_values, held_out)
        fold = Fold(
            index, held_out, _subset(data, ~test_mask, library_key), _subset(data, test_mask, library_key),
            k=int(k), seed=seed, library_key=library_key, spot_kwargs=spot_kwargs,
            smooth=smooth, smooth_radius=smooth_radius,
        )  # fmt: skip
        table, times = _run_fold(fold, runners, sets, n_genes)
        tables.append(table)
        timings += times
        _log_fold(table, fold, len(folds))

    per_gene = pd.concat(tables, ignore_index=True)[_PER_GENE_COLUMNS]
    params = {
        "groups": groups,
        "n_folds": len(folds),
        "method": {label: {"method": m, "model_kwargs": kw} for label, (m, kw) in methods.items()},
        "k": int(k),
        "weighting": weighting,
        "temperature": temperature,
        "baselines": list(baseline_names),
        "gene_sets": list(sets),
        "n_genes": int(n_genes),
        "n_top_genes": int(n_top_genes),
        "seed": seed,
        "smooth": smooth,
        "smooth_radius": smooth_radius if smooth > 0 else None,
        "fit_kwargs": {
            key: (v if isinstance(v, str | int | float | bool | None) else repr(v))
            for key, v in fit_kwargs.items()
        },
    }
    return _assemble(per_gene, folds, gene_list, timings, models, params)


def _parse_baselines(baselines: str | Sequence[str] | None) -> tuple[str, ...]:
    baselines = (baselines,) if isinstance(baselines, str) else tuple(baselines or ())
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"Unknown baselines {bad}; expected any of {tuple(BASELINES)}.")
    return baselines


def _gene_sets(data: AnnData, gene_sets: str | Sequence[str], markers: Any) -> dict[str, Any]:
    """``{name: "heg" | "hvg" | "all" | [marker genes]}``, the sets :func:`evaluate` reports."""
    if isinstance(gene_sets, str):
        gene_sets = (gene_sets,)
    bad = [s for s in gene_sets if s not in _GENE_SETS]
    if bad:
        raise ValueError(f"Unknown gene sets {bad}; expected any of {_GENE_SETS} (markers via `markers=`).")
    sets: dict[str, Any] = {s: s for s in gene_sets}
    if markers is not None:
        markers = [str(g) for g in ([markers] if isinstance(markers, str) else markers)]
        missing = [g for g in markers if g not in data.var_names]
        if missing:
            raise KeyError(f"Marker genes {missing} are not in data.var_names.")
        if markers:
            sets["markers"] = markers
    if not sets:
        raise ValueError("No gene set to evaluate: give `gene_sets` and/or `markers`.")
    return sets


def _cv_genes(
    data: AnnData,
    genes: Sequence[str] | None,
    markers: list[str] | None,
    n_top_genes: int,
    library_key: str,
    layer: str | None,
) -> list[str]:
    """The genes of every fold: ``genes`` as given, or selected once on all slides (+ markers)."""
    from stpredict import pp

    if genes is not None:
        return [
            str(g) for g in pp.select_genes(data, library_key=library_key, genes=list(genes), layer=layer)
        ]
    gene_list = pp.select_genes(data, n_top_genes=n_top_genes, library_key=library_key, layer=layer)
    extra = [g for g in markers or () if g not in gene_list]
    if extra:
        logger.info(f"cross_validate: adding {len(extra)} marker genes to the selected genes: {extra}.")
        gene_list = [g for g in data.var_names if g in set(gene_list) | set(extra)]
    return [str(g) for g in gene_list]


def _build_runners(
    methods: dict[str, tuple[str, dict[str, Any]]],
    baselines: tuple[str, ...],
    fit_kwargs: dict[str, Any],
    retrieval: tuple[Weighting | None, float | None],
    features: _FeatureCache,
    *,
    keep: Any,
) -> list[Runner]:
    """The methods (each with its oracle when asked), then the baselines of :data:`BASELINES`."""
    runners: list[Runner] = [
        MethodRunner(label, name, {**fit_kwargs, **kwargs}, *retrieval, "oracle" in baselines, keep)
        for label, (name, kwargs) in methods.items()
    ]
    for name in baselines:
        build = BASELINES[name]
        if build is not None:
            runners.append(build(features))
    return runners


def _run_fold(
    fold: Fold, runners: list[Runner], sets: dict[str, Any], n_genes: int
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Every runner on one fold: the per-gene table and the timings."""
    tables, timings = [], []
    for runner in runners:
        for pred in runner.fit_predict(fold):
            result = _arrays_adata(fold.smoothed(pred.values), fold.truth, fold.libraries)
            tables.append(_evaluate(result, sets, n_genes, pred.label, fold.index))
            timings.append(
                {"method": pred.label, "fold": fold.index, "fit_s": pred.fit_s, "predict_s": pred.predict_s}
            )
    fold.first_model = None  # frees the bank of the fold
    return pd.concat(tables, ignore_index=True), timings


def _log_fold(table: pd.DataFrame, fold: Fold, n_folds: int) -> None:
    means = table.groupby(["method", "gene_set", "library_id"], sort=False)["pearson_r"].mean()
    means = means.groupby(level=["method", "gene_set"], sort=False).mean().unstack("gene_set")
    logger.info(
        f"cross_validate: fold {fold.index + 1}/{n_folds} (held out {fold.held_out}): "
        f"mean r\n{means.round(4).to_string()}"
    )


def _assemble(
    per_gene: pd.DataFrame,
    folds: list[list[str]],
    genes: list[str],
    timings: list[dict[str, Any]],
    models: dict[tuple[str, int], Any],
    params: dict[str, Any],
) -> CrossValidationResult:
    """Per-fold and summary tables from the tidy per-gene table."""
    order = list(pd.unique(per_gene["method"]))
    set_order = list(pd.unique(per_gene["gene_set"]))
    per_slide = per_gene.groupby(["method", "fold", "gene_set", "library_id"], sort=False)["pearson_r"].mean()
    per_fold = (
        per_slide.groupby(level=["method", "fold", "gene_set"], sort=False)
        .agg(pearson_r="mean", n_slides="size")
        .reset_index()
    )
    by = per_fold.groupby(["method", "gene_set"], sort=False)["pearson_r"]
    summary = by.mean().unstack("gene_set").reindex(index=order, columns=set_order)
    summary_std = by.std(ddof=1).unstack("gene_set").reindex(index=order, columns=set_order)
    for df in (summary, summary_std):
        df.columns.name = "gene_set"
        df.index.name = "method"
    return CrossValidationResult(
        per_gene=per_gene,
        per_fold=per_fold,
        summary=summary,
        summary_std=summary_std,
        folds=folds,
        genes=genes,
        timings=pd.DataFrame(timings, columns=["method", "fold", "fit_s", "predict_s"]),
        models=models,
        params=params,
    )

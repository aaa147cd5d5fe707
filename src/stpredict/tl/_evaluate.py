"""``stp.tl.evaluate``: per-slide, per-gene-set Pearson r (and errors) of predicted expression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stpredict import metrics
from stpredict._constants import GENE_SETS, WRITTEN_BY
from stpredict._logging import logger
from stpredict._validation import check_key
from stpredict.get import is_stpredict_entry, results_table, spread
from stpredict.get import prediction as get_prediction

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

_NAMED_SETS = GENE_SETS
COLUMNS = [
    "library_id",
    "gene_set",
    "gene",
    "pearson_r",
    "pooled_pearson_r",
    "mse",
    "mae",
    "spread_error_spearman",
]


def _parse_gene_sets(genes: Any) -> dict[str, str | list[str]]:
    """Gene-set spec → ``{name: "heg" | "hvg" | "all" | [genes]}`` (order kept)."""
    if isinstance(genes, str):
        genes = [genes]
    if isinstance(genes, Mapping):
        out: dict[str, str | list[str]] = {}
        for name, value in genes.items():
            if isinstance(value, str):
                if value not in _NAMED_SETS:
                    raise ValueError(
                        f"`genes[{name!r}]` must be one of {_NAMED_SETS} or a list of gene names, "
                        f"got {value!r}."
                    )
                out[str(name)] = value
            else:
                out[str(name)] = [str(g) for g in value]
        if not out:
            raise ValueError("`genes` is an empty mapping; expected at least one gene set.")
        return out
    if not isinstance(genes, Sequence | pd.Index | np.ndarray):
        raise TypeError(
            f"`genes` must be a set name {_NAMED_SETS}, a list of set names or gene names, or a mapping "
            f"name → genes; got {type(genes).__name__}."
        )
    items = [str(g) for g in genes]
    if not items:
        raise ValueError("`genes` is empty; expected a gene-set name or a list of genes.")
    out = {name: name for name in items if name in _NAMED_SETS}
    markers = list(dict.fromkeys(g for g in items if g not in _NAMED_SETS))
    if markers:
        out["markers"] = markers
    return out


def _libraries(adata: AnnData, obs_names: pd.Index, library_key: str | None) -> pd.Series:
    """Slide of each spot (index obs_names)."""
    if library_key is None:
        return pd.Series("all", index=obs_names)
    if library_key not in adata.obs.columns:
        if library_key == "library_id":
            logger.info("evaluate: no obs['library_id']; all spots are evaluated as one slide 'all'.")
            return pd.Series("all", index=obs_names)
        raise KeyError(
            f"`library_key` {library_key!r} is not a column of adata.obs; "
            f"available: {list(adata.obs.columns)}."
        )
    return adata.obs[library_key].reindex(obs_names).astype(str)


def _per_gene(
    truth: pd.DataFrame, pred: pd.DataFrame, std: pd.DataFrame | None, nan_to
) -> dict[str, np.ndarray]:
    """Per-gene metrics over one slide's spots."""
    t, p = truth.to_numpy(), pred.to_numpy()
    out = {
        "pearson_r": metrics.pearson_per_gene(t, p, nan_to=nan_to),
        "mse": metrics.mse_per_gene(t, p),
        "mae": metrics.mae_per_gene(t, p),
        "spread_error_spearman": np.full(t.shape[1], np.nan),
    }
    if std is not None:
        out["spread_error_spearman"] = metrics.spearman_per_gene(
            std.loc[:, pred.columns].to_numpy(), np.abs(p - t)
        )
    return out


def _chosen(spec, expression: pd.DataFrame, n_genes: int, all_genes: pd.Index) -> list[str]:
    if spec == "heg":
        return metrics.heg_genes(expression, n=n_genes)
    if spec == "hvg":
        return metrics.hvg_genes(expression, n=n_genes)
    if spec == "all":
        return list(all_genes)
    return list(spec)


def _reference_frame(reference: Any, genes: pd.Index) -> pd.DataFrame | None:
    """Expression that chooses HEG / HVG instead of the evaluated slide's truth (test-blind sets)."""
    if reference is None:
        return None
    if hasattr(reference, "bank") and hasattr(reference, "genes"):  # a fitted model: its training spots
        if reference.bank is None:
            raise ValueError("evaluate: `reference` is a model without a reference bank.")
        reference = pd.DataFrame(reference.bank["expression"], columns=pd.Index(reference.genes))
    if not isinstance(reference, pd.DataFrame):
        raise TypeError(
            "evaluate: `reference` must be a fitted model or a DataFrame (spots x genes), "
            f"got {type(reference).__name__}."
        )
    missing = genes.difference(reference.columns)
    if len(missing):
        raise KeyError(
            f"evaluate: `reference` lacks {len(missing)} predicted genes, e.g. {list(missing[:5])}."
        )
    return reference.loc[:, genes]


def _set_summary(lib, name, per_gene, idx, truth: pd.DataFrame, pred: pd.DataFrame, nan_to) -> dict[str, Any]:
    r = per_gene["pearson_r"][idx]
    spot_r = metrics.pearson_per_spot(truth.to_numpy()[:, idx], pred.to_numpy()[:, idx], nan_to=nan_to)

    def mean(values, fn=np.nanmean):
        return float(fn(values)) if np.isfinite(values).any() else np.nan

    return {
        "library_id": lib,
        "gene_set": name,
        "n_genes": len(idx),
        "n_spots": len(truth),
        "mean_pearson_r": mean(r),
        "median_pearson_r": mean(r, np.nanmedian),
        "mean_pooled_pearson_r": mean(per_gene["pooled_pearson_r"][idx]),
        "mean_mse": float(per_gene["mse"][idx].mean()),
        "mean_mae": float(per_gene["mae"][idx].mean()),
        "mean_spot_r": mean(spot_r),
        "mean_spread_error_spearman": mean(per_gene["spread_error_spearman"][idx]),
    }


def evaluate(
    adata: AnnData,
    *,
    key: str = "stpredict",
    genes: str | Sequence[str] | Mapping[str, str | Sequence[str]] = ("heg", "hvg"),
    n_genes: int = 50,
    library_key: str | None = "library_id",
    nan_to: float | None = 0.0,
    key_added: str | None = None,
    reference: Any = None,
) -> pd.DataFrame:
    """Compare predicted with true expression, per slide and gene set.

    For every slide (``obs[library_key]``) and gene set, the Pearson r of each gene across that
    slide's spots, its mean squared and mean absolute error. As in the papers, ``"heg"`` and
    ``"hvg"`` are chosen from each slide's own true expression (see :data:`stpredict.metrics.GENE_SETS`);
    the numbers to report are the mean r per slide and set, averaged over slides.

    Parameters
    ----------
    adata
        AnnData with predictions and truth written by :func:`stpredict.tl.predict` (read through
        ``obsm[key]``/``obsm[key + "_truth"]``, or ``X``/``layers["truth"]`` of a ``copy=True``
        result), or a SpatialData with the table ``tables[key]``.
    key
        Key the predictions were written under.
    genes
        Gene sets: any of ``"heg"`` (top ``n_genes`` by total expression), ``"hvg"`` (top
        ``n_genes`` by variance), ``"all"`` (every predicted gene); a list of gene names
        (evaluated as the set ``"markers"``; set names in the same list are kept as sets); or a
        mapping set name → list of genes or set name.
    n_genes
        Size of the ``"heg"`` and ``"hvg"`` sets (50 in the papers).
    library_key
        Column of ``obs`` telling slides apart. ``None``, or a missing ``"library_id"`` column,
        evaluates all spots as one slide ``"all"``.
    nan_to
        r of genes that are constant in a slide (undefined): ``0`` as in the authors' code, or
        ``None`` to keep NaN (then ignored by the means of the summary).
    key_added
        ``uns[key_added]["evaluation"]`` receives a summary; defaults to ``key``. Only written when
        ``uns[key_added]`` is stpredict's own entry (or does not exist yet).
    reference
        Choose ``"heg"`` / ``"hvg"`` from this expression instead of each evaluated slide's truth
        (test-blind gene sets): a fitted model (its training spots, ``model.bank``) or a DataFrame
        of normalised expression (spots × genes). ``None``: the papers' protocol, sets chosen on the
        test slide's own truth.

    Returns
    -------
    Tidy DataFrame with one row per slide, set and gene: ``library_id``, ``gene_set``, ``gene``,
    ``pearson_r`` (over that slide's spots), ``pooled_pearson_r`` (over the spots of every slide
    together: papers mix the two up; pooled r is usually much higher), ``mse``, ``mae``, and
    ``spread_error_spearman``: the Spearman correlation across spots between the predicted spread
    (``obsm[key + "_std"]``) and the absolute error, positive when the spread flags the worse
    predictions (NaN without a spread).

    The summary in ``uns[key_added]["evaluation"]`` holds ``"summary"`` (DataFrame: per slide and
    set ``n_genes``, ``mean_pearson_r``, ``median_pearson_r``, ``mean_mse``, ``mean_mae`` and
    ``mean_spot_r``, the mean over spots of the Pearson r across the set's genes), ``"mean"``
    (the per-set mean over slides of ``mean_pearson_r``), ``"n_genes"``, ``"gene_sets"`` and
    ``"nan_to"``.

    Examples
    --------
    >>> import stpredict as stp
    >>> adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, n_genes=40)
    >>> model = stp.tl.fit(adata, method="bleep", preset="cpu")  # doctest: +SKIP
    >>> stp.tl.predict(adata, model=model)  # doctest: +SKIP
    >>> res = stp.tl.evaluate(adata, genes=("heg", "hvg"), n_genes=10)  # doctest: +SKIP
    >>> res.groupby(["gene_set", "library_id"]).pearson_r.mean()  # doctest: +SKIP
    """
    if not isinstance(n_genes, int | np.integer) or isinstance(n_genes, bool) or n_genes < 1:
        raise ValueError(f"`n_genes` must be a positive integer, got {n_genes!r}.")
    if nan_to is not None and not isinstance(nan_to, int | float | np.number):
        raise TypeError(f"`nan_to` must be a number or None, got {nan_to!r}.")
    sets = _parse_gene_sets(genes)
    pred, truth = get_prediction(adata, key)
    if truth is None:
        raise ValueError(
            f"No true expression next to the predictions under {key!r} (expected obsm[{key + '_truth'!r}] "
            "or layers['truth']): predict on data with counts for the model's genes to evaluate."
        )
    table = results_table(adata, key)
    target = key if key_added is None else key_added
    check_key(target, what="evaluate: `key_added`")

    # spots without truth (all NaN) are left out
    has_truth = truth.notna().any(axis=1).to_numpy()
    if not has_truth.any():
        raise ValueError(f"The truth under {key!r} is NaN for every spot; nothing to evaluate.")
    libs = _libraries(table, pred.index, library_key)
    all_genes = pred.columns.astype(str)

    # validate marker lists before computing anything
    resolved: dict[str, str | list[str]] = {}
    for name, spec in sets.items():
        if isinstance(spec, str):
            resolved[name] = spec
            continue
        present = [g for g in spec if g in all_genes]
        missing = [g for g in spec if g not in all_genes]
        if not present:
            raise KeyError(
                f"None of the genes of set {name!r} were predicted under {key!r} (e.g. {missing[:5]}); "
                f"predicted genes include {list(all_genes[:5])}."
            )
        if missing:
            logger.warning(
                f"evaluate: {len(missing)} genes of set {name!r} were not predicted and are skipped: "
                f"{missing[:10]}"
            )
        resolved[name] = present
    if n_genes > len(all_genes) and any(s in ("heg", "hvg") for s in resolved.values()):
        logger.info(f"evaluate: only {len(all_genes)} genes predicted; 'heg'/'hvg' use all of them.")

    std = spread(adata, key, like=pred)
    pooled_r = metrics.pearson_per_gene(
        truth.loc[has_truth].to_numpy(), pred.loc[has_truth].to_numpy(), nan_to=nan_to
    )
    ref_df = _reference_frame(reference, all_genes)
    rows, summary = [], []
    for lib in pd.unique(libs[has_truth]):
        mask = (libs.to_numpy() == lib) & has_truth
        per_gene = _per_gene(truth.loc[mask], pred.loc[mask], None if std is None else std.loc[mask], nan_to)
        per_gene["pooled_pearson_r"] = pooled_r
        for name, spec in resolved.items():
            chosen = _chosen(spec, ref_df if ref_df is not None else truth.loc[mask], n_genes, all_genes)
            idx = all_genes.get_indexer(chosen)
            rows.append(
                pd.DataFrame(
                    {
                        "library_id": lib,
                        "gene_set": name,
                        "gene": chosen,
                        **{c: v[idx] for c, v in per_gene.items()},
                    }
                )
            )
            summary.append(_set_summary(lib, name, per_gene, idx, truth.loc[mask], pred.loc[mask], nan_to))

    result = pd.concat(rows, ignore_index=True)[COLUMNS]
    summary_df = pd.DataFrame(summary)
    means = summary_df.groupby("gene_set", sort=False)["mean_pearson_r"].mean()
    for (lib, name), sub in summary_df.groupby(["library_id", "gene_set"], sort=False):
        logger.debug(f"evaluate: {lib} {name}: mean r = {sub['mean_pearson_r'].iloc[0]:.4f}")

    evaluation = {
        "summary": summary_df,
        "mean": {str(k): float(v) for k, v in means.items()},
        "n_genes": int(n_genes),
        "gene_sets": {
            name: (spec if isinstance(spec, str) else list(spec)) for name, spec in resolved.items()
        },
        "nan_to": "keep" if nan_to is None else float(nan_to),
        "library_key": "" if library_key is None else library_key,
    }
    if target in table.uns and not is_stpredict_entry(table, target):
        logger.warning(
            f"evaluate: uns[{target!r}] was not written by stpredict; the summary is not stored "
            "(pass another `key_added`)."
        )
    else:
        entry = table.uns.setdefault(target, {"written_by": WRITTEN_BY, "params": {}})
        entry["evaluation"] = evaluation
        logger.info(
            "evaluate: mean r per set "
            + ", ".join(f"{name} {value:.3f}" for name, value in evaluation["mean"].items())
            + f" over {summary_df['library_id'].nunique()} slide(s); "
            f"summary written to uns[{target!r}]['evaluation']."
        )
    return result

"""The ``stpredict`` command line: ``demo``, ``fit``, ``predict``, ``predict-slides`` and ``evaluate``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stpredict._constants import GENE_SETS, WEIGHTINGS
from stpredict._logging import logger
from stpredict._validation import check_output_folder

_BASELINE_KEY = "random_baseline"


# ----------------------------------------------------------------------------- reading / writing
def _is_zarr(path: str | Path) -> bool:
    return str(path).rstrip("/").endswith(".zarr")


def read(path: str | Path) -> Any:
    """Read an ``.h5ad`` file (AnnData) or a ``.zarr`` store (SpatialData)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder.")
    if not _is_zarr(path) and path.suffix != ".h5ad":
        raise ValueError(f"{path}: expected an .h5ad file (AnnData) or a .zarr store (SpatialData).")
    try:
        if _is_zarr(path):
            import spatialdata

            return spatialdata.read_zarr(path)
        import anndata as ad

        return ad.read_h5ad(path)
    except Exception as err:
        what = "SpatialData .zarr store" if _is_zarr(path) else "AnnData .h5ad file"
        raise ValueError(f"{path}: could not be read as an {what} ({type(err).__name__}: {err}).") from err


def write(data: Any, path: str | Path) -> Path:
    """Write an AnnData to ``.h5ad`` or a SpatialData to ``.zarr`` (replacing an existing one)."""
    from anndata import AnnData

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, AnnData):
        if _is_zarr(path):
            raise ValueError(f"{path}: an AnnData result is written as .h5ad, not .zarr.")
        data.write_h5ad(path)
    else:
        if not _is_zarr(path):
            raise ValueError(
                f"{path}: a SpatialData result is written as .zarr (got {path.suffix or 'no suffix'})."
            )
        import warnings

        with warnings.catch_warnings():  # zarr repeats this for every array it writes
            warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
            data.write(path, overwrite=True)
    logger.info(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------- demo
def _load_dataset(name: str, seed: int, progress: bool):
    from stpredict.datasets import DEMO_DATASETS

    return DEMO_DATASETS[name](seed, progress)


def _add_random_baseline(test, model, k: int, seed: int, key: str = "stpredict") -> None:
    """Write k random bank spots averaged (the floor of any retrieval model) under ``_BASELINE_KEY``."""
    import pandas as pd

    from stpredict._constants import truth_key
    from stpredict.baselines import random_retrieval
    from stpredict.tl._results import Result, entry, write_inplace

    pred = random_retrieval(model.bank["expression"], test.n_obs, k=k, seed=seed)
    result = Result(
        pd.DataFrame(pred, index=test.obs_names, columns=pd.Index(model.genes)),
        test.obsm[truth_key(key)].copy(),
    )
    write_inplace(
        test, result, _BASELINE_KEY, entry({"method": "random_retrieval", "k": int(k), "seed": int(seed)})
    )


def _summary(res) -> dict[str, float]:
    """Mean Pearson r per gene set (averaged over slides) from an ``stp.tl.evaluate`` table."""
    per_slide = res.groupby(["gene_set", "library_id"], observed=True)["pearson_r"].mean()
    return per_slide.groupby(level="gene_set").mean().to_dict()


def _split_last_slide(adata, dataset: str):
    """Train on every slide but the last; each part keeps only its own slides' images."""
    from stpredict.tl._predict import own_libraries

    libs = list(adata.obs["library_id"].astype("category").cat.categories)
    if len(libs) < 2:
        raise ValueError(f"demo: dataset {dataset!r} has {len(libs)} slide(s); need 2 (train + held-out).")
    held_out = libs[-1]
    parts = []
    for mask in (adata.obs["library_id"] != held_out, adata.obs["library_id"] == held_out):
        part = adata[mask.to_numpy()].copy()
        part.obs["library_id"] = part.obs["library_id"].cat.remove_unused_categories()
        part.uns["spatial"] = own_libraries(part.uns.get("spatial", {}), part.obs["library_id"].unique())
        parts.append(part)
    return parts[0], parts[1], libs[:-1], held_out


def _demo_figures(test, model, res, out: Path) -> dict[str, Path]:
    """Expression maps of the three best-predicted HVGs, the training history, per-gene boxplots."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import stpredict as stp

    hvg = res[res["gene_set"] == "hvg"].sort_values("pearson_r", ascending=False)["gene"].tolist()
    genes = list(dict.fromkeys(hvg))[:3] or list(test.obsm["stpredict"].columns[:3])
    paths = {
        "expression map": out / "expression_map.png",
        "training history": out / "training_history.png",
        "per-gene r": out / "pcc_boxplot.png",
    }
    stp.pl.expression_map(test, genes, show=False, save=paths["expression map"])
    stp.pl.training_history(model, show=False, save=paths["training history"])
    stp.pl.pcc_boxplot(res, x="gene_set", show=False, save=paths["per-gene r"])
    return paths


def _print_scores(ours: dict, floor: dict, *, method: str, held_out: str, k: int, n_genes: int, n_model: int):
    print(f"\nPer-gene Pearson r on held-out slide {held_out} (mean over genes; k={k}):")
    print(f"  {'gene set':<12}{method:>12}{'random':>12}")
    for name in GENE_SETS:
        label = f"top-{n_genes} {name.upper()}" if name != "all" else f"all {n_model}"
        print(f"  {label:<12}{ours.get(name, float('nan')):>12.3f}{floor.get(name, float('nan')):>12.3f}")


def demo(args: argparse.Namespace) -> int:
    """Fit on all slides but the last, predict the last, compare with random retrieval, write files."""
    import matplotlib

    matplotlib.use("Agg")
    import stpredict as stp

    out = Path(args.out)
    check_output_folder(out, overwrite=True, what="--out")
    progress = not args.no_progress
    train, test, trained_on, held_out = _split_last_slide(
        _load_dataset(args.dataset, args.seed, progress), args.dataset
    )
    print(f"stpredict demo: {args.dataset}, training on {', '.join(trained_on)}, predicting {held_out}")

    model = stp.tl.fit(train, **_fit_options(args), progress=progress)
    k = model.retrieval.k if args.k is None else args.k
    stp.tl.predict(test, model, k=k, device=args.device, progress=progress)
    res = stp.tl.evaluate(test, genes=GENE_SETS)
    _add_random_baseline(test, model, k, args.seed)
    base = stp.tl.evaluate(test, key=_BASELINE_KEY, genes=GENE_SETS)

    out.mkdir(parents=True, exist_ok=True)
    written = {
        "model": model.save(out / "model", overwrite=True),
        "predictions": write(test, out / "prediction.h5ad"),
    }
    written.update(_demo_figures(test, model, res, out))
    res.to_csv(out / "evaluation.csv", index=False)
    written["per-gene table"] = out / "evaluation.csv"

    n_genes = test.uns["stpredict"].get("evaluation", {}).get("n_genes", 50)
    _print_scores(
        _summary(res),
        _summary(base),
        method=args.method,
        held_out=held_out,
        k=k,
        n_genes=n_genes,
        n_model=len(model.genes),
    )
    print("\nWritten:")
    for what, path in written.items():
        print(f"  {what:<17}{path}")
    return 0


# ----------------------------------------------------------------------------- fit / predict / evaluate
# fit options that the `demo` and `fit` commands share, as {attribute: fit keyword}
_FIT_FLAGS = {
    "method": "method",
    "preset": "preset",
    "epochs": "epochs",
    "device": "device",
    "seed": "seed",
    "patch_size_um": "patch_size_um",
    "pretrained": "pretrained",
    "weights_path": "weights_path",
    "freeze_backbone": "freeze_backbone",
    "stain_normalize": "stain_normalize",
    "compile": "compile",
}
_FEATURE_VIEWS_HELP = (
    "with --image-features handmade: training reads one of this many shifted, stain-jittered views "
    "of each patch (default: 1)"
)
_FEATURE_COMPONENTS_HELP = (
    "with --image-features: project the standardised features on their first this many principal "
    "axes of the training spots (e.g. 24 with --image-features texture)"
)
_FIT_ONLY_FLAGS = (
    "batch_size", "lr", "checkpoint_dir", "table_key", "layer", "n_top_genes", "val_fraction",
    "image_features", "feature_views", "feature_components", "slide_standardize", "patch_cache", "n_members",
)  # fmt: skip


def _fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords of :func:`stpredict.tl.fit` from the parsed flags (unset flags are left out)."""
    names = {**_FIT_FLAGS, **{name: name for name in _FIT_ONLY_FLAGS}}
    options = {kw: getattr(args, attr) for attr, kw in names.items() if getattr(args, attr, None) is not None}
    # store_true flags: only passed when given
    for flag in ("pretrained", "freeze_backbone", "stain_normalize", "slide_standardize", "compile"):
        if not options.get(flag):
            options.pop(flag, None)
    return options


def fit(args: argparse.Namespace) -> int:
    """``stpredict fit DATA --out MODEL_DIR``."""
    import stpredict as stp

    out = Path(args.out)
    check_output_folder(out, overwrite=args.overwrite, what="--out")
    data = read(args.data)
    model = stp.tl.fit(
        data,
        **_fit_options(args),
        resume=args.resume,
        library_key=args.library_key,
        progress=not args.no_progress,
    )
    from stpredict._distributed import is_main

    if not is_main():  # torchrun: every rank trained the same model; rank 0 saves it
        return 0
    path = model.save(out, overwrite=args.overwrite)
    print(f"model written to {path}")
    return 0


def predict_slides(args: argparse.Namespace) -> int:
    """``stpredict predict-slides SLIDE... --model MODEL_DIR --out-dir DIR``."""
    import stpredict as stp

    written = stp.tl.predict_slides(
        args.slides, args.model, out_dir=args.out_dir, grid_spacing_um=args.grid_spacing_um, k=args.k,
        device=args.device, microns_per_pixel=args.microns_per_pixel, progress=not args.no_progress,
    )  # fmt: skip
    print(f"{len(written)} slide prediction(s) in {args.out_dir}")
    return 0


def predict(args: argparse.Namespace) -> int:
    """``stpredict predict DATA --model MODEL_DIR --out OUT``."""
    import stpredict as stp

    out = Path(args.out)
    if not (out.suffix == ".h5ad" or _is_zarr(out)):
        raise ValueError(f"{out}: the output must end in .h5ad or .zarr.")
    data = read(args.data)
    result = stp.tl.predict(
        data,
        args.model,
        k=args.k,
        weighting=args.weighting,
        key_added=args.key_added,
        overwrite=args.overwrite,
        device=args.device,
        library_key=args.library_key,
        table_key=args.table_key,
        grid_spacing_um=args.grid_spacing_um,
        smooth=args.smooth,
        progress=not args.no_progress,
    )
    target = data if result is None else result
    if result is None and _is_zarr(out) != _is_zarr(args.data):
        if not _is_zarr(out):  # SpatialData in, .h5ad out: the prediction table
            target = data.tables[args.key_added]
        else:
            raise ValueError(f"{out}: an .h5ad input is written back as .h5ad, not .zarr.")
    path = write(target, out)
    print(f"predictions written to {path}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``stpredict evaluate PRED``: per-gene Pearson r against the measured expression."""
    import stpredict as stp

    data = read(args.pred)
    res = stp.tl.evaluate(data, key=args.key, genes=tuple(args.genes), n_genes=args.n_genes)
    summary = _summary(res)
    print(f"Mean per-gene Pearson r ({args.key!r}, averaged over slides):")
    for name in args.genes:
        print(f"  {name:<6}{summary.get(name, float('nan')):>8.3f}")
    if args.out is not None:
        res.to_csv(args.out, index=False)
        print(f"per-gene table written to {args.out}")
    return 0


# ----------------------------------------------------------------------------- parser
def _feature_options(p: argparse.ArgumentParser) -> None:
    """``stpredict fit``'s options for training on image features instead of pixels."""
    p.add_argument(
        "--image-features",
        default=None,
        help="train on patch features instead of pixels: an obsm key (or SpatialData table) of "
        "precomputed embeddings, or handmade / handmade_context / texture (computed from the pixels)",
    )
    p.add_argument("--feature-views", type=int, default=None, help=_FEATURE_VIEWS_HELP)
    p.add_argument("--feature-components", type=int, default=None, help=_FEATURE_COMPONENTS_HELP)
    p.add_argument(
        "--slide-standardize",
        action="store_true",
        help="with --image-features: standardise each slide's features on its own spots (fit and predict)",
    )


def _parser() -> argparse.ArgumentParser:
    import stpredict
    from stpredict.datasets import DEMO_DATASETS
    from stpredict.models import METHODS, PRESETS

    presets = ["auto", *dict.fromkeys(p for names in PRESETS.values() for p in names)]

    parser = argparse.ArgumentParser(
        prog="stpredict",
        description="Predict spatially resolved gene expression from H&E histology.",
    )
    parser.add_argument("--version", action="version", version=f"stpredict {stpredict.__version__}")
    quiet_help = "only print warnings and results"
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, device: bool = True) -> None:
        if device:
            p.add_argument("--device", default="auto", help="torch device, or 'auto' (default: %(default)s)")
            p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help)

    def model_options(p: argparse.ArgumentParser, *, preset: str) -> None:
        p.add_argument("--method", choices=list(METHODS), default="cmrcnet", help="default: %(default)s")
        p.add_argument(
            "--preset",
            choices=presets,
            default=preset,
            help="default: %(default)s ('auto': paper on a GPU, else cpu)",
        )
        p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
        p.add_argument("--patch-size-um", type=float, default=None, help="patch side in µm (default: 112)")
        p.add_argument(
            "--pretrained", action="store_true", help="start the backbone from timm's weights (download)"
        )
        p.add_argument(
            "--weights-path", default=None, help="start the backbone from a local .safetensors file"
        )
        p.add_argument(
            "--freeze-backbone",
            action="store_true",
            help="keep the backbone fixed: embed each patch once, train only the heads",
        )
        p.add_argument(
            "--stain-normalize",
            action="store_true",
            help="match every slide's H&E stain statistics to the training slides' (train and predict)",
        )
        p.add_argument(
            "--compile", action="store_true", help="train the network compiled with torch.compile (GPU)"
        )

    p = sub.add_parser(
        "demo",
        help="train on all slides but one, predict the held-out slide, evaluate, write files",
        description="Fit on every slide but the last, predict the last from its H&E image, compare "
        "with random retrieval, and write prediction.h5ad, model/ and expression_map.png.",
    )
    p.add_argument(
        "--dataset", choices=list(DEMO_DATASETS), default="synthetic", help="default: %(default)s (offline)"
    )
    p.add_argument("--out", default="stpredict-demo", help="output folder (default: %(default)s)")
    model_options(p, preset="auto")
    p.add_argument("--k", type=int, default=None, help="spots retrieved per query (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    common(p)
    p.set_defaults(func=demo)

    p = sub.add_parser("fit", help="train a model on DATA (.h5ad or .zarr) and save it")
    p.add_argument("data", help="AnnData (.h5ad) or SpatialData (.zarr) with images and counts")
    p.add_argument("--out", required=True, help="model folder to write")
    model_options(p, preset="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--n-top-genes", type=int, default=1000, help="HVGs per slide (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="default: %(default)s")
    _feature_options(p)
    p.add_argument(
        "--patch-cache",
        default=None,
        help="folder for an on-disk (zarr) cache of the training patches, cut once and read every epoch",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--n-members",
        type=int,
        default=None,
        help="train this many networks (seeds seed + 1000 j) that retrieve together (default: 1)",
    )
    p.add_argument("--checkpoint-dir", default=None, help="write a checkpoint after every epoch")
    p.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir")
    p.add_argument("--library-key", default="library_id")
    p.add_argument("--table-key", default=None, help="SpatialData table with the spots")
    p.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    common(p)
    p.set_defaults(func=fit)

    _add_prediction_commands(sub, common)
    return parser


def _add_prediction_commands(sub: Any, common: Any) -> None:
    """``predict``, ``predict-slides`` and ``evaluate``."""
    p = sub.add_parser("predict", help="predict expression for DATA with a saved model")
    p.add_argument("data", help="AnnData (.h5ad) or SpatialData (.zarr)")
    p.add_argument("--model", required=True, help="model folder written by `stpredict fit`")
    p.add_argument("--out", required=True, help="output .h5ad or .zarr")
    p.add_argument("--k", type=int, default=None, help="default: the model's")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=None)
    p.add_argument("--key-added", default="stpredict", help="default: %(default)s")
    p.add_argument("--overwrite", action="store_true", help="replace results under --key-added")
    p.add_argument("--grid-spacing-um", type=float, default=None, help="predict on a pseudo-spot grid")
    p.add_argument(
        "--smooth", type=float, default=0.0, help="spatial smoothing weight in [0, 1] (default: off)"
    )
    p.add_argument("--library-key", default="library_id")
    p.add_argument("--table-key", default=None)
    common(p)
    p.set_defaults(func=predict)

    p = sub.add_parser("evaluate", help="per-gene Pearson r of predictions against measured expression")
    p.add_argument("pred", help=".h5ad or .zarr with predictions")
    p.add_argument("--key", default="stpredict", help="default: %(default)s")
    p.add_argument("--genes", nargs="+", choices=GENE_SETS, default=list(GENE_SETS), help="gene sets")
    p.add_argument("--n-genes", type=int, default=50, help="size of the HEG/HVG sets (default: %(default)s)")
    p.add_argument("--out", default=None, help="write the per-gene table to this CSV")
    common(p, device=False)
    p.set_defaults(func=evaluate)

    p = sub.add_parser(
        "predict-slides",
        help="predict whole-slide images on a pseudo-spot grid, one .zarr each (skips finished ones)",
        description="Under torchrun, process r of n takes the slides r, r + n, ...",
    )
    p.add_argument("slides", nargs="+", help="whole-slide images (pyramidal TIFF, SVS, ...)")
    p.add_argument("--model", required=True, help="model folder written by `stpredict fit`")
    p.add_argument("--out-dir", required=True, help="folder of the <slide>.zarr outputs")
    p.add_argument("--grid-spacing-um", type=float, default=100.0, help="default: %(default)s")
    p.add_argument("--k", type=int, default=None, help="default: the model's")
    p.add_argument("--microns-per-pixel", type=float, default=None, help="for files that record none")
    common(p)
    p.set_defaults(func=predict_slides)


_PYTHON_NAMES = {
    "stp.tl.fit": "stpredict fit",
    "stp.tl.predict": "stpredict predict",
    "stp.tl.evaluate": "stpredict evaluate",
    "overwrite=True": "--overwrite",
}


def _as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """Say ``--table-key`` where a library message says ``table_key=`` or `` `table_key` ``."""
    import re

    dests = {
        action.dest
        for sub in parser._subparsers._group_actions  # type: ignore[union-attr]
        for p in sub.choices.values()  # type: ignore[union-attr]
        for action in p._actions
        if action.option_strings
    }
    for python, cli in _PYTHON_NAMES.items():
        message = message.replace(python, cli)

    def flag(match: re.Match) -> str:
        name = match.group(1)
        return f"--{name.replace('_', '-')}" if name in dests else match.group(0)

    return re.sub(r"`([a-z_]+)(?:=`|`|=)", flag, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stpredict`` command line.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    Exit status: 0 on success, 1 on an error in the inputs, 2 on a usage error.

    Examples
    --------
    >>> from stpredict.cli import main
    >>> main(["demo", "--preset", "tiny", "--epochs", "1", "--out", "demo-out"])  # doctest: +SKIP
    0
    """
    import stpredict as stp

    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    verbosity = stp.settings.verbosity
    if args.quiet:
        stp.settings.verbosity = 1
    try:
        return int(args.func(args))
    except (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError) as err:
        msg = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        print(f"stpredict {args.command}: error: {_as_flags(msg, parser)}", file=sys.stderr)
        return 1
    finally:  # main() is also called in-process: leave the caller's settings as they were
        stp.settings.verbosity = verbosity

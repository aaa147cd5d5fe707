"""Ablation of training recipes on her2st C2–C5 (leave one section out), several seeds.

Every variant is a method plus keyword overrides of :func:`stpredict.tl.fit`. Each
(variant, seed) runs :func:`stpredict.tl.cross_validate` on the training sections only and appends
one JSON line to ``<out>/<tag>.jsonl`` as soon as it finishes (so an interrupted ablation keeps
what it measured). ``--report`` turns that file into the markdown table of ``docs/her2st.md``:
mean ± std over seeds (no ± with one seed) of the per-section HEG / HVG r averaged over folds.

Examples
--------
::

    python benchmarks/her2st_ablation.py --variants cmrcnet_cpu cmrcnet_cnn --seeds 0 1 2
    python benchmarks/her2st_ablation.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from her2st_cv import load_her2st  # noqa: E402

# name → (method, fit keyword overrides). Each row adds one change to the row it names.
_VIT = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"depth": 4}, "image_size": 112}
_CNN = {"backbone": "resnet18", "backbone_kwargs": {"channels": [32, 64, 128, 256]}, "image_size": 64}
_STAGES: list[tuple[str, str, dict[str, Any]]] = [
    # (name, based on, change)
    ("vit112_lr1e-4_10ep", "", {**_VIT, "lr": 1e-4, "epochs": 10}),  # the first `cpu` preset
    ("vit112_lr1e-3_10ep", "vit112_lr1e-4_10ep", {"lr": 1e-3}),
    ("cnn64_lr1e-3_30ep", "", {**_CNN, "lr": 1e-3, "epochs": 30}),
    ("+stain_translate", "cnn64_lr1e-3_30ep", {"stain_jitter": 0.05, "translate": 0.25}),
    ("+tta", "+stain_translate", {"tta": True}),
    ("+val_pearson", "+tta", {"select_epoch": "val_pearson"}),
    ("+100ep", "+val_pearson", {"epochs": 100}),  # the `cpu` preset since the seventh step
    ("+100ep+stain", "+100ep", {"stain_normalize": True}),  # each slide's stain matched (eighth step)
    ("+200ep", "+val_pearson", {"epochs": 200}),
    ("+100ep_bs32", "+100ep", {"batch_size": 32}),
]


# the same heads on precomputed image input: the baseline's hand-made colour/texture features of
# each spot's patch (FEATURES_KEY, computed once from the pixels, no expression involved)
FEATURES_KEY = "X_handmade"
_FEATURE_STAGES: list[tuple[str, str, dict[str, Any]]] = [
    ("features:handmade_30ep", "", {"image_features": FEATURES_KEY, "epochs": 30, "lr": 1e-3}),
    ("features:handmade_100ep", "features:handmade_30ep", {"epochs": 100}),
    ("features:handmade_100ep_dim64", "features:handmade_100ep", {"dim": 64}),
    # ... plus those of a 336 µm context patch around the spot, computed by fit/predict themselves
    ("features:handmade+context_30ep", "features:handmade_30ep", {"image_features": "handmade_context"}),
    ("features:handmade+context_100ep", "features:handmade+context_30ep", {"epochs": 100}),
    # predictions smoothed over the spot graph (α and radius chosen on the k-NN baseline,
    # benchmarks/her2st_smoothing.py); applied to every row, baselines included
    ("features:handmade_30ep+smooth0.5", "features:handmade_30ep", {"smooth": 0.5}),
    ("features:handmade+context_30ep+smooth0.5", "features:handmade+context_30ep", {"smooth": 0.5}),
    # every slide's stain matched to the training slides' (features then computed by fit/predict
    # from the matched pixels: the same 78 numbers when no slide needs matching)
    (
        "features:handmade_30ep+stain",
        "features:handmade_30ep",
        {"image_features": "handmade", "stain_normalize": True},
    ),
    ("features:handmade_30ep+stain+smooth0.5", "features:handmade_30ep+stain", {"smooth": 0.5}),
    # the k neighbours weighted by exp(cosine / τ) instead of a plain mean
    *(
        (
            f"features:handmade_30ep+stain+smooth0.5+softmax{t:g}",
            "features:handmade_30ep+stain+smooth0.5",
            {"weighting": "softmax", "retrieval_temperature": t},
        )
        for t in (0.03, 0.1)
    ),
    # n networks (seeds s, s + 1000, ...) retrieving by their mean cosine (fit(n_members=n))
    *(
        (
            f"features:handmade_30ep+stain+smooth0.5+ensemble{n}",
            "features:handmade_30ep+stain+smooth0.5",
            {"n_members": n},
        )
        for n in (2, 3, 5, 10)
    ),
    # training items read one of 8 views of each patch (shifted by <= 12.5 %, HED-jittered by 0.05:
    # the cpu preset's translate and stain_jitter), fit(feature_views=8)
    (
        "features:handmade_30ep+stain+smooth0.5+views8",
        "features:handmade_30ep+stain+smooth0.5",
        {"feature_views": 8},
    ),
    (
        "features:handmade_30ep+stain+smooth0.5+views8+100ep",
        "features:handmade_30ep+stain+smooth0.5+views8",
        {"epochs": 100},
    ),
    # one hyper-parameter of the best single-network recipe changed at a time (the sweep)
    *(
        (f"features:handmade_30ep+stain+smooth0.5+{label}", "features:handmade_30ep+stain+smooth0.5", change)
        for label, change in {
            **{f"tau{t:g}": {"temperature": t} for t in (0.1, 0.3, 3.0)},
            **{f"dim{d}": {"dim": d} for d in (64, 512)},
            **{f"dropout{p:g}": {"dropout": p} for p in (0.0, 0.3)},
            **{f"wd{w:g}": {"weight_decay": w} for w in (1e-2, 1e-1)},
            **{f"bs{b}": {"batch_size": b} for b in (32, 128)},
            **{f"lr{r:g}": {"lr": r} for r in (3e-4, 3e-3)},
            "100ep": {"epochs": 100},
        }.items()
    ),
]
# the richer hand-made descriptor (stp.baselines.texture_features) of the spot's patch and a 2x
# wider one (732 numbers), reduced to its first principal axes on the training spots
_TEXTURE = {"image_features": "texture", "epochs": 30, "lr": 1e-3}
_BEST_TEXTURE = "texture_30ep+pca24+noval+stain+smooth0.5"
_SLIDE_TEXTURE = "texture_30ep+pca24+noval+slide+smooth0.5"
_FEATURE_STAGES += [
    ("texture_30ep", "", _TEXTURE),
    *((f"texture_30ep+pca{d}", "texture_30ep", {"feature_components": d}) for d in (8, 16, 24, 32, 48)),
    # no validation split: every training spot trains (and the last epoch is kept)
    ("texture_30ep+pca24+noval", "texture_30ep+pca24", {"val_fraction": 0.0}),
    ("texture_30ep+pca24+noval+stain", "texture_30ep+pca24+noval", {"stain_normalize": True}),
    (_BEST_TEXTURE, "texture_30ep+pca24+noval+stain", {"smooth": 0.5}),
    *((f"{_BEST_TEXTURE}+ensemble{n}", _BEST_TEXTURE, {"n_members": n}) for n in (3, 5)),
    # each slide's features standardised on its own spots (fit(slide_standardize=True)), instead
    # of or on top of stain matching
    ("texture_30ep+pca24+noval+smooth0.5", "texture_30ep+pca24+noval", {"smooth": 0.5}),
    ("texture_30ep+pca24+noval+slide", "texture_30ep+pca24+noval", {"slide_standardize": True}),
    (_SLIDE_TEXTURE, "texture_30ep+pca24+noval+slide", {"smooth": 0.5}),
    ("texture_30ep+pca24+noval+slide+stain+smooth0.5", _SLIDE_TEXTURE, {"stain_normalize": True}),
    *((f"{_SLIDE_TEXTURE}+ensemble{n}", _SLIDE_TEXTURE, {"n_members": n}) for n in (3,)),
    # the number of principal axes and the patch's side, re-chosen under per-slide standardisation
    *(
        (f"texture_30ep+pca24+noval+slide+{label}", "texture_30ep+pca24+noval+slide", change)
        for label, change in {
            **{f"components{d}": {"feature_components": d} for d in (16, 32, 48)},
            **{f"patch{um}um": {"patch_size_um": float(um)} for um in (84, 150)},
        }.items()
    ),
]
_STAGES.append(("+val_pearson+smooth0.5", "+val_pearson", {"smooth": 0.5}))
# mclSTExp trains on sets of 128 shuffled spots (~4 steps per epoch here) and embeds the bank in
# sets of 32 consecutive ones, weighting the k references by 1/d²: each of these changed alone
_MCLSTEXP_SWEEP: dict[str, dict[str, Any]] = {
    "mean": {"weighting": "mean"},
    "bs32": {"batch_size": 32},
    "slide": {"spot_context": "slide"},
    "eval128": {"eval_set_size": 128},
    **{f"{n}ep": {"epochs": n} for n in (100, 200)},
}

# mclSTExp on pixels: the shared `cpu` rate (its preset before the sixth step) and its authors'
# (its preset since), each at 30 and 100 epochs
_MCLSTEXP_CPU_SWEEP: dict[str, dict[str, Any]] = {
    f"{label}{suffix}": {"lr": lr, **change}
    for label, lr in (("lr1e-3", 1e-3), ("lr1e-4", 1e-4))
    for suffix, change in (("", {}), ("+100ep", {"epochs": 100}))
}

# keys of a variant that are cross_validate's own options, not tl.fit's (a variant's
# "temperature" is the network's contrastive one; "retrieval_temperature" the softmax weighting's)
_CV_KEYS = {
    "smooth": "smooth",
    "smooth_radius": "smooth_radius",
    "weighting": "weighting",
    "retrieval_temperature": "temperature",
}


def _variants() -> dict[str, tuple[str, dict[str, Any]]]:
    out: dict[str, dict[str, Any]] = {}
    for name, base, change in _STAGES + _FEATURE_STAGES:
        out[name] = {**(out[base] if base else {}), **change}
    table = {name: ("cmrcnet", kw) for name, kw in out.items()}
    # contrastive-only ablation of every row
    table.update(
        {
            f"{name} [contrastive only]": ("cmrcnet", {**kw, "reconstruction": None})
            for name, kw in out.items()
        }
    )
    # the other methods on the best feature recipes
    best = ("features:handmade_30ep", "features:handmade_30ep+smooth0.5", _BEST_TEXTURE, _SLIDE_TEXTURE)
    for other in ("bleep", "mclstexp"):
        for name in best:
            table[f"{other} {name}"] = (other, out[name])
    # mclSTExp's own recipe on the texture input, one change at a time (its spot sets, steps, weighting)
    for label, change in _MCLSTEXP_SWEEP.items():
        table[f"mclstexp {_BEST_TEXTURE}+{label}"] = ("mclstexp", {**out[_BEST_TEXTURE], **change})
    table[f"mclstexp {_SLIDE_TEXTURE}+100ep"] = ("mclstexp", {**out[_SLIDE_TEXTURE], "epochs": 100})
    # BLEEP and mclSTExp at their `cpu` presets of the sixth step (pixels, 30 epochs; BLEEP's trains
    # 100 since the seventh: "bleep cpu+100ep"); mclSTExp's learning rate and epochs
    table.update({f"{other} cpu": (other, {"epochs": 30}) for other in ("bleep", "mclstexp")})
    table["bleep cpu+100ep"] = ("bleep", {"epochs": 100})
    for label, change in _MCLSTEXP_CPU_SWEEP.items():
        table[f"mclstexp cpu+{label}"] = ("mclstexp", change)
    return table


VARIANTS: dict[str, tuple[str, dict[str, Any]]] = _variants()


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A variant's keywords as (``cross_validate``'s own options, ``tl.fit`` overrides)."""
    cv_options = {option: overrides[key] for key, option in _CV_KEYS.items() if key in overrides}
    return cv_options, {key: v for key, v in overrides.items() if key not in _CV_KEYS}


def run(args: argparse.Namespace) -> None:
    """Cross-validate each (variant, seed) and append its summary to the JSONL file."""
    import stpredict as stp

    adata = load_her2st(args.data_dir, args.sections)
    if any(VARIANTS[name][1].get("image_features") == FEATURES_KEY for name in args.variants):
        add_handmade_features(adata)
    out = args.out / f"{args.tag}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        method, overrides = VARIANTS[name]
        cv_options, fit_overrides = split_overrides(overrides)
        for seed in args.seeds:
            start = time.perf_counter()
            res = stp.tl.cross_validate(
                adata,
                method={name: (method, fit_overrides)},
                **cv_options,
                k=args.k,
                baselines=tuple(args.baselines) if seed == args.seeds[0] else (),
                baseline_features=args.baseline_features,
                n_genes=50,
                seed=seed,
                preset="cpu",
                progress=False,
            )
            wall = time.perf_counter() - start
            per_fold = res.per_fold
            record = {
                "variant": name,
                "method": method,
                "overrides": overrides,
                "seed": seed,
                "wall_s": wall,
                "fit_s": res.timings.groupby("method")["fit_s"].sum().to_dict(),
                "per_fold": per_fold.to_dict(orient="records"),
                "summary": res.summary.to_dict(),
            }
            with out.open("a") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
            print(f"{name} seed {seed}: {wall:.0f} s\n{res.summary.round(3).to_string()}", flush=True)


def add_handmade_features(adata: Any, *, patch_size_um: float = 112.0, size: int = 64) -> None:
    """``obsm[FEATURES_KEY]``: the image-kNN baseline's features of every spot's patch (same settings)."""
    import stpredict as stp
    from stpredict.data import SpotData

    patches = SpotData.from_object(adata).extract_patches(
        patch_size_um=patch_size_um, size=size, progress=False
    )
    adata.obsm[FEATURES_KEY] = stp.baselines.image_features(patches)


def report(path: Path) -> str:
    """Markdown table: mean ± std over seeds of the fold-averaged HEG / HVG r per variant."""
    import pandas as pd

    rows = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        summary = pd.DataFrame(rec["summary"])
        smooth = rec["overrides"].get("smooth")
        for label, row in summary.iterrows():
            if smooth and rec["variant"] not in label:  # a baseline row of a smoothed run
                label = f"{label} +smooth{smooth:g}"
            rows.append(
                {"row": label, "seed": rec["seed"], **row.to_dict(), "fit_s": rec["fit_s"].get(label)}
            )
    df = pd.DataFrame(rows)
    sets = [c for c in ("heg", "hvg") if c in df.columns]
    agg = df.groupby("row", sort=False).agg(
        **{f"{s}_mean": (s, "mean") for s in sets},
        **{f"{s}_std": (s, "std") for s in sets},
        seeds=("seed", "nunique"),
        fit_s=("fit_s", "mean"),
    )
    lines = ["| variant | seeds | " + " | ".join(f"{s.upper()} r" for s in sets) + " | fit s / 4 folds |"]
    lines.append("|" + " --- |" * (len(sets) + 3))
    for label, row in agg.iterrows():
        cells = [
            f"{row[f'{s}_mean']:.3f}" + ("" if pd.isna(row[f"{s}_std"]) else f" ± {row[f'{s}_std']:.3f}")
            for s in sets
        ]
        fit_s = "" if pd.isna(row["fit_s"]) or row["fit_s"] == 0 else f"{row['fit_s']:.0f}"
        lines.append(f"| {label} | {int(row['seeds'])} | " + " | ".join(cells) + f" | {fit_s} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(os.environ.get("STPREDICT_SHARED_DATA", REPO.parent / "shared" / "data")) / "her2st"
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    parser.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--baselines", nargs="*", default=["random", "oracle", "image_knn"])
    parser.add_argument(
        "--baseline-features",
        default="handmade",
        help="features of the image_knn baseline (default: %(default)s)",
    )
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--tag", default="her2st_ablation")
    parser.add_argument("--report", action="store_true", help="print the table of <out>/<tag>.jsonl")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out / f"{args.tag}.jsonl"))
    else:
        run(args)


if __name__ == "__main__":
    main()

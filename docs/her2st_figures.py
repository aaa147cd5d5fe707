"""Figures for the her2st results page, from real data, into ``docs/_static/figures/``.

1. Box plots of per-gene Pearson r from the cross-validation run written by
   ``benchmarks/her2st_cv.py`` (its ``<tag>_per_gene.csv``).
2. One CMRCNet model fitted on sections C2–C4 and used to predict C5 from its H&E image alone:
   predicted vs measured expression maps of the best-predicted genes and the training history.

Run from anywhere, after the cross-validation::

    python docs/her2st_figures.py                          # cpu preset, 10 epochs
    python docs/her2st_figures.py --cv benchmarks/results/her2st_cv_cpu_per_gene.csv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

import stpredict as stp

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "_static" / "figures"
sys.path.insert(0, str(REPO / "benchmarks"))

from her2st_cv import load_her2st  # the benchmark's reader of the published layout

METHOD_ORDER = ["random", "cmrcnet", "cmrcnet_norecon", "bleep", "mclstexp", "image_knn", "oracle (cmrcnet)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(os.environ.get("STPREDICT_SHARED_DATA", REPO.parent / "shared" / "data")) / "her2st"
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    cv = REPO / "benchmarks" / "results" / "her2st_cv_cpu_per_gene.csv"
    parser.add_argument("--cv", type=Path, default=cv, help="per-gene table of benchmarks/her2st_cv.py")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--boxplot-only", action="store_true", help="only redraw the box plot")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.cv.is_file():
        per_gene = pd.read_csv(args.cv)
        order = [m for m in METHOD_ORDER if m in set(per_gene["method"])]
        fig = stp.pl.pcc_boxplot(per_gene, x="method", order=order, gene_set=["heg", "hvg"], show=False)
        for ax in fig.axes:
            ax.tick_params(axis="x", labelrotation=45)
        fig.savefig(args.out / "her2st_pcc_boxplot.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        print(f"wrote {args.out / 'her2st_pcc_boxplot.png'}")
    else:
        print(f"no cross-validation results at {args.cv}; skipping the box plot")
    if args.boxplot_only:
        return

    adata = load_her2st(args.data_dir, ["C2", "C3", "C4", "C5"])
    train = adata[adata.obs["library_id"] != "C5"].copy()
    test = adata[adata.obs["library_id"] == "C5"].copy()

    start = time.perf_counter()
    model = stp.tl.fit(train, preset=args.preset, epochs=args.epochs, seed=0)
    stp.tl.predict(test, model=model, k=50)
    wall = time.perf_counter() - start
    res = stp.tl.evaluate(test, genes=("heg", "hvg"), n_genes=50)
    summary = res.groupby("gene_set")["pearson_r"].mean().round(3).to_dict()
    best = res.query("gene_set == 'hvg'").nlargest(4, "pearson_r")
    print(f"C5 held out: mean r {summary}; best HVGs:\n{best[['gene', 'pearson_r']].to_string(index=False)}")

    fig = stp.pl.expression_map(test, best["gene"].tolist(), show=False)
    fig.savefig(args.out / "her2st_expression_map.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig = stp.pl.training_history(model, show=False)
    fig.savefig(args.out / "her2st_training_history.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    record = {
        "command": " ".join(sys.argv),
        "train": ["C2", "C3", "C4"],
        "test": "C5",
        "preset": args.preset,
        "epochs": args.epochs,
        "fit_predict_s": round(wall, 1),
        "mean_pearson_r": summary,
        "best_hvg": dict(zip(best["gene"], best["pearson_r"].round(3), strict=True)),
    }
    (args.out / "her2st_c5.json").write_text(json.dumps(record, indent=1))
    print(f"wrote her2st_expression_map.png, her2st_training_history.png and her2st_c5.json to {args.out}")


if __name__ == "__main__":
    main()

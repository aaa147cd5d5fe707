"""Render every ``stp.pl`` figure once, on the synthetic data, into ``docs/_static/figures/``.

Trains two small models (CMRCNet and BLEEP, ``preset="cpu"``) on two synthetic slides, predicts the
third from its image alone and draws the figures from what ``stp.tl`` wrote. Run from anywhere::

    python docs/make_figures.py                # default: 10 epochs per model
    python docs/make_figures.py --epochs 30 --preset cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

import stpredict as stp

OUT = Path(__file__).resolve().parent / "_static" / "figures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    adata = stp.datasets.synthetic(seed=0)
    train = adata[adata.obs["library_id"] != "slide2"].copy()
    test = adata[adata.obs["library_id"] == "slide2"].copy()

    tables = []
    models = {}
    for method in ("cmrcnet", "bleep"):
        model = stp.tl.fit(
            train, method=method, preset=args.preset, epochs=args.epochs, seed=0, progress=False
        )
        models[method] = model
        stp.tl.predict(test, model=model, k=50, key_added=method, progress=False)
        res = stp.tl.evaluate(test, key=method, genes=("heg", "hvg", "all"), n_genes=50)
        tables.append(res.assign(method=method))
    results = pd.concat(tables, ignore_index=True)
    results.to_csv(args.out / "evaluation.csv", index=False)
    print(results.groupby(["method", "gene_set"])["pearson_r"].mean().unstack().round(3))

    # the best-predicted marker genes of the CMRCNet run
    best = (
        results.query("method == 'cmrcnet' and gene_set == 'all'").nlargest(3, "pearson_r")["gene"].tolist()
    )
    figures = {
        "expression_map.png": lambda: stp.pl.expression_map(test, best, key="cmrcnet", show=False),
        "pcc_boxplot.png": lambda: stp.pl.pcc_boxplot(results, x="method", show=False),
        "gene_correlation.png": lambda: stp.pl.gene_correlation(test, key="cmrcnet", n_genes=30, show=False),
        "expression_profile.png": lambda: stp.pl.expression_profile(test, key="cmrcnet", show=False),
        "training_history.png": lambda: stp.pl.training_history(models["cmrcnet"], show=False),
    }
    for name, draw in figures.items():
        fig = draw()
        fig.savefig(args.out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()

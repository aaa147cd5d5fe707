"""Quick comparison of all methods and baselines on the synthetic dataset.

Same procedure as ``her2st_cv.py`` (leave one slide out, same genes, folds and ``k`` for every
method and baseline) on ``stp.datasets.synthetic()``, whose H&E-like images predict expression by
construction: every method should beat the random baseline and stay below its oracle.

Examples
--------
::

    python benchmarks/compare_methods.py                       # tiny preset, a few minutes on 2 cores
    python benchmarks/compare_methods.py --preset cpu --epochs 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from her2st_cv import add_common_arguments, run_and_report


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    import stpredict as stp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-slides", type=int, default=3)
    parser.add_argument("--n-spots-per-side", type=int, default=12)
    parser.add_argument("--n-genes-total", type=int, default=120, help="genes of the synthetic data")
    add_common_arguments(parser, default_methods=["cmrcnet", "cmrcnet_norecon", "bleep", "mclstexp"])
    parser.set_defaults(preset="tiny", epochs=5, k=20, n_genes=20, n_top_genes=60, device="cpu")
    args = parser.parse_args(argv)

    adata = stp.datasets.synthetic(
        n_slides=args.n_slides,
        n_spots_per_side=args.n_spots_per_side,
        n_genes=args.n_genes_total,
        seed=args.seed,
    )
    print(f"synthetic data: {adata.n_obs} spots × {adata.n_vars} genes, {args.n_slides} slides")
    args.tag = args.tag or f"synthetic_cv_{args.preset}"
    return run_and_report(
        adata,
        args,
        dataset="synthetic",
        extra={"synthetic": {"n_slides": args.n_slides, "n_spots_per_side": args.n_spots_per_side}},
    )


if __name__ == "__main__":
    main()

"""Patch extraction throughput on a real her2st section (or the synthetic data).

Usage::

    python benchmarks/patches.py [--data ../shared/data] [--section C3] [--size 224] [--lazy]

Prints patches/s and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--section", default="C3")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch-size-um", type=float, default=112.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lazy", action="store_true", help="read from a SpatialData (dask) image instead")
    args = parser.parse_args()

    import stpredict as stp
    from stpredict.data import SpotData

    her2st = args.data / "her2st"
    t0 = time.perf_counter()
    if her2st.exists():
        sec = args.section
        adata = stp.io.read_legacy_st(
            her2st / "ST-cnts" / f"{sec}.tsv.gz",
            her2st / "ST-spotfiles" / f"{sec}_selection.tsv",
            next((her2st / "ST-imgs" / sec[0] / sec).glob("*.jpg")),
            platform="1k",
        )
        what = f"her2st {sec}"
    else:
        adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=24)
        what = "synthetic"
    data = stp.io.to_spatialdata(adata) if args.lazy else adata
    sd = SpotData.from_object(data)
    lib = sd.libraries[0]
    image = sd.images[lib]
    print(
        f"{what}: {sd.n_obs} spots, image {image.shape[1]} x {image.shape[0]} px, "
        f"{image.um_per_px[0]:.3f} x {image.um_per_px[1]:.3f} µm/px, "
        f"loaded in {time.perf_counter() - t0:.1f} s"
    )
    print(f"peak memory after loading: {_peak_mb():.0f} MB")

    rates = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        patches = sd.extract_patches(patch_size_um=args.patch_size_um, size=args.size, progress=False)
        rates.append(len(patches) / (time.perf_counter() - t0))
    wx, wy = args.patch_size_um / image.um_per_px[0], args.patch_size_um / image.um_per_px[1]
    print(
        f"{args.patch_size_um:g} µm patches ({wx:.0f} x {wy:.0f} source px -> {args.size} px, "
        f"{'lazy dask' if image.is_lazy else 'numpy'} image): best {max(rates):.0f} patches/s "
        f"(runs: {', '.join(f'{r:.0f}' for r in rates)})"
    )
    print(f"peak memory: {_peak_mb():.0f} MB")


if __name__ == "__main__":
    main()

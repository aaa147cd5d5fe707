"""Peak memory of fit + predict with streamed vs in-memory patches, as the number of spots grows.

Each run is a fresh subprocess: a lazy (dask) synthetic slide large enough for ``n`` spots at
the Visium pitch, one epoch of ``fit`` (BLEEP ``tiny`` network at ``--size`` px, so the network
is small and the patches dominate) and a ``predict`` of every spot; it prints its peak RSS.
Streaming should stay flat in ``n``; in-memory grows by ``n × size² × 3`` bytes.

Example
-------
::

    python benchmarks/streaming.py --spots 2000 8000 --size 224
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _zarr_image(px: int, folder: Path, seed: int, chunk: int = 512):
    """A ``px`` × ``px`` random RGB image written once to a zarr store of ``chunk``-px tiles
    (as OME-Zarr / pyramidal TIFF writers tile), opened lazily (dask)."""
    import dask.array as da
    import numpy as np
    import zarr

    store = folder / f"slide_{px}_{chunk}.zarr"
    if not store.exists():
        z = zarr.open_array(str(store), mode="w", shape=(px, px, 3), chunks=(chunk, chunk, 3), dtype="uint8")
        rng = np.random.default_rng(seed)
        for y in range(0, px, 2048):
            for x in range(0, px, 2048):
                h, w = min(2048, px - y), min(2048, px - x)
                z[y : y + h, x : x + w] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return da.from_zarr(str(store))


def _slide(n_spots: int, seed: int = 0, zarr_dir: Path | None = None):
    """An AnnData with ``n_spots`` on a square 100 µm grid over a lazy random slide (1 µm/px).

    The slide is a dask array generated on read, or (``zarr_dir``) read from a zarr store on disk.
    """
    import anndata as ad
    import dask.array as da
    import numpy as np
    import scipy.sparse as sp

    side = int(np.ceil(np.sqrt(n_spots)))
    px = 100 * side + 200
    image = (
        _zarr_image(px, zarr_dir, seed)
        if zarr_dir is not None
        else da.random.default_rng(seed).integers(
            0, 256, size=(px, px, 3), dtype=np.uint8, chunks=(2048, 2048, 3)
        )
    )
    yy, xx = np.divmod(np.arange(n_spots), side)
    coords = np.column_stack([150 + 100 * xx, 150 + 100 * yy]).astype(float)
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(3, size=(n_spots, 50)).astype(np.float32)))
    adata.obs_names = [f"s{i}" for i in range(n_spots)]
    adata.var_names = [f"g{i}" for i in range(50)]
    adata.obs["library_id"] = "big"
    adata.obsm["spatial"] = coords
    adata.uns["spatial"] = {
        "big": {
            "images": {"hires": image},
            "scalefactors": {
                "tissue_hires_scalef": 1.0,
                "spot_diameter_fullres": 55.0,
                "microns_per_pixel": 1.0,
            },
        }
    }
    return adata


def _worker(n_spots: int, size: int, stream: bool, zarr_dir: Path | None, workers: int) -> None:
    import stpredict as stp

    adata = _slide(n_spots, zarr_dir=zarr_dir)
    t0 = time.perf_counter()
    model = stp.tl.fit(
        adata, method="bleep", preset="tiny", image_size=size, epochs=1, stream=stream, progress=False,
        seed=0, num_workers=workers,
    )  # fmt: skip
    t1 = time.perf_counter()
    stp.tl.predict(adata, model=model, copy=True, progress=False)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"spots": n_spots, "size": size, "stream": stream, "zarr": zarr_dir is not None, "workers": workers}
    row.update({"peak_rss_mb": peak, "children_peak_rss_mb": _children_peak_mb(), "fit_s": t1 - t0})
    print("RESULT " + json.dumps({**row, "predict_s": t2 - t1}), flush=True)


def _children_peak_mb() -> float:
    """Peak RSS of the largest finished child process (DataLoader workers), MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    """Run each (spots, stream) case in its own process and write a JSON + markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spots", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "streaming.json")
    parser.add_argument("--zarr-dir", type=Path, default=None, help="read the slide from a zarr store here")
    parser.add_argument("--streamed-only", action="store_true", help="skip the in-memory case")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--_worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        n, size, stream = args._worker
        return _worker(int(n), int(size), stream == "1", args.zarr_dir, args.num_workers)
    if args.zarr_dir is not None:
        args.zarr_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.spots:
        for stream in (True,) if args.streamed_only else (True, False):
            cmd = [sys.executable, __file__, "--_worker", str(n), str(args.size), "1" if stream else "0"]
            cmd += ["--num-workers", str(args.num_workers)]
            cmd += [] if args.zarr_dir is None else ["--zarr-dir", str(args.zarr_dir)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            row = (
                json.loads(lines[-1][7:])
                if lines
                else {"spots": n, "stream": stream, "error": proc.stderr[-400:]}
            )
            print(row, flush=True)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| spots | slide | patches | workers | peak RSS (MiB) | fit s | predict s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['spots']} | | {'streamed' if r['stream'] else 'in memory'} | | failed | | |")
            continue
        lines.append(
            f"| {r['spots']} | {'zarr' if r.get('zarr') else 'dask random'} | "
            f"{'streamed' if r['stream'] else 'in memory'} | {r.get('workers', 0)} | "
            f"{r['peak_rss_mb']:.0f} | {r['fit_s']:.0f} | {r['predict_s']:.0f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return None


if __name__ == "__main__":
    main()

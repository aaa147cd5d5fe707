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


def _slide(n_spots: int, seed: int = 0):
    """An AnnData with ``n_spots`` on a square 100 µm grid over a lazy random slide (1 µm/px)."""
    import anndata as ad
    import dask.array as da
    import numpy as np
    import scipy.sparse as sp

    side = int(np.ceil(np.sqrt(n_spots)))
    px = 100 * side + 200
    image = da.random.default_rng(seed).integers(
        0, 256, size=(px, px, 3), dtype=np.uint8, chunks=(2048, 2048, 3)
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


def _worker(n_spots: int, size: int, stream: bool) -> None:
    import stpredict as stp

    adata = _slide(n_spots)
    t0 = time.perf_counter()
    model = stp.tl.fit(
        adata, method="bleep", preset="tiny", image_size=size, epochs=1, stream=stream, progress=False, seed=0
    )
    t1 = time.perf_counter()
    stp.tl.predict(adata, model=model, copy=True, progress=False)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"spots": n_spots, "size": size, "stream": stream, "peak_rss_mb": peak,
                                  "fit_s": t1 - t0, "predict_s": t2 - t1}), flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run each (spots, stream) case in its own process and write a JSON + markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spots", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "streaming.json")
    parser.add_argument("--_worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        n, size, stream = args._worker
        return _worker(int(n), int(size), stream == "1")
    rows = []
    for n in args.spots:
        for stream in (True, False):
            cmd = [sys.executable, __file__, "--_worker", str(n), str(args.size), "1" if stream else "0"]
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
    lines = ["| spots | patches | peak RSS (MiB) | fit s | predict s |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['spots']} | {'streamed' if r['stream'] else 'in memory'} | failed | | |")
            continue
        lines.append(
            f"| {r['spots']} | {'streamed' if r['stream'] else 'in memory'} | {r['peak_rss_mb']:.0f} | "
            f"{r['fit_s']:.0f} | {r['predict_s']:.0f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return None


if __name__ == "__main__":
    main()

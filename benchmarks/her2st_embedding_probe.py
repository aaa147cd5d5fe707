"""Exploratory: the pixel model's embeddings at retrieval, centred per slide or fused with texture.

her2st C2–C5, leave one section out. In each fold CMRCNet is fitted at its ``cpu`` preset (pixels)
on three sections, the held-out section is embedded, and its k = 50 neighbours are retrieved in
several ways; each way is evaluated with :func:`stpredict.tl.evaluate` (per-section HEG / HVG r,
gene sets from the held-out section's truth, as in ``her2st_ablation.py``).

Probes:

- ``centre``: does the pixel model gain from the per-slide standardisation that lifted the texture
  recipe? ``as fitted`` (what ``predict`` does), ``query to training mean`` (the held-out slide's
  image embeddings shifted so that their mean is the training spots' mean image embedding),
  ``both per slide`` (queries centred on their slide, the bank's expression embeddings on theirs),
  ``image keys per slide`` (queries centred on their slide, ranked against the training spots'
  image embeddings, centred on theirs).
- ``fuse``: does the pixel model add to the texture network of the README recipe (one
  contrastive-only member on the per-slide texture axes, fitted on the same genes)? The bank is
  ranked by ``w`` × the pixel model's cosine + ``(1 − w)`` × the texture network's.

One JSON line per (probe, seed, held-out section, variant) is appended to ``--out``;
``--report`` prints mean ± std over seeds of the fold-averaged r.

Example
-------
::

    python benchmarks/her2st_embedding_probe.py --probe centre fuse --seeds 0 1 2
    python benchmarks/her2st_embedding_probe.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from her2st_cv import load_her2st  # noqa: E402
from her2st_image_keys import unit_rows  # noqa: E402

SECTIONS = ["C2", "C3", "C4", "C5"]
K = 50
# the README recipe's network (one member): texture on 24 axes, standardised per slide
TEXTURE = {
    "image_features": "texture", "feature_components": 24, "val_fraction": 0.0, "slide_standardize": True,
    "epochs": 30, "lr": 1e-3, "reconstruction": None,
}  # fmt: skip
PIXEL_WEIGHTS = (0.0, 0.2, 0.35, 0.5, 1.0)


def centred_per_slide(x: np.ndarray, library_ids: np.ndarray) -> np.ndarray:
    """Each slide's rows minus that slide's mean row."""
    out = np.array(x, dtype=np.float32, copy=True)
    for lib in np.unique(library_ids):
        out[library_ids == lib] -= x[library_ids == lib].mean(axis=0)
    return out


def spot_embeddings(model, adata) -> np.ndarray:
    """The model's image embeddings of the spots (its input as ``predict`` reads it, TTA included)."""
    from stpredict.data import SpotData
    from stpredict.tl._predict import _image_input

    sd = SpotData.from_object(adata, library_key="library_id")
    return model.embed_inputs(_image_input(model, sd, adata), progress=False)


def centre_rankings(pixel, train, test) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(queries, keys) per variant of the ``centre`` probe; the bank's values are its expression."""
    query = spot_embeddings(pixel, test)
    train_images = spot_embeddings(pixel, train)
    bank_libs = np.asarray(pixel.bank.library_id)
    if not np.array_equal(np.asarray(pixel.bank.obs_names), np.asarray(train.obs_names).astype(str)):
        raise RuntimeError("the bank's spots are not the training spots in their order")
    keys = pixel.bank.embeddings
    centred = query - query.mean(axis=0)  # the held-out section is one slide
    return {
        "query to training mean": (centred + train_images.mean(axis=0), keys),
        "both per slide": (centred, centred_per_slide(keys, bank_libs)),
        "image keys per slide": (centred, centred_per_slide(train_images, bank_libs)),
    }


def fuse_rankings(pixel, texture, test) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(queries, keys) per pixel weight ``w``: their cosine is w cos_pixel + (1 − w) cos_texture."""
    if not np.array_equal(np.asarray(pixel.bank.obs_names), np.asarray(texture.bank.obs_names)):
        raise RuntimeError("the two banks hold different spots")
    parts = [(unit_rows(spot_embeddings(m, test)), unit_rows(m.bank.embeddings)) for m in (pixel, texture)]
    out = {}
    for w in PIXEL_WEIGHTS:
        scale = (np.sqrt(w), np.sqrt(1.0 - w))
        out[f"pixel weight {w:g}"] = tuple(
            np.hstack([s * p[i] for s, p in zip(scale, parts, strict=True)]) for i in (0, 1)
        )
    return out


def mean_r(result, prediction: np.ndarray | None = None) -> dict[str, float]:
    """Mean per-gene r of the HEG and HVG sets of a ``predict(copy=True)`` result (or of ``prediction``)."""
    import stpredict as stp

    scored = result.copy()
    if prediction is not None:
        scored.X = np.asarray(prediction, dtype=np.float32)
    table = stp.tl.evaluate(scored, key="probe", genes=("heg", "hvg"))
    return {s: float(table.loc[table["gene_set"] == s, "pearson_r"].mean()) for s in ("heg", "hvg")}


def run_fold(
    probe: str, adata, test_section: str, seed: int, epochs: int | None = None
) -> tuple[dict[str, dict[str, float]], float]:
    """The variants' r on one held-out section, and the seconds it took (``epochs``: smoke runs)."""
    import stpredict as stp
    from stpredict.retrieval import retrieve

    start = time.perf_counter()
    held_out = (adata.obs["library_id"] == test_section).to_numpy()
    train, test = adata[~held_out].copy(), adata[held_out].copy()
    pixel = stp.tl.fit(train, method="cmrcnet", preset="cpu", seed=seed, epochs=epochs, progress=False)
    result = stp.tl.predict(test, pixel, k=K, copy=True, key_added="probe", progress=False)
    scores = {"as fitted": mean_r(result)}
    if probe == "centre":
        rankings = centre_rankings(pixel, train, test)
    else:
        texture = stp.tl.fit(
            train, method="cmrcnet", preset="cpu", seed=seed, genes=list(pixel.genes), progress=False,
            **{**TEXTURE, "epochs": epochs or TEXTURE["epochs"]},
        )  # fmt: skip
        rankings = fuse_rankings(pixel, texture, test)
    for name, (queries, keys) in rankings.items():
        scores[name] = mean_r(result, retrieve(queries, keys, pixel.bank.expression, K).prediction)
    return scores, time.perf_counter() - start


def run(args: argparse.Namespace) -> None:
    """Every (probe, seed, fold): append one line per variant to ``args.out``."""
    adata = load_her2st(args.data_dir, SECTIONS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for probe in args.probe:
        for seed in args.seeds:
            for section in SECTIONS:
                scores, seconds = run_fold(probe, adata, section, seed, args.epochs)
                records = [
                    {
                        "probe": probe,
                        "seed": seed,
                        "held_out": section,
                        "variant": name,
                        **r,
                        "seconds": seconds,
                    }
                    for name, r in scores.items()
                ]
                with args.out.open("a") as fh:
                    fh.writelines(json.dumps(rec) + "\n" for rec in records)
                print(f"{probe} seed {seed} {section}: " + json.dumps(scores), flush=True)


def report(path: Path) -> str:
    """Markdown table: mean ± std over seeds of the fold-averaged HEG / HVG r, per probe and variant."""
    import pandas as pd

    df = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    per_seed = df.groupby(["probe", "variant", "seed"], sort=False)[["heg", "hvg"]].mean()
    agg = per_seed.groupby(level=["probe", "variant"], sort=False).agg(["mean", "std", "count"])

    def cell(row: Any, s: str) -> str:
        spread = "" if pd.isna(row[(s, "std")]) else f" ± {row[(s, 'std')]:.3f}"
        return f"{row[(s, 'mean')]:.3f}{spread}"

    lines = ["| probe | variant | seeds | HEG r | HVG r |", "| --- | --- | --- | --- | --- |"]
    for (probe, variant), row in agg.iterrows():
        seeds = int(row[("heg", "count")])
        lines.append(f"| {probe} | {variant} | {seeds} | {cell(row, 'heg')} | {cell(row, 'hvg')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "her2st")
    parser.add_argument("--probe", nargs="+", choices=["centre", "fuse"], default=["centre", "fuse"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    default_out = REPO / "benchmarks" / "results" / "her2st_embedding_probe.jsonl"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument(
        "--epochs", type=int, default=None, help="override both networks' epochs (smoke runs)"
    )
    parser.add_argument("--report", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        return
    run(args)


if __name__ == "__main__":
    main()

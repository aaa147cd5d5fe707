"""End-to-end training and prediction throughput, data loading included, against the authors' pipeline.

Both pipelines start from the slides as read from their JPEGs (``stp.io.read_legacy_st``: the
image decoded once, as the authors' code does) and train the same CMRCNet network of a preset for
one epoch over the same spots:

- **stpredict**: ``stp.tl.fit(..., epochs=1, stream=True, num_workers=W)``: patches cut from the
  slide per batch by ``W`` DataLoader workers while the network computes (the preset's recipe,
  test-time augmentation off as in the authors' code); then ``stp.tl.predict(copy=True)`` of
  every spot (patches cut per batch, embedding, chunked top-k).
- **authors' pipeline** (a reimplementation of the reference code's data path): every patch cut
  into one in-memory array first, ``num_workers=0``, autocast (bf16 on CUDA), the same
  optimiser; prediction embeds the in-memory patches and ranks the whole bank at once.

Reported: images/s of the training phase (loader + steps) and of the whole thing including
patch cutting, and spots/s of prediction; in one run, so the two share the machine's state.

Example
-------
::

    python benchmarks/pipeline.py --preset cpu --sections C3 C4            # CPU
    python benchmarks/pipeline.py --preset paper --device cuda --workers 8  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(adata, preset: str, device: str, workers: int, batch_size: int | None) -> dict:
    """stpredict's fit (streamed, workers) and predict; training images/s from the loop's history."""
    import stpredict as stp

    t0 = time.perf_counter()
    model = stp.tl.fit(
        adata, method="cmrcnet", preset=preset, epochs=1, val_fraction=0.0, stream=True, tta=False,
        num_workers=workers, batch_size=batch_size, device=device, progress=False, seed=0,
    )  # fmt: skip
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stp.tl.predict(adata, model, copy=True, progress=False, device=device, uncertainty=False)
    predict_s = time.perf_counter() - t0
    entry = model.history[0]
    n = adata.n_obs
    return {
        "pipeline": "stpredict",
        "workers": workers,
        "train_images_per_s": entry["images_per_s"],
        "fit_s": fit_s,
        "fit_images_per_s": n / fit_s,
        "predict_s": predict_s,
        "predict_spots_per_s": n / predict_s,
    }


def authors(adata, preset: str, device: str, batch_size: int | None) -> dict:
    """All patches in RAM, ``num_workers=0``, AMP; the same network, optimiser and epoch."""
    import torch

    import stpredict as stp
    from stpredict.data import SpotData, to_tensor
    from stpredict.models import METHODS

    dev = torch.device(stp.tl._fit.resolve_device(device))
    cls = METHODS["cmrcnet"]
    config = cls.default_config(preset)
    defaults = cls.presets[preset].training
    batch = batch_size or defaults.batch_size
    t_start = time.perf_counter()
    sd = SpotData.from_object(adata)
    genes = stp.pp.select_genes(adata)
    counts = adata[:, genes].X
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    expression = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    patches = sd.extract_patches(patch_size_um=112.0, size=int(config["image_size"]), progress=False)
    images = to_tensor(patches)
    cut_s = time.perf_counter() - t_start
    torch.manual_seed(0)
    module = cls(len(genes), **config).to(dev)
    opt = torch.optim.AdamW(module.parameters(), lr=defaults.lr, weight_decay=defaults.weight_decay)
    expr = torch.from_numpy(expression)
    coords = torch.from_numpy(np.asarray(sd.grid_coords, np.int64))
    order = torch.randperm(len(images))
    module.train()
    _sync(dev)
    t0 = time.perf_counter()
    for start in range(0, len(order) - batch + 1, batch):
        idx = order[start : start + batch]
        step = {"image": images[idx].to(dev), "expression": expr[idx].to(dev), "coords": coords[idx].to(dev)}
        step["index"] = idx.to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = module(step)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(dev)
    train_s = time.perf_counter() - t0
    n_trained = (len(order) // batch) * batch
    predict_s = _authors_predict(module, images, expr, dev)
    return {
        "pipeline": "authors (patches in RAM, num_workers=0, AMP)",
        "workers": 0,
        "train_images_per_s": n_trained / train_s,
        "fit_s": cut_s + train_s,
        "fit_images_per_s": n_trained / (cut_s + train_s),
        "predict_s": cut_s + predict_s,
        "predict_spots_per_s": len(images) / (cut_s + predict_s),
    }


def _authors_predict(module, images, expr, dev, k: int = 50) -> float:
    """Embed the in-memory patches and the bank, rank the whole bank at once, average the top k."""
    import torch

    module.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        bank = torch.cat(
            [module.encode_expression(expr[i : i + 256].to(dev)) for i in range(0, len(expr), 256)]
        )
        queries = torch.cat(
            [module.encode_image(images[i : i + 256].to(dev)) for i in range(0, len(images), 256)]
        )
        sims = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
        top = sims.topk(min(k, len(bank)), dim=1).indices
        expr.to(dev)[top].mean(1).cpu()
    _sync(dev)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: both pipelines, one JSON + markdown table."""
    from her2st_cv import load_her2st

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(os.environ.get("STPREDICT_SHARED_DATA", REPO.parent / "shared" / "data")) / "her2st"
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    parser.add_argument("--sections", nargs="+", default=["C3", "C4"])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    adata = load_her2st(args.data_dir, args.sections)
    rows = [
        ours(adata, args.preset, args.device, args.workers, args.batch_size),
        authors(adata, args.preset, args.device, args.batch_size),
    ]
    out = args.out or REPO / "benchmarks" / "results" / f"pipeline_{args.preset}_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"preset": args.preset, "device": args.device, "sections": args.sections, "spots": adata.n_obs}
    out.write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")
    lines = [
        f"{adata.n_obs} spots ({', '.join(args.sections)}), CMRCNet `{args.preset}` preset, {args.device}",
        "",
        "| pipeline | workers | training img/s | fit incl. patch cutting img/s | prediction spots/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['pipeline']} | {r['workers']} | {r['train_images_per_s']:.0f} | "
            f"{r['fit_images_per_s']:.0f} | {r['predict_spots_per_s']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

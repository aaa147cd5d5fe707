"""Throughput and memory benchmark of stpredict (training, prediction, retrieval).

Usage::

    python benchmarks/bench.py [--quick] [--device cpu|cuda] [--out benchmarks/results/bench_cpu.json]

Reports, in one run:

* training images/s of CMRCNet with the "paper" and "cpu" presets: the shared training loop
  (``stpredict.train``) on random tensors at the preset's image size (data loading excluded);
* prediction spots/s: image embedding (``STPredictModel.embed_images`` on uint8 patches) plus
  top-k retrieval and aggregation over a reference bank;
* retrieval of 50,000 queries against 20,000 references (top-50, 256-d, mean of 1,000 genes) with
  the chunked :func:`stpredict.retrieval.retrieve` versus the dense reference implementation,
  each in a fresh subprocess: time and peak memory (max-RSS increase on CPU,
  ``torch.cuda.max_memory_allocated`` on GPU);
* the peak RSS of the benchmark process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent


def _maxrss_mb(who=resource.RUSAGE_SELF) -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale / 2**20


def _proc_status_mb(field: str) -> float | None:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process from /proc (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0), so ru_maxrss measures from now on."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- training
def bench_training(preset: str, *, n_genes: int, batch_size: int, steps: int, device: torch.device) -> dict:
    """Images/s of full training steps (forward, backward, AdamW) in the shared loop."""
    from stpredict.models import METHODS
    from stpredict.train import _run_epoch

    cls = METHODS["cmrcnet"]
    torch.manual_seed(0)
    module = cls(n_genes, **cls.default_config(preset)).to(device)
    defaults = module.training_defaults
    size = defaults["image_size"]
    opt = torch.optim.AdamW(module.parameters(), lr=defaults["lr"], weight_decay=defaults["weight_decay"])
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(batch_size, 3, size, size, generator=g),
        "expression": torch.rand(batch_size, n_genes, generator=g),
        "coords": torch.randint(0, 30, (batch_size, 2), generator=g),
        "index": torch.arange(batch_size),
    }
    autocast = device.type == "cuda"
    _run_epoch(module, [batch], device, autocast, opt, "warm-up", False)  # warm-up step
    _sync(device)
    t0 = time.perf_counter()
    _, n_images, _ = _run_epoch(module, [batch] * steps, device, autocast, opt, "bench", False)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "preset": preset,
        "backbone": module.config["backbone"],
        "image_size": size,
        "parameters": sum(p.numel() for p in module.parameters()),
        "batch_size": batch_size,
        "preset_batch_size": defaults["batch_size"],
        "steps": steps,
        "seconds_per_step": seconds / steps,
        "images_per_s": n_images / seconds,
        "amp_bf16": autocast,
    }


# --------------------------------------------------------------------------- prediction
def bench_prediction(
    preset: str, *, n_genes: int, n_spots: int, n_bank: int, batch_size: int, device: torch.device
) -> dict:
    """Spots/s of prediction: embed uint8 patches, then top-k retrieval + aggregation."""
    from stpredict.models import METHODS, STPredictModel
    from stpredict.retrieval import retrieve

    cls = METHODS["cmrcnet"]
    torch.manual_seed(0)
    module = cls(n_genes, **cls.default_config(preset))
    model = STPredictModel("cmrcnet", module, genes=[f"g{i}" for i in range(n_genes)])
    size = model.patch["size"]
    k = int(model.retrieval["k"])
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, size=(n_spots, size, size, 3), dtype=np.uint8)
    bank_emb = rng.normal(size=(n_bank, model.embedding_dim)).astype(np.float32)
    bank_expr = rng.random((n_bank, n_genes), dtype=np.float32)
    model.embed_images(patches[:batch_size], batch_size=batch_size, device=device, progress=False)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    emb = model.embed_images(patches, batch_size=batch_size, device=device, progress=False)
    _sync(device)
    t1 = time.perf_counter()
    res = retrieve(emb, bank_emb, bank_expr, k, weighting=model.retrieval["weighting"], device=device)
    t2 = time.perf_counter()
    assert res.prediction.shape == (n_spots, n_genes)
    return {
        "preset": preset,
        "image_size": size,
        "spots": n_spots,
        "bank": n_bank,
        "k": k,
        "embed_seconds": t1 - t0,
        "retrieval_seconds": t2 - t1,
        "spots_per_s": n_spots / (t2 - t0),
    }


# --------------------------------------------------------------------------- retrieval
def _retrieval_worker(args: argparse.Namespace) -> None:
    """Runs in a fresh subprocess: one method, prints a JSON line."""
    from stpredict.retrieval import _neighbour_distances, aggregate, naive_topk_cosine, retrieve

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    keys = rng.normal(size=(args.references, args.dim)).astype(np.float32)
    values = rng.random((args.references, args.n_genes), dtype=np.float32)
    # warm up the kernels on a small problem, then record the baseline
    retrieve(queries[:64], keys[:1000], values[:1000], 5, device=device)
    naive_topk_cosine(queries[:64], keys[:1000], 5, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    reset = _reset_peak_rss()
    rss_before = _proc_status_mb("VmRSS") or _maxrss_mb()
    t0 = time.perf_counter()
    if args.worker in ("chunked", "faiss"):
        backend = "faiss" if args.worker == "faiss" else "torch"
        res = retrieve(queries, keys, values, args.k, device=device, backend=backend)
        indices, prediction = res.indices, res.prediction
        search_seconds = None
    else:
        indices, _ = naive_topk_cosine(queries, keys, args.k, device=device)
        search_seconds = time.perf_counter() - t0
        _neighbour_distances(torch.from_numpy(queries), torch.from_numpy(keys), indices, device)
        prediction = aggregate(values, indices, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "search_seconds": search_seconds,
        # without the reset the peak may predate the call (then this overestimates)
        "peak_rss_increase_mb": (_proc_status_mb("VmHWM") or _maxrss_mb()) - rss_before,
        # peak of this process during the call; ru_maxrss is not used: after fork + exec it
        # starts from the parent's peak
        "peak_rss_mb": _proc_status_mb("VmHWM") or _maxrss_mb(),
        "peak_rss_reset": reset,
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - gpu_base) / 2**20
    np.save(args.dump, np.concatenate([indices[:2000].astype(np.float32), prediction[:2000]], axis=1))
    print("RESULT " + json.dumps(out), flush=True)


def bench_retrieval(
    *,
    queries: int,
    references: int,
    k: int,
    dim: int,
    n_genes: int,
    device: str,
    workers: tuple[str, ...] = ("chunked", "naive"),
) -> dict:
    """Chunked ``retrieve`` (torch and FAISS search) vs the dense reference, each in its own subprocess."""
    result = {"queries": queries, "references": references, "k": k, "dim": dim, "genes": n_genes}
    with tempfile.TemporaryDirectory() as tmp:
        dumps = {}
        for worker in workers:
            dumps[worker] = Path(tmp) / f"{worker}.npy"
            cmd = [
                sys.executable, __file__, "--_worker", worker, "--device", device,
                "--_queries", str(queries), "--_references", str(references), "--_k", str(k),
                "--_dim", str(dim), "--n-genes", str(n_genes), "--_dump", str(dumps[worker]),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                result[worker] = {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
                continue
            result[worker] = json.loads(lines[-1][len("RESULT ") :])
        reference = "naive" if "naive" in workers else "chunked"
        for worker in workers:
            if worker == reference or not all("seconds" in result.get(w, {}) for w in (worker, reference)):
                continue
            a, b = np.load(dumps[worker]), np.load(dumps[reference])
            same = [set(x) == set(y) for x, y in zip(a[:, :k], b[:, :k])]
            result[worker][f"same_neighbours_as_{reference}"] = float(np.mean(same))
            result[worker][f"max_abs_prediction_diff_vs_{reference}"] = float(
                np.abs(a[:, k:] - b[:, k:]).max()
            )
            result[worker][f"speedup_vs_{reference}"] = (
                result[reference]["seconds"] / result[worker]["seconds"]
            )
    return result


# --------------------------------------------------------------------------- report
def _markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# stpredict benchmark ({env['device']}, {'quick' if report['quick'] else 'full'})",
        "",
        f"torch {env['torch']}, {env['cpu_count']} CPU cores, torch threads {env['torch_threads']}, "
        f"{env['platform']}; 1-min load average {env['load_before']:.1f} before, "
        f"{env['load_after']:.1f} after (shared machine)",
        "",
        "| training (CMRCNet) | image size | batch | images/s | s/step |",
        "|---|---|---|---|---|",
    ]
    for t in report["training"]:
        lines.append(
            f"| {t['preset']} ({t['backbone']}) | {t['image_size']} | {t['batch_size']} | "
            f"{t['images_per_s']:.1f} | {t['seconds_per_step']:.2f} |"
        )
    lines += [
        "",
        "| prediction | spots | bank | spots/s | embed s | retrieval s |",
        "|---|---|---|---|---|---|",
    ]
    for p in report["prediction"]:
        lines.append(
            f"| {p['preset']} | {p['spots']} | {p['bank']} | {p['spots_per_s']:.1f} | "
            f"{p['embed_seconds']:.2f} | {p['retrieval_seconds']:.2f} |"
        )
    r = report["retrieval"]
    mem = "cuda_peak_mb" if "cuda_peak_mb" in r.get("chunked", {}) else "peak_rss_increase_mb"
    lines += [
        "",
        f"Retrieval: {r['queries']:,} queries × {r['references']:,} references, top-{r['k']}, "
        f"{r['dim']}-d, mean of {r['genes']} genes",
        "",
        f"| method | seconds | peak memory increase (MiB, {mem}) |",
        "|---|---|---|",
    ]
    for w in ("chunked", "naive"):
        if "seconds" in r[w]:
            lines.append(f"| {w} | {r[w]['seconds']:.2f} | {r[w][mem]:.0f} |")
        else:
            lines.append(f"| {w} | failed: {r[w]['error'][:80]} | |")
    c = r.get("chunked", {})
    if "speedup_vs_naive" in c:
        lines += [
            "",
            f"Same neighbour sets: {100 * c['same_neighbours_as_naive']:.2f} % of checked queries; "
            f"max |Δ prediction| {c['max_abs_prediction_diff_vs_naive']:.2e}; naive/chunked time "
            f"{c['speedup_vs_naive']:.2f}×.",
        ]
    lines += ["", f"Peak RSS of the benchmark process: {report['peak_rss_mb']:.0f} MiB", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test, ~1 min on CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (a .md summary is written next to it)"
    )
    parser.add_argument("--n-genes", type=int, default=1000)
    # internal: retrieval subprocess
    parser.add_argument(
        "--retrieval-only",
        type=int,
        nargs=2,
        metavar=("QUERIES", "REFERENCES"),
        default=None,
        help="only the retrieval benchmark at this size (torch-chunked and FAISS; the dense reference "
        "too when it fits: up to 50,000 x 50,000)",
    )
    parser.add_argument(
        "--workers",
        nargs="+",
        choices=("chunked", "faiss", "naive"),
        default=None,
        help="with --retrieval-only",
    )
    parser.add_argument(
        "--_worker", choices=("chunked", "faiss", "naive"), default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--_queries", type=int, default=50_000, help=argparse.SUPPRESS)
    parser.add_argument("--_references", type=int, default=20_000, help=argparse.SUPPRESS)
    parser.add_argument("--_k", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--_dim", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--_dump", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker is not None:
        _retrieval_worker(
            argparse.Namespace(
                worker=args._worker,
                device=args.device,
                queries=args._queries,
                references=args._references,
                k=args._k,
                dim=args._dim,
                n_genes=args.n_genes,
                dump=args._dump,
            )  # fmt: skip
        )
        return None

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.retrieval_only:
        return _retrieval_only(
            *args.retrieval_only, n_genes=args.n_genes, device=args.device, out=args.out, workers=args.workers
        )
    gpu = device.type == "cuda"
    quick = args.quick
    out = args.out or ROOT / "results" / f"bench_{device.type}{'_quick' if quick else ''}.json"
    G = args.n_genes

    report: dict = {
        "quick": quick,
        "environment": {
            "device": torch.cuda.get_device_name(device)
            if gpu
            else f"cpu ({platform.processor() or 'unknown'})",
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # the machine may be shared: 1-minute load average before the run (see also "load_after")
            "load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
    }

    # Training: the "cpu" preset at its batch size (64); the "paper" preset (ViT-B/32, depth 8,
    # 224 px) with batch 64 on GPU but 8 on CPU, where one 64-image step would take minutes.
    train_plan = [
        ("cpu", 64, 2 if quick else 3),
        ("paper", 64 if gpu else (4 if quick else 8), 2 if quick else 3),
    ]
    if gpu:
        train_plan = [(p, 64, 20) for p, _, _ in train_plan]
    report["training"] = []
    for preset, bs, steps in train_plan:
        print(f"training {preset}: batch {bs}, {steps} steps ...", flush=True)
        report["training"].append(
            bench_training(preset, n_genes=G, batch_size=bs, steps=steps, device=device)
        )

    pred_plan = {"cpu": 128 if quick else 512, "paper": 16 if quick else 64}
    if gpu:
        pred_plan = {"cpu": 8192, "paper": 8192}
    report["prediction"] = []
    for preset, n_spots in pred_plan.items():
        print(f"prediction {preset}: {n_spots} spots ...", flush=True)
        report["prediction"].append(
            bench_prediction(
                preset,
                n_genes=G,
                n_spots=n_spots,
                n_bank=2_000 if quick else 20_000,
                batch_size=256 if gpu else 64,
                device=device,
            )  # fmt: skip
        )

    q, r = (5_000, 2_000) if quick else (50_000, 20_000)
    print(f"retrieval: {q} x {r} (chunked and dense, in subprocesses) ...", flush=True)
    report["retrieval"] = bench_retrieval(
        queries=q, references=r, k=50, dim=256, n_genes=G, device=args.device
    )
    report["environment"]["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report["peak_rss_mb"] = _maxrss_mb()

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    md = _markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


def _retrieval_only(
    queries: int, references: int, *, n_genes: int, device: str, out: Path | None, workers: list[str] | None
) -> dict:
    """``--retrieval-only Q R``: memory and time of retrieval at a large size, as JSON."""
    default = ("chunked", "faiss") + (("naive",) if queries * references <= 50_000 * 50_000 else ())
    workers = tuple(workers or default)
    if device != "cpu":
        workers = tuple(w for w in workers if w != "faiss")
    print(f"retrieval: {queries} x {references} ({', '.join(workers)}) ...", flush=True)
    result = bench_retrieval(
        queries=queries, references=references, k=50, dim=256, n_genes=n_genes, device=device, workers=workers
    )
    result["environment"] = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "device": device}
    out = out or ROOT / "results" / f"retrieval_{queries}x{references}_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Exploratory: an ensemble of CMRCNet models fitted with different seeds, retrieving together.

Each fold fits ``--members`` models of the best feature recipe of ``docs/her2st.md``
(``features:handmade_30ep+stain+smooth0.5``) that differ only in their seed. A query's similarity
to a bank spot is the *mean* of the members' cosine similarities, i.e. the cosine between the
concatenations of the members' unit embeddings (query: image embeddings; bank: expression
embeddings), so one top-k search over the concatenated keys retrieves for the ensemble. The first
member carries the concatenated embeddings through ``stp.tl.cross_validate``; genes, folds,
smoothing and evaluation are the unchanged ones of ``her2st_ablation.py``. One JSON line per
(members, seed) is appended to ``results/her2st_ensemble.jsonl``.

Example
-------
::

    python benchmarks/her2st_ensemble.py --members 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from her2st_ablation import FEATURES_KEY, VARIANTS, add_handmade_features, split_overrides  # noqa: E402
from her2st_cv import load_her2st  # noqa: E402
from her2st_image_keys import unit_rows  # noqa: E402

RECIPE = "features:handmade_30ep+stain+smooth0.5"
SEED_STRIDE = 1000  # member j of seed s is fitted with seed s + 1000 j


def ensemble(members: list):
    """The first member, retrieving with the concatenated unit embeddings of all members.

    Only the prediction is meaningful: the OOD reference stays the first member's.
    """
    lead = members[0]
    names = np.asarray(lead.bank.obs_names)
    for other in members[1:]:
        if not np.array_equal(np.asarray(other.bank.obs_names), names):
            raise ValueError("ensemble: the members' banks hold different spots")
    keys = np.concatenate([unit_rows(np.asarray(m.bank.embeddings)) for m in members], axis=1)
    lead.bank = dataclasses.replace(lead.bank, embeddings=keys.astype(np.float32))

    embeds = [m.embed_inputs for m in members]  # bound before the lead's is shadowed

    def embed_inputs(inputs, **kwargs):
        return np.concatenate([unit_rows(embed(inputs, **kwargs)) for embed in embeds], axis=1)

    lead.embed_inputs = embed_inputs  # instance attribute: shadows the method for this model only
    return lead


def _fit_members(real_fit, n_members: int):
    def fit(train, *, seed: int = 0, **kwargs):
        models = [real_fit(train, seed=seed + SEED_STRIDE * j, **kwargs) for j in range(n_members)]
        return ensemble(models) if n_members > 1 else models[0]

    return fit


def main(argv: list[str] | None = None) -> None:
    """Cross-validate the recipe once per (members, seed) with ensemble retrieval."""
    import stpredict as stp
    import stpredict.tl._fit as fit_module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "her2st")
    parser.add_argument("--members", type=int, nargs="+", default=[3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "her2st_ensemble.jsonl")
    args = parser.parse_args(argv)

    adata = load_her2st(args.data_dir, ["C2", "C3", "C4", "C5"])
    method, overrides = VARIANTS[RECIPE]
    if overrides.get("image_features") == FEATURES_KEY:
        add_handmade_features(adata)
    cv_options, fit_overrides = split_overrides(overrides)
    real_fit = fit_module.fit
    try:
        for n_members in args.members:
            fit_module.fit = _fit_members(real_fit, n_members)
            for seed in args.seeds:
                start = time.perf_counter()
                label = f"{n_members} members"
                res = stp.tl.cross_validate(
                    adata, method={label: (method, fit_overrides)}, **cv_options, k=50, baselines=(),
                    n_genes=50, seed=seed, preset="cpu", progress=False,
                )  # fmt: skip
                record = {"recipe": RECIPE, "members": n_members, "seed": seed}
                record["wall_s"] = time.perf_counter() - start
                record["summary"] = res.summary.loc[label].to_dict()
                with args.out.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)
    finally:
        fit_module.fit = real_fit


if __name__ == "__main__":
    main()

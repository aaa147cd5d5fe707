"""Write ``tutorial.ipynb`` from the cells below; execute it with nbclient.

Run from the repository root::

    python docs/tutorials/build_tutorial.py          # write and execute (about 3 minutes on 2 cores)
    python docs/tutorials/build_tutorial.py --no-run # write only
"""

import argparse
from pathlib import Path

import nbformat as nbf

CELLS = [
    (
        "md",
        """# From H&E to expression: a complete stpredict session

This tutorial runs offline on the synthetic dataset that ships with stpredict: three slides whose
H&E-like appearance (nuclei density, eosin intensity, nuclei size, fibre texture) is a known function
of latent expression programmes. We train CMRCNet on two slides, impute expression on the third from
the image alone, evaluate it, draw every figure, and check that clustering the *predicted* expression
recovers the tissue domains found by clustering the *measured* expression.""",
    ),
    (
        "code",
        """import tempfile
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets needed

import numpy as np
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import stpredict as stp

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message="zarr v3 autosharding")  # printed by zarr on every write
stp.settings.verbosity = 1  # warnings only, to keep the notebook short""",
    ),
    (
        "md",
        "## Data\n\nOne AnnData, several slides told apart by `obs['library_id']`, "
        "in the scanpy/squidpy Visium convention.",
    ),
    (
        "code",
        """adata = stp.datasets.synthetic(seed=0)
adata""",
    ),
    (
        "code",
        """train = adata[adata.obs["library_id"] != "slide2"].copy()
test = adata[adata.obs["library_id"] == "slide2"].copy()
train.n_obs, test.n_obs""",
    ),
    (
        "md",
        """## Fit

`preset="cpu"` is the documented small configuration (a half-width ResNet-18 at 64 px with stain
jitter and test-time augmentation) that trains in minutes on two cores; `preset="paper"` is the
authors' configuration for a GPU. The default, `preset="auto"`, picks one of the two from the
hardware and logs which.""",
    ),
    (
        "code",
        """model = stp.tl.fit(train, preset="cpu", epochs=EPOCHS, seed=0, progress=False)
model""",
    ),
    ("code", "stp.pl.training_history(model);"),
    (
        "md",
        """## Predict

Prediction embeds each test patch, retrieves the `k` most similar training spots and averages their
expression. Results land in `.obsm["stpredict"]` (a DataFrame), plus the normalised truth next to it
when the slide was sequenced.""",
    ),
    (
        "code",
        """stp.tl.predict(test, model=model, k=50, progress=False)
test.obsm["stpredict"].iloc[:5, :6]""",
    ),
    (
        "md",
        "## Evaluate\n\nPearson r per gene across spots, on the top-50 highly expressed (HEG) "
        "and highly variable (HVG) genes of the slide.",
    ),
    (
        "code",
        """res = stp.tl.evaluate(test, genes=("heg", "hvg", "all"))
res.groupby("gene_set")["pearson_r"].describe()[["count", "mean", "50%"]]""",
    ),
    ("md", "## Figures"),
    (
        "code",
        """best = res[res.gene_set == "hvg"].sort_values("pearson_r", ascending=False).gene.iloc[:2].tolist()
stp.pl.expression_map(test, best);""",
    ),
    ("code", 'stp.pl.pcc_boxplot(res, x="gene_set");'),
    ("code", "stp.pl.gene_correlation(test, n_genes=30);"),
    ("code", "stp.pl.expression_profile(test);"),
    (
        "md",
        """## Carry on in scanpy

`copy=True` returns a new AnnData of predicted expression, with the spatial metadata carried over,
ready for the usual scanpy pipeline. We cluster the prediction and the measured expression the same
way and compare the two partitions with the adjusted Rand index (1: the same partition, about 0:
no better than chance).""",
    ),
    (
        "code",
        """pred = stp.tl.predict(test, model=model, k=50, copy=True, key_added="pred", progress=False)
sc.pp.pca(pred, n_comps=15)
sc.pp.neighbors(pred)
sc.tl.leiden(pred, resolution=0.5, key_added="leiden_pred", flavor="igraph", n_iterations=2, random_state=0)

truth = sc.AnnData(pred.layers["truth"].copy(), obs=pred.obs[[]].copy())
sc.pp.pca(truth, n_comps=15)
sc.pp.neighbors(truth)
sc.tl.leiden(truth, resolution=0.5, key_added="leiden_truth", flavor="igraph", n_iterations=2, random_state=0)

ari = adjusted_rand_score(truth.obs["leiden_truth"], pred.obs["leiden_pred"])
print(f"ARI between clusters of measured and predicted expression: {ari:.2f}")""",
    ),
    (
        "code",
        """pred.obs["leiden_truth"] = truth.obs["leiden_truth"].values
sc.pl.embedding(pred, basis="spatial", color=["leiden_truth", "leiden_pred"], size=60)""",
    ),
    (
        "md",
        """## The same with SpatialData

`fit` and `predict` take a `SpatialData` object as well (from `spatialdata_io.visium(...)`, or here
converted from the AnnData): the image element, the spot circles and the table are found by
themselves, and the prediction is written as a *new* table that annotates the same spots, so
the input table is never modified and is still the default input of the next call.""",
    ),
    (
        "code",
        """sdata = stp.io.to_spatialdata(test)
stp.tl.predict(sdata, model=model, k=50, progress=False)
print(sdata)
stp.tl.evaluate(sdata).groupby("gene_set")["pearson_r"].mean()""",
    ),
    (
        "code",
        """import spatialdata

with tempfile.TemporaryDirectory() as tmp:
    sdata.write(f"{tmp}/slide2.zarr")
    back = spatialdata.read_zarr(f"{tmp}/slide2.zarr")
    stp.tl.predict(back, model=model, k=50, key_added="again", progress=False)  # input table found again
    print(sorted(back.tables))""",
    ),
    (
        "md",
        """## Your own slides

The same calls take the objects the scverse readers return:

- **Visium** (Space Ranger `outs/`): `sq.read.visium("outs/")` or `sc.read_visium("outs/")` give an
  AnnData in the convention used above (RGBA PNGs and any library id are fine; the pixel size comes
  from the 55 µm spot diameter); `spatialdata_io.visium("outs/", dataset_id="s1")` gives a
  SpatialData whose spots are read on the finer of its hires / lowres images.
- **Visium HD**: `stp.pp.bin_spots(sdata, diameter_um=55, spacing_um=100)` pools the 2/8/16 µm bins
  into spot-sized pseudo-spots (the bins themselves, as polygons, are accepted as well).
- **Xenium and other cell- or transcript-level data**:
  `stp.pp.pseudo_spots(sdata, microns_per_unit=1.0)` pools cells (a table of cell shapes) or
  transcripts (`points_key="transcripts"`) the same way.
- **HEST-1k samples**: `stp.io.read_hest(root, ids)` (a local copy) or `stp.datasets.hest(ids)`.
- **Precomputed patch embeddings** (e.g. a pathology foundation model run with LazySlide or
  sopa): `stp.tl.fit(sdata, image_features="X_uni")`; a frozen pretrained encoder:
  `stp.tl.fit(sdata, backbone="hf-hub:MahmoodLab/UNI", freeze_backbone=True)`.""",
    ),
    (
        "md",
        """## Save and reload

Models are folders of safetensors weights and JSON: loading executes no pickled code, and predictions
of the reloaded model are identical.""",
    ),
    (
        "code",
        """with tempfile.TemporaryDirectory() as tmp:
    model.save(f"{tmp}/model")
    again = stp.models.load(f"{tmp}/model")
    p2 = stp.tl.predict(test, model=again, k=50, copy=True, key_added="again", progress=False)
np.abs(p2.X - pred.X).max()""",
    ),
]


def build(epochs: int = 15) -> nbf.NotebookNode:
    """The notebook, unexecuted."""
    nb = nbf.v4.new_notebook()
    for kind, src in CELLS:
        src = src.replace("EPOCHS", str(epochs))
        nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbf.NotebookNode, cwd: Path) -> None:
    """Run every cell in a fresh kernel (nbclient, installed with the ``doc`` extra)."""
    from nbclient import NotebookClient

    resources = {"metadata": {"path": str(cwd)}}
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources=resources).execute()


def main(argv: list[str] | None = None) -> None:
    """Write (and by default execute) the notebook next to this file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="write the notebook without executing it")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    out = Path(__file__).with_name("tutorial.ipynb")
    nb = build(args.epochs)
    if not args.no_run:
        execute(nb, out.parent)
    nbf.write(nb, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

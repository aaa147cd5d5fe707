"""What a new user meets in the first hour (issue "The first hour"), one test per point."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from _builders import synthetic_split

import stpredict as stp
from stpredict._progress import PlainProgress, format_seconds, progress
from stpredict.cli import main

FIT = {"preset": "tiny", "epochs": 1, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def slides():
    return synthetic_split(30, seed=5)


@pytest.fixture(scope="module")
def model(slides):
    return stp.tl.fit(slides[0], **FIT)


# -- 2. progress and estimates -------------------------------------------------------------------
def test_plain_progress_is_a_few_lines(caplog):
    caplog.set_level(logging.INFO, logger="stpredict")
    for _ in PlainProgress(range(1000), None, "work", "item"):
        pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("work:")]
    assert 3 <= len(lines) <= 6
    assert lines[-1].startswith("work: 1000/1000 item (100 %)")
    assert any("ETA" in line for line in lines[1:-1])
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_inner_bars_are_silent_off_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="stpredict")
    assert sum(1 for _ in progress(range(50), desc="inner", inner=True)) == 50
    assert not [r for r in caplog.records if "inner" in r.getMessage()]


def test_format_seconds():
    assert format_seconds(5) == "5 s"
    assert format_seconds(75) == "1 min 15 s"
    assert format_seconds(3725) == "1 h 02 min"


def test_fit_logs_an_estimate(slides, caplog):
    caplog.set_level(logging.INFO, logger="stpredict")
    stp.tl.fit(slides[0], **{**FIT, "epochs": 2, "batch_size": 4, "progress": True})
    text = caplog.text
    assert "estimated from the first 3 steps" in text
    assert "for the 2 epoch(s) to run" in text


def test_max_epochs_setting(slides, monkeypatch):
    monkeypatch.setenv("STPREDICT_MAX_EPOCHS", "1")
    model = stp.tl.fit(slides[0], **{**FIT, "epochs": 3})
    assert model.training["epochs"] == 1
    monkeypatch.setenv("STPREDICT_MAX_EPOCHS", "zero")
    with pytest.raises(ValueError, match="STPREDICT_MAX_EPOCHS"):
        stp.settings.max_epochs  # noqa: B018


# -- 3. the default preset ------------------------------------------------------------------------
def test_auto_preset_is_cpu_without_gpu(slides, caplog):
    caplog.set_level(logging.INFO, logger="stpredict")
    from stpredict.tl._fit import resolve_preset

    assert resolve_preset("auto", "cpu") == "cpu"
    assert resolve_preset("auto", "cuda:0") == "paper"
    assert "preset='auto' → 'cpu'" in caplog.text
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        assert resolve_preset("paper", "cpu") == "paper"
    assert "h per 1,000 spots" in caplog.text


def test_fit_default_preset_is_auto():
    import inspect

    assert inspect.signature(stp.tl.fit).parameters["preset"].default == "auto"


# -- 4. subsets carry only their own slides -------------------------------------------------------
def test_copy_result_has_only_its_slide(slides, model):
    test = slides[1]
    assert len(test.uns["spatial"]) == 2  # the subset still holds both slides' images
    out = stp.tl.predict(test, model, k=5, copy=True, progress=False)
    assert list(out.uns["spatial"]) == ["slide1"]
    assert list(out.obs["library_id"].cat.categories) == ["slide1"]


@pytest.mark.slow
def test_copy_result_renders_in_scanpy_squidpy_spatialdata_plot(slides, model, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    import squidpy as sq

    out = stp.tl.predict(slides[1], model, k=5, copy=True, progress=False)
    gene = out.var_names[0]
    sc.pl.spatial(out, color=gene, show=False)
    plt.savefig(tmp_path / "scanpy.png")
    sq.pl.spatial_scatter(out, color=gene)
    plt.savefig(tmp_path / "squidpy.png")
    plt.close("all")
    import spatialdata_plot  # noqa: F401  (registers .pl)

    sdata = stp.io.to_spatialdata(slides[1])
    stp.tl.predict(sdata, model, k=5, progress=False)
    shapes = next(iter(sdata.shapes))
    sdata.pl.render_shapes(shapes, color=gene, table_name="stpredict").pl.show(
        save=tmp_path / "spatialdata_plot.png"
    )
    for name in ("scanpy.png", "squidpy.png", "spatialdata_plot.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


# -- 5. SpatialData round trips -------------------------------------------------------------------
def test_spatialdata_second_round_without_table_key(slides, model):
    sdata = stp.io.to_spatialdata(slides[1])
    stp.tl.predict(sdata, model, k=5, progress=False)
    assert len(sdata.tables) == 2
    stp.tl.predict(sdata, model, k=5, key_added="again", progress=False)  # no table_key needed
    assert "again" in sdata.tables
    refit = stp.tl.fit(sdata, **FIT)  # the input table is found among stpredict's results
    assert refit.bank["expression"].shape[0] == sdata.tables["table"].n_obs


def test_input_checked_before_the_model_is_loaded(tmp_path):
    images_only = stp.datasets.synthetic(n_slides=1, n_spots_per_side=4, n_genes=8)[:0].copy()
    with pytest.raises(ValueError, match="grid_spacing_um"):
        stp.tl.predict(images_only, tmp_path / "no-such-model", progress=False)


# -- 6. expression maps draw a resampled crop ------------------------------------------------------
def test_expression_map_shrinks_a_large_image(slides, model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = slides[1].copy()
    stp.tl.predict(test, model, k=5, progress=False)
    entry = test.uns["spatial"]["slide1"]
    big = np.kron(entry["images"]["hires"], np.ones((8, 8, 1), dtype=entry["images"]["hires"].dtype))
    entry["images"]["hires"] = big
    entry["scalefactors"]["tissue_hires_scalef"] *= 8
    fig = stp.pl.expression_map(test, model.genes[0], show=False, panel_size=(2.0, 2.0))
    drawn = [im.get_array().shape for ax in fig.axes for im in ax.get_images()]
    plt.close(fig)
    limit = 2 * 2.0 * float(matplotlib.rcParams["figure.dpi"]) + 2
    assert drawn
    assert all(max(shape[:2]) <= limit for shape in drawn), (drawn, big.shape)


# -- 7. the documented workflow's dependencies ----------------------------------------------------
def test_leiden_backend_is_a_dependency():
    from importlib.metadata import requires

    names = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in requires("stpredict-he")}
    assert {"leidenalg", "igraph"} <= names


# -- 8. smaller things ----------------------------------------------------------------------------
def test_boxplot_by_gene_set_is_one_panel():
    res = pd.DataFrame(
        {"gene_set": ["heg"] * 3 + ["hvg"] * 3, "gene": list("abcabc"), "pearson_r": np.linspace(0, 1, 6)}
    )
    fig = stp.pl.pcc_boxplot(res, x="gene_set", show=False)
    assert len(fig.axes) == 1
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["heg", "hvg"]


def test_quiet_after_the_subcommand(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "missing.h5ad"), "-q"])
    assert code == 1
    assert stp.settings.verbosity == 2  # restored


def test_cli_errors_name_flags(slides, tmp_path, capsys):
    path = tmp_path / "two.zarr"
    sdata = stp.io.to_spatialdata(slides[1])
    sdata.tables["other"] = sdata.tables["table"].copy()
    sdata.write(path)
    model_dir = tmp_path / "m"
    stp.tl.fit(slides[0], **FIT).save(model_dir)
    code = main(["predict", str(path), "--model", str(model_dir), "--out", str(tmp_path / "o.zarr")])
    err = capsys.readouterr().err
    assert code == 1
    assert "--table-key" in err
    assert "table_key" not in err


def test_fit_refuses_a_full_output_before_reading(tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["fit", str(tmp_path / "data-not-read.h5ad"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "--overwrite" in err
    assert "not empty" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_fit_cli_has_backbone_flags():
    from stpredict.cli import _parser

    args = _parser().parse_args(
        ["fit", "x.h5ad", "--out", "m", "--weights-path", "w.safetensors", "--patch-size-um", "100"]
    )
    assert args.weights_path == "w.safetensors"
    assert args.patch_size_um == 100.0
    assert not args.pretrained


def test_corrupt_h5ad_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not hdf5 at all")
    assert main(["evaluate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "could not be read as an AnnData .h5ad file" in err
    assert "Traceback" not in err


def test_evaluate_logs_rounded_r(slides, model, caplog):
    caplog.set_level(logging.INFO, logger="stpredict")
    test = slides[1].copy()
    stp.tl.predict(test, model, k=5, progress=False)
    stp.tl.evaluate(test)
    line = next(r.getMessage() for r in caplog.records if "mean r per set" in r.getMessage())
    import re

    assert all(len(d) <= 3 for d in re.findall(r"\d+\.(\d+)", line)), line


def test_cli_write_has_no_zarr_warnings(slides, tmp_path):
    from stpredict.cli import write

    sdata = stp.io.to_spatialdata(slides[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write(sdata, tmp_path / "s.zarr")
    assert not [w for w in caught if "autosharding" in str(w.message)]


def test_design_page_names_real_weightings():
    import re
    from pathlib import Path

    from stpredict.retrieval import WEIGHTINGS as _WEIGHTINGS

    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    named = set(re.findall(r'"(mean|inverse_[a-z0-9_]+|softmax|similarity|distance[a-z_]*)"', text))
    assert named
    assert named <= set(_WEIGHTINGS), named - set(_WEIGHTINGS)

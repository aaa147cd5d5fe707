from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import stpredict as stp
from stpredict.cli import main
from stpredict.get import prediction as get_prediction


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "fit", "predict", "evaluate"):
        assert command in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert stp.__version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_quiet_does_not_leak_into_the_session(tmp_path, capsys):
    stp.settings.verbosity = 3
    argv = ["--quiet", "predict", str(tmp_path / "missing.h5ad"), "--model", str(tmp_path), "--out", "o.h5ad"]
    assert main(argv) == 1
    assert "error" in capsys.readouterr().err
    assert stp.settings.verbosity == 3


def test_python_dash_m():
    proc = subprocess.run(
        [sys.executable, "-m", "stpredict", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "predict" in proc.stdout


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "-q",
            "demo",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--k",
            "10",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    names = ("prediction.h5ad", "expression_map.png", "training_history.png", "pcc_boxplot.png")
    for name in (*names, "evaluation.csv", "model/config.json"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "random" in printed
    assert "HVG" in printed
    pred = ad.read_h5ad(out / "prediction.h5ad")
    assert set(pred.obs["library_id"]) == {"slide2"}  # the held-out slide
    p, t = get_prediction(pred)
    assert t is not None
    assert p.shape == t.shape
    model = stp.models.load(out / "model")
    assert list(p.columns) == model.genes


@pytest.fixture
def small_h5ad(tmp_path):
    adata = stp.datasets.synthetic(n_slides=2, n_spots_per_side=5, n_genes=16, seed=1)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    return path


def test_fit_predict_evaluate_commands(small_h5ad, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert (
        main(
            [
                "-q",
                "fit",
                str(small_h5ad),
                "--out",
                str(model_dir),
                "--preset",
                "tiny",
                "--epochs",
                "1",
                "--seed",
                "0",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (model_dir / "config.json").is_file()
    pred_path = tmp_path / "pred.h5ad"
    assert (
        main(
            [
                "-q",
                "predict",
                str(small_h5ad),
                "--model",
                str(model_dir),
                "--out",
                str(pred_path),
                "--k",
                "5",
                "--key-added",
                "hist",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    pred = ad.read_h5ad(pred_path)
    assert pred.uns["hist"]["params"]["k"] == 5
    assert np.isfinite(pred.obsm["hist"].to_numpy()).all()
    csv = tmp_path / "eval.csv"
    capsys.readouterr()
    assert main(["evaluate", str(pred_path), "--key", "hist", "--n-genes", "5", "--out", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "hvg" in printed
    assert csv.is_file()


def test_predict_to_zarr_and_errors(small_h5ad, tmp_path, capsys):
    adata = ad.read_h5ad(small_h5ad)
    model = stp.tl.fit(adata, preset="tiny", epochs=1, progress=False, device="cpu")
    model.save(tmp_path / "model")
    zarr_in = tmp_path / "data.zarr"
    stp.io.to_spatialdata(adata).write(zarr_in)
    zarr_out = tmp_path / "pred.zarr"
    assert (
        main(
            [
                "-q",
                "predict",
                str(zarr_in),
                "--model",
                str(tmp_path / "model"),
                "--out",
                str(zarr_out),
                "--k",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    import spatialdata

    back = spatialdata.read_zarr(zarr_out)
    assert "stpredict" in back.tables
    assert get_prediction(back)[0].shape == (adata.n_obs, len(model.genes))

    # errors: a clear message and exit status 1
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(tmp_path / "missing.h5ad"),
                "--model",
                str(tmp_path / "model"),
                "--out",
                str(tmp_path / "x.h5ad"),
            ]
        )
        == 1
    )
    assert "missing.h5ad" in capsys.readouterr().err
    assert (
        main(
            ["predict", str(small_h5ad), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "x.csv")]
        )
        == 1
    )
    assert ".h5ad or .zarr" in capsys.readouterr().err


def test_fit_command_trains_an_ensemble(small_h5ad, tmp_path):
    model_dir = tmp_path / "model"
    argv = ["-q", "fit", str(small_h5ad), "--out", str(model_dir), "--preset", "tiny", "--epochs", "1"]
    assert main([*argv, "--seed", "3", "--n-members", "2", "--no-progress", "--device", "cpu"]) == 0
    model = stp.models.load(model_dir)
    assert model.n_members == 2
    assert [m["seed"] for m in model.training["members"]] == [3, 1003]


def test_fit_command_reduces_texture_features(small_h5ad, tmp_path):
    model_dir = tmp_path / "model"
    argv = ["-q", "fit", str(small_h5ad), "--out", str(model_dir), "--preset", "tiny", "--epochs", "1"]
    argv += ["--image-features", "texture", "--feature-components", "6", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    model = stp.models.load(model_dir)
    assert model.patch["features"] == "texture"
    assert model.config["backbone_kwargs"] == {"in_features": 732, "components": 6}


def test_fit_command_standardises_features_per_slide(small_h5ad, tmp_path):
    model_dir = tmp_path / "model"
    argv = ["-q", "fit", str(small_h5ad), "--out", str(model_dir), "--preset", "tiny", "--epochs", "1"]
    argv += ["--image-features", "handmade", "--slide-standardize", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    assert stp.models.load(model_dir).patch["slide_standardize"] is True
    plain = tmp_path / "plain"
    assert main([*argv[:4], str(plain), *argv[5:9], "--image-features", "handmade", "--no-progress"]) == 0
    assert stp.models.load(plain).patch["slide_standardize"] is False


def test_fit_command_trains_on_feature_views(small_h5ad, tmp_path):
    model_dir = tmp_path / "model"
    argv = ["-q", "fit", str(small_h5ad), "--out", str(model_dir), "--preset", "cpu", "--epochs", "1"]
    argv += ["--image-features", "handmade", "--feature-views", "2", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    model = stp.models.load(model_dir)
    assert model.training["feature_views"] == 2
    assert model.patch["features"] == "handmade"

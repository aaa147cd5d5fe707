"""Whole-slide images: stp.io.read_wsi (pyramidal TIFF through tiffslide) and grid prediction on a
40,000 x 40,000 px slide built on the fly, with bounded memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import stpredict as stp

pytest.importorskip("tiffslide")

TISSUE = (190, 110, 160)
GLASS = 245

WRITER = textwrap.dedent(
    """
    import numpy as np
    import tifffile


    def write_pyramid(path, size, n_levels, *, tile=512, mpp=0.5):
        '''A tiled, zlib-compressed pyramidal TIFF: glass with tissue over the central quarter.'''

        def tiles(side):
            lo, hi = side * 3 // 8, side * 5 // 8
            for y in range(0, side, tile):
                for x in range(0, side, tile):
                    t = np.full((tile, tile, 3), 245, np.uint8)
                    ys, xs = np.arange(y, y + tile), np.arange(x, x + tile)
                    rows, cols = (ys >= lo) & (ys < hi), (xs >= lo) & (xs < hi)
                    if rows.any() and cols.any():
                        t[np.ix_(rows, cols)] = (190, 110, 160)
                    yield t

        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            for level in range(n_levels):
                side = size // 2**level
                resolution = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
                extra = {"subifds": n_levels - 1, **resolution} if level == 0 else {"subfiletype": 1}
                tw.write(
                    tiles(side), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                    compression="zlib", photometric="rgb", **extra,
                )
    """
)


def _writer():
    namespace: dict = {}
    exec(WRITER, namespace)
    return namespace["write_pyramid"]


@pytest.fixture(scope="module")
def small_wsi(tmp_path_factory):
    path = tmp_path_factory.mktemp("wsi") / "slide 1.ome.tif"
    _writer()(str(path), 2048, 3)
    return path


def test_read_wsi_levels_pixel_size_and_name(small_wsi):
    sdata = stp.io.read_wsi(small_wsi)
    (name,) = sdata.images
    assert name == "slide_1_image"
    element = sdata.images[name]
    shapes = [element[f"scale{i}"]["image"].shape for i in range(3)]
    assert shapes == [(3, 2048, 2048), (3, 1024, 1024), (3, 512, 512)]
    assert stp.io.pixel_size(element) == pytest.approx((0.5, 0.5))
    full = element["scale0"]["image"]
    assert hasattr(full.data, "dask")  # lazy
    block = np.asarray(full[:, 1020:1030, 760:772].values)  # a few tiles decoded, nothing else
    assert (block[:, :, :8] == GLASS).all()  # tissue starts at 3/8 of the side: x = 768
    assert (block[:, :, 8:] == np.array(TISSUE)[:, None, None]).all()
    assert stp.io.pixel_size(stp.io.read_wsi(small_wsi, microns_per_pixel=0.25).images[name]) == (0.25, 0.25)


def test_read_wsi_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        stp.io.read_wsi(tmp_path / "missing.svs")
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="not a whole-slide image"):
        stp.io.read_wsi(bad)


def test_grid_on_a_lazy_slide_reads_the_same_patches_as_in_memory(small_wsi):
    from stpredict.data import SpotData
    from stpredict.tl._grid import grid_spots

    sdata = stp.io.read_wsi(small_wsi)
    lazy = grid_spots(sdata, spacing_um=40.0, spot_diameter_um=20.0)
    image = lazy.uns["spatial"]["slide_1"]["images"]["hires"]
    assert hasattr(image, "dask")  # the grid keeps the slide lazy
    xy = lazy.obsm["spatial"]  # tissue: x, y in [768, 1280) px (256 µm); spots 80 px apart
    assert lazy.n_obs >= 25
    assert ((xy > 768 - 20) & (xy < 1280 + 20)).all()
    eager = lazy.copy()
    eager.uns["spatial"]["slide_1"]["images"]["hires"] = np.asarray(image)
    a = SpotData.from_object(lazy).extract_patches(patch_size_um=112, size=32, progress=False)
    b = SpotData.from_object(eager).extract_patches(patch_size_um=112, size=32, progress=False)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_predict_a_40000_px_slide_with_bounded_memory(tmp_path):
    """The slide is 4.8 GB of pixels; the prediction must never hold more than a fraction of it."""
    path = tmp_path / "big.tif"
    writer = tmp_path / "write.py"  # its own process: the peak memory measured is the prediction's
    writer.write_text(WRITER + f"\nwrite_pyramid({str(path)!r}, 40_000, 6)\n")
    wrote = subprocess.run([sys.executable, str(writer)], capture_output=True, text=True, timeout=900)
    assert wrote.returncode == 0, wrote.stderr[-3000:]
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import stpredict as stp


            def peak_mib():  # this process's own high-water mark (ru_maxrss counts the forking parent)
                with open("/proc/self/status") as fh:
                    return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) // 1024


            adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=8, n_genes=20)
            model = stp.tl.fit(adata, preset="tiny", epochs=1, progress=False)
            before = peak_mib()
            slide = stp.io.read_wsi({str(path)!r})
            result = stp.tl.predict(slide, model, grid_spacing_um=500.0, progress=False)
            print("RESULT", result.n_obs, result.n_vars, before, peak_mib())
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    n_obs, n_vars, before_mib, peak_mib = map(int, done.stdout.split("RESULT")[1].split())
    assert (n_obs, n_vars) == (100, 20)  # 40 x 40 grid over 20 mm, tissue on the central quarter
    assert peak_mib < 2500, peak_mib  # the pixels alone are 4578 MiB
    assert peak_mib - before_mib < 1000, (before_mib, peak_mib)


@pytest.fixture(scope="module")
def tiny_model():
    adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=8, n_genes=20)
    return stp.tl.fit(adata, preset="tiny", epochs=1, progress=False)


def test_predict_slides_shards_skips_and_writes_shapes_and_table(
    tmp_path, small_wsi, tiny_model, monkeypatch
):
    import shutil

    import spatialdata

    slides = []
    for name in ("a", "b", "c"):
        slides.append(tmp_path / f"{name}.tif")
        shutil.copy(small_wsi, slides[-1])
    out = tmp_path / "out"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert stp.tl.predict_slides(slides, tiny_model, out_dir=out, grid_spacing_um=40.0) == [out / "b.zarr"]
    assert sorted(p.name for p in out.iterdir()) == ["b.zarr"]  # rank 1 of 2: the second slide only
    monkeypatch.setenv("RANK", "0")
    first = stp.tl.predict_slides(slides, tiny_model, out_dir=out, grid_spacing_um=40.0)
    assert first == [out / "a.zarr", out / "c.zarr"]
    sdata = spatialdata.read_zarr(out / "a.zarr")
    assert not sdata.images  # the slide stays in its file
    (shapes,) = sdata.shapes
    table = sdata.tables["table"]
    assert table.n_obs == len(sdata.shapes[shapes]) >= 25
    assert list(table.var_names) == tiny_model.genes
    assert np.isfinite(table.X).all()

    monkeypatch.setenv("WORLD_SIZE", "1")
    stamp = (out / "b.zarr").stat().st_mtime_ns
    again = stp.tl.predict_slides(slides, tiny_model, out_dir=out, grid_spacing_um=40.0)
    assert again == [out / f"{n}.zarr" for n in "abc"]
    assert (out / "b.zarr").stat().st_mtime_ns == stamp  # done already: skipped
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_predict_slides_refuses_bad_input(tmp_path, small_wsi, tiny_model):
    with pytest.raises(FileNotFoundError, match="no such slide"):
        stp.tl.predict_slides([tmp_path / "nope.svs"], tiny_model, out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="share an output name"):
        stp.tl.predict_slides([small_wsi, small_wsi], tiny_model, out_dir=tmp_path / "o")


def test_cli_predict_slides(tmp_path, small_wsi, tiny_model, capsys):
    from stpredict.cli import main

    model_dir = tiny_model.save(tmp_path / "model")
    args = ["predict-slides", str(small_wsi), "--model", str(model_dir), "--out-dir", str(tmp_path / "out")]
    assert main([*args, "--grid-spacing-um", "40", "--device", "cpu", "--no-progress"]) == 0
    assert "1 slide prediction(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "slide_1.zarr").is_dir()

"""HEST-1k layout: stp.io.read_hest and stp.datasets.hest on mini samples the tests write."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _http import _Server

import stpredict as stp
from stpredict.data import SpotData
from stpredict.datasets import _registry


def write_hest_sample(root, sample: str, adata, library: str) -> None:
    """One synthetic slide in HEST's layout: st/<id>.h5ad, a pyramidal wsis/<id>.tif, metadata/<id>.json."""
    import tifffile

    slide = adata[adata.obs["library_id"] == library].copy()
    entry = slide.uns.pop("spatial")[library]
    image = entry["images"]["hires"]
    assert entry["scalefactors"]["tissue_hires_scalef"] == 1.0  # the hires image is the full resolution
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    slide.obs = slide.obs.drop(columns="library_id")
    slide.write_h5ad(root / "st" / f"{sample}.h5ad")
    with tifffile.TiffWriter(root / "wsis" / f"{sample}.tif") as tif:
        tif.write(image, subifds=1, tile=(64, 64), photometric="rgb")
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb")
    meta = {
        "pixel_size_um_estimated": entry["scalefactors"]["microns_per_pixel"],
        "spot_diameter": 55.0,
        "inter_spot_dist": 100.0,
        "st_technology": "Visium",
        "organ": "Synthetic",
    }
    (root / "metadata" / f"{sample}.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def synthetic():
    return stp.datasets.synthetic(n_slides=2, n_spots_per_side=8, n_genes=25, seed=4)


@pytest.fixture(scope="module")
def hest_root(tmp_path_factory, synthetic):
    root = tmp_path_factory.mktemp("hest_data")
    write_hest_sample(root, "SYN0", synthetic, "slide0")
    write_hest_sample(root, "SYN1", synthetic, "slide1")
    return root


def test_read_hest_gives_the_same_patches_as_the_anndata(hest_root, synthetic):
    sdata = stp.io.read_hest(hest_root, ["SYN0", "SYN1"])
    assert sorted(sdata.images) == ["SYN0_image", "SYN1_image"]
    sd = SpotData.from_object(sdata)
    ref = SpotData.from_object(synthetic)
    assert sd.libraries == ["SYN0", "SYN1"]
    assert sd.images["SYN0"].is_lazy  # the slide is read window by window
    np.testing.assert_allclose(sd.images["SYN0"].um_per_px, ref.images["slide0"].um_per_px)
    a = sd.extract_patches(patch_size_um=112, size=32, progress=False)
    b = ref.extract_patches(patch_size_um=112, size=32, progress=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sd.counts.toarray(), ref.counts.toarray())


def test_read_hest_output_fits_and_predicts(hest_root):
    train = stp.io.read_hest(hest_root, "SYN0")
    test = stp.io.read_hest(hest_root, "SYN1")
    model = stp.tl.fit(train, preset="tiny", epochs=2, seed=0, progress=False)
    assert model.training["libraries"] == ["SYN0"]
    stp.tl.predict(test, model=model, progress=False)
    assert test.tables["stpredict"].n_obs == 64
    assert np.isfinite(stp.tl.evaluate(test)["pearson_r"]).all()


def test_read_hest_names_what_is_missing(hest_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sample 'NOPE' lacks"):
        stp.io.read_hest(hest_root, "NOPE")
    import shutil

    shutil.copytree(hest_root, tmp_path / "copy")
    (tmp_path / "copy" / "metadata" / "SYN0.json").write_text(json.dumps({"spot_diameter": 55.0}))
    with pytest.raises(KeyError, match="pixel_size_um_estimated"):
        stp.io.read_hest(tmp_path / "copy", "SYN0")


def test_datasets_hest_downloads_through_the_mirror(hest_root, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "hest").symlink_to(hest_root, target_is_directory=True)
    server = _Server(mirror)
    try:
        monkeypatch.setenv("STPREDICT_DATA_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(stp.settings, "_datasetdir", None)
        monkeypatch.setattr(stp.settings, "_datasets_url", None)
        monkeypatch.setenv("STPREDICT_DATASETS_URL", server.url)
        sdata = stp.datasets.hest("SYN1", progress=False)
        again = stp.datasets.hest("SYN1", progress=False)  # cached: no second download
    finally:
        server.close()
    assert sorted(server.requests) == [
        "/hest/metadata/SYN1.json",
        "/hest/st/SYN1.h5ad",
        "/hest/wsis/SYN1.tif",
    ]
    assert (tmp_path / "cache" / "hest" / "wsis" / "SYN1.tif").is_file()
    assert sdata.tables["table"].n_obs == again.tables["table"].n_obs == 64


def test_the_hub_token_goes_to_huggingface_only(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub = _registry.hest_files("TENX95")["st"]
    assert hub.url == "https://huggingface.co/datasets/MahmoodLab/hest/resolve/main/st/TENX95.h5ad"
    assert _registry._auth_headers(hub.url) == {"Authorization": "Bearer hf_secret"}
    assert _registry._auth_headers("http://127.0.0.1:8765/hest/st/TENX95.h5ad") == {}
    with pytest.raises(ValueError, match="sample id"):
        _registry.hest_files("../etc/passwd")

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _http import _Server

import stpredict as stp
from stpredict.datasets import _registry
from stpredict.datasets._published import concat_sections


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("STPREDICT_DATA_DIR", str(path))
    monkeypatch.setattr(stp.settings, "_datasetdir", None)
    return path


def _serve(root: Path, monkeypatch) -> _Server:
    server = _Server(root)
    monkeypatch.setattr(stp.settings, "_datasets_url", None)
    monkeypatch.setenv("STPREDICT_DATASETS_URL", server.url)
    return server


@pytest.fixture
def mirror(shared_data, cache, monkeypatch):
    """shared/data served over loopback and used as the dataset mirror."""
    server = _serve(shared_data, monkeypatch)
    yield server
    server.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- registry (offline)


def test_registry_sections():
    assert len(_registry.HER2ST_SECTIONS) == 36
    assert _registry.HER2ST_SECTIONS[:7] == ("A1", "A2", "A3", "A4", "A5", "A6", "B1")
    assert _registry.HER2ST_SECTIONS[-3:] == ("H1", "H2", "H3")
    files = _registry.her2st_files("C3")
    assert files["image"].key == "her2st/ST-imgs/C/C3/5714_HE_BT_D1.jpg"
    assert files["counts"].url == (
        "https://github.com/almaan/her2st/raw/85df7411b987a7dec3feff9718b869a7a82091ec/data/ST-cnts/C3.tsv.gz"
    )
    for section in ("C2", "C3", "C4", "C5"):
        assert all(len(f.sha256) == 64 for f in _registry.her2st_files(section).values())
    assert all(f.sha256 is None for f in _registry.her2st_files("C6").values())
    assert _registry.her2st_files("B4")["image"].key == "her2st/ST-imgs/B/B4/BT10737_D2_HE.jpg"
    mob = _registry.mob_files("MOB2")
    assert mob["spots"].url.endswith(
        "9a8f421499e58b13340ee386db07b0eba923c88c/inst/extdata/counts/alignment_table_MOB2.tsv"
    )
    assert all(f.sha256 is not None for f in mob.values())
    assert all(f.sha256 is None for f in _registry.mob_files("MOB3").values())


@pytest.mark.realdata
def test_registry_hashes_match_shared_sums(shared_data):
    """The built-in hashes are exactly those published with the shared data."""
    sums = {}
    for folder in ("her2st", "stutility-mob"):
        for line in (shared_data / folder / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split()
            sums[f"{folder}/{name.removeprefix('./')}"] = digest
    assert sums == _registry._SHA256


def test_unknown_sections():
    with pytest.raises(ValueError, match=r"image file name of section 'A1' is unknown"):
        _registry.her2st_files("A1")
    with pytest.raises(ValueError, match=r"unknown section 'Z9'"):
        _registry.her2st_files("Z9")
    with pytest.raises(ValueError, match=r"unknown section 'MOB9'"):
        stp.datasets.mouse_olfactory_bulb("MOB9")
    with pytest.raises(ValueError, match="empty"):
        stp.datasets.her2st([])
    with pytest.raises(ValueError, match="more than once"):
        stp.datasets.her2st(["C3", "C3"])
    with pytest.raises(TypeError, match="strings"):
        stp.datasets.her2st([3])


def test_url_for_mirror(monkeypatch):
    monkeypatch.setattr(stp.settings, "_datasets_url", None)
    file = _registry.her2st_files("C2")["counts"]
    monkeypatch.delenv("STPREDICT_DATASETS_URL", raising=False)
    assert _registry.url_for(file) == file.url
    monkeypatch.setenv("STPREDICT_DATASETS_URL", "http://mirror.example/data/")
    assert _registry.url_for(file) == "http://mirror.example/data/her2st/ST-cnts/C2.tsv.gz"


def test_validation_happens_before_download(tmp_path, cache, monkeypatch):
    server = _serve(tmp_path, monkeypatch)
    try:
        with pytest.raises(ValueError, match="'A2'"):
            stp.datasets.her2st(["C3", "A2"], progress=False)
    finally:
        server.close()
    assert server.requests == []


def test_unverified_file_warns_once(tmp_path, cache, monkeypatch, caplog):
    root = tmp_path / "www"
    (root / "stutility-mob").mkdir(parents=True)
    (root / "stutility-mob" / "MOB3.tsv").write_text("\tA\n1x1\t3\n")
    server = _serve(root, monkeypatch)
    try:
        file = _registry.mob_files("MOB3")["counts"]
        with caplog.at_level(logging.WARNING, logger="stpredict"):
            path = _registry.fetch(file, progress=False)
        assert "unverified" in caplog.text
        assert "stutility-mob/MOB3.tsv" in caplog.text
        assert path == cache / "stutility-mob" / "MOB3.tsv"
        assert path.read_text() == "\tA\n1x1\t3\n"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stpredict"):
            assert _registry.fetch(file, progress=False) == path
        assert "unverified" not in caplog.text
        assert server.requests == ["/stutility-mob/MOB3.tsv"]
    finally:
        server.close()


def test_concat_sections_outer_join():
    def section(lib, genes, values):
        a = ad.AnnData(
            X=sp.csr_matrix(np.asarray(values, dtype=np.float32)),
            obs=pd.DataFrame(
                {"library_id": pd.Categorical([lib] * len(values)), "array_row": 0, "array_col": 0},
                index=[f"{lib}_{i}x0" for i in range(len(values))],
            ),
            var=pd.DataFrame(index=genes),
        )
        a.obsm["spatial"] = np.zeros((len(values), 2))
        a.uns["spatial"] = {lib: {"images": {}, "scalefactors": {"spot_diameter_fullres": 1.0}}}
        return a

    a = section("s1", ["A", "B"], [[1, 2], [3, 4]])
    b = section("s2", ["B", "C"], [[5, 6]])
    combined = concat_sections([a, b])
    assert combined.n_obs == 3
    assert set(combined.var_names) == {"A", "B", "C"}
    assert combined.X.format == "csr"
    assert combined.X.dtype == np.float32
    df = combined.to_df()
    assert df.loc["s2_0x0", "A"] == 0
    assert df.loc["s1_1x0", "C"] == 0
    assert df.loc["s2_0x0", "B"] == 5
    assert df.loc["s1_1x0", "B"] == 4
    assert list(combined.obs["library_id"].cat.categories) == ["s1", "s2"]
    assert set(combined.uns["spatial"]) == {"s1", "s2"}
    with pytest.raises(ValueError, match="repeat"):
        concat_sections([a, a])


# ---- downloads from a loopback mirror of shared/data


@pytest.mark.realdata
def test_mob_download_verify_and_cache(mirror, cache):
    adata = stp.datasets.mouse_olfactory_bulb(["MOB1", "MOB2"], progress=False)
    assert sorted(mirror.requests) == sorted(
        f"/stutility-mob/{n}"
        for s in ("MOB1", "MOB2")
        for n in (f"{s}.tsv", f"alignment_table_{s}.tsv", f"{s}.jpg")
    )
    for name in ("MOB1.jpg", "MOB1.tsv", "alignment_table_MOB2.tsv"):
        assert _sha256(cache / "stutility-mob" / name) == _registry._SHA256[f"stutility-mob/{name}"]
    assert list(adata.obs["library_id"].cat.categories) == ["MOB1", "MOB2"]
    assert (adata.obs["library_id"] == "MOB1").sum() == 379
    assert set(adata.uns["spatial"]) == {"MOB1", "MOB2"}
    assert set(adata.obs["patient"]) == {"animal1"}  # folds by animal: groups="patient"
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    assert adata.X.format == "csr"
    sf = adata.uns["spatial"]["MOB2"]["scalefactors"]
    assert sf["microns_per_pixel_x"] == pytest.approx(4.6, abs=0.2)
    assert adata.uns["spatial"]["MOB1"]["metadata"]["platform"] == "2k"

    # a second call is served from the cache: no request at all
    n = len(mirror.requests)
    again = stp.datasets.mouse_olfactory_bulb("MOB1", progress=False)
    assert len(mirror.requests) == n
    assert again.n_obs == 379


@pytest.mark.realdata
def test_corrupted_download(shared_data, tmp_path, cache, monkeypatch):
    root = tmp_path / "www"
    shutil.copytree(shared_data / "stutility-mob", root / "stutility-mob")
    bad = root / "stutility-mob" / "MOB1.jpg"
    bad.chmod(0o644)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    server = _serve(root, monkeypatch)
    try:
        with pytest.raises(ValueError, match="MOB1.jpg") as err:
            _registry.fetch(_registry.mob_files("MOB1")["image"], progress=False)
    finally:
        server.close()
    message = str(err.value)
    assert _registry._SHA256["stutility-mob/MOB1.jpg"] in message
    assert _sha256(bad) in message
    assert not (cache / "stutility-mob" / "MOB1.jpg").exists()
    assert not [p for p in (cache / "stutility-mob").iterdir() if p.is_file()]  # no temp file left


@pytest.mark.realdata
def test_stale_cached_file_is_replaced(mirror, cache):
    target = cache / "stutility-mob" / "alignment_table_MOB1.tsv"
    target.parent.mkdir(parents=True)
    target.write_text("x\ty\n")
    path = _registry.fetch(_registry.mob_files("MOB1")["spots"], progress=False)
    assert _sha256(path) == _registry._SHA256["stutility-mob/alignment_table_MOB1.tsv"]
    assert mirror.requests == ["/stutility-mob/alignment_table_MOB1.tsv"]


@pytest.mark.realdata
@pytest.mark.slow
def test_her2st_from_mirror(mirror, cache):
    adata = stp.datasets.her2st("C3", progress=False)
    assert len(mirror.requests) == 3
    assert adata.n_obs == 180
    assert list(adata.obs["library_id"].cat.categories) == ["C3"]
    assert adata.uns["spatial"]["C3"]["scalefactors"]["microns_per_pixel"] == pytest.approx(0.69, abs=0.01)
    assert (cache / "her2st" / "ST-imgs" / "C" / "C3" / "5714_HE_BT_D1.jpg").is_file()

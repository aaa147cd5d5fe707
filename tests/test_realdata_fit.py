from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.datasets._published import concat_sections
from stpredict.get import prediction as get_prediction

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _section(her2st_dir, name: str):
    image = next((her2st_dir / "ST-imgs" / name[0] / name).glob("*.jpg"))
    return stp.io.read_legacy_st(
        her2st_dir / "ST-cnts" / f"{name}.tsv.gz",
        her2st_dir / "ST-spotfiles" / f"{name}_selection.tsv",
        image,
        library_id=name,
    )


@pytest.fixture(scope="module")
def her2st_two(her2st_dir):
    return concat_sections([_section(her2st_dir, "C2"), _section(her2st_dir, "C3")])


def test_her2st_fit_predict_two_sections(her2st_two, tmp_path):
    adata = her2st_two
    train = adata[adata.obs["library_id"] == "C2"].copy()
    test = adata[adata.obs["library_id"] == "C3"].copy()
    model = stp.tl.fit(train, preset="tiny", epochs=1, n_top_genes=50, seed=0, progress=False, device="cpu")
    # genes: per-slide HVGs of C2 (one slide), all detected in it
    assert 0 < len(model.genes) <= 50
    assert len(model.bank["expression"]) == train.n_obs
    assert np.isfinite(model.bank["embeddings"]).all()
    # legacy ST spots are 100 µm; patches are 112 µm at ~0.69 µm/px, resampled to the tiny size
    assert model.patch["patch_size_um"] == 112.0

    stp.tl.predict(test, model, k=10, progress=False)
    pred, truth = get_prediction(test)
    assert pred.shape == (test.n_obs, len(model.genes))
    assert truth is not None
    assert np.isfinite(truth.to_numpy()).all()
    assert np.isfinite(pred.to_numpy()).all()
    res = stp.tl.evaluate(test, genes=("heg", "all"), n_genes=20)
    assert set(res["gene_set"]) == {"heg", "all"}
    assert res["pearson_r"].between(-1, 1).all()

    # the saved model predicts the same on a fresh copy
    model.save(tmp_path / "m")
    again = test.copy()
    stp.tl.predict(again, str(tmp_path / "m"), k=10, key_added="again", progress=False)
    np.testing.assert_allclose(again.obsm["again"].to_numpy(), pred.to_numpy(), atol=1e-5)

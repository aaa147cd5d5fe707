"""``model.extend_bank``: reference slides added to a fitted model without retraining."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp

FIT = {"preset": "tiny", "epochs": 1, "seed": 0, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def slides():
    adata = stp.datasets.synthetic(n_slides=3, n_spots_per_side=6, n_genes=20, seed=2)
    return [adata[adata.obs["library_id"] == f"slide{i}"].copy() for i in range(3)]


@pytest.fixture
def model(slides):
    return stp.tl.fit(slides[0], **FIT)


def test_extended_bank_holds_the_new_spots_embedded_by_the_trained_encoder(slides, model):
    old = {k: v.copy() for k, v in model.bank.items()}
    weights = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.extend_bank(slides[1])
    bank = model.bank
    n_old, n_new = len(old["expression"]), slides[1].n_obs
    assert len(bank["expression"]) == n_old + n_new
    np.testing.assert_array_equal(bank["embeddings"][:n_old], old["embeddings"])
    assert set(bank["library_id"][n_old:]) == {"slide1"}
    # the new rows are the model's own normalisation and embedding of the new counts
    counts = slides[1][:, model.genes].X
    expected = stp.pp.normalize_matrix(counts, target_sum=model.normalization["target_sum"])
    np.testing.assert_allclose(bank["expression"][n_old:], np.asarray(expected), rtol=1e-5)
    np.testing.assert_allclose(
        bank["embeddings"][n_old:], model.embed_expression(bank["expression"][n_old:]), rtol=1e-5
    )
    for name, value in model.module.state_dict().items():  # no retraining
        assert (value == weights[name]).all(), name


def test_predictions_retrieve_from_the_new_slides(slides, model):
    model.extend_bank(slides[1])
    res = stp.tl.predict(slides[2], model=model, k=5, copy=True, progress=False)
    idx = res.uns["stpredict"]  # the written entry; neighbours come from both slides
    assert idx["params"]["k"] == 5
    q = model.embed_images(
        stp.data.SpotData.from_object(slides[2]).extract_patches(
            patch_size_um=model.patch["patch_size_um"], size=model.patch["size"], progress=False
        ),
        progress=False,
    )
    found = stp.retrieval.topk_cosine(q, model.bank["embeddings"], 5)[0]
    assert set(model.bank["library_id"][found.ravel()]) <= {"slide0", "slide1"}
    assert "slide1" in set(model.bank["library_id"][found.ravel()])


def test_extended_bank_is_saved(slides, model, tmp_path):
    model.extend_bank(slides[1])
    model.save(tmp_path / "m")
    again = stp.models.load(tmp_path / "m")
    assert len(again.bank["expression"]) == slides[0].n_obs + slides[1].n_obs
    np.testing.assert_array_equal(again.bank["embeddings"], model.bank["embeddings"])


def test_bad_reference_slides_are_refused(slides, model):
    with pytest.raises(ValueError, match=r"slide\(s\) \['slide0'\] are already in the model's bank"):
        model.extend_bank(slides[0])
    fewer = slides[1][:, [g for g in slides[1].var_names if g != model.genes[0]]].copy()
    with pytest.raises(KeyError, match="lacks 1 of the model's"):
        model.extend_bank(fewer)
    clash = slides[1].copy()
    clash.obs_names = list(slides[0].obs_names[: clash.n_obs])
    clash.obs["library_id"] = "slideX"
    clash.uns["spatial"] = {"slideX": clash.uns["spatial"]["slide1"]}
    with pytest.raises(ValueError, match="already in the bank"):
        model.extend_bank(clash)
    n = len(model.bank["expression"])
    assert n == slides[0].n_obs  # nothing was added by the refused calls

"""Property-based tests (hypothesis): retrieval against the dense reference, bad inputs rejected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stpredict as stp
from stpredict.retrieval import naive_topk_cosine, topk_cosine

FIT = {"preset": "tiny", "epochs": 1, "progress": False, "device": "cpu"}


@settings(max_examples=40, deadline=None)
@given(
    n_q=st.integers(1, 40),
    n_r=st.integers(1, 60),
    dim=st.integers(1, 8),
    chunk=st.integers(1, 17),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_chunked_topk_equals_dense(n_q, n_r, dim, chunk, seed, data):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n_q, dim)).astype(np.float32)
    r = rng.normal(size=(n_r, dim)).astype(np.float32)
    k = data.draw(st.integers(1, n_r))
    key_chunk = data.draw(st.integers(1, 64))
    idx, sims = topk_cosine(q, r, k, chunk_size=chunk, key_chunk_size=key_chunk)
    _, ref_sims = naive_topk_cosine(q, r, k)
    np.testing.assert_allclose(np.sort(sims, axis=1), np.sort(ref_sims, axis=1), atol=1e-5)
    # the neighbours found really have those similarities (equal up to ties)
    found = np.take_along_axis(ref_scores(q, r), idx, axis=1)
    np.testing.assert_allclose(np.sort(found, axis=1), np.sort(ref_sims, axis=1), atol=1e-5)
    assert all(len(set(row)) == k for row in idx)


def ref_scores(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    rn = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    return qn @ rn.T


@pytest.fixture(scope="module")
def fitted():
    adata = stp.datasets.synthetic(n_slides=1, n_spots_per_side=5, n_genes=10, seed=6)
    return adata, stp.tl.fit(adata, **FIT)


def _nan_coords(a):
    a.obsm["spatial"] = a.obsm["spatial"].astype(float)
    a.obsm["spatial"][0, 0] = np.nan


def _bad_scalef(a):
    a.uns["spatial"]["slide0"]["scalefactors"]["tissue_hires_scalef"] = -1.0


def _float_255(a):
    img = a.uns["spatial"]["slide0"]["images"]["hires"]
    a.uns["spatial"]["slide0"]["images"]["hires"] = img.astype(np.float32)


def _duplicate_names(a):
    names = a.obs_names.to_numpy().copy()
    names[1] = names[0]
    a.obs_names = names


def _outside(a):
    a.obsm["spatial"] = a.obsm["spatial"].astype(float) * 1000


def _grey_image(a):
    img = a.uns["spatial"]["slide0"]["images"]["hires"]
    a.uns["spatial"]["slide0"]["images"]["hires"] = img[..., 0]


CORRUPTIONS = [_nan_coords, _bad_scalef, _float_255, _duplicate_names, _outside, _grey_image]


def _state(a) -> tuple:
    img = a.uns["spatial"]["slide0"]["images"]["hires"]
    return (
        tuple(a.obs_names),
        tuple(a.obsm.keys()),
        tuple(a.layers.keys()),
        tuple(a.uns.keys()),
        np.asarray(a.obsm["spatial"], dtype=float).tobytes(),
        np.asarray(img).tobytes(),
        repr(a.uns["spatial"]["slide0"]["scalefactors"]),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.sampled_from(CORRUPTIONS), min_size=1, max_size=3, unique=True))
def test_corrupted_inputs_are_rejected_untouched(fitted, picks):
    adata, model = fitted
    bad = adata.copy()
    for corrupt in picks:
        corrupt(bad)
    before = _state(bad)
    with pytest.raises((ValueError, TypeError, KeyError)):
        stp.tl.predict(bad, model, k=5, progress=False)
    assert _state(bad) == before


@settings(max_examples=15, deadline=None)
@given(
    n_side=st.integers(2, 4),
    spacing=st.floats(12.0, 40.0),
    offset=st.floats(25.0, 60.0),
    scalef=st.floats(0.25, 1.0),
    um=st.floats(0.3, 2.0),
)
def test_spatialdata_route_cuts_the_same_patches(n_side, spacing, offset, scalef, um):
    from _builders import visium_adata

    from stpredict.data import SpotData

    adata = visium_adata(
        n_side=n_side, spacing_px=spacing, offset_px=offset, hires_scalef=scalef, microns_per_pixel=um
    )
    sdata = stp.io.to_spatialdata(adata)
    a = SpotData.from_object(adata)
    b = SpotData.from_object(sdata)
    np.testing.assert_allclose(a.centers, b.centers, atol=1e-6)
    kw = {"patch_size_um": 12.0, "size": 8, "progress": False}
    np.testing.assert_array_equal(a.extract_patches(**kw), b.extract_patches(**kw))


@settings(max_examples=25, deadline=None)
@given(n_q=st.integers(1, 20), n_r=st.integers(2, 30), genes=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_mean_retrieval_equals_dense_average(n_q, n_r, genes, seed):
    from stpredict.retrieval import retrieve

    rng = np.random.default_rng(seed)
    q, r = rng.normal(size=(n_q, 4)), rng.normal(size=(n_r, 4))
    values = rng.normal(size=(n_r, genes))
    k = int(rng.integers(1, n_r + 1))
    res = retrieve(q, r, values, k, weighting="mean", chunk_size=3)
    sims = ref_scores(q, r)
    for i in range(n_q):
        top = np.argsort(-sims[i], kind="stable")[:k]
        kth = sims[i, top[-1]]
        if np.isclose(sims[i], kth, atol=1e-6).sum() > 1:  # a tie at the k-th neighbour: either is right
            continue
        np.testing.assert_allclose(res.prediction[i], values[top].mean(axis=0), rtol=1e-4, atol=1e-5)

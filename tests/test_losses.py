"""Losses against explicit hand computations on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stpredict.models import info_nce_loss, reconstruction_loss, soft_clip_loss
from stpredict.models._losses import cmrcnet_total_loss


def _softmax_row(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def _log_softmax_row(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def _soft_clip_by_hand(expr, img, tau):
    """BLEEP's loss written out with loops over the B x B entries."""
    b = len(expr)
    logits = [[_dot(expr[i], img[j]) / tau for j in range(b)] for i in range(b)]
    sim = [[(_dot(img[i], img[j]) + _dot(expr[i], expr[j])) / 2 * tau for j in range(b)] for i in range(b)]
    targets = [_softmax_row(sim[i]) for i in range(b)]
    out = []
    for i in range(b):
        row_lsm = _log_softmax_row(logits[i])
        expr_loss = -sum(targets[i][j] * row_lsm[j] for j in range(b))
        col = [logits[j][i] for j in range(b)]  # row i of logits.T
        col_lsm = _log_softmax_row(col)
        img_loss = -sum(targets[j][i] * col_lsm[j] for j in range(b))  # row i of targets.T
        out.append((expr_loss + img_loss) / 2)
    return out


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_soft_clip_loss_2x2(tau):
    expr = [[1.0, 0.0], [0.5, 2.0]]
    img = [[0.0, 1.0], [1.0, -1.0]]
    got = soft_clip_loss(torch.tensor(expr), torch.tensor(img), temperature=tau)
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), _soft_clip_by_hand(expr, img, tau), rtol=1e-5)
    mean = soft_clip_loss(torch.tensor(expr), torch.tensor(img), temperature=tau, reduction="mean")
    assert mean.item() == pytest.approx(float(np.mean(_soft_clip_by_hand(expr, img, tau))), rel=1e-5)


def test_soft_clip_loss_3x2_known_value():
    expr = [[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]]
    img = [[0.5, 0.5], [-1.0, 1.0], [2.0, 0.0]]
    got = soft_clip_loss(torch.tensor(expr), torch.tensor(img)).numpy()
    np.testing.assert_allclose(got, _soft_clip_by_hand(expr, img, 1.0), rtol=1e-5)


def test_soft_clip_loss_single_pair_is_zero():
    # one sample: the targets are [1], the logits softmax is [1] → zero loss
    assert soft_clip_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])).item() == pytest.approx(0.0)


def test_info_nce_by_hand():
    img = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    expr = [[2.0, 0.0], [0.0, 0.5], [-1.0, 1.0]]
    b = 3
    logits = [[_dot(img[i], expr[j]) for j in range(b)] for i in range(b)]
    rows = [-_log_softmax_row(logits[i])[i] for i in range(b)]
    cols = [-_log_softmax_row([logits[j][i] for j in range(b)])[i] for i in range(b)]
    expected = (sum(rows) / b + sum(cols) / b) / 2
    got = info_nce_loss(torch.tensor(img), torch.tensor(expr))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # temperature divides the logits
    half = info_nce_loss(torch.tensor(img), torch.tensor(expr), temperature=0.5)
    assert half.item() == pytest.approx(
        info_nce_loss(torch.tensor(img) * 2, torch.tensor(expr)).item(), rel=1e-6
    )


def test_reconstruction_losses_by_hand():
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    # mse: squared errors 1,1,1,1 → 1
    assert reconstruction_loss(pred, target, "mse").item() == pytest.approx(1.0)
    # cosine: row 0 orthogonal (1 - 0), row 1 parallel (1 - 1) → mean 0.5
    assert reconstruction_loss(pred, target, "cosine").item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="kind"):
        reconstruction_loss(pred, target, "l1")
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(pred, target[:1])


def test_cmrcnet_total_loss():
    contrastive = torch.tensor([1.0, 3.0])
    rec = torch.tensor(0.5)
    expected = (math.log(2.0) + math.log(4.0)) / 2 + math.log(1.5)
    assert cmrcnet_total_loss(contrastive, rec).item() == pytest.approx(expected, rel=1e-6)


def test_loss_shape_errors():
    with pytest.raises(ValueError, match="soft_clip_loss"):
        soft_clip_loss(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="reduction"):
        soft_clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="sum")

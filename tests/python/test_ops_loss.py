"""linear_cross_entropy_forward / _backward on numpy arrays, against float64 numpy code."""
import numpy as np
import pytest

import mambatron as mt


def reference(h, w, targets, mask=None, ignore_index=-100, grad_scale=1.0):
    """Full-logits cross-entropy in float64: (loss, per-token losses, dh, dw)."""
    h = h.astype(np.float64)
    w = w.astype(np.float64)
    n, V = h.shape[0], w.shape[0]
    m = np.ones(n) if mask is None else mask.astype(np.float64)
    keep = (targets != ignore_index) & (m != 0)
    logits = h @ w.T
    mx = logits.max(axis=1, keepdims=True)
    lse = (mx + np.log(np.exp(logits - mx).sum(axis=1, keepdims=True)))[:, 0]
    safe_t = np.where(keep, targets, 0)
    losses = np.where(keep, lse - logits[np.arange(n), safe_t], 0.0)
    weights = np.where(keep, m, 0.0)
    total = weights.sum()
    loss = (weights * losses).sum() / total if total > 0 else 0.0
    g = np.exp(logits - lse[:, None])
    g[np.arange(n), safe_t] -= 1.0
    coef = grad_scale * weights / total if total > 0 else np.zeros(n)
    g *= coef[:, None]
    return loss, losses, g @ w, g.T @ h


def inputs(rng, n=37, d=13, V=53, dtype=np.float64, tdtype=np.int64):
    h = rng.standard_normal((n, d)).astype(dtype)
    w = (0.5 * rng.standard_normal((V, d))).astype(dtype)
    t = rng.integers(0, V, n).astype(tdtype)
    return h, w, t


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
def test_forward_and_backward_match_numpy(rng, tdtype):
    h, w, t = inputs(rng, tdtype=tdtype)
    t[3] = -100
    mask = (rng.random(h.shape[0]) > 0.25).astype(np.uint8)
    ref_loss, ref_losses, ref_dh, ref_dw = reference(h, w, t, mask)
    loss, losses = mt.linear_cross_entropy_forward(h, w, t, mask, chunk_size=7, vocab_chunk_size=11,
                                                   return_losses=True)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(losses.numpy(), ref_losses, rtol=1e-12, atol=1e-14)
    assert mt.linear_cross_entropy_forward(h, w, t, mask) == pytest.approx(ref_loss, rel=1e-12)
    loss2, dh, dw = mt.linear_cross_entropy_backward(h, w, t, mask, chunk_size=5)
    assert loss2 == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dh.numpy(), ref_dh, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(dw.numpy(), ref_dw, rtol=1e-11, atol=1e-14)


def test_float_mask_weights_grad_scale_and_given_outputs(rng):
    h, w, t = inputs(rng, n=20, d=8, V=30)
    mask = rng.uniform(0.0, 2.0, h.shape[0])
    mask[4] = 0.0
    ref_loss, ref_losses, ref_dh, ref_dw = reference(h, w, t, mask, grad_scale=0.25)
    dh = np.full_like(h, np.nan)
    dw = np.full_like(w, np.nan)
    losses = np.full(h.shape[0], np.nan)
    loss, _, _, _ = mt.linear_cross_entropy_backward(h, w, t, mask, grad_scale=0.25, dh=dh, dw=dw, losses=losses,
                                                     vocab_chunk_size=0)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dh, ref_dh, rtol=1e-11, atol=1e-14)  # written in place
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12, atol=1e-14)
    assert losses[4] == 0.0
    # accumulate_dw adds the weight gradient to what dw holds.
    start = rng.standard_normal(w.shape)
    acc = start.copy()
    mt.linear_cross_entropy_backward(h, w, t, mask, grad_scale=0.25, dw=acc, accumulate_dw=True)
    np.testing.assert_allclose(acc, start + ref_dw, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="accumulate_dw needs 'dw'"):
        mt.linear_cross_entropy_backward(h, w, t, accumulate_dw=True)


def test_custom_ignore_index(rng):
    h, w, t = inputs(rng, n=15, d=6, V=12)
    t[::3] = 7
    ref_loss, _, ref_dh, ref_dw = reference(h, w, t, ignore_index=7)
    loss, dh, dw = mt.linear_cross_entropy_backward(h, w, t, ignore_index=7)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dh.numpy(), ref_dh, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(dw.numpy(), ref_dw, rtol=1e-11, atol=1e-14)
    assert np.all(dh.numpy()[::3] == 0.0)


def test_independent_of_chunk_sizes(rng):
    h, w, t = inputs(rng, n=23, d=9, V=41)
    base = mt.linear_cross_entropy_backward(h, w, t, vocab_chunk_size=0)
    for chunk in (1, 7, 23, 40):
        for vchunk in (1, 7, 41, 100):
            loss, dh, dw = mt.linear_cross_entropy_backward(h, w, t, chunk_size=chunk, vocab_chunk_size=vchunk)
            assert loss == pytest.approx(base[0], rel=1e-13)
            np.testing.assert_allclose(dh.numpy(), base[1].numpy(), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(dw.numpy(), base[2].numpy(), rtol=1e-12, atol=1e-15)


def test_float32_close_to_float64(rng):
    h, w, t = inputs(rng, n=50, d=32, V=200, dtype=np.float32)
    l32, dh32, dw32 = mt.linear_cross_entropy_backward(h, w, t, chunk_size=16, vocab_chunk_size=64)
    _, _, dh64, dw64 = reference(h, w, t)
    l64 = mt.linear_cross_entropy_forward(h.astype(np.float64), w.astype(np.float64), t)
    assert l32 == pytest.approx(l64, rel=1e-5)
    assert np.abs(dh32.numpy() - dh64).max() <= 1e-5 * np.abs(dh64).max()
    assert np.abs(dw32.numpy() - dw64).max() <= 1e-5 * np.abs(dw64).max()


def test_nothing_included_gives_zero(rng):
    h, w, t = inputs(rng, n=6, d=4, V=9)
    loss, dh, dw = mt.linear_cross_entropy_backward(h, w, t, np.zeros(6, np.uint8))
    assert loss == 0.0
    assert not np.any(dh.numpy()) and not np.any(dw.numpy())


def test_errors_name_the_argument(rng):
    h, w, t = inputs(rng, n=6, d=4, V=9)
    bad = t.copy()
    bad[2] = 9
    with pytest.raises(ValueError, match=r"targets\[2\] = 9"):
        mt.linear_cross_entropy_forward(h, w, bad)
    with pytest.raises(ValueError, match=r"'w' has shape \[9, 5\], expected \[V, 4\]"):
        mt.linear_cross_entropy_forward(h, np.zeros((9, 5)), t)
    with pytest.raises(TypeError, match="'w'"):
        mt.linear_cross_entropy_forward(h, w.astype(np.float32), t)
    with pytest.raises(TypeError, match="'targets'"):
        mt.linear_cross_entropy_forward(h, w, t.astype(np.float64))
    with pytest.raises(ValueError, match=r"'mask' has shape \[5\], expected \[6\]"):
        mt.linear_cross_entropy_forward(h, w, t, np.ones(5, np.uint8))
    with pytest.raises(ValueError, match=r"'dh' has shape \[6, 3\], expected \[6, 4\]"):
        mt.linear_cross_entropy_backward(h, w, t, dh=np.zeros((6, 3)))

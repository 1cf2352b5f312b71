"""adamw_update, grad_norm and clip_grad_norm on numpy arrays, against float64 numpy code."""
import numpy as np
import pytest

import mambatron as mt


def adamw_reference(p, g, m, v, mask, lr, t, b1=0.9, b2=0.95, eps=1e-8, wd=0.1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    p = np.where(mask != 0, p - lr * wd * p, p)
    p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


@pytest.fixture
def rng():
    return np.random.default_rng()


def test_adamw_matches_numpy_over_steps(rng):
    n = 1001
    p = rng.standard_normal(n)
    m = np.zeros(n)
    v = np.zeros(n)
    mask = (rng.random(n) > 0.5).astype(np.uint8)
    rp, rm, rv = p.copy(), m.copy(), v.copy()
    for t in range(1, 6):
        g = 0.1 * t * rng.standard_normal(n)
        lr = 1e-2 / t
        mt.adamw_update(p, g, m, v, mask, lr=lr, step=t, weight_decay=0.2)  # in place on the arrays
        rp, rm, rv = adamw_reference(rp, g, rm, rv, mask, lr, t, wd=0.2)
    np.testing.assert_allclose(p, rp, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(m, rm, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(v, rv, rtol=1e-13, atol=1e-18)


def test_adamw_float32_and_no_mask(rng):
    n = 300
    p = rng.standard_normal(n).astype(np.float32)
    m = (0.01 * rng.standard_normal(n)).astype(np.float32)
    v = rng.uniform(1e-4, 2e-4, n).astype(np.float32)
    g = (0.01 * rng.standard_normal(n)).astype(np.float32)
    rp, rm, rv = adamw_reference(p.astype(np.float64), g.astype(np.float64), m.astype(np.float64),
                                 v.astype(np.float64), np.ones(n), 1e-3, 3)
    out_p, out_m, out_v = mt.adamw_update(p, g, m, v, lr=1e-3, step=3)
    # The house metric: max |error| relative to the largest reference value.
    for got, ref in ((out_p.numpy(), rp), (m, rm), (v, rv)):
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_adamw_errors(rng):
    p = rng.standard_normal(5)
    with pytest.raises(ValueError, match=r"'grads' has shape \[4\], expected \[5\]"):
        mt.adamw_update(p, np.zeros(4), np.zeros(5), np.zeros(5), lr=1e-3, step=1)
    with pytest.raises(TypeError, match="'exp_avg'"):
        mt.adamw_update(p, np.zeros(5), np.zeros(5, np.float32), np.zeros(5), lr=1e-3, step=1)
    with pytest.raises(ValueError, match="step"):
        mt.adamw_update(p, np.zeros(5), np.zeros(5), np.zeros(5), lr=1e-3, step=0)


def test_grad_norm_list_and_clip(rng):
    grads = [rng.standard_normal((3, 7)), rng.standard_normal(50000), rng.standard_normal(11)]
    ref = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    assert mt.grad_norm(grads) == pytest.approx(ref, rel=1e-13)
    assert mt.grad_norm(np.concatenate([g.ravel() for g in grads])) == pytest.approx(ref, rel=1e-13)
    before = [g.copy() for g in grads]
    assert mt.clip_grad_norm(grads, ref * 2) == pytest.approx(ref, rel=1e-13)
    for a, b in zip(grads, before):
        np.testing.assert_array_equal(a, b)
    assert mt.clip_grad_norm(grads, 1.0) == pytest.approx(ref, rel=1e-13)
    for a, b in zip(grads, before):
        np.testing.assert_allclose(a, b * (1.0 / (ref + 1e-6)), rtol=1e-14)
    assert mt.grad_norm(grads) == pytest.approx(1.0, abs=1e-6)


def test_grad_norm_non_finite(rng):
    g = rng.standard_normal(100)
    g[10] = np.inf
    before = g.copy()
    assert mt.clip_grad_norm(g, 1.0) == np.inf
    np.testing.assert_array_equal(g, before)
    g[20] = np.nan
    assert np.isnan(mt.clip_grad_norm([g], 1.0))
    with pytest.raises(TypeError, match=r"'grads\[1\]'"):
        mt.grad_norm([np.zeros(3), np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="max_norm"):
        mt.clip_grad_norm([np.zeros(3)], -1.0)

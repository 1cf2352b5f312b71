"""RMSNorm, LayerNorm-1p and the gated grouped RMSNorm from Python, against float64 numpy code."""
import numpy as np
import pytest

import mambatron as mt

EPS = 1e-5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_rmsnorm_matches_numpy(rng):
    x, w, g = rng.standard_normal((2, 13, 37)), rng.standard_normal(37), rng.standard_normal((2, 13, 37))
    out, rstd = mt.rmsnorm_forward(x, w, EPS)
    r = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + EPS)
    np.testing.assert_allclose(np.asarray(out), x * r * w, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(rstd), r[..., 0], rtol=1e-14)
    dx, dw = mt.rmsnorm_backward(g, x, w, rstd)
    gw = g * w
    ref_dx = r * (gw - x * r * r * (gw * x).mean(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(dw), (g * x * r).sum((0, 1)), rtol=1e-12, atol=1e-13)
    # The residual stream's gradient, added in the same pass (here in place).
    res = mt.tensor(rng.standard_normal((2, 13, 37)))
    before = res.numpy().copy()
    dx2, _ = mt.rmsnorm_backward(g, x, w, rstd, dx=res, dresidual=res)
    assert dx2.data_ptr() == res.data_ptr()
    np.testing.assert_allclose(res.numpy(), before + np.asarray(dx), rtol=1e-14, atol=1e-14)


def test_layernorm1p_matches_numpy(rng):
    x = rng.standard_normal((2, 13, 37)) * 2 + 1
    gamma, beta, g = rng.standard_normal(37) * 0.3, rng.standard_normal(37), rng.standard_normal((2, 13, 37))
    out, mean, rstd = mt.layernorm1p_forward(x, gamma, beta, EPS)
    mu = x.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + EPS)
    xhat = (x - mu) * r
    np.testing.assert_allclose(np.asarray(out), xhat * (1 + gamma) + beta, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(mean), mu[..., 0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(rstd), r[..., 0], rtol=1e-13)
    dx, dgamma, dbeta = mt.layernorm1p_backward(g, x, gamma, mean, rstd)
    gg = g * (1 + gamma)
    ref_dx = r * (gg - gg.mean(-1, keepdims=True) - xhat * (gg * xhat).mean(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(dgamma), (g * xhat).sum((0, 1)), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(dbeta), g.sum((0, 1)), rtol=1e-12, atol=1e-13)
    res = rng.standard_normal((2, 13, 37))
    dx2, _, _ = mt.layernorm1p_backward(g, x, gamma, mean, rstd, dresidual=res)
    np.testing.assert_allclose(np.asarray(dx2), res + np.asarray(dx), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("groups", [1, 3])
def test_gated_rmsnorm_matches_numpy(groups, rng):
    d = 39
    y, z = rng.standard_normal((2, 13, d)), rng.standard_normal((2, 13, d)) * 2
    w, g = rng.standard_normal(d), rng.standard_normal((2, 13, d))
    out, rstd = mt.gated_rmsnorm_forward(y, z, w, groups, EPS)
    assert tuple(rstd.shape) == (2, 13, groups)
    u = (y * z * _sigmoid(z)).reshape(2, 13, groups, d // groups)
    r = 1 / np.sqrt((u * u).mean(-1, keepdims=True) + EPS)
    np.testing.assert_allclose(np.asarray(out), (u * r).reshape(2, 13, d) * w, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(rstd), r[..., 0], rtol=1e-13)
    dy, dz, dw = mt.gated_rmsnorm_backward(g, y, z, w, rstd, groups)
    gw = (g * w).reshape(u.shape)
    du = (r * (gw - u * r * r * (gw * u).mean(-1, keepdims=True))).reshape(2, 13, d)
    s = _sigmoid(z)
    np.testing.assert_allclose(np.asarray(dy), du * z * s, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(dz), du * y * s * (1 + z * (1 - s)), rtol=1e-12, atol=1e-13)
    ref_dw = (g * (u * r).reshape(2, 13, d)).sum((0, 1))
    np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=1e-12, atol=1e-13)


def test_norm_f32_close_to_f64(rng):
    x, w = rng.standard_normal((4, 7, 33)).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    out32, _ = mt.rmsnorm_forward(x, w)
    out64, _ = mt.rmsnorm_forward(x.astype(np.float64), w.astype(np.float64))
    assert np.asarray(out32).dtype == np.float32
    np.testing.assert_allclose(np.asarray(out32), np.asarray(out64), rtol=1e-5, atol=1e-5)


def test_norm_errors(rng):
    x = rng.standard_normal((3, 6))
    with pytest.raises(ValueError, match="rmsnorm_forward: argument 'weight' has shape \\[5\\], expected \\[6\\]"):
        mt.rmsnorm_forward(x, rng.standard_normal(5))
    with pytest.raises(TypeError, match="'weight'.*f32"):
        mt.rmsnorm_forward(x, np.ones(6, dtype=np.float32))
    with pytest.raises(ValueError, match="'rstd'.*expected \\[3\\]"):
        mt.rmsnorm_backward(x, x, np.ones(6), np.ones(4))
    with pytest.raises(ValueError, match="'beta'.*expected \\[6\\]"):
        mt.layernorm1p_forward(x, np.ones(6), np.ones(7))
    with pytest.raises(ValueError, match="groups is 4.*d = 6"):
        mt.gated_rmsnorm_forward(x, x, np.ones(6), 4)
    with pytest.raises(ValueError, match="'z'.*expected \\[3, 6\\]"):
        mt.gated_rmsnorm_forward(x, x[:, :5].copy(), np.ones(6), 2)

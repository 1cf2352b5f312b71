"""Activations from Python on numpy arrays, against float64 numpy code."""
import math

import numpy as np
import pytest

import mambatron as mt

_erf = np.vectorize(math.erf)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


REFS = {
    "gelu": (lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
             lambda x: 0.5 * (1 + _erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)),
    "squared_relu": (lambda x: np.maximum(x, 0) ** 2, lambda x: 2 * np.maximum(x, 0)),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
}


@pytest.mark.parametrize("name", sorted(REFS))
def test_unary_matches_numpy(name, rng):
    fwd, bwd = getattr(mt, f"{name}_forward"), getattr(mt, f"{name}_backward")
    ref, dref = REFS[name]
    x = rng.standard_normal((2, 13, 37)) * 2
    g = rng.standard_normal(x.shape)
    out = np.asarray(fwd(x))
    assert out.shape == x.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, ref(x), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(bwd(g, x)), g * dref(x), rtol=1e-13, atol=1e-14)
    # f32 in, f32 out, close to the f64 result.
    out32 = np.asarray(fwd(x.astype(np.float32)))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, ref(x.astype(np.float32).astype(np.float64)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REFS))
def test_unary_writes_into_out(name, rng):
    x = rng.standard_normal((3, 5))
    out = np.full_like(x, np.nan)
    res = getattr(mt, f"{name}_forward")(x, out=out)
    np.testing.assert_allclose(out, np.asarray(res))
    np.testing.assert_allclose(out, REFS[name][0](x), rtol=1e-13, atol=1e-14)


def test_swiglu_matches_numpy(rng):
    x = rng.standard_normal((2, 13, 74)) * 2
    g = rng.standard_normal((2, 13, 37))
    a, b = x[..., :37], x[..., 37:]
    out = np.asarray(mt.swiglu_forward(x))
    assert out.shape == (2, 13, 37)
    np.testing.assert_allclose(out, a * _sigmoid(a) * b, rtol=1e-13, atol=1e-14)
    dx = np.asarray(mt.swiglu_backward(g, x))
    s = _sigmoid(a)
    np.testing.assert_allclose(dx[..., :37], g * b * s * (1 + a * (1 - s)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx[..., 37:], g * a * s, rtol=1e-13, atol=1e-14)


def test_errors_name_the_argument(rng):
    x = rng.standard_normal((3, 5))
    with pytest.raises(ValueError, match="'out'.*expected \\[3, 5\\]"):
        mt.gelu_forward(x, out=np.zeros((3, 4)))
    with pytest.raises(TypeError, match="'x'.*i64"):
        mt.silu_forward(np.zeros((3, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="'dout'.*f32"):
        mt.squared_relu_backward(x.astype(np.float32), x)
    with pytest.raises(ValueError, match="'x'.*2f"):
        mt.swiglu_forward(rng.standard_normal((3, 5)))
    with pytest.raises(ValueError, match="'dout'.*expected \\[3, 2\\]"):
        mt.swiglu_backward(x, rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match="'x'.*not contiguous"):
        mt.gelu_forward(x.T)

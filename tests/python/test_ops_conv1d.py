"""Causal depthwise conv1d from Python, against float64 numpy code."""
import numpy as np
import pytest

import mambatron as mt


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _seq_idx(rng, b, l):
    """Random document ids, non-decreasing along each row."""
    steps = (rng.random((b, l)) < 0.25).astype(np.int32)
    steps[:, 0] = rng.integers(0, 4, b)
    return np.cumsum(steps, axis=1).astype(np.int32)


def conv_ref(x, w, bias, init, seq, silu):
    """out and final_state by the definition: taps stay inside the token's document."""
    b, l, c = x.shape
    width = w.shape[1]
    seq = np.zeros((b, l), np.int32) if seq is None else seq
    init = np.zeros((b, c, width - 1)) if init is None else init
    bias = np.zeros(c) if bias is None else bias

    def tap(i, t, s):  # the inputs [c] that token t (t = l: the next token) sees at position s
        doc = seq[i, min(t, l - 1)]
        if s >= 0:
            return x[i, s] if seq[i, s] == doc else np.zeros(c)
        return init[i, :, s + width - 1] if doc == seq[i, 0] else np.zeros(c)

    out = np.empty_like(x)
    final = np.empty((b, c, width - 1))
    for i in range(b):
        for t in range(l):
            pre = bias + sum(w[:, k] * tap(i, t, t - (width - 1) + k) for k in range(width))
            out[i, t] = pre * _sigmoid(pre) if silu else pre
        for j in range(width - 1):
            final[i, :, j] = tap(i, l, l - (width - 1) + j)
    return out, final


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("packed", [False, True])
def test_forward_matches_numpy(rng, width, packed):
    b, l, c = 2, 13, 37
    x, w = rng.standard_normal((b, l, c)), rng.standard_normal((c, width))
    bias, init = rng.standard_normal(c), rng.standard_normal((b, c, width - 1))
    seq = _seq_idx(rng, b, l) if packed else None
    out, final = mt.conv1d_forward(x, w, bias, initial_state=init, seq_idx=seq, silu=True, return_final_state=True)
    ref_out, ref_final = conv_ref(x, w, bias, init, seq, True)
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(final), ref_final, rtol=0, atol=0)
    plain = mt.conv1d_forward(x, w)  # no bias, zero padding, no SiLU; one output
    np.testing.assert_allclose(np.asarray(plain), conv_ref(x, w, None, None, None, False)[0], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("width", [2, 4])
def test_backward_matches_numpy(rng, width):
    # Without documents the conv reads a padded row xpad = [initial_state, x]: every
    # gradient is a sum over that row.
    b, l, c = 2, 13, 37
    x, w = rng.standard_normal((b, l, c)), rng.standard_normal((c, width))
    bias, init = rng.standard_normal(c), rng.standard_normal((b, c, width - 1))
    dout, dfinal = rng.standard_normal((b, l, c)), rng.standard_normal((b, c, width - 1))
    dx, dw, db, dinit = mt.conv1d_backward(dout, x, w, bias, initial_state=init, d_final_state=dfinal, silu=True)

    xpad = np.concatenate([init.transpose(0, 2, 1), x], axis=1)  # [b, l + w - 1, c]
    pre = bias + sum(w[:, k] * xpad[:, k : k + l] for k in range(width))
    s = _sigmoid(pre)
    dpre = dout * s * (1 + pre * (1 - s))
    dxpad = np.zeros_like(xpad)
    for k in range(width):
        dxpad[:, k : k + l] += dpre * w[:, k]
    dxpad[:, l:] += dfinal.transpose(0, 2, 1)  # final_state = the last w - 1 padded inputs
    ref_dw = np.stack([(dpre * xpad[:, k : k + l]).sum((0, 1)) for k in range(width)], axis=1)
    np.testing.assert_allclose(np.asarray(dx), dxpad[:, width - 1 :], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dinit), dxpad[:, : width - 1].transpose(0, 2, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(db), dpre.sum((0, 1)), rtol=1e-12, atol=1e-12)
    # Absent bias and initial state: no gradient returned for them.
    _, _, db0, dinit0 = mt.conv1d_backward(dout, x, w)
    assert db0 is None and dinit0 is None


def test_backward_with_documents_matches_finite_differences(rng):
    b, l, c, width = 2, 11, 3, 4
    x, w = rng.standard_normal((b, l, c)), rng.standard_normal((c, width))
    bias, init = rng.standard_normal(c), rng.standard_normal((b, c, width - 1))
    seq = _seq_idx(rng, b, l)
    wy, wf = rng.standard_normal((b, l, c)), rng.standard_normal((b, c, width - 1))

    def loss():
        out, final = conv_ref(x, w, bias, init, seq, True)
        return (wy * out).sum() + (wf * final).sum()

    grads = mt.conv1d_backward(wy, x, w, bias, initial_state=init, seq_idx=seq, d_final_state=wf, silu=True)
    for arr, grad in zip([x, w, bias, init], grads):
        grad = np.asarray(grad)
        for idx in list(np.ndindex(arr.shape))[::3]:
            old = arr[idx]
            arr[idx] = old + 1e-6
            lp = loss()
            arr[idx] = old - 1e-6
            lm = loss()
            arr[idx] = old
            assert abs((lp - lm) / 2e-6 - grad[idx]) < 1e-6 * max(1.0, np.abs(grad).max())


def test_step_matches_forward_and_writes_given_buffers(rng):
    b, l, c, width = 3, 9, 10, 4
    x, w, bias = rng.standard_normal((b, l, c)), rng.standard_normal((c, width)), rng.standard_normal(c)
    init = rng.standard_normal((b, c, width - 1))
    out, final = mt.conv1d_forward(x, w, bias, initial_state=init, silu=True, return_final_state=True)
    state = init.copy()
    y = np.full((b, c), np.nan)
    for t in range(l):
        res = mt.conv1d_step(np.ascontiguousarray(x[:, t]), state, w, bias, silu=True, out=y)
        np.testing.assert_allclose(y, np.asarray(out)[:, t], rtol=1e-14, atol=1e-14)
        assert np.asarray(res).ctypes.data == y.ctypes.data  # the given buffer, not a copy
    np.testing.assert_array_equal(state, np.asarray(final))


def test_float32_matches_float64(rng):
    b, l, c, width = 2, 13, 37, 4
    x, w, bias = rng.standard_normal((b, l, c)), rng.standard_normal((c, width)), rng.standard_normal(c)
    f = np.float32
    out64 = np.asarray(mt.conv1d_forward(x, w, bias, silu=True))
    out32 = mt.conv1d_forward(x.astype(f), w.astype(f), bias.astype(f), silu=True)
    assert out32.dtype == mt.float32
    assert np.abs(np.asarray(out32) - out64).max() <= 1e-5 * np.abs(out64).max()


def test_rejects_bad_arguments(rng):
    x, w = rng.standard_normal((2, 13, 37)), rng.standard_normal((37, 4))
    with pytest.raises(ValueError, match=r"'weight' has shape \[36, 4\], expected \[37, 4\]"):
        mt.conv1d_forward(x, rng.standard_normal((36, 4)))
    with pytest.raises(ValueError, match="between 2 and 4"):
        mt.conv1d_forward(x, rng.standard_normal((37, 5)))
    with pytest.raises(TypeError, match="'weight' has dtype f32"):
        mt.conv1d_forward(x, w.astype(np.float32))
    with pytest.raises(TypeError, match="'seq_idx' has dtype i64, expected i32"):
        mt.conv1d_forward(x, w, seq_idx=np.zeros((2, 13), np.int64))
    with pytest.raises(ValueError, match="'seq_idx' must be non-decreasing"):
        mt.conv1d_forward(x, w, seq_idx=np.array([[0] * 12 + [1], [2] * 12 + [1]], np.int32))
    with pytest.raises(ValueError, match=r"'initial_state' has shape \[2, 37, 4\], expected \[2, 37, 3\]"):
        mt.conv1d_forward(x, w, initial_state=rng.standard_normal((2, 37, 4)))
    with pytest.raises(ValueError, match=r"'x' has shape \[13, 37\]"):
        mt.conv1d_forward(x[0], w)
    with pytest.raises(ValueError, match=r"'conv_state' has shape \[2, 37, 2\], expected \[2, 37, 3\]"):
        mt.conv1d_step(x[:, 0].copy(), rng.standard_normal((2, 37, 2)), w)
    with pytest.raises(ValueError, match=r"'dweight' has shape \[37, 3\], expected \[37, 4\]"):
        mt.conv1d_backward(x, x, w, dweight=np.zeros((37, 3)))

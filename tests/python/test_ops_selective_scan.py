"""The Mamba-1 selective scan from Python, against float64 numpy code."""
import numpy as np
import pytest

import mambatron as mt


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(v):
    return np.where(v > 20, v, np.log1p(np.exp(np.minimum(v, 20))))


def _seq_idx(rng, b, l):
    steps = (rng.random((b, l)) < 0.2).astype(np.int32)
    steps[:, 0] = rng.integers(0, 4, b)
    return np.cumsum(steps, axis=1).astype(np.int32)


def make_inputs(rng, b=2, l=13, d=39, n=5, g=3, packed=False):
    return dict(
        u=rng.standard_normal((b, l, d)),
        delta=rng.uniform(-3, 1, (b, l, d)),
        A=-rng.uniform(0.3, 2, (d, n)),
        B=rng.standard_normal((b, l, g, n)),
        C=rng.standard_normal((b, l, g, n)),
        D=rng.standard_normal(d),
        z=rng.standard_normal((b, l, d)),
        delta_bias=0.5 * rng.standard_normal(d),
        initial_state=rng.standard_normal((b, d, n)),
        seq_idx=_seq_idx(rng, b, l) if packed else None,
    )


def _per_channel(X, d):
    """[b, g, n] -> [b, d, n]: channel c reads group c // (d / g)."""
    return np.repeat(X, d // X.shape[1], axis=1)


def scan_ref(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, dy=None, d_final_state=None):
    """Forward by the recurrence (delta_softplus on); with dy, also every gradient in reverse time."""
    b, l, d = u.shape
    g, n = B.shape[2], A.shape[1]
    v = delta + delta_bias
    dt = _softplus(v)
    h = initial_state.copy()
    hs, Es, ypre = [], [], np.empty_like(u)
    resets = np.zeros((b, l), bool)
    if seq_idx is not None:
        resets[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    for t in range(l):
        h = np.where(resets[:, t, None, None], 0.0, h)
        E = np.exp(dt[:, t, :, None] * A)
        h = E * h + (dt[:, t] * u[:, t])[..., None] * _per_channel(B[:, t], d)
        hs.append(h)
        Es.append(E)
        ypre[:, t] = (h * _per_channel(C[:, t], d)).sum(-1) + D * u[:, t]
    y = ypre * z * _sigmoid(z)
    if dy is None:
        return y, h
    grads = {k: np.zeros_like(x) for k, x in [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias)]}
    G = np.zeros((b, d, n)) if d_final_state is None else d_final_state.copy()
    for t in reversed(range(l)):
        sg = _sigmoid(z[:, t])
        grads["z"][:, t] = dy[:, t] * ypre[:, t] * sg * (1 + z[:, t] * (1 - sg))
        dyc = dy[:, t] * z[:, t] * sg
        grads["D"] += (dyc * u[:, t]).sum(0)
        Bc, Cc = _per_channel(B[:, t], d), _per_channel(C[:, t], d)
        G = G + dyc[..., None] * Cc
        grads["C"][:, t] = (dyc[..., None] * hs[t]).reshape(b, g, d // g, n).sum(2)
        grads["B"][:, t] = ((dt[:, t] * u[:, t])[..., None] * G).reshape(b, g, d // g, n).sum(2)
        hp = hs[t - 1] if t > 0 else initial_state
        hp = np.where(resets[:, t, None, None], 0.0, hp)
        geh = G * Es[t] * hp
        grads["A"] += (dt[:, t, :, None] * geh).sum(0)
        gB = (G * Bc).sum(-1)
        grads["u"][:, t] = dt[:, t] * gB + D * dyc
        dv = ((geh * A).sum(-1) + u[:, t] * gB) * np.where(v[:, t] > 20, 1.0, _sigmoid(v[:, t]))
        grads["delta"][:, t] = dv
        grads["delta_bias"] += dv.sum(0)
        G = np.where(resets[:, t, None, None], 0.0, G * Es[t])
    grads["initial_state"] = G
    return grads


@pytest.mark.parametrize("g,d", [(1, 37), (3, 39), (2, 70)])
@pytest.mark.parametrize("packed", [False, True])
def test_forward_matches_numpy(rng, g, d, packed):
    x = make_inputs(rng, d=d, g=g, packed=packed)
    y, final = mt.selective_scan_forward(**x, delta_softplus=True, return_final_state=True)
    ref_y, ref_final = scan_ref(**x)
    np.testing.assert_allclose(np.asarray(y), ref_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(final), ref_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("g,d,l", [(1, 37, 13), (3, 39, 13), (2, 70, 150)])
@pytest.mark.parametrize("packed", [False, True])
def test_backward_matches_numpy(rng, g, d, l, packed):
    x = make_inputs(rng, d=d, g=g, l=l, packed=packed)
    dy, dfinal = rng.standard_normal(x["u"].shape), rng.standard_normal(x["initial_state"].shape)
    got = mt.selective_scan_backward(dy, **x, delta_softplus=True, d_final_state=dfinal)
    ref = scan_ref(**x, dy=dy, d_final_state=dfinal)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    for name, grad in zip(names, got):
        want = ref[name]
        np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-10, atol=1e-10 * np.abs(want).max(), err_msg=name)


def test_optional_inputs(rng):
    """Without D, z, delta_bias, initial_state: y = the plain recurrence; no gradients for them."""
    x = make_inputs(rng, g=1, d=8)
    u, delta, A, B, C = (x[k] for k in ["u", "delta", "A", "B", "C"])
    delta = np.abs(delta)  # used as Δ directly: keep it positive
    y = mt.selective_scan_forward(u, delta, A, B, C)
    h = np.zeros((2, 8, 5))
    ref = np.empty_like(u)
    for t in range(u.shape[1]):
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t]
        ref[:, t] = (h * C[:, t]).sum(-1)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-12, atol=1e-12)
    grads = mt.selective_scan_backward(u, u, delta, A, B, C)
    assert all(gr is None for gr in grads[5:])


def test_step_matches_forward(rng):
    x = make_inputs(rng, g=3, d=39)
    x["seq_idx"] = None
    y, final = mt.selective_scan_forward(**x, delta_softplus=True, return_final_state=True)
    state = x["initial_state"].copy()
    for t in range(x["u"].shape[1]):
        tok = {k: np.ascontiguousarray(x[k][:, t]) for k in ["u", "delta", "B", "C", "z"]}
        yt = mt.selective_scan_step(tok["u"], tok["delta"], x["A"], tok["B"], tok["C"], state, x["D"], tok["z"],
                                    x["delta_bias"], delta_softplus=True)
        np.testing.assert_allclose(np.asarray(yt), np.asarray(y)[:, t], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(state, np.asarray(final), rtol=1e-13, atol=1e-13)


def test_float32_matches_float64(rng):
    x = make_inputs(rng, g=1, d=37, l=40, packed=True)
    y64 = np.asarray(mt.selective_scan_forward(**x, delta_softplus=True))
    x32 = {k: (v.astype(np.float32) if v is not None and v.dtype == np.float64 else v) for k, v in x.items()}
    y32 = mt.selective_scan_forward(**x32, delta_softplus=True)
    assert y32.dtype == mt.float32
    assert np.abs(np.asarray(y32) - y64).max() <= 1e-5 * np.abs(y64).max()


def test_rejects_bad_arguments(rng):
    x = make_inputs(rng, g=1, d=37)
    with pytest.raises(ValueError, match=r"'A' has shape \[36, 5\], expected \[37, 5\]"):
        mt.selective_scan_forward(**{**x, "A": rng.standard_normal((36, 5))})
    with pytest.raises(ValueError, match="must be at least 1 and divide d = 37"):
        mt.selective_scan_forward(**{**x, "B": rng.standard_normal((2, 13, 2, 5))})
    with pytest.raises(ValueError, match=r"'C' has shape \[2, 13, 1, 4\], expected \[2, 13, 1, 5\]"):
        mt.selective_scan_forward(**{**x, "C": rng.standard_normal((2, 13, 1, 4))})
    with pytest.raises(TypeError, match="'delta' has dtype f32, expected f64"):
        mt.selective_scan_forward(**{**x, "delta": x["delta"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"'initial_state' has shape \[2, 5, 37\], expected \[2, 37, 5\]"):
        mt.selective_scan_forward(**{**x, "initial_state": rng.standard_normal((2, 5, 37))})
    with pytest.raises(ValueError, match="'seq_idx' must be non-decreasing"):
        mt.selective_scan_forward(**{**x, "seq_idx": np.tile(np.arange(13, 0, -1, dtype=np.int32), (2, 1))})
    with pytest.raises(ValueError, match=r"'state' has shape \[2, 37, 4\], expected \[2, 37, 5\]"):
        mt.selective_scan_step(x["u"][:, 0].copy(), x["delta"][:, 0].copy(), x["A"], x["B"][:, 0].copy(),
                               x["C"][:, 0].copy(), np.zeros((2, 37, 4)))
    with pytest.raises(ValueError, match=r"'dA' has shape \[37, 4\], expected \[37, 5\]"):
        mt.selective_scan_backward(x["u"], **x, dA=np.zeros((37, 4)))

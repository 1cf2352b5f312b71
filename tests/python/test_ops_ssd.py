"""The SSD (Mamba-2 scan) ops from Python, on numpy arrays, against float64 numpy code."""
import numpy as np
import pytest

import mambatron as mt


def make_inputs(rng, b=2, l=13, h=4, p=5, g=2, n=7, dtype=np.float64):
    return dict(
        x=rng.standard_normal((b, l, h, p)).astype(dtype),
        dt=rng.uniform(-2.5, 0.5, (b, l, h)).astype(dtype),
        A=rng.uniform(-2.0, -0.3, h).astype(dtype),
        B=rng.standard_normal((b, l, g, n)).astype(dtype),
        C=rng.standard_normal((b, l, g, n)).astype(dtype),
        D=rng.standard_normal(h).astype(dtype),
        dt_bias=rng.uniform(-0.5, 0.5, h).astype(dtype),
        initial_state=rng.standard_normal((b, h, p, n)).astype(dtype),
    )


def ref_delta(dt, dt_bias, softplus, dt_min, dt_max):
    """Δ and dΔ/d(dt), from MODELS.md: softplus(v) = log1p(exp(v)), v > 20 -> v."""
    v = dt + (0.0 if dt_bias is None else dt_bias)
    delta, slope = v.copy(), np.ones_like(v)
    if softplus:
        small = v <= 20
        delta = np.where(small, np.log1p(np.exp(np.minimum(v, 20))), v)
        slope = np.where(small, 1 / (1 + np.exp(-v)), 1.0)
    if dt_min is not None:
        slope = np.where(delta < dt_min, 0.0, slope)
        delta = np.maximum(delta, dt_min)
    if dt_max is not None:
        slope = np.where(delta > dt_max, 0.0, slope)
        delta = np.minimum(delta, dt_max)
    return delta, slope


def ref_decays(delta, A, seq_idx):
    """exp(Δ_t·A) per [b, l, h], 0 where a new document starts."""
    alpha = np.exp(delta * A)
    if seq_idx is not None:
        starts = np.zeros(seq_idx.shape, bool)
        starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
        alpha[starts] = 0.0
    return alpha


def ref_states(x, delta, alpha, Bh, H0):
    """H_t for t = -1 .. l-1: [l+1, b, h, p, n]."""
    states = [H0]
    for t in range(x.shape[1]):
        H = alpha[:, t, :, None, None] * states[-1] + delta[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :]
        states.append(H)
    return np.stack(states)


def ref_forward(x, dt, A, B, C, D=None, dt_bias=None, initial_state=None, seq_idx=None, dt_softplus=True,
                dt_min=None, dt_max=None):
    b, l, h, p = x.shape
    n = B.shape[3]
    rep = h // B.shape[2]
    Bh, Ch = np.repeat(B, rep, axis=2), np.repeat(C, rep, axis=2)
    delta, _ = ref_delta(dt, dt_bias, dt_softplus, dt_min, dt_max)
    H0 = np.zeros((b, h, p, n)) if initial_state is None else initial_state
    states = ref_states(x, delta, ref_decays(delta, A, seq_idx), Bh, H0)
    y = np.einsum("tbhpn,bthn->bthp", states[1:], Ch)
    if D is not None:
        y = y + D[None, None, :, None] * x
    return y, states[-1]


def ref_backward(dy, d_final, x, dt, A, B, C, D=None, dt_bias=None, initial_state=None, seq_idx=None,
                 dt_softplus=True, dt_min=None, dt_max=None):
    """The reverse recurrence: G_{t-1} = α_t·(G_t + dy_t ⊗ C_t)."""
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    rep = h // g
    Bh, Ch = np.repeat(B, rep, axis=2), np.repeat(C, rep, axis=2)
    delta, slope = ref_delta(dt, dt_bias, dt_softplus, dt_min, dt_max)
    alpha = ref_decays(delta, A, seq_idx)
    H0 = np.zeros((b, h, p, n)) if initial_state is None else initial_state
    states = ref_states(x, delta, alpha, Bh, H0)
    Dv = np.zeros(h) if D is None else D
    G = np.zeros((b, h, p, n)) if d_final is None else d_final.copy()
    dx, ddelta, dA = np.zeros_like(x), np.zeros_like(dt), np.zeros(h)
    dBh, dCh = np.zeros_like(Bh), np.zeros_like(Ch)
    for t in reversed(range(l)):
        Hhat = G + dy[:, t, :, :, None] * Ch[:, t, :, None, :]
        dCh[:, t] = np.einsum("bhpn,bhp->bhn", states[t + 1], dy[:, t])
        hb = np.einsum("bhpn,bhn->bhp", Hhat, Bh[:, t])
        dx[:, t] = delta[:, t, :, None] * hb + Dv[None, :, None] * dy[:, t]
        dBh[:, t] = delta[:, t, :, None] * np.einsum("bhpn,bhp->bhn", Hhat, x[:, t])
        hh = np.einsum("bhpn,bhpn->bh", Hhat, states[t])
        ddelta[:, t] = np.einsum("bhp,bhp->bh", x[:, t], hb) + A * alpha[:, t] * hh
        dA += (delta[:, t] * alpha[:, t] * hh).sum(0)
        G = alpha[:, t, :, None, None] * Hhat
    ddt = ddelta * slope
    return dict(dx=dx, ddt=ddt, dA=dA, dB=dBh.reshape(b, l, g, rep, n).sum(3), dC=dCh.reshape(b, l, g, rep, n).sum(3),
                dD=np.einsum("blhp,blhp->h", dy, x), ddt_bias=ddt.sum((0, 1)), d_initial_state=G)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


GRAD_NAMES = ["dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias", "d_initial_state"]


@pytest.mark.parametrize("chunk_size", [0, 1, 4, 7, 64])
def test_forward_matches_numpy(chunk_size):
    inp = make_inputs(np.random.default_rng())
    y, fs = mt.ssd_forward(**inp, chunk_size=chunk_size, dt_softplus=True)
    ry, rfs = ref_forward(**inp)
    assert y.dtype == mt.float64 and list(y.shape) == list(ry.shape)
    assert rel_err(y.numpy(), ry) < 1e-12
    assert rel_err(fs.numpy(), rfs) < 1e-12


@pytest.mark.parametrize("l,chunk_size", [(1, 7), (200, 64), (257, 128)])
def test_chunked_equals_sequential_one_group(l, chunk_size):
    inp = make_inputs(np.random.default_rng(), l=l, h=3, p=4, g=1, n=8)
    y0, f0 = mt.ssd_forward(**inp, dt_softplus=True)
    y1, f1 = mt.ssd_forward(**inp, chunk_size=chunk_size, dt_softplus=True)
    assert rel_err(y1.numpy(), y0.numpy()) < 1e-12
    assert rel_err(f1.numpy(), f0.numpy()) < 1e-12
    assert rel_err(y0.numpy(), ref_forward(**inp)[0]) < 1e-12


def test_forward_float32_close_to_float64():
    inp = make_inputs(np.random.default_rng(), l=40, p=8, n=16, dtype=np.float32)
    y, fs = mt.ssd_forward(**inp, chunk_size=16, dt_softplus=True)
    assert y.dtype == mt.float32
    ry, rfs = ref_forward(**{k: v.astype(np.float64) for k, v in inp.items()})
    assert rel_err(y.numpy(), ry) < 1e-5
    assert rel_err(fs.numpy(), rfs) < 1e-5


def test_seq_idx_and_limits_match_numpy():
    rng = np.random.default_rng()
    inp = make_inputs(rng, l=20)
    seq_idx = np.array([[0] * 6 + [1] * 9 + [2] * 5, [4] * 20], dtype=np.int32)
    for q in (0, 8):
        y, fs = mt.ssd_forward(**inp, seq_idx=seq_idx, chunk_size=q, dt_softplus=True, dt_min=0.1, dt_max=0.5)
        ry, rfs = ref_forward(**inp, seq_idx=seq_idx, dt_min=0.1, dt_max=0.5)
        assert rel_err(y.numpy(), ry) < 1e-12
        assert rel_err(fs.numpy(), rfs) < 1e-12


@pytest.mark.parametrize("chunk_size", [0, 5])
def test_backward_matches_numpy(chunk_size):
    rng = np.random.default_rng()
    inp = make_inputs(rng, l=11)
    seq_idx = np.array([[0] * 4 + [1] * 7, [2] * 11], dtype=np.int32)
    dy = rng.standard_normal(inp["x"].shape)
    df = rng.standard_normal(inp["initial_state"].shape)
    grads = mt.ssd_backward(dy, **inp, seq_idx=seq_idx, d_final_state=df, chunk_size=chunk_size, dt_softplus=True,
                            dt_max=0.6)
    ref = ref_backward(dy, df, **inp, seq_idx=seq_idx, dt_max=0.6)
    for name, got in zip(GRAD_NAMES, grads):
        assert rel_err(got.numpy(), ref[name]) < 1e-11, name


def test_numpy_backward_against_finite_differences():
    """The numpy reference backward itself, along one random direction."""
    rng = np.random.default_rng()
    inp = make_inputs(rng, b=1, l=6, h=2, p=3, g=1, n=4)
    dy = rng.standard_normal(inp["x"].shape)
    grads = mt.ssd_backward(dy, **inp, chunk_size=4, dt_softplus=True)
    dirs = {k: rng.standard_normal(v.shape) for k, v in inp.items()}
    eps = 1e-6

    def loss(s):
        y, _ = ref_forward(**{k: v + s * dirs[k] for k, v in inp.items()})
        return float((dy * y).sum())

    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"]
    analytic = sum(float((g.numpy() * dirs[k]).sum()) for k, g in zip(names, grads))
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd))


def test_backward_optional_gradients_and_outputs():
    rng = np.random.default_rng()
    inp = make_inputs(rng, l=9)
    for k in ("D", "dt_bias", "initial_state"):
        del inp[k]
    dy = rng.standard_normal(inp["x"].shape)
    grads = mt.ssd_backward(dy, **inp, chunk_size=4, dt_softplus=True)
    assert grads[5] is None and grads[6] is None and grads[7] is None
    dD = np.full(4, np.nan)
    grads = mt.ssd_backward(dy, **inp, chunk_size=4, dt_softplus=True, dD=dD)
    ref = ref_backward(dy, None, **inp)
    assert rel_err(dD, ref["dD"]) < 1e-12  # written into the array given
    assert rel_err(grads[0].numpy(), ref["dx"]) < 1e-12


def test_step_advances_state_in_place():
    rng = np.random.default_rng()
    inp = make_inputs(rng, l=7)
    state = inp["initial_state"].copy()
    ys = []
    for t in range(7):
        ys.append(mt.ssd_step(inp["x"][:, t].copy(), inp["dt"][:, t].copy(), inp["A"], inp["B"][:, t].copy(),
                              inp["C"][:, t].copy(), state, inp["D"], inp["dt_bias"], dt_softplus=True).numpy())
    ry, rfs = ref_forward(**inp)
    assert rel_err(np.stack(ys, axis=1), ry) < 1e-12
    assert rel_err(state, rfs) < 1e-12


def test_errors_name_the_argument():
    inp = make_inputs(np.random.default_rng())
    bad = dict(inp, dt=inp["dt"][:, :, :3].copy())
    with pytest.raises(ValueError, match=r"ssd_forward: argument 'dt' has shape \[2, 13, 3\], expected \[2, 13, 4\]"):
        mt.ssd_forward(**bad)
    with pytest.raises(TypeError, match="'seq_idx' has dtype i64, expected i32"):
        mt.ssd_forward(**inp, seq_idx=np.zeros((2, 13), dtype=np.int64))
    with pytest.raises(TypeError, match="'B' has dtype f32"):
        mt.ssd_forward(**dict(inp, B=inp["B"].astype(np.float32)))
    with pytest.raises(ValueError, match="'seq_idx' decreases"):
        mt.ssd_forward(**inp, seq_idx=np.array([[1] * 13, [1] * 12 + [0]], dtype=np.int32))
    with pytest.raises(ValueError, match="'state' has shape"):
        mt.ssd_step(inp["x"][:, 0].copy(), inp["dt"][:, 0].copy(), inp["A"], inp["B"][:, 0].copy(),
                    inp["C"][:, 0].copy(), np.zeros((2, 4, 5, 6)))
    with pytest.raises(ValueError, match="'dB' has shape"):
        mt.ssd_backward(inp["x"], **inp, dB=np.zeros((2, 13, 4, 7)))

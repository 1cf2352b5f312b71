"""Attention, RoPE, KV-cache append and decode attention from Python, against float64 numpy code."""
import numpy as np
import pytest

import mambatron as mt

HEADS = [(3, 3, 37), (8, 2, 24), (8, 1, 40)]  # (hq, hkv, p): GQA ratios 1, 4, 8


def _documents(rng, b, l):
    """Non-decreasing int32 document ids per row."""
    steps = (rng.random((b, l)) < 0.2).astype(np.int32)
    steps[:, 0] = 0
    return np.cumsum(steps, axis=1).astype(np.int32) + 2


def _mask(b, l, seq_idx):
    """[b, 1, l, l]: query i may see key j."""
    causal = np.tril(np.ones((l, l), dtype=bool))[None, None]
    if seq_idx is None:
        return np.broadcast_to(causal, (b, 1, l, l))
    return causal & (seq_idx[:, None, :, None] == seq_idx[:, None, None, :])


def _ref_attention(q, k, v, seq_idx=None, scale=None):
    b, l, hq, p = q.shape
    g = hq // k.shape[2]
    scale = 1 / np.sqrt(p) if scale is None else scale
    ke, ve = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bihp,bjhp->bhij", q, ke) * scale
    s = np.where(_mask(b, l, seq_idx), s, -np.inf)
    mx = s.max(-1, keepdims=True)
    e = np.exp(s - mx)
    lse = (mx + np.log(e.sum(-1, keepdims=True)))[..., 0]
    prob = e / e.sum(-1, keepdims=True)
    return np.einsum("bhij,bjhp->bihp", prob, ve), lse, prob


def _ref_attention_grads(dout, q, k, v, seq_idx=None, scale=None):
    b, l, hq, p = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    scale = 1 / np.sqrt(p) if scale is None else scale
    out, _, prob = _ref_attention(q, k, v, seq_idx, scale)
    ke, ve = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    dprob = np.einsum("bihp,bjhp->bhij", dout, ve)
    ds = prob * (dprob - (dout * out).sum(-1).transpose(0, 2, 1)[..., None])
    dq = scale * np.einsum("bhij,bjhp->bihp", ds, ke)
    dke = scale * np.einsum("bhij,bihp->bjhp", ds, q)
    dve = np.einsum("bhij,bihp->bjhp", prob, dout)
    return dq, dke.reshape(b, l, hkv, g, p).sum(3), dve.reshape(b, l, hkv, g, p).sum(3)


def _ref_rope(x, positions=None, fraction=1.0, base=10000.0, inverse=False):
    b, l, h, p = x.shape
    r = int(round(fraction * p))
    pos = np.broadcast_to(np.arange(l), (b, l)) if positions is None else positions
    theta = pos[..., None, None].astype(np.float64) * base ** (-np.arange(r // 2) * 2.0 / r)
    c, s = np.cos(theta), np.sin(theta) * (-1 if inverse else 1)
    x1, x2 = x[..., : r // 2], x[..., r // 2 : r]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[..., r:]], axis=-1)


def _qkv(rng, b, l, hq, hkv, p, dtype=np.float64):
    return tuple(rng.standard_normal((b, l, h, p)).astype(dtype) for h in (hq, hkv, hkv))


@pytest.mark.parametrize("hq,hkv,p", HEADS)
@pytest.mark.parametrize("packed", [False, True])
def test_attention_forward_matches_numpy(rng, hq, hkv, p, packed):
    q, k, v = _qkv(rng, 2, 13, hq, hkv, p)
    seq = _documents(rng, 2, 13) if packed else None
    out, lse = mt.attention_forward(q, k, v, seq_idx=seq)
    ref_out, ref_lse, _ = _ref_attention(q, k, v, seq)
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(lse), ref_lse, rtol=1e-12, atol=1e-13)
    assert np.asarray(lse).shape == (2, hq, 13)


@pytest.mark.parametrize("hq,hkv,p", HEADS)
@pytest.mark.parametrize("packed", [False, True])
def test_attention_backward_matches_numpy(rng, hq, hkv, p, packed):
    q, k, v = _qkv(rng, 2, 70, hq, hkv, p)
    seq = _documents(rng, 2, 70) if packed else None
    dout = rng.standard_normal(q.shape)
    out, lse = mt.attention_forward(q, k, v, seq_idx=seq, softmax_scale=0.3)
    grads = mt.attention_backward(dout, q, k, v, out, lse, seq_idx=seq, softmax_scale=0.3)
    for got, ref, name in zip(grads, _ref_attention_grads(dout, q, k, v, seq, 0.3), ("dq", "dk", "dv")):
        scale = np.abs(ref).max()
        np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=1e-12 * scale, err_msg=name)


def test_attention_f32_close_to_f64(rng):
    q, k, v = _qkv(rng, 2, 150, 8, 2, 40, np.float32)
    seq = _documents(rng, 2, 150)
    out, lse = mt.attention_forward(q, k, v, seq_idx=seq)
    assert out.dtype == mt.DType.f32 and lse.dtype == mt.DType.f32
    ref_out, ref_lse, _ = _ref_attention(*(x.astype(np.float64) for x in (q, k, v)), seq)
    assert np.abs(np.asarray(out) - ref_out).max() <= 1e-5 * np.abs(ref_out).max()
    assert np.abs(np.asarray(lse) - ref_lse).max() <= 1e-5 * np.abs(ref_lse).max()


def test_attention_writes_given_outputs(rng):
    q, k, v = _qkv(rng, 1, 9, 4, 2, 8)
    out, lse = np.full(q.shape, np.nan), np.full((1, 4, 9), np.nan)
    res_out, res_lse = mt.attention_forward(q, k, v, out=out, lse=lse)
    np.testing.assert_allclose(out, _ref_attention(q, k, v)[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(np.asarray(res_out), out)
    np.testing.assert_array_equal(np.asarray(res_lse), lse)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_rope_matches_numpy(rng, fraction):
    x = rng.standard_normal((2, 13, 3, 24))
    pos = rng.integers(0, 5000, (2, 13)).astype(np.int32)
    np.testing.assert_allclose(np.asarray(mt.rope_forward(x, rotary_fraction=fraction)),
                               _ref_rope(x, None, fraction), rtol=1e-12, atol=1e-13)
    y = mt.rope_forward(x, positions=pos, rotary_fraction=fraction, base=500.0)
    np.testing.assert_allclose(np.asarray(y), _ref_rope(x, pos, fraction, 500.0), rtol=1e-11, atol=1e-11)
    dx = mt.rope_backward(x, positions=pos, rotary_fraction=fraction, base=500.0)
    np.testing.assert_allclose(np.asarray(dx), _ref_rope(x, pos, fraction, 500.0, inverse=True),
                               rtol=1e-11, atol=1e-11)
    # In place: out is x itself.
    z = x.copy()
    mt.rope_forward(z, positions=pos, rotary_fraction=fraction, base=500.0, out=z)
    np.testing.assert_array_equal(z, np.asarray(y))


def test_decode_token_by_token_equals_forward(rng):
    b, l, hq, hkv, p, frac = 2, 17, 8, 2, 24, 0.5
    q, k, v = _qkv(rng, b, l, hq, hkv, p)
    full, _ = mt.attention_forward(mt.rope_forward(q, rotary_fraction=frac), mt.rope_forward(k, rotary_fraction=frac), v)
    full = np.asarray(full)
    k_cache, v_cache = np.full((b, l + 3, hkv, p), np.nan), np.full((b, l + 3, hkv, p), np.nan)
    lens = np.zeros(b, np.int32)
    for t in range(l):
        pos = np.full((b, 1), t, np.int32)
        kt = np.asarray(mt.rope_forward(np.ascontiguousarray(k[:, t : t + 1]), positions=pos, rotary_fraction=frac))[:, 0]
        qt = np.asarray(mt.rope_forward(np.ascontiguousarray(q[:, t : t + 1]), positions=pos, rotary_fraction=frac))[:, 0]
        mt.kv_cache_append(kt, np.ascontiguousarray(v[:, t]), k_cache, v_cache, lens)
        assert (lens == t + 1).all()
        out = mt.attention_decode(qt, k_cache, v_cache, lens)
        np.testing.assert_allclose(np.asarray(out), full[:, t], rtol=1e-12, atol=1e-13)


def test_decode_prompts_of_different_lengths(rng):
    hq, hkv, p, max_len = 4, 2, 16, 12
    lens = np.array([3, 9, 1], np.int32)
    k_cache = rng.standard_normal((3, max_len, hkv, p))
    v_cache = rng.standard_normal((3, max_len, hkv, p))
    q = rng.standard_normal((3, hq, p))
    out = np.asarray(mt.attention_decode(q, k_cache, v_cache, lens, softmax_scale=0.5))
    for i, n in enumerate(lens):
        ke = np.repeat(k_cache[i, :n], hq // hkv, axis=1)  # [n, hq, p]
        ve = np.repeat(v_cache[i, :n], hq // hkv, axis=1)
        s = np.einsum("hp,jhp->hj", q[i], ke) * 0.5
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        np.testing.assert_allclose(out[i], np.einsum("hj,jhp->hp", w, ve), rtol=1e-12, atol=1e-13)


def test_kv_cache_append_full_cache_raises(rng):
    k_cache, v_cache = np.zeros((2, 3, 1, 4)), np.zeros((2, 3, 1, 4))
    lens = np.array([1, 3], np.int32)
    k, v = rng.standard_normal((2, 1, 4)), rng.standard_normal((2, 1, 4))
    with pytest.raises(ValueError, match="cache_lens.*sequence 1"):
        mt.kv_cache_append(k, v, k_cache, v_cache, lens)
    assert (lens == [1, 3]).all() and not k_cache.any()
    with pytest.raises(ValueError, match="the cache is full"):  # the CPU checks even when told not to
        mt.kv_cache_append(k, v, k_cache, v_cache, lens, check_lengths=False)


def test_errors_name_the_argument(rng):
    q, k, v = _qkv(rng, 2, 5, 4, 2, 8)
    with pytest.raises(ValueError, match=r"'v'.*\[2, 5, 2, 8\]"):
        mt.attention_forward(q, k, v[:, :4].copy())
    with pytest.raises(ValueError, match="'k'.*divisor"):
        mt.attention_forward(q, np.concatenate([k, k[:, :, :1]], 2), v)
    with pytest.raises(TypeError, match="'k'.*f32"):
        mt.attention_forward(q, k.astype(np.float32), v)
    with pytest.raises(ValueError, match="'seq_idx'.*non-decreasing"):
        mt.attention_forward(q, k, v, seq_idx=np.array([[0, 1, 0, 1, 1]] * 2, np.int32))
    with pytest.raises(TypeError, match="'seq_idx'.*i32"):
        mt.attention_forward(q, k, v, seq_idx=np.zeros((2, 5), np.int64))
    out, lse = mt.attention_forward(q, k, v)
    with pytest.raises(ValueError, match=r"'lse'.*\[2, 4, 5\]"):
        mt.attention_backward(q, q, k, v, out, np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="rotary_dim.*even"):
        mt.rope_forward(q, rotary_fraction=0.125)
    with pytest.raises(ValueError, match="'cache_lens'.*0 at sequence"):
        mt.attention_decode(np.ascontiguousarray(q[:, 0]), np.zeros((2, 4, 2, 8)), np.zeros((2, 4, 2, 8)), np.zeros(2, np.int32))


def test_attention_engine_setting():
    assert mt.attention_engine() == "auto"
    version, why = mt.cudnn_version(reason=True)
    assert isinstance(version, int) and version == mt.cudnn_version()
    assert (version == 0) == bool(why)
    try:
        mt.set_attention_engine("builtin")
        assert mt.attention_engine() == "builtin"
        with pytest.raises(ValueError, match="'flash'.*'auto', 'cudnn' or 'builtin'"):
            mt.set_attention_engine("flash")
        assert mt.attention_engine() == "builtin"
        if version == 0:  # asking for cuDNN where it cannot run says why, and changes nothing
            with pytest.raises(RuntimeError, match="cuDNN is not usable here: " + why[:20]):
                mt.set_attention_engine("cudnn")
            assert mt.attention_engine() == "builtin"
    finally:
        mt.set_attention_engine("auto")


def test_attention_engine_from_the_environment():
    import subprocess
    import sys

    def engine(value):
        env = dict(__import__("os").environ, MAMBATRON_ATTENTION_ENGINE=value)
        run = subprocess.run([sys.executable, "-c", "import mambatron as mt; print(mt.attention_engine())"],
                             env=env, capture_output=True, text=True)
        return run.returncode, run.stdout.strip(), run.stderr

    assert engine("builtin")[:2] == (0, "builtin")
    assert engine("")[:2] == (0, "auto")
    rc, _, err = engine("fast")
    assert rc != 0 and "MAMBATRON_ATTENTION_ENGINE is 'fast', expected auto, cudnn or builtin" in err

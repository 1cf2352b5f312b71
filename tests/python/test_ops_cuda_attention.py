"""The attention family's bindings on CUDA: outputs they allocate live on the input's
device with the dtypes the CUDA ops take (activations like q, lse f32), and the results
agree with the CPU op within the rule: the built-in kernels with the CPU op in f32 as the
yardstick, cuDNN's fused attention (P and dS kept in bf16) with the rule's bf16
computation. The kernels themselves are tested in
tests/cpp/test_cuda_attention.cpp. Skipped without a GPU."""
import numpy as np
import pytest

import mambatron as mt

from conftest import assert_within_rule

pytestmark = pytest.mark.gpu


def host(t):
    return t.to(device="cpu", dtype="f64").numpy()


def rounded(rng, shape, dtype, scale=1.0):
    """A random CPU tensor rounded to dtype, with its f32 and f64 copies."""
    t = mt.tensor(rng.standard_normal(shape) * scale, dtype=dtype)
    return t, t.to("f32"), t.to("f64")


def documents(rng, b, l):
    steps = (rng.random((b, l)) < 0.2).astype(np.int32)
    steps[:, 0] = 0
    return np.cumsum(steps, axis=1).astype(np.int32) + 2


@pytest.fixture
def engine(request):
    """Runs the test under the attention engine named by the test's parameter, then back to auto."""
    name = request.param
    if name == "cudnn" and not mt.cudnn_version():
        pytest.skip(f"cuDNN is not usable here: {mt.cudnn_version(reason=True)[1]}")
    mt.set_attention_engine(name)
    yield name
    mt.set_attention_engine("auto")


@pytest.mark.parametrize("engine", ["builtin"], indirect=True)
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("l,hkv,p", [(97, 2, 64), (300, 1, 128), (77, 8, 96)])
def test_attention_forward_and_backward_on_the_device(engine, dtype, packed, l, hkv, p, rng):
    check_attention(dtype, packed, l, hkv, p, rng)


def round_bf16(x):
    """x rounded to bf16 (round to nearest even), as f64."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def bf16_framework_attention(q, k, v, dout, scale):
    """Causal GQA attention as a bf16 framework computes it, every stored tensor (S, P, out,
    dP, dS, each query head's dq, dk, dv, the group sums) rounded to bf16: the yardstick of
    the rule for an engine that keeps P and dS in bf16 (tests/cpp/attention_testing.h)."""
    b, l, hq, p = q.shape
    g = hq // k.shape[2]
    K, V = np.repeat(k, g, 2), np.repeat(v, g, 2)
    mask = np.tril(np.ones((l, l), bool))
    S = np.where(mask, round_bf16(np.einsum("bihp,bjhp->bhij", q, K) * scale), -np.inf)
    m = S.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(S - m).sum(-1, keepdims=True)))[..., 0]
    P = round_bf16(np.exp(S - lse[..., None]))
    out = round_bf16(np.einsum("bhij,bjhp->bihp", P, V))
    dP = round_bf16(np.einsum("bihp,bjhp->bhij", dout, V))
    dS = round_bf16(P * (dP - (P * dP).sum(-1, keepdims=True)))
    dq = round_bf16(np.einsum("bhij,bjhp->bihp", dS, K) * scale)
    dk = round_bf16(np.einsum("bhij,bihp->bjhp", dS, q) * scale)
    dv = round_bf16(np.einsum("bhij,bihp->bjhp", P, dout))
    group = lambda x: round_bf16(x.reshape(b, l, -1, g, p).sum(3))  # noqa: E731
    return out, lse, dq, group(dk), group(dv)


@pytest.mark.parametrize("engine", ["cudnn"], indirect=True)
@pytest.mark.parametrize("b,l,hq,hkv,p", [(2, 97, 8, 8, 64), (2, 300, 8, 2, 128), (1, 257, 8, 1, 128),
                                          (3, 64, 4, 4, 96), (1, 700, 32, 8, 128)])
def test_cudnn_engine_forward_and_backward(engine, b, l, hq, hkv, p, rng):
    q, _, q64 = rounded(rng, (b, l, hq, p), "bf16", 2.0)
    k, _, k64 = rounded(rng, (b, l, hkv, p), "bf16")
    v, _, v64 = rounded(rng, (b, l, hkv, p), "bf16")
    d, _, d64 = rounded(rng, (b, l, hq, p), "bf16")
    ref, ref_lse = mt.attention_forward(q64, k64, v64)
    o = ref.to("bf16")
    ref_g = mt.attention_backward(d64, q64, k64, v64, o.to("f64"), ref_lse)
    same = bf16_framework_attention(host(q), host(k), host(v), host(d), 1 / np.sqrt(p))
    out, lse = mt.attention_forward(q.cuda(), k.cuda(), v.cuda())
    grads = mt.attention_backward(d.cuda(), q.cuda(), k.cuda(), v.cuda(), o.cuda(), ref_lse.to("f32").cuda())
    for name, got, want, r in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), same,
                                  (ref, ref_lse, *ref_g)):
        assert_within_rule(host(got), want, host(r), 1e-5, f"cuDNN {name}")


@pytest.mark.parametrize("engine", ["cudnn"], indirect=True)
def test_cudnn_engine_repeats_its_bits_and_feeds_the_builtin_backward(engine, rng):
    b, l, hq, hkv, p = 2, 1000, 8, 2, 128
    q, k, v, d = (mt.tensor(rng.standard_normal((b, l, h, p)), dtype="bf16").cuda() for h in (hq, hkv, hkv, hq))
    out, lse = mt.attention_forward(q, k, v)
    grads = [mt.attention_backward(d, q, k, v, out, lse) for _ in range(2)]
    for g1, g2 in zip(*grads):
        assert np.array_equal(host(g1), host(g2))
    out2, lse2 = mt.attention_forward(q, k, v)
    assert np.array_equal(host(out), host(out2)) and np.array_equal(host(lse), host(lse2))
    # The lse means the same to both engines: cuDNN's forward feeds the built-in backward.
    mt.set_attention_engine("builtin")
    out_b, lse_b = mt.attention_forward(q, k, v)
    assert np.abs(host(lse_b) - host(lse)).max() < 1e-3
    for g_c, g_b in zip(grads[0], mt.attention_backward(d, q, k, v, out, lse)):
        scale = np.abs(host(g_b)).max()
        assert np.abs(host(g_c) - host(g_b)).max() < 0.05 * scale


@pytest.mark.parametrize("engine", ["cudnn"], indirect=True)
def test_cudnn_engine_refuses_what_it_does_not_take(engine, rng):
    b, l, hq, hkv, p = 1, 16, 4, 2, 32
    q = mt.tensor(rng.standard_normal((b, l, hq, p)), dtype="bf16").cuda()
    k = mt.tensor(rng.standard_normal((b, l, hkv, p)), dtype="bf16").cuda()
    seq = mt.tensor(documents(rng, b, l), dtype="i32").cuda()
    with pytest.raises(RuntimeError, match="engine is cudnn.*seq_idx"):
        mt.attention_forward(q, k, k, seq_idx=seq)
    with pytest.raises(RuntimeError, match="engine is cudnn.*dtype f32"):
        mt.attention_forward(q.to("f32"), k.to("f32"), k.to("f32"))
    mt.set_attention_engine("auto")  # the same calls fall back to the built-in kernels
    mt.attention_forward(q, k, k, seq_idx=seq)
    mt.attention_forward(q.to("f32"), k.to("f32"), k.to("f32"))


@pytest.mark.parametrize("engine", ["cudnn"], indirect=True)
def test_cudnn_engine_refuses_an_lse_off_16_byte_alignment(engine):
    """cuDNN takes 16-byte aligned tensors: an lse 4 bytes past that is refused with the
    reason under the cudnn engine, and left to the built-in kernels under auto."""
    torch = pytest.importorskip("torch")
    b, l, hq, hkv, p = 1, 16, 4, 2, 32
    q = torch.randn(b, l, hq, p, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, l, hkv, p, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    lse = torch.empty(b * hq * l + 1, device="cuda", dtype=torch.float32)[1:].view(b, hq, l)
    args = [mt.from_dlpack(t) for t in (q, k, k)]
    with pytest.raises(RuntimeError, match="engine is cudnn.*lse"):
        mt.attention_forward(*args, out=mt.from_dlpack(out), lse=mt.from_dlpack(lse))
    mt.set_attention_engine("auto")
    mt.attention_forward(*args, out=mt.from_dlpack(out), lse=mt.from_dlpack(lse))
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(lse).all())


def check_attention(dtype, packed, l, hkv, p, rng):
    b, hq = 2, 8
    q, q32, q64 = rounded(rng, (b, l, hq, p), dtype, 2.0)
    k, k32, k64 = rounded(rng, (b, l, hkv, p), dtype)
    v, v32, v64 = rounded(rng, (b, l, hkv, p), dtype)
    seq = mt.tensor(documents(rng, b, l), dtype="i32") if packed else None
    seq_d = seq.cuda() if packed else None
    out, lse = mt.attention_forward(q.cuda(), k.cuda(), v.cuda(), seq_idx=seq_d)
    assert out.is_cuda and out.dtype == q.dtype and lse.is_cuda and lse.dtype == mt.float32
    assert lse.shape == (b, hq, l)
    ref, ref_lse = mt.attention_forward(q64, k64, v64, seq_idx=seq)
    cpu, cpu_lse = mt.attention_forward(q32, k32, v32, seq_idx=seq)
    assert_within_rule(host(out), host(cpu.to(dtype)), host(ref), 1e-5, f"out {dtype}")
    assert_within_rule(host(lse), host(cpu_lse), host(ref_lse), 1e-5, f"lse {dtype}")

    # The backward from the CPU's f32 forward, on every side.
    o = cpu.to(dtype)
    d, d32, d64 = rounded(rng, (b, l, hq, p), dtype)
    grads = mt.attention_backward(d.cuda(), q.cuda(), k.cuda(), v.cuda(), o.cuda(), cpu_lse.cuda(), seq_idx=seq_d)
    ref_g = mt.attention_backward(d64, q64, k64, v64, o.to("f64"), cpu_lse.to("f64"), seq_idx=seq)
    cpu_g = mt.attention_backward(d32, q32, k32, v32, o.to("f32"), cpu_lse, seq_idx=seq)
    for name, g, r, c in zip(("dq", "dk", "dv"), grads, ref_g, cpu_g):
        assert g.is_cuda and g.dtype == q.dtype
        assert_within_rule(host(g), host(c.to(dtype)), host(r), 1e-5, f"{name} {dtype}")


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_rope_on_the_device(dtype, rng):
    x, x32, x64 = rounded(rng, (2, 9, 3, 32), dtype)
    pos = mt.tensor(rng.integers(0, 5000, size=(2, 9)), dtype="i32")
    for fwd in (mt.rope_forward, mt.rope_backward):
        out = fwd(x.cuda(), positions=pos.cuda(), rotary_fraction=0.5)
        assert out.is_cuda and out.dtype == x.dtype
        ref = fwd(x64, positions=pos, rotary_fraction=0.5)
        cpu = fwd(x32, positions=pos, rotary_fraction=0.5)
        assert_within_rule(host(out), host(cpu.to(dtype)), host(ref), 1e-5, f"{fwd.__name__} {dtype}")


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_kv_cache_append_and_decode_on_the_device(dtype, rng):
    b, max_len, hq, hkv, p = 3, 40, 8, 4, 32
    kc, kc32, _ = rounded(rng, (b, max_len, hkv, p), dtype)
    vc, vc32, _ = rounded(rng, (b, max_len, hkv, p), dtype)
    k, k32, _ = rounded(rng, (b, hkv, p), dtype)
    v, v32, _ = rounded(rng, (b, hkv, p), dtype)
    lens = np.array([5, 39, 17], dtype=np.int32)
    kcd, vcd, lensd = kc.cuda(), vc.cuda(), mt.tensor(lens, dtype="i32").cuda()
    mt.kv_cache_append(k.cuda(), v.cuda(), kcd, vcd, lensd)
    lens_cpu = mt.tensor(lens, dtype="i32")
    mt.kv_cache_append(k32, v32, kc32, vc32, lens_cpu)
    assert np.array_equal(host(lensd), lens + 1)
    assert np.array_equal(host(kcd), host(kc32)) and np.array_equal(host(vcd), host(vc32))

    q, q32, q64 = rounded(rng, (b, hq, p), dtype, 2.0)
    out = mt.attention_decode(q.cuda(), kcd, vcd, lensd)
    assert out.is_cuda and out.dtype == q.dtype and out.shape == (b, hq, p)
    ref = mt.attention_decode(q64, kc32.to("f64"), vc32.to("f64"), lens_cpu)
    cpu = mt.attention_decode(q32, kc32, vc32, lens_cpu)
    assert_within_rule(host(out), host(cpu.to(dtype)), host(ref), 1e-5, f"decode {dtype}")

    # Sequence 1 is full now: the append is refused and changes nothing.
    with pytest.raises(ValueError, match="full"):
        mt.kv_cache_append(k.cuda(), v.cuda(), kcd, vcd, lensd)
    assert np.array_equal(host(lensd), lens + 1)

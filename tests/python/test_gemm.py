"""gemm from Python: numpy references on the CPU, DESIGN.md's rule on CUDA."""
import numpy as np
import pytest

import mambatron as mt
from conftest import assert_within_rule


def _op(x, t):
    return np.swapaxes(x, -1, -2) if t else x


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("batch", [None, 4])
def test_cpu_matches_numpy_float64(ta, tb, batch, rng):
    m, k, n = 13, 29, 7
    sa = (k, m) if ta else (m, k)
    sb = (n, k) if tb else (k, n)
    if batch:
        sa, sb = (batch,) + sa, (batch,) + sb
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    got = mt.gemm(a, b, trans_a=ta, trans_b=tb, alpha=0.5).numpy()
    np.testing.assert_allclose(got, 0.5 * (_op(a, ta) @ _op(b, tb)), rtol=1e-12, atol=1e-12)
    got32 = mt.gemm(a.astype(np.float32), b.astype(np.float32), trans_a=ta, trans_b=tb).numpy()
    ref = _op(a.astype(np.float32).astype(np.float64), ta) @ _op(b.astype(np.float32).astype(np.float64), tb)
    assert np.abs(got32 - ref).max() <= 1e-5 * np.abs(ref).max()


def test_out_beta_and_broadcast(rng):
    a = rng.standard_normal((5, 6))
    b = rng.standard_normal((3, 6, 4))
    c0 = rng.standard_normal((3, 5, 4))
    out = mt.tensor(c0)
    res = mt.gemm(a, b, out=out, alpha=2.0, beta=-1.0)
    assert res.data_ptr() == out.data_ptr()
    np.testing.assert_allclose(out.numpy(), 2.0 * (a @ b) - c0, rtol=1e-12, atol=1e-12)


def test_addend_is_added_in_the_same_pass(rng):
    a, b, r = rng.standard_normal((5, 6)), rng.standard_normal((4, 6)), rng.standard_normal((5, 4))
    got = mt.gemm(a, b, trans_b=True, beta=1.0, addend=r).numpy()
    np.testing.assert_allclose(got, a @ b.T + r, rtol=1e-12, atol=1e-12)
    stream = mt.tensor(r)  # the residual stream updated in place
    mt.gemm(a, b, trans_b=True, beta=1.0, addend=stream, out=stream)
    np.testing.assert_array_equal(stream.numpy(), got)
    with pytest.raises(ValueError, match="argument 'addend' has shape \\[4, 5\\], expected \\[5, 4\\]"):
        mt.gemm(a, b, trans_b=True, beta=1.0, addend=r.T.copy())


def test_bf16_on_cpu_rounds_output(rng):
    a = mt.tensor(rng.standard_normal((9, 17)), dtype="bf16")
    b = mt.tensor(rng.standard_normal((17, 5)), dtype="bf16")
    ref = a.to("f64").numpy() @ b.to("f64").numpy()
    c32 = mt.gemm(a, b, out_dtype="f32").numpy()
    assert np.abs(c32 - ref).max() <= 1e-5 * np.abs(ref).max()
    c16 = mt.gemm(a, b)
    assert c16.dtype == mt.bfloat16
    assert np.abs(c16.to("f64").numpy() - ref).max() <= 2**-8 * np.abs(ref).max()


def test_bad_input_raises_clear_errors(rng):
    a = rng.standard_normal((4, 5))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        mt.gemm(a, a)
    with pytest.raises(TypeError, match="argument 'b' has dtype f32, expected f64"):
        mt.gemm(a, a.T.astype(np.float32).copy())
    with pytest.raises(ValueError, match="argument 'a' .* is not contiguous"):
        mt.gemm(mt.tensor(a).transpose(0, 1), a)
    with pytest.raises(ValueError, match=r"argument 'out' has shape|argument 'c' has shape \[2, 2\], expected \[4, 4\]"):
        mt.gemm(a, a, trans_b=True, out=mt.empty([2, 2], dtype="f64"))
    with pytest.raises(TypeError, match="argument 'a' has dtype i32"):
        mt.gemm(np.ones((2, 2), np.int32), np.ones((2, 2), np.int32))
    with pytest.raises(TypeError, match="argument 'b' must be a mambatron.Tensor"):
        mt.gemm(a, "not an array")
    with pytest.raises(ValueError, match="expected 2 dims"):
        mt.gemm(np.ones((2, 2, 2, 2)), np.ones((2, 2)))


SHAPES = [(1, 1, 1), (67, 45, 129), (128, 256, 64), (33, 17, 255), (1000, 3, 513), (255, 257, 1023)]


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False)])
def test_cuda_matches_cpu_reference_within_rule(m, n, k, dtype, ta, tb, rng):
    a = mt.tensor(rng.standard_normal((k, m) if ta else (m, k)), dtype=dtype)
    b = mt.tensor(rng.standard_normal((n, k) if tb else (k, n)), dtype=dtype)
    ref = mt.gemm(a.to("f64"), b.to("f64"), trans_a=ta, trans_b=tb).numpy()
    for out_dtype in {dtype, "f32"}:
        cpu = mt.gemm(a, b, trans_a=ta, trans_b=tb, out_dtype=out_dtype).to("f64").numpy()
        out = mt.full(list(ref.shape), float("nan"), dtype=out_dtype, device="cuda")
        mt.gemm(a.cuda(), b.cuda(), trans_a=ta, trans_b=tb, out=out)
        got = out.to(device="cpu", dtype="f64").numpy()
        assert_within_rule(got, cpu, ref, atol_rel=1e-5 if out_dtype == "f32" else 1e-6,
                           what=f"{m}x{n}x{k} {dtype}->{out_dtype} ta={ta} tb={tb}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_cuda_addend_epilogue_within_rule(dtype, rng):
    a = mt.tensor(rng.standard_normal((300, 64)), dtype=dtype)
    b = mt.tensor(rng.standard_normal((96, 64)), dtype=dtype)
    r = mt.tensor(4 * rng.standard_normal((300, 96)), dtype=dtype)
    ref = mt.gemm(a.to("f64"), b.to("f64"), trans_b=True, beta=1.0, addend=r.to("f64")).numpy()
    cpu = mt.gemm(a, b, trans_b=True, beta=1.0, addend=r).to("f64").numpy()
    got = mt.gemm(a.cuda(), b.cuda(), trans_b=True, beta=1.0, addend=r.cuda())
    assert got.dtype == r.dtype
    assert_within_rule(got.to(device="cpu", dtype="f64").numpy(), cpu, ref, atol_rel=1e-6, what=f"addend {dtype}")


@pytest.mark.gpu
def test_cuda_batched_and_torch_inputs(rng):
    torch = pytest.importorskip("torch")
    a = torch.randn(3, 65, 66, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(66, 67, device="cuda", dtype=torch.bfloat16)
    c = mt.gemm(a, b, out_dtype="f32")
    ref = (a.double() @ b.double()).cpu().numpy()
    cpu = mt.gemm(mt.from_dlpack(a).cpu(), mt.from_dlpack(b).cpu(), out_dtype="f32").numpy()
    assert_within_rule(c.cpu().numpy(), cpu, ref, atol_rel=1e-5, what="batched bf16")
    with pytest.raises(TypeError, match="expected bf16, f16 or f32 on CUDA"):
        mt.gemm(a.double(), b.double())

"""The dense ops' bindings on CUDA: outputs they allocate live on the input's device with
the dtypes the CUDA ops take (activations like the input, statistics f32, parameter
gradients like their parameter), and the results agree with the CPU op within the rule.
The kernels themselves are tested in tests/cpp/test_cuda_dense.cpp. Skipped without a GPU."""
import numpy as np
import pytest

import mambatron as mt

from conftest import assert_within_rule

pytestmark = pytest.mark.gpu


def on_gpu(a, dtype):
    return mt.tensor(a, dtype=dtype).cuda()


def host(t):
    return t.to(device="cpu", dtype="f64").numpy()


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_activations_allocate_on_the_device(dtype, rng):
    x = mt.tensor(rng.standard_normal((7, 40)) * 2, dtype=dtype)
    for fwd in (mt.gelu_forward, mt.silu_forward, mt.squared_relu_forward, mt.swiglu_forward):
        out = fwd(x.cuda())
        assert out.is_cuda and out.dtype == x.dtype
        ref = host(fwd(x.to("f64")))
        cpu = host(fwd(x.to("f32")).to(dtype))
        assert_within_rule(host(out), cpu, ref, atol_rel=1e-5, what=f"{fwd.__name__} {dtype}")


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_norms_allocate_f32_statistics_and_parameter_like_gradients(dtype, rng):
    x, g = rng.standard_normal((9, 48)), rng.standard_normal((9, 48))
    w = rng.standard_normal(48)
    xd, gd, wd = on_gpu(x, dtype), on_gpu(g, dtype), on_gpu(w, "f32")
    out, rstd = mt.rmsnorm_forward(xd, wd, 1e-5)
    assert out.is_cuda and out.dtype == xd.dtype and rstd.is_cuda and rstd.dtype == mt.float32
    dx, dw = mt.rmsnorm_backward(gd, xd, wd, rstd)
    assert dx.dtype == xd.dtype and dw.is_cuda and dw.dtype == mt.float32
    out, mean, rstd = mt.layernorm1p_forward(xd, wd, wd, 1e-5)
    assert mean.dtype == mt.float32 and rstd.dtype == mt.float32
    dx, dga, dbe = mt.layernorm1p_backward(gd, xd, wd, mean, rstd)
    assert dga.dtype == mt.float32 and dbe.dtype == mt.float32 and dbe.is_cuda
    z = on_gpu(rng.standard_normal((9, 48)), dtype)
    out, rstd = mt.gated_rmsnorm_forward(xd, z, wd, 4, 1e-5)
    assert rstd.dtype == mt.float32 and rstd.shape == (9, 4)
    dy, dz, dw = mt.gated_rmsnorm_backward(gd, xd, z, wd, rstd, 4)
    assert dy.dtype == xd.dtype and dz.is_cuda and dw.dtype == mt.float32
    # dbeta is the plain column sum of dout.
    assert np.allclose(host(dbe), host(gd).sum(axis=0), rtol=1e-6, atol=1e-6)


def test_embedding_and_adamw_on_the_device(rng):
    w = on_gpu(rng.standard_normal((11, 6)), "f32")
    tokens = mt.tensor(rng.integers(0, 11, size=(2, 5)), dtype="i64").cuda()
    out = mt.embedding_forward(w, tokens)
    assert out.is_cuda and out.dtype == mt.float32
    assert np.array_equal(host(out), host(w)[host(tokens).astype(int)])
    dw = mt.embedding_backward(out, tokens, 11)
    assert dw.is_cuda and dw.shape == (11, 6)
    with pytest.raises(ValueError, match="holds id 11"):
        mt.embedding_forward(w, mt.tensor(np.full((1, 2), 11), dtype="i64").cuda())

    n = 1001
    p, g = on_gpu(rng.standard_normal(n), "f32"), on_gpu(rng.standard_normal(n), "f32")
    m, v = on_gpu(np.zeros(n), "f32"), on_gpu(np.zeros(n), "f32")
    copy = mt.full([n], float("nan"), dtype="bf16", device="cuda")
    mt.adamw_update(p, g, m, v, lr=1e-2, step=1, params_copy=copy)
    assert np.array_equal(host(copy), host(p.to("bf16")))
    norm = mt.grad_norm([g])
    assert norm == pytest.approx(np.linalg.norm(host(g)), rel=1e-12)
    assert mt.grad_norm([g]) == norm
    with pytest.raises(TypeError, match="on CUDA"):
        mt.adamw_update(p.to("f64"), g.to("f64"), m.to("f64"), v.to("f64"), lr=1e-2, step=1)

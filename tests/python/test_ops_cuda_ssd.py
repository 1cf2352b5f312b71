"""The SSD ops' bindings on CUDA: outputs they allocate live on the input's device with
the dtypes the CUDA ops take (y and the activation gradients like x; final_state, dA, dD,
ddt_bias and d_initial_state f32), and the results agree with the CPU op within the rule.
The kernels themselves are tested in tests/cpp/test_cuda_ssd.cpp. Skipped without a GPU."""
import numpy as np
import pytest

import mambatron as mt

from conftest import assert_within_rule

pytestmark = pytest.mark.gpu

ACTIVATIONS = ("x", "dt", "B", "C")
DTYPES = {"bf16": mt.bfloat16, "f32": mt.float32}


def make_inputs(rng, b=2, l=150, h=4, p=16, g=2, n=32):
    return dict(
        x=rng.standard_normal((b, l, h, p)),
        dt=rng.uniform(-2.5, 0.5, (b, l, h)),
        A=rng.uniform(-2.0, -0.3, h),
        B=rng.standard_normal((b, l, g, n)),
        C=rng.standard_normal((b, l, g, n)),
        D=rng.standard_normal(h),
        dt_bias=rng.uniform(-0.5, 0.5, h),
        initial_state=rng.standard_normal((b, h, p, n)),
    )


def forms(arrays, dtype):
    """The inputs rounded like the GPU takes them, as (f64 CPU, f32 CPU, GPU) tensors."""
    f64, f32, gpu = {}, {}, {}
    for k, a in arrays.items():
        t = mt.tensor(a, dtype=dtype if k in ACTIVATIONS else "f32")
        f64[k], f32[k], gpu[k] = t.to("f64"), t.to("f32"), t.cuda()
    return f64, f32, gpu


def host(t):
    return t.to(device="cpu", dtype="f64").numpy()


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_forward_and_backward_allocate_on_the_device(dtype, rng):
    f64, f32, gpu = forms(make_inputs(rng), dtype)
    seq = mt.tensor(np.array([[0] * 40 + [1] * 110, [5] * 150]), dtype="i32")
    opts = dict(chunk_size=64, dt_softplus=True)
    y, fs = mt.ssd_forward(**gpu, seq_idx=seq.cuda(), **opts)
    assert y.is_cuda and y.dtype == gpu["x"].dtype and fs.is_cuda and fs.dtype == mt.float32
    ref = mt.ssd_forward(**f64, seq_idx=seq, **opts)
    cpu = mt.ssd_forward(**f32, seq_idx=seq, **opts)
    assert_within_rule(host(y), host(cpu[0].to(dtype)), host(ref[0]), atol_rel=1e-5, what=f"y {dtype}")
    assert_within_rule(host(fs), host(cpu[1]), host(ref[1]), atol_rel=1e-5, what=f"final_state {dtype}")

    dy = mt.tensor(rng.standard_normal(f64["x"].shape), dtype=dtype)
    grads = mt.ssd_backward(dy.cuda(), **gpu, seq_idx=seq.cuda(), **opts)
    ref = mt.ssd_backward(dy.to("f64"), **f64, seq_idx=seq, **opts)
    cpu = mt.ssd_backward(dy.to("f32"), **f32, seq_idx=seq, **opts)
    names = ["dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias", "d_initial_state"]
    for name, g, r, c in zip(names, grads, ref, cpu):
        out_dtype = dtype if name in ("dx", "ddt", "dB", "dC") else "f32"
        assert g.is_cuda and g.dtype == DTYPES[out_dtype], name
        assert_within_rule(host(g), host(c.to(out_dtype)), host(r), atol_rel=1e-5, what=f"{name} {dtype}")


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_step_advances_an_f32_state(dtype, rng):
    b, h, p, g, n = 2, 4, 8, 2, 16
    arrays = dict(
        x=rng.standard_normal((b, h, p)),
        dt=rng.uniform(-2.5, 0.5, (b, h)),
        A=rng.uniform(-2.0, -0.3, h),
        B=rng.standard_normal((b, g, n)),
        C=rng.standard_normal((b, g, n)),
        D=rng.standard_normal(h),
        dt_bias=rng.uniform(-0.5, 0.5, h),
    )
    f64, f32, gpu = forms(arrays, dtype)
    state = mt.tensor(rng.standard_normal((b, h, p, n)), dtype="f32")
    s64, s32, sg = state.to("f64"), state.to("f32"), state.cuda()
    y = mt.ssd_step(**gpu, state=sg, dt_softplus=True)
    assert y.is_cuda and y.dtype == gpu["x"].dtype
    y64 = mt.ssd_step(**f64, state=s64, dt_softplus=True)
    y32 = mt.ssd_step(**f32, state=s32, dt_softplus=True)
    assert_within_rule(host(y), host(y32.to(dtype)), host(y64), atol_rel=1e-5, what=f"step y {dtype}")
    assert_within_rule(host(sg), host(s32), host(s64), atol_rel=1e-5, what=f"step state {dtype}")


def test_cuda_dtypes_are_checked(rng):
    _, _, gpu = forms(make_inputs(rng, l=5), "bf16")
    with pytest.raises(TypeError, match="'A'.*f32"):
        mt.ssd_forward(**{**gpu, "A": gpu["A"].to("bf16")})
    with pytest.raises(TypeError, match="bf16 or f32 on CUDA"):
        mt.ssd_forward(**{k: v.to("f64") for k, v in gpu.items()})

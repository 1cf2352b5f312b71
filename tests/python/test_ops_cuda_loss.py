"""linear_cross_entropy on CUDA through the bindings: the outputs the bindings allocate live
on the device (per-token losses f32, dh like h, dw like w), and the results agree with the
CPU op within the rule. For bf16 h and w the CUDA op rounds the softmax gradient to bf16
before its gemms, so the same-precision result for dh and dw is the float64 one with that
gradient rounded. The kernels themselves are tested in tests/cpp/test_cuda_loss.cpp.
Skipped without a GPU."""
import numpy as np
import pytest

import mambatron as mt

from conftest import assert_within_rule

pytestmark = pytest.mark.gpu


def host(t):
    return t.to(device="cpu", dtype="f64").numpy()


def rounded(a, dtype):
    """a rounded to dtype, back as float64."""
    return host(mt.tensor(np.asarray(a, np.float64), dtype=dtype))


def grads_with_rounded_softmax_gradient(h, w, t, mask, grad_scale=1.0):
    """dh, dw in float64 with G = coef * (softmax - onehot) rounded to bf16."""
    n = h.shape[0]
    m = mask.astype(np.float64)
    keep = (t != -100) & (m > 0)
    z = h @ w.T
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(n), np.where(keep, t, 0)] -= 1.0
    coef = np.where(keep, grad_scale * m / m[keep].sum(), 0.0)
    g = rounded(p * coef[:, None], "bf16")
    return g @ w, g.T @ h


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_loss_on_the_device_matches_the_cpu(dtype, rng):
    n, d, V = 61, 40, 301
    h = rounded(rng.standard_normal((n, d)), dtype)
    w = rounded(rng.standard_normal((V, d)) / np.sqrt(d) * 2, dtype)
    t = rng.integers(0, V, n)
    t[5] = -100
    mask = (rng.random(n) > 0.25).astype(np.uint8)
    hd, wd = mt.tensor(h, dtype=dtype).cuda(), mt.tensor(w, dtype=dtype).cuda()
    td, md = mt.tensor(t, dtype="i64").cuda(), mt.tensor(mask).cuda()
    opts = dict(chunk_size=16, vocab_chunk_size=64)

    loss, losses = mt.linear_cross_entropy_forward(hd, wd, td, md, return_losses=True, **opts)
    assert losses.is_cuda and losses.dtype == mt.float32
    ref, ref_losses = mt.linear_cross_entropy_forward(h, w, t, mask, return_losses=True, **opts)
    cpu, cpu_losses = mt.linear_cross_entropy_forward(h.astype(np.float32), w.astype(np.float32), t, mask,
                                                      return_losses=True, **opts)
    assert abs(loss - ref) <= 2 * abs(cpu - ref) + 1e-5 * abs(ref), f"loss {loss} vs {ref} (CPU f32 {cpu})"
    assert_within_rule(host(losses), host(cpu_losses), host(ref_losses), atol_rel=1e-5, what=f"losses {dtype}")

    loss_b, dh, dw = mt.linear_cross_entropy_backward(hd, wd, td, md, **opts)
    assert loss_b == loss
    assert dh.is_cuda and dh.dtype == hd.dtype and dw.is_cuda and dw.dtype == wd.dtype
    _, dh64, dw64 = mt.linear_cross_entropy_backward(h, w, t, mask, **opts)
    if dtype == "bf16":
        dh_same, dw_same = grads_with_rounded_softmax_gradient(h, w, t, mask)
    else:
        _, dh32, dw32 = mt.linear_cross_entropy_backward(h.astype(np.float32), w.astype(np.float32), t, mask, **opts)
        dh_same, dw_same = host(dh32), host(dw32)
    assert_within_rule(host(dh), rounded(dh_same, dtype), host(dh64), atol_rel=1e-5, what=f"dh {dtype}")
    assert_within_rule(host(dw), rounded(dw_same, dtype), host(dw64), atol_rel=1e-5, what=f"dw {dtype}")

    # The model's case: an f32 gradient buffer for a bf16 w, overwritten.
    dw_f32 = mt.full([V, d], float("nan"), dtype="f32", device="cuda")
    mt.linear_cross_entropy_backward(hd, wd, td, md, dw=dw_f32, **opts)
    assert_within_rule(host(dw_f32), dw_same, host(dw64), atol_rel=1e-5, what=f"dw f32 for {dtype}")


def test_bad_targets_and_dtypes_on_the_device(rng):
    h = mt.tensor(rng.standard_normal((6, 4)), dtype="bf16").cuda()
    w = mt.tensor(rng.standard_normal((9, 4)), dtype="bf16").cuda()
    bad = np.zeros(6, np.int64)
    bad[2] = 9
    with pytest.raises(ValueError, match=r"targets\[2\] = 9"):
        mt.linear_cross_entropy_forward(h, w, mt.tensor(bad, dtype="i64").cuda())
    t = mt.tensor(np.zeros(6, np.int32), dtype="i32").cuda()
    with pytest.raises(TypeError, match="on CUDA"):
        mt.linear_cross_entropy_forward(h.to(dtype="f64"), w, t)
    with pytest.raises(TypeError, match="'losses'"):
        mt.linear_cross_entropy_forward(h, w, t, losses=mt.full([6], 0.0, dtype="bf16", device="cuda"))
    assert mt.linear_cross_entropy_forward(h, w, t) > 0

"""The conv1d and selective-scan bindings on CUDA: outputs they allocate live on the
input's device with the dtypes the CUDA ops take (activations and conv states like the
input, conv parameter gradients like the weight; scan parameters, their gradients and
the scan states f32), and the results agree with the CPU op within the rule. The
kernels themselves are tested in tests/cpp/test_cuda_conv1d.cpp and
test_cuda_selective_scan.cpp. Skipped without a GPU."""
import numpy as np
import pytest

import mambatron as mt

from conftest import assert_within_rule

pytestmark = pytest.mark.gpu


def host(t):
    return t.to(device="cpu", dtype="f64").numpy()


def _seq_idx(rng, b, l):
    steps = (rng.random((b, l)) < 0.2).astype(np.int32)
    steps[:, 0] = rng.integers(0, 4, b)
    return np.cumsum(steps, axis=1).astype(np.int32)


def three_ways(arrays, dtypes):
    """Per name, the values rounded to their CUDA dtype as (f64 CPU, f32 CPU, CUDA) tensors."""
    out = {}
    for name, a in arrays.items():
        if a.dtype == np.int32:
            t = mt.tensor(a, dtype="i32")
            out[name] = (t, t, t.cuda())
        else:
            g = mt.tensor(a, dtype=dtypes[name])
            out[name] = (g.to(dtype="f64"), g.to(dtype="f32"), g.cuda())
    return out


def run_three_ways(ts, fn):
    """fn(inputs) on the f64 CPU, f32 CPU and CUDA forms."""
    return [fn({name: v[k] for name, v in ts.items()}) for k in range(3)]


def check_all(names, results, what):
    ref, cpu, gpu = results
    for name, g, c, r in zip(names, gpu, cpu, ref):
        assert_within_rule(host(g), host(c.to(dtype=g.dtype)), host(r), atol_rel=1e-5, what=f"{what} {name}")


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("weight_dtype", ["f32", "bf16"])
def test_conv1d_on_the_device(dtype, weight_dtype, rng):
    b, l, c, w = 2, 37, 24, 4
    arrays = dict(x=rng.standard_normal((b, l, c)), weight=0.5 * rng.standard_normal((c, w)),
                  bias=rng.standard_normal(c), initial_state=rng.standard_normal((b, c, w - 1)),
                  seq_idx=_seq_idx(rng, b, l), dout=rng.standard_normal((b, l, c)))
    dtypes = dict(x=dtype, initial_state=dtype, dout=dtype, weight=weight_dtype, bias=weight_dtype)
    ts = three_ways(arrays, dtypes)

    def conv(a):
        out, fin = mt.conv1d_forward(a["x"], a["weight"], a["bias"], initial_state=a["initial_state"],
                                     seq_idx=a["seq_idx"], silu=True, return_final_state=True)
        grads = mt.conv1d_backward(a["dout"], a["x"], a["weight"], a["bias"], initial_state=a["initial_state"],
                                   seq_idx=a["seq_idx"], silu=True)
        return (out, fin) + tuple(grads)

    results = run_three_ways(ts, conv)
    out, fin, dx, dw, db, dinit = results[2]
    act, wdt = ts["x"][2].dtype, ts["weight"][2].dtype
    assert all(t.is_cuda for t in results[2])
    assert out.dtype == act and fin.dtype == act and dx.dtype == act and dinit.dtype == act
    assert dw.dtype == wdt and db.dtype == wdt
    check_all(["out", "final_state", "dx", "dweight", "dbias", "d_initial_state"], results, f"conv1d {dtype}")

    # Decode steps on the device from the initial state against the CPU steps.
    st_gpu, st_cpu = ts["initial_state"][2].clone(), ts["initial_state"][1].clone()
    for t in range(4):
        xt = ts["x"][1].select(1, t).contiguous()
        yg = mt.conv1d_step(xt.to(dtype=dtype).cuda(), st_gpu, ts["weight"][2], ts["bias"][2], silu=True)
        yc = mt.conv1d_step(xt, st_cpu, ts["weight"][1], ts["bias"][1], silu=True)
        assert yg.is_cuda and yg.dtype == act
        assert np.allclose(host(yg), host(yc), rtol=2e-2, atol=2e-2)
    assert np.array_equal(host(st_gpu), host(st_cpu))  # the shifted inputs themselves


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_selective_scan_on_the_device(dtype, rng):
    b, l, d, n, g = 2, 70, 40, 16, 2
    arrays = dict(u=rng.standard_normal((b, l, d)), delta=rng.uniform(-3, 1, (b, l, d)),
                  A=-rng.uniform(0.3, 2, (d, n)), B=rng.standard_normal((b, l, g, n)),
                  C=rng.standard_normal((b, l, g, n)), D=rng.standard_normal(d), z=rng.standard_normal((b, l, d)),
                  delta_bias=0.5 * rng.standard_normal(d), initial_state=rng.standard_normal((b, d, n)),
                  seq_idx=_seq_idx(rng, b, l), dy=rng.standard_normal((b, l, d)),
                  d_final_state=rng.standard_normal((b, d, n)))
    acts = ("u", "delta", "B", "C", "z", "dy")
    dtypes = {name: dtype if name in acts else "f32" for name in arrays}
    ts = three_ways(arrays, dtypes)

    def scan(a):
        inputs = (a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"])
        y, fin = mt.selective_scan_forward(*inputs, delta_softplus=True, initial_state=a["initial_state"],
                                           seq_idx=a["seq_idx"], return_final_state=True)
        grads = mt.selective_scan_backward(a["dy"], *inputs, delta_softplus=True, initial_state=a["initial_state"],
                                           seq_idx=a["seq_idx"], d_final_state=a["d_final_state"])
        return (y, fin) + tuple(grads)

    results = run_three_ways(ts, scan)
    y, fin, du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = results[2]
    assert all(t.is_cuda for t in results[2])
    for t in (y, du, ddelta, dB, dC, dz):
        assert t.dtype == ts["u"][2].dtype
    for t in (fin, dA, dD, dbias, dinit):
        assert t.dtype == mt.float32
    names = ["y", "final_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "d_initial_state"]
    check_all(names, results, f"selective_scan {dtype}")

    # Decode steps on the device from the initial state against the CPU steps.
    st_gpu, st_cpu = ts["initial_state"][2].clone(), ts["initial_state"][1].clone()
    for t in range(4):
        tok = {name: ts[name][1].select(1, t).contiguous() for name in ("u", "delta", "B", "C", "z")}
        on_gpu = {name: v.to(dtype=dtype).cuda() for name, v in tok.items()}
        yg = mt.selective_scan_step(on_gpu["u"], on_gpu["delta"], ts["A"][2], on_gpu["B"], on_gpu["C"], st_gpu,
                                    ts["D"][2], on_gpu["z"], ts["delta_bias"][2], delta_softplus=True)
        yc = mt.selective_scan_step(tok["u"], tok["delta"], ts["A"][1], tok["B"], tok["C"], st_cpu, ts["D"][1],
                                    tok["z"], ts["delta_bias"][1], delta_softplus=True)
        assert yg.is_cuda and yg.dtype == ts["u"][2].dtype
        assert np.allclose(host(yg), host(yc), rtol=2e-2, atol=2e-2)
    assert np.allclose(host(st_gpu), host(st_cpu), rtol=1e-5, atol=1e-5)


def test_cuda_dtypes_are_checked(rng):
    x = mt.tensor(rng.standard_normal((1, 5, 8)), dtype="f64").cuda()
    w = mt.tensor(rng.standard_normal((8, 4)), dtype="f32").cuda()
    with pytest.raises(TypeError, match="bf16 or f32 on CUDA"):
        mt.conv1d_forward(x, w)
    u = mt.tensor(rng.standard_normal((1, 5, 8)), dtype="bf16").cuda()
    B = mt.tensor(rng.standard_normal((1, 5, 1, 4)), dtype="bf16").cuda()
    A_bf16 = mt.tensor(-rng.uniform(0.3, 2, (8, 4)), dtype="bf16").cuda()
    with pytest.raises(TypeError, match="'A'"):
        mt.selective_scan_forward(u, u, A_bf16, B, B)

"""add, mul and neg_exp through the bindings: float64 numpy on the CPU, in place, errors;
on CUDA (gpu marker) within DESIGN.md's rule of the CPU op."""
import numpy as np
import pytest

import mambatron as mt

from conftest import assert_within_rule

OPS = {"add": (mt.add, lambda a, b: a + b), "mul": (mt.mul, lambda a, b: a * b),
       "neg_exp": (lambda a, b, **kw: mt.neg_exp(a, **kw), lambda a, b: -np.exp(a))}


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("shape", [(1,), (7, 37), (3, 5, 129)])
def test_cpu_matches_numpy(name, shape, rng):
    op, ref = OPS[name]
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    np.testing.assert_allclose(np.from_dlpack(op(a, b)), ref(a, b), rtol=1e-15, atol=0)  # exp may differ by an ulp
    out = np.full(shape, np.nan, np.float32)
    op(a.astype(np.float32), b.astype(np.float32), out=out)
    np.testing.assert_allclose(out, ref(a, b), rtol=1e-6, atol=1e-6)


def test_in_place_and_errors(rng):
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    want = a + b
    mt.add(a, b, out=a)
    np.testing.assert_array_equal(a, want)
    with pytest.raises(ValueError, match="add: argument 'b' has shape"):
        mt.add(a, b.T.copy())
    with pytest.raises(TypeError, match="mul: argument 'b' has dtype f32"):
        mt.mul(a, b.astype(np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_cuda_within_rule(name, dtype, rng):
    op, _ = OPS[name]
    a = mt.tensor(rng.standard_normal((33, 129)), dtype=dtype)
    b = mt.tensor(rng.standard_normal((33, 129)), dtype=dtype)
    out = op(a.cuda(), b.cuda())
    assert out.is_cuda and out.dtype == a.dtype
    host = lambda t: t.to(device="cpu", dtype="f64").numpy()  # noqa: E731
    ref = host(op(a.to("f64"), b.to("f64")))
    cpu = host(op(a.to("f32"), b.to("f32")).to(dtype))
    assert_within_rule(host(out), cpu, ref, atol_rel=1e-6, what=f"{name} {dtype}")

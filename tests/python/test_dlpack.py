"""DLPack interop: numpy on the CPU, PyTorch on CUDA (gpu marker)."""
import numpy as np
import pytest

import mambatron as mt


@pytest.mark.parametrize("np_dtype", [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint16, np.uint8])
def test_numpy_to_mambatron_no_copy(np_dtype, rng):
    x = (rng.standard_normal((3, 5)) * 10).astype(np_dtype)
    t = mt.from_dlpack(x)
    assert t.data_ptr() == x.ctypes.data
    assert t.shape == x.shape and np.array_equal(t.numpy(), x)


def test_strided_numpy_views_keep_their_strides(rng):
    x = rng.standard_normal((6, 8))
    v = x[::2, 1::3]
    t = mt.from_dlpack(v)
    assert t.strides == (16, 3)
    assert np.array_equal(t.numpy(), v)


def test_mambatron_to_numpy_no_copy():
    t = mt.randn([4, 4], seed=1)
    a = np.from_dlpack(t)
    assert a.ctypes.data == t.data_ptr()
    a[0, 0] = 123.0
    assert t[0, 0].item() == 123.0


def test_dlpack_device_and_versions():
    t = mt.zeros([2, 3])
    assert t.__dlpack_device__() == (1, 0)
    legacy = t.__dlpack__()
    assert "dltensor" in repr(legacy)
    versioned = t.__dlpack__(max_version=(1, 0))
    assert "dltensor_versioned" in repr(versioned)
    back = mt.from_dlpack(versioned)  # a raw capsule is accepted too
    assert back.data_ptr() == t.data_ptr()
    with pytest.raises(ValueError, match="already consumed"):
        mt.from_dlpack(versioned)
    copied = mt.from_dlpack(t.__dlpack__(max_version=(1, 0), copy=True))
    assert copied.data_ptr() != t.data_ptr()


def test_unsupported_dtypes_are_clear_errors():
    with pytest.raises(TypeError, match="complex64 is not supported"):
        mt.from_dlpack(np.zeros(3, dtype=np.complex64))
    with pytest.raises(TypeError, match="bool8 is not supported"):
        mt.from_dlpack(np.zeros(3, dtype=bool))
    with pytest.raises(TypeError, match="int8 is not supported"):
        mt.from_dlpack(np.zeros(3, dtype=np.int8))
    with pytest.raises(TypeError, match="has no __dlpack__"):
        mt.from_dlpack([1, 2, 3])


def test_lifetime_outlives_the_producer(rng):
    x = rng.standard_normal(1000)
    expected = x.copy()
    t = mt.from_dlpack(x)
    del x
    assert np.array_equal(t.numpy(), expected)


@pytest.mark.gpu
def test_torch_cuda_round_trip_shares_pointer():
    torch = pytest.importorskip("torch")
    x = torch.randn(64, 33, device="cuda")
    t = mt.from_dlpack(x)
    assert t.is_cuda and t.data_ptr() == x.data_ptr() and t.shape == (64, 33)
    y = torch.from_dlpack(t)
    assert y.data_ptr() == x.data_ptr()
    y.mul_(2)  # writes through every view
    assert torch.equal(torch.from_dlpack(t), x)
    assert np.array_equal(t.cpu().numpy(), x.cpu().numpy())
    # bf16 and a strided view
    b = torch.randn(8, 10, device="cuda", dtype=torch.bfloat16)[:, ::2]
    tb = mt.from_dlpack(b)
    assert tb.dtype == mt.bfloat16 and tb.strides == (10, 2) and tb.data_ptr() == b.data_ptr()
    assert torch.equal(torch.from_dlpack(tb.to("f32")), b.float())


@pytest.mark.gpu
def test_torch_side_stream_is_honoured():
    torch = pytest.importorskip("torch")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch.full((4096, 4096), 3.0, device="cuda")
        x.mul_(2)
        t = mt.from_dlpack(x)  # asks the producer to order its stream before ours
    assert t.to("cpu").numpy().min() == 6.0
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_torch_rejects_nothing_and_mambatron_checks_devices():
    torch = pytest.importorskip("torch")
    a = torch.randn(8, 8, device="cuda")
    b = np.ones((8, 8), dtype=np.float32)
    with pytest.raises(TypeError, match="all tensors of an op must be on one device"):
        mt.gemm(a, b)


@pytest.mark.gpu
def test_cupy_round_trip_shares_pointer():
    cp = pytest.importorskip("cupy")
    x = cp.random.standard_normal((17, 9), dtype=cp.float32)
    t = mt.from_dlpack(x)
    assert t.is_cuda and t.data_ptr() == x.data.ptr
    y = cp.from_dlpack(t)
    assert y.data.ptr == x.data.ptr
    assert np.array_equal(cp.asnumpy(y), t.cpu().numpy())


@pytest.mark.gpu
def test_jax_array_imports_without_copy():
    import os

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU's memory to the tests
    jax = pytest.importorskip("jax")
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        pytest.skip("JAX sees no GPU")
    x = jax.device_put(jax.numpy.arange(24, dtype=jax.numpy.float32).reshape(4, 6), gpus[0])
    t = mt.from_dlpack(x)
    assert t.is_cuda and t.data_ptr() == x.unsafe_buffer_pointer()
    assert np.array_equal(t.cpu().numpy(), np.asarray(x))


@pytest.mark.parametrize("order", ["mambatron, torch", "torch, mambatron"])
def test_imports_beside_torch_in_either_order(order):
    """Both packages load into one process whichever comes first (no symbol of ours may
    take the place of one of PyTorch's, or the other way round)."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = f"import {order}; import mambatron as mt; print(mt.cudnn_version(), mt.attention_engine())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])


def test_extension_exports_only_its_init_function():
    """The compiled module offers the dynamic linker nothing but PyInit__C, so none of the
    C++ library code it carries can take the place of another extension's symbols."""
    import shutil
    import subprocess

    from mambatron import _C

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    listing = subprocess.run([nm, "-D", "--defined-only", _C.__file__], capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in listing.stdout.splitlines() if line.strip()]
    assert names == ["PyInit__C"], names[:20]

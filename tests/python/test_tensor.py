"""Tensor API from Python: factories, dtypes, views, copies, numpy, memory."""
import numpy as np
import pytest

import mambatron as mt

DTYPES = ["f32", "f64", "bf16", "f16", "i32", "i64", "u16", "u8"]


def test_runtime_facts():
    assert isinstance(mt.cuda_available(), bool)
    assert mt.device_count() >= 0
    assert mt.cuda_available() == (mt.device_count() > 0)
    if not mt.built_with_cuda():
        assert not mt.cuda_available()


@pytest.mark.parametrize("dtype", DTYPES)
def test_factories_every_dtype(dtype):
    t = mt.full([2, 3], 5, dtype=dtype)
    assert t.shape == (2, 3) and t.strides == (3, 1) and str(t.dtype) == dtype
    assert t.numel() == 6 and t.ndim == 2 and t.itemsize == mt.DType.__members__[dtype].itemsize
    assert np.all(t.to("f64").numpy() == 5)
    assert np.all(mt.zeros([4], dtype=dtype).to("f64").numpy() == 0)
    assert np.all(mt.ones(3, dtype=dtype).to("f64").numpy() == 1)


def test_dtype_names_accept_aliases_numpy_and_strings():
    assert mt.zeros(1, dtype="bfloat16").dtype == mt.bfloat16
    assert mt.zeros(1, dtype=np.float16).dtype == mt.float16
    assert mt.zeros(1, dtype=np.dtype("int64")).dtype == mt.int64
    with pytest.raises(TypeError, match="unknown dtype 'complex64'"):
        mt.zeros(1, dtype=np.complex64)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        mt.zeros(1, device="gpu")


def test_rand_is_seeded_and_in_range():
    a = mt.rand([1000], seed=7).numpy()
    b = mt.rand([1000], seed=7).numpy()
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() < 1
    mt.manual_seed(3)
    x = mt.randn([5000]).numpy()
    mt.manual_seed(3)
    y = mt.randn([5000]).numpy()
    z = mt.randn([5000]).numpy()
    assert np.array_equal(x, y) and not np.array_equal(y, z)
    assert abs(x.mean()) < 0.06 and abs(x.std() - 1) < 0.05
    with pytest.raises(TypeError, match="not a floating type"):
        mt.rand([2], dtype="i32")


def test_numpy_round_trip_shares_memory(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    t = mt.as_tensor(x)
    assert t.data_ptr() == x.ctypes.data
    back = t.numpy()
    back[0, 0] = 42.0
    assert x[0, 0] == 42.0
    assert np.asarray(t) is not None and np.array_equal(np.asarray(t), x)
    copy = mt.tensor(x)
    assert copy.data_ptr() != x.ctypes.data and np.array_equal(copy.numpy(), x)
    with pytest.raises(TypeError, match="numpy has no bfloat16"):
        mt.zeros(2, dtype="bf16").numpy()


def test_tensor_from_python_lists():
    t = mt.tensor([[1.5, 2.0], [3.0, 4.0]])
    assert t.dtype == mt.float32 and t.shape == (2, 2)
    assert mt.tensor([1, 2, 3]).dtype == mt.int64
    assert mt.tensor([1, 2], dtype="bf16").to("f32").numpy().tolist() == [1.0, 2.0]


def test_views_and_indexing(rng):
    x = rng.standard_normal((5, 7, 3))
    t = mt.tensor(x)
    assert np.array_equal(t[1].numpy(), x[1])
    assert np.array_equal(t[1:4, ::2].numpy(), x[1:4, ::2])
    assert np.array_equal(t[..., -1].numpy(), x[..., -1])
    assert np.array_equal(t[:, None, 2].numpy(), x[:, None, 2])
    assert np.array_equal(t.transpose(0, 2).numpy(), x.transpose(2, 1, 0))
    assert np.array_equal(t.permute(2, 0, 1).numpy(), x.transpose(2, 0, 1))
    assert np.array_equal(t.view(35, 3).numpy(), x.reshape(35, 3))
    assert np.array_equal(t.view(-1).numpy(), x.reshape(-1))
    assert np.array_equal(t.narrow(1, 2, 3).numpy(), x[:, 2:5])
    assert not t.transpose(0, 1).is_contiguous()
    assert t.transpose(0, 1).contiguous().is_contiguous()
    with pytest.raises(ValueError, match="not contiguous; use reshape"):
        t.transpose(0, 1).view(-1)
    assert np.array_equal(t.transpose(0, 1).reshape(-1).numpy(), x.transpose(1, 0, 2).reshape(-1))
    with pytest.raises(ValueError, match="out of bounds"):
        t[5]
    with pytest.raises(ValueError, match="step must be positive"):
        t[::-1]
    t[0, 0] = 9.0
    assert np.all(t.numpy()[0, 0] == 9.0)
    t[1] = np.ones((7, 3))
    assert np.all(t.numpy()[1] == 1.0)


def test_casts_round_to_nearest_even():
    # 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
    vals = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], dtype=np.float32)
    got = mt.as_tensor(vals).to("bf16").to("f32").numpy()
    assert got.tolist() == [1.0, 1 + 2**-6, 1 + 2**-7]
    h = mt.as_tensor(np.array([65504.0, 65520.0], dtype=np.float32)).to("f16").numpy()
    assert h[0] == 65504.0 and np.isinf(h[1])


def test_memory_statistics():
    mt.reset_peak_memory_stats("cpu")
    before = mt.memory_allocated("cpu")
    t = mt.empty([1 << 20], dtype="f32")
    assert mt.memory_allocated("cpu") >= before + 4 * 2**20
    assert mt.max_memory_allocated("cpu") >= mt.memory_allocated("cpu")
    del t
    assert mt.memory_allocated("cpu") == before
    assert mt.memory_reserved("cpu") >= mt.memory_allocated("cpu")


def test_item_and_repr():
    assert mt.full([1], 2.5).item() == 2.5
    assert mt.full([1], 7, dtype="i64").item() == 7
    with pytest.raises(ValueError, match="expected exactly one"):
        mt.zeros(3).item()
    r = repr(mt.zeros([2, 2]))
    assert "shape=[2, 2]" in r and "dtype=f32" in r and "device=cpu" in r


def test_without_cuda_device_errors_are_clear():
    if mt.cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(TypeError, match="cuda"):
        mt.zeros(2, device="cuda")
    with pytest.raises(TypeError):
        mt.zeros(2).cuda()


def test_item_is_exact_for_large_integers():
    big = 2**60 + 1
    assert mt.tensor(np.array([big], dtype=np.int64)).item() == big

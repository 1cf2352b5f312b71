"""safetensors: our files in the reference library and its files in ours, sharded
checkpoints, and a clear ValueError for every kind of malformed file."""
import json
import struct

import numpy as np
import pytest

import mambatron as mt

# Every dtype both sides have, by numpy name (bfloat16 is handled apart: numpy has none).
SHARED = ["float32", "float64", "float16", "int32", "int64", "uint16", "uint8"]


def _random(rng, dtype, shape):
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _bf16_bits(rng, shape):
    """bf16 values as their uint16 bit patterns (the top half of random float32s)."""
    return (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _their_save_bf16(path, tensors, metadata=None):
    """Writes {name: uint16 bits} as BF16 with the reference library's low-level API."""
    import safetensors

    specs = {}
    for name, bits in tensors.items():
        bits = np.ascontiguousarray(bits)
        if hasattr(safetensors, "TensorSpec"):
            specs[name] = safetensors.TensorSpec(dtype="bfloat16", shape=list(bits.shape),
                                                 data_ptr=bits.ctypes.data, data_len=bits.nbytes)
        else:
            specs[name] = {"dtype": "bfloat16", "shape": list(bits.shape), "data": bits.tobytes()}
    safetensors.serialize_file(specs, str(path), metadata)


def _bits_of_bf16_tensor(t):
    """Our bf16 tensor's bit patterns as uint16 (bf16 -> f32 is exact: the bits move up 16 places)."""
    return t.to(dtype="f32").numpy().view(np.uint32).__rshift__(16).astype(np.uint16)


def test_every_shared_dtype_loads_in_the_reference_library(tmp_path, rng):
    stn = pytest.importorskip("safetensors.numpy")
    want = {f"t.{d}": _random(rng, d, (3, 4)) for d in SHARED}
    want["scalar"] = np.array(1.5, dtype=np.float32)
    want["empty"] = np.zeros((0, 5), dtype=np.int64)
    path = tmp_path / "ours.safetensors"
    mt.save_safetensors(str(path), want, {"format": "np", "note": "ünïcode \" \\"})
    got = stn.load_file(str(path))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k])
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "np", "note": "ünïcode \" \\"}


def test_reference_library_files_load_in_ours(tmp_path, rng):
    stn = pytest.importorskip("safetensors.numpy")
    want = {f"t.{d}": _random(rng, d, (5, 3)) for d in SHARED}
    want["odd"] = _random(rng, "uint8", (7,))  # puts later tensors off alignment in their layout
    want["scalar"] = np.array(-2.0, dtype=np.float64)
    path = tmp_path / "theirs.safetensors"
    stn.save_file(want, str(path), metadata={"k": "v"})
    for mmap in (False, True):
        got = mt.load_safetensors(str(path), mmap=mmap)
        assert got.keys() == want.keys()
        for k, v in want.items():
            np.testing.assert_array_equal(got[k].numpy(), v, err_msg=k)
            assert got[k].numpy().dtype == v.dtype
    assert mt.safetensors_metadata(str(path)) == {"k": "v"}


def test_bf16_both_ways(tmp_path, rng):
    safetensors = pytest.importorskip("safetensors")
    bits = _bf16_bits(rng, (4, 6))
    # Ours -> theirs: the reference deserializer sees dtype BF16 and our exact bytes.
    ours = mt.tensor(bits.view(np.uint16).astype(np.uint32).__lshift__(16).view(np.float32), dtype="bf16")
    np.testing.assert_array_equal(_bits_of_bf16_tensor(ours), bits)
    path = tmp_path / "ours_bf16.safetensors"
    mt.save_safetensors(str(path), {"w": ours})
    (name, rec), = safetensors.deserialize(path.read_bytes())
    assert name == "w" and rec["dtype"] == "BF16" and list(rec["shape"]) == [4, 6]
    np.testing.assert_array_equal(np.frombuffer(bytes(rec["data"]), dtype=np.uint16).reshape(4, 6), bits)
    # Theirs -> ours.
    path = tmp_path / "theirs_bf16.safetensors"
    _their_save_bf16(path, {"w": bits})
    got = mt.load_safetensors(str(path))["w"]
    assert got.dtype == mt.bfloat16 and list(got.shape) == [4, 6]
    np.testing.assert_array_equal(_bits_of_bf16_tensor(got), bits)
    try:
        import torch
    except ImportError:
        return
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / "ours_bf16.safetensors"))["w"]
    np.testing.assert_array_equal(t.view(torch.int16).numpy().view(np.uint16), bits)


def test_sharded_round_trip_and_reference_reads_shards(tmp_path, rng):
    tensors = {f"layers.{i}.w": rng.standard_normal((16, 16)).astype(np.float32) for i in range(6)}  # 1 KiB each
    paths = mt.save_safetensors_sharded(str(tmp_path), tensors, {"format": "pt"}, max_shard_bytes=2500)
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)] + [
        "model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 1024
    assert set(index["weight_map"]) == set(tensors)
    for source in (str(tmp_path), paths[-1]):
        got = mt.load_safetensors(source)
        assert got.keys() == tensors.keys()
        for k, v in tensors.items():
            np.testing.assert_array_equal(got[k].numpy(), v)
    listed = mt.list_safetensors(str(tmp_path))
    assert [e["name"] for e in listed] == sorted(tensors)
    assert all(e["dtype"] == "F32" and e["shape"] == (16, 16) for e in listed)
    try:
        from safetensors.numpy import load_file
    except ImportError:
        return
    merged = {}
    for shard in sorted(set(index["weight_map"].values())):
        merged.update(load_file(str(tmp_path / shard)))
    assert merged.keys() == tensors.keys()


def test_single_file_when_small_and_cuda_or_strided_inputs(tmp_path, rng):
    a = rng.standard_normal((3, 5)).astype(np.float32)
    t = mt.tensor(a).transpose(0, 1)  # non-contiguous
    paths = mt.save_safetensors_sharded(str(tmp_path), {"t": t})
    assert paths == [str(tmp_path / "model.safetensors")]
    np.testing.assert_array_equal(mt.load_safetensors(str(tmp_path))["t"].numpy(), a.T)


@pytest.mark.gpu
def test_cuda_tensors_are_saved(tmp_path, rng):
    a = rng.standard_normal((4, 4)).astype(np.float32)
    mt.save_safetensors(str(tmp_path / "c.safetensors"), {"c": mt.tensor(a, device="cuda")})
    np.testing.assert_array_equal(mt.load_safetensors(str(tmp_path / "c.safetensors"))["c"].numpy(), a)


def test_mmap_tensors_are_private_copies_on_write(tmp_path, rng):
    a = rng.standard_normal(8).astype(np.float32)
    path = tmp_path / "m.safetensors"
    mt.save_safetensors(str(path), {"a": a})
    before = path.read_bytes()
    t = mt.load_safetensors(str(path), mmap=True)["a"]
    t.fill_(3.0)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(mt.load_safetensors(str(path))["a"].numpy(), a)


def _raw(header: str, data: bytes = b"", length=None) -> bytes:
    h = header.encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


_OK = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
_BAD = {
    "truncated": (b"\x01\x02", "truncated"),
    "header past the end": (_raw(_OK, b"x" * 8, length=4096), "header length 4096"),
    "invalid json": (_raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}', b"x" * 8), "invalid JSON"),
    "unknown dtype": (_raw(_OK.replace("F32", "F31"), b"x" * 8), 'unknown dtype "F31"'),
    "size mismatch": (_raw(_OK.replace("[2]", "[3]"), b"x" * 8), "shape [3]"),
    "duplicate": (_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                       '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"xy"), 'duplicate key "a"'),
    "overlap": (_raw('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                     '"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', b"xyz"), "overlap"),
    "hole": (_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                  '"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}', b"xyz"), "hole"),
    "out of order offsets": (_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}', b"x"),
                             "end before they begin"),
    "past the end": (_raw(_OK, b"x" * 4), "past the end of the data block"),
    "trailing data": (_raw(_OK, b"x" * 12), "12 bytes of data"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_malformed_files_are_value_errors(tmp_path, case):
    data, words = _BAD[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    for fn in (mt.load_safetensors, mt.list_safetensors):
        with pytest.raises(ValueError) as e:
            fn(str(path))
        assert words in str(e.value) and str(path) in str(e.value)


def test_the_baseline_of_the_malformed_cases_is_valid(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(_raw(_OK, struct.pack("<2f", 1.0, 2.0)))
    np.testing.assert_array_equal(mt.load_safetensors(str(path))["a"].numpy(), [1.0, 2.0])


def test_reference_library_rejects_what_we_reject(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    for case in ("hole", "overlap", "trailing data", "size mismatch"):
        path = tmp_path / f"{case}.safetensors"
        path.write_bytes(_BAD[case][0])
        with pytest.raises(Exception):
            load_file(str(path))


def test_index_errors_name_the_tensor(tmp_path, rng):
    tensors = {n: rng.standard_normal(64).astype(np.float32) for n in "ab"}
    mt.save_safetensors_sharded(str(tmp_path), tensors, max_shard_bytes=300)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(ValueError, match="'b' is missing"):
        mt.load_safetensors(str(tmp_path))
    index.write_text('{"weight_map": ')
    with pytest.raises(ValueError, match="invalid JSON"):
        mt.load_safetensors(str(index))
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="neither model.safetensors"):
        mt.load_safetensors(str(tmp_path / "sub"))


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError):
        mt.save_safetensors(str(tmp_path / "x.safetensors"), {1: np.zeros(2)})
    with pytest.raises(ValueError, match="reserved"):
        mt.save_safetensors(str(tmp_path / "x.safetensors"), {"__metadata__": np.zeros(2)})
    with pytest.raises(RuntimeError, match="No such file"):
        mt.load_safetensors(str(tmp_path / "missing.safetensors"))

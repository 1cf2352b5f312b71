"""mambatron: a C++/CUDA engine for Mamba-1, Mamba-2, Transformer and hybrid language models.

The compute lives in the native core (``mambatron._C``); this package re-exports it
and adds what is easier in Python: printing, paths for C++ users, the CLI.
"""
from __future__ import annotations

import os as _os

from . import _C, data, hf, tokenizers  # noqa: F401
from ._C import (  # noqa: F401
    AdamW,
    DataLoader,
    Device,
    DType,
    IndexedDataset,
    IndexedDatasetWriter,
    Tensor,
    Trainer,
    __version__,
    adamw_update,
    add,
    as_tensor,
    attention_backward,
    attention_decode,
    attention_engine,
    attention_forward,
    built_with_cuda,
    clip_grad_norm,
    conv1d_backward,
    conv1d_forward,
    conv1d_step,
    cuda_available,
    cudnn_version,
    current_stream,
    device_count,
    embedding_backward,
    embedding_forward,
    empty,
    empty_cache,
    from_dlpack,
    full,
    gated_rmsnorm_backward,
    gated_rmsnorm_forward,
    gelu_backward,
    gelu_forward,
    gemm,
    grad_norm,
    kv_cache_append,
    layernorm1p_backward,
    layernorm1p_forward,
    learning_rate,
    linear_cross_entropy_backward,
    linear_cross_entropy_forward,
    list_safetensors,
    load_safetensors,
    manual_seed,
    max_memory_allocated,
    memory_allocated,
    memory_reserved,
    mul,
    neg_exp,
    rand,
    randn,
    reset_peak_memory_stats,
    rmsnorm_backward,
    rmsnorm_forward,
    rope_backward,
    rope_forward,
    safetensors_metadata,
    save_safetensors,
    save_safetensors_sharded,
    selective_scan_backward,
    selective_scan_forward,
    selective_scan_step,
    set_attention_engine,
    set_stream,
    silu_backward,
    silu_forward,
    squared_relu_backward,
    squared_relu_forward,
    ssd_backward,
    ssd_forward,
    ssd_step,
    swiglu_backward,
    swiglu_forward,
    synchronize,
    zeros,
)
from .generate import Generator, generate  # noqa: F401
from .model import Model  # noqa: F401
from .presets import ModelConfig, get_preset, list_presets  # noqa: F401
from .train import TrainArgs  # noqa: F401

float32 = DType.f32
float64 = DType.f64
bfloat16 = DType.bf16
float16 = DType.f16
int32 = DType.i32
int64 = DType.i64
uint16 = DType.u16
uint8 = DType.u8


def ones(shape, dtype="f32", device="cpu") -> Tensor:
    """A tensor of ones."""
    return full(shape, 1.0, dtype=dtype, device=device)


def tensor(data, dtype=None, device="cpu") -> Tensor:
    """A new tensor holding a copy of ``data`` (nested lists, numbers, or any array)."""
    import numpy as np

    if isinstance(data, Tensor):
        src = data
    elif hasattr(data, "__dlpack__"):
        src = from_dlpack(data)
    else:
        arr = np.asarray(data)
        if arr.dtype == np.float64 and dtype is None and not isinstance(data, np.ndarray):
            arr = arr.astype(np.float32)  # Python floats become f32, as in the other frameworks
        src = from_dlpack(np.ascontiguousarray(arr))
    out = src.to(device=device, dtype=dtype if dtype is not None else src.dtype)
    return out.clone() if out.data_ptr() == src.data_ptr() and out.numel() else out


def best_device() -> str:
    """'cuda:0' when a CUDA device is usable, else 'cpu'."""
    return "cuda:0" if cuda_available() else "cpu"


def include_dir() -> str:
    """Folder of the public C++ headers (``#include <mambatron/mambatron.h>``)."""
    return _os.path.join(_os.path.dirname(__file__), "include")


def cmake_dir() -> str:
    """Folder to pass as ``-Dmambatron_DIR=`` to CMake's ``find_package(mambatron)``."""
    return _os.path.join(_os.path.dirname(__file__), "lib", "cmake", "mambatron")


def _tensor_repr(t: Tensor) -> str:
    head = f"mambatron.Tensor(shape={list(t.shape)}, dtype={t.dtype}, device={t.device}"
    if t.numel() > 1000:
        return head + ")"
    import numpy as np

    values = t.to(device="cpu", dtype="f64" if t.dtype in (DType.bf16, DType.f16) else t.dtype).numpy()
    body = np.array2string(values, precision=4, separator=", ", threshold=64)
    return head + ",\n" + body + ")"


Tensor.__repr__ = _tensor_repr
DType.__str__ = lambda self: self.name  # "bf16", as users write it

"""Timing shared by the GPU benchmarks: CUDA events after warm-up, the median of repeats."""
from __future__ import annotations

import statistics
import sys

import mambatron as mt


def require_torch_cuda(name: str):
    """PyTorch (used for events and allocation), or None after saying why not."""
    try:
        import torch
    except ImportError:
        print(f"{name}: needs PyTorch", file=sys.stderr)
        return None
    if not mt.cuda_available():
        print(f"{name}: needs a CUDA device", file=sys.stderr)
        return None
    return torch


def median_ms(fn, torch, reps: int, warmup: int = 5) -> float:
    """Median milliseconds of ``reps`` calls of fn(), each between two CUDA events.

    The calls are queued back to back and waited for once at the end, so the host's
    time to launch a call hides behind the device's work on the previous one, as in a
    real loop (a call that waits on the device itself still pays for it)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)

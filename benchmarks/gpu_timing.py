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
    """Median milliseconds of ``reps`` calls of fn(), each between two CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)

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


def kernel_us(fn, torch, reps: int = 5, warmup: int = 2, strip: tuple = ()) -> dict:
    """{kernel name: microseconds per call of fn()} from PyTorch's profiler (CUPTI).

    Names lose their argument lists, "void ", anonymous namespaces and each prefix in
    ``strip``; kernels of one name are added together."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        us = getattr(ev, "self_device_time_total", None)
        us = getattr(ev, "self_cuda_time_total", 0.0) if us is None else us
        if us > 0:
            name = ev.key.replace("void ", "").replace("(anonymous namespace)::", "").replace("__nv_bfloat16", "bf16")
            for prefix in strip:
                name = name.replace(prefix, "")
            name = name.split("(")[0]
            out[name] = out.get(name, 0.0) + us / reps
    return out


def profile_once(fn, torch, warmup: int = 2) -> None:
    """fn() after warm-up, alone between cudaProfilerStart and cudaProfilerStop: the one
    call a profiler started with ``--profile-from-start off`` (Nsight Compute, Nsight
    Systems) records, each kernel once."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    cudart = torch.cuda.cudart()
    cudart.cudaProfilerStart()
    fn()
    torch.cuda.synchronize()
    cudart.cudaProfilerStop()


def print_kernel_us(title: str, times: dict) -> None:
    print(title)
    for name, us in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"  {us:9.1f}  {name}")

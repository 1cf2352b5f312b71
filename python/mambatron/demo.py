"""``mambatron demo``: check the engine against its CPU reference, then time it."""
from __future__ import annotations

import json
import time

import numpy as np

import mambatron as mt


def _time(fn, device: str, min_seconds: float = 0.5, max_reps: int = 50) -> float:
    """Median seconds of fn() after one warm-up call."""
    fn()
    mt.synchronize(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_seconds or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        mt.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_demo(device: str | None = None, size: int | None = None, json_path: str | None = None) -> dict:
    device = str(mt.Device(device or mt.best_device()))
    on_cuda = device.startswith("cuda")
    dtype = "bf16" if on_cuda else "f32"
    size = size or (8192 if on_cuda else 1024)
    print(f"mambatron {mt.__version__} | device {device} | CUDA built: {mt.built_with_cuda()}, "
          f"usable devices: {mt.device_count()}")

    # 1. Correctness: the device's gemm against float64 on the CPU, odd sizes.
    m, k, n = 67, 129, 45
    a = mt.randn([m, k], dtype=dtype, device=device, seed=1)
    b = mt.randn([k, n], dtype=dtype, device=device, seed=2)
    c = mt.gemm(a, b)
    ref = a.to(device="cpu", dtype="f64").numpy() @ b.to(device="cpu", dtype="f64").numpy()
    got = c.to(device="cpu", dtype="f64").numpy()
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    print(f"gemm {m}x{k} @ {k}x{n} ({dtype}) vs float64 reference: relative error {rel:.2e}")

    # 2. Speed: a square gemm, median of repeats.
    x = mt.randn([size, size], dtype=dtype, device=device, seed=3)
    y = mt.randn([size, size], dtype=dtype, device=device, seed=4)
    out = mt.empty([size, size], dtype=dtype, device=device)
    seconds = _time(lambda: mt.gemm(x, y, out=out), device)
    tflops = 2.0 * size ** 3 / seconds / 1e12
    rate = f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"
    print(f"gemm {size}^3 ({dtype}): {seconds * 1e3:.2f} ms, {rate}")

    # 3. Memory the demo's tensors hold on the device.
    held = mt.memory_allocated(device) / 2**20
    peak = mt.max_memory_allocated(device) / 2**20
    print(f"memory on {device}: {held:.1f} MiB allocated, {peak:.1f} MiB peak")

    result = {"version": mt.__version__, "device": device, "dtype": dtype, "gemm_rel_error": rel,
              "size": size, "gemm_ms": seconds * 1e3, "gemm_tflops": tflops,
              "memory_allocated_mib": held, "max_memory_allocated_mib": peak}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result

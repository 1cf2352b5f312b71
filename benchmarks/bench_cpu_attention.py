"""CPU attention: forward and forward+backward times at tiny-model shapes and one larger one (f32).

Prints a table and, with --json PATH, writes the numbers. Times are medians of wall-clock
repetitions after one warm-up call; outputs are preallocated once, as a model does. Inputs
are random. GFLOP/s counts the causal half of the score matrix only: forward 2 products
(q·kᵀ, p·v), backward 5 more, each 2·b·hq·p·l(l+1)/2 flops. Threads: OMP_NUM_THREADS.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import mambatron as mt
from cpu_timing import median_s

SHAPES = [  # b, l, hq, hkv, p
    (8, 256, 4, 4, 64),
    (8, 256, 4, 2, 64),
    (1, 2048, 16, 8, 64),
]



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", default=None)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    rows = []
    print(f"threads {threads}")
    print(f"{'b':>3} {'l':>5} {'hq':>3} {'hkv':>3} {'p':>3} | {'fwd ms':>8} {'GFLOP/s':>8} | {'fwd+bwd ms':>10} {'GFLOP/s':>8}")
    for b, l, hq, hkv, hd in SHAPES:
        q = rng.standard_normal((b, l, hq, hd), dtype=np.float32)
        k = rng.standard_normal((b, l, hkv, hd), dtype=np.float32)
        v = rng.standard_normal((b, l, hkv, hd), dtype=np.float32)
        dout = rng.standard_normal((b, l, hq, hd), dtype=np.float32)
        out, lse = np.empty_like(q), np.empty((b, hq, l), np.float32)
        dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
        tq, tk, tv, tdo, to, tl = (mt.as_tensor(x) for x in (q, k, v, dout, out, lse))
        tdq, tdk, tdv = (mt.as_tensor(x) for x in (dq, dk, dv))

        def forward():
            mt.attention_forward(tq, tk, tv, out=to, lse=tl)

        def forward_backward():
            forward()
            mt.attention_backward(tdo, tq, tk, tv, to, tl, dq=tdq, dk=tdk, dv=tdv)

        t_f, t_fb = median_s(forward, args.reps), median_s(forward_backward, args.reps)
        product = 2.0 * b * hq * hd * l * (l + 1) / 2
        row = {"b": b, "l": l, "hq": hq, "hkv": hkv, "p": hd, "dtype": "f32", "threads": threads,
               "forward_ms": t_f * 1e3, "forward_backward_ms": t_fb * 1e3,
               "forward_gflops": 2 * product / t_f / 1e9, "forward_backward_gflops": 7 * product / t_fb / 1e9}
        rows.append(row)
        print(f"{b:>3} {l:>5} {hq:>3} {hkv:>3} {hd:>3} | {row['forward_ms']:8.2f} {row['forward_gflops']:8.1f} | "
              f"{row['forward_backward_ms']:10.2f} {row['forward_backward_gflops']:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "bench_cpu_attention", "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

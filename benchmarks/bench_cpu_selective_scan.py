"""CPU conv1d and Mamba-1 selective scan: forward and forward+backward times (f32).

Shapes: tiny-model ones (b 8, l 256, d_inner 256, n 16) and one larger (b 1, l 2048,
d 1024, n 16). The conv is the Mamba-1 one (width 4, bias, SiLU) over x [b, l, d]; the scan
has D, the z gate, delta_bias with softplus and one group of B, C. Times are medians of
wall-clock repetitions after one warm-up call; outputs are preallocated once, as a model
does. "Mupd/s" counts state updates per second, b·l·d·n for the scan (b·l·d·width for the
conv), forward only. Threads: OMP_NUM_THREADS. Prints a table; --json PATH writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import mambatron as mt
from cpu_timing import median_s

SHAPES = [  # b, l, d, n
    (8, 256, 256, 16),
    (1, 2048, 1024, 16),
]
WIDTH = 4



def bench_conv(rng, b, l, d, reps):
    f = np.float32
    x, dout = rng.standard_normal((b, l, d), dtype=f), rng.standard_normal((b, l, d), dtype=f)
    w, bias = rng.standard_normal((d, WIDTH), dtype=f), rng.standard_normal(d, dtype=f)
    tx, tw, tb, tg = (mt.as_tensor(a) for a in (x, w, bias, dout))
    out, dx, dw, db = (mt.as_tensor(np.empty_like(a)) for a in (x, x, w, bias))

    def forward():
        mt.conv1d_forward(tx, tw, tb, silu=True, out=out)

    def forward_backward():
        forward()
        mt.conv1d_backward(tg, tx, tw, tb, silu=True, dx=dx, dweight=dw, dbias=db)

    return median_s(forward, reps), median_s(forward_backward, reps)


def bench_scan(rng, b, l, d, n, reps):
    f = np.float32
    u, z, dy = (rng.standard_normal((b, l, d), dtype=f) for _ in range(3))
    delta = rng.uniform(-4, -1, (b, l, d)).astype(f)
    A = -np.tile(np.arange(1, n + 1, dtype=f), (d, 1))  # S4D-real
    B, C = (rng.standard_normal((b, l, 1, n), dtype=f) for _ in range(2))
    D, delta_bias = rng.standard_normal(d, dtype=f), rng.uniform(-1, 0, d).astype(f)
    t = {k: mt.as_tensor(v) for k, v in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias).items()}
    tdy, y = mt.as_tensor(dy), mt.as_tensor(np.empty_like(u))
    grads = {name: mt.as_tensor(np.empty_like(v)) for name, v in
             dict(du=u, ddelta=delta, dA=A, dB=B, dC=C, dD=D, dz=z, ddelta_bias=delta_bias).items()}

    def forward():
        mt.selective_scan_forward(**t, delta_softplus=True, out=y)

    def forward_backward():
        forward()
        mt.selective_scan_backward(tdy, **t, delta_softplus=True, **grads)

    return median_s(forward, reps), median_s(forward_backward, reps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", default=None)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    rows = []
    print(f"threads {threads}")
    print(f"{'op':<15} {'b':>3} {'l':>5} {'d':>5} {'n':>3} | {'fwd ms':>9} {'Mupd/s':>8} | {'fwd+bwd ms':>10}")
    for b, l, d, n in SHAPES:
        for op in ("conv1d", "selective_scan"):
            if op == "conv1d":
                t_f, t_fb = bench_conv(rng, b, l, d, args.reps)
                updates = b * l * d * WIDTH
            else:
                t_f, t_fb = bench_scan(rng, b, l, d, n, args.reps)
                updates = b * l * d * n
            row = {"op": op, "b": b, "l": l, "d": d, "n": n if op == "selective_scan" else None, "dtype": "f32",
                   "threads": threads, "forward_ms": t_f * 1e3, "forward_backward_ms": t_fb * 1e3,
                   "forward_mupdates_per_s": updates / t_f / 1e6}
            rows.append(row)
            n_col = str(n) if op == "selective_scan" else "-"
            print(f"{op:<15} {b:>3} {l:>5} {d:>5} {n_col:>3} | {row['forward_ms']:9.2f} "
                  f"{row['forward_mupdates_per_s']:8.0f} | {row['forward_backward_ms']:10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "bench_cpu_selective_scan", "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

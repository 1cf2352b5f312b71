"""CPU SSD (Mamba-2 scan): forward and forward+backward times, sequential and chunked, in f32.

Shapes: a tiny model's layer and one larger one. Each time is the median of --reps
wall-clock runs after one warm-up; outputs and gradients are preallocated once, as a
model does; inputs are random (dt through softplus with a bias, D and an initial state
given). Mtok/s is b·l tokens over the time. Threads: OMP_NUM_THREADS (default: all cores).
Prints a table; --json PATH also writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import mambatron as mt
from cpu_timing import median_s

SHAPES = [  # b, l, h, p, n, g, Q
    (8, 256, 8, 32, 32, 1, 64),
    (1, 2048, 32, 64, 64, 1, 128),
]



def inputs(rng, b, l, h, p, n, g):
    f32 = np.float32
    return dict(
        x=rng.standard_normal((b, l, h, p)).astype(f32),
        dt=rng.uniform(-4.0, -1.0, (b, l, h)).astype(f32),
        A=-rng.uniform(1.0, 16.0, h).astype(f32),
        B=rng.standard_normal((b, l, g, n)).astype(f32),
        C=rng.standard_normal((b, l, g, n)).astype(f32),
        D=np.ones(h, f32),
        dt_bias=rng.uniform(-1.0, 0.0, h).astype(f32),
        initial_state=rng.standard_normal((b, h, p, n)).astype(f32),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the rows to this file")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    print(f"ssd on the CPU, f32, threads {threads}")
    print(f"{'b':>2} {'l':>5} {'h':>3} {'p':>3} {'n':>3} {'g':>2} {'form':>10} | {'fwd ms':>9} {'Mtok/s':>7} | "
          f"{'fwd+bwd ms':>10} {'Mtok/s':>7}")
    rows = []
    for b, l, h, p, n, g, q in SHAPES:
        inp = {k: mt.as_tensor(v) for k, v in inputs(rng, b, l, h, p, n, g).items()}
        dy = mt.as_tensor(rng.standard_normal((b, l, h, p)).astype(np.float32))
        y, fs = mt.ssd_forward(**inp, dt_softplus=True)
        grads = mt.ssd_backward(dy, **inp, dt_softplus=True)
        outs = dict(zip(["dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias", "d_initial_state"], grads))
        for chunk_size in (0, q):

            def forward():
                mt.ssd_forward(**inp, chunk_size=chunk_size, dt_softplus=True, out=y, final_state=fs)

            def forward_backward():
                forward()
                mt.ssd_backward(dy, **inp, chunk_size=chunk_size, dt_softplus=True, **outs)

            t_f, t_fb = median_s(forward, args.reps), median_s(forward_backward, args.reps)
            form = "sequential" if chunk_size == 0 else f"chunk {chunk_size}"
            row = {"b": b, "l": l, "h": h, "p": p, "n": n, "g": g, "chunk_size": chunk_size, "dtype": "f32",
                   "threads": threads, "forward_ms": t_f * 1e3, "forward_backward_ms": t_fb * 1e3,
                   "forward_mtok_s": b * l / t_f / 1e6, "forward_backward_mtok_s": b * l / t_fb / 1e6}
            rows.append(row)
            print(f"{b:>2} {l:>5} {h:>3} {p:>3} {n:>3} {g:>2} {form:>10} | {row['forward_ms']:9.2f} "
                  f"{row['forward_mtok_s']:7.3f} | {row['forward_backward_ms']:10.2f} "
                  f"{row['forward_backward_mtok_s']:7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "bench_cpu_ssd", "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""gemm: mambatron (cuBLASLt) beside torch.matmul on the same inputs, in one run.

Prints a table and, with --json PATH, writes the numbers. Times are medians of CUDA
event timings after warm-up; inputs are random (never zeros); each timed pair is
checked for agreement first. Needs a CUDA device and PyTorch.
"""
from __future__ import annotations

import argparse
import json

import mambatron as mt
from gpu_timing import median_ms, require_torch_cuda

SHAPES = [  # m, n, k
    (8192, 8192, 8192),
    (4096, 4096, 4096),
    (16384, 4096, 4096),   # a projection at 16K tokens, d 4096
    (16384, 16384, 4096),  # MLP fc1 of the 8B models
    (16384, 4096, 16384),  # MLP fc2
    (4097, 4095, 4093),    # odd sizes
]



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", default=None)
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args()
    torch = require_torch_cuda("bench_gemm")
    if torch is None:
        return 1
    torch.manual_seed(0)
    rows = []
    print(f"{'m':>6} {'n':>6} {'k':>6} {'dtype':>5} | {'ours ms':>8} {'TFLOP/s':>8} | {'torch ms':>8} {'TFLOP/s':>8} | ratio")
    for dtype_name, tdt in [("bf16", torch.bfloat16), ("f32", torch.float32)]:
        for m, n, k in SHAPES if dtype_name == "bf16" else SHAPES[:2]:
            a = torch.randn(m, k, device="cuda", dtype=tdt)
            b = torch.randn(k, n, device="cuda", dtype=tdt)
            c_ours = torch.empty(m, n, device="cuda", dtype=tdt)
            ma, mb, mc = mt.from_dlpack(a), mt.from_dlpack(b), mt.from_dlpack(c_ours)
            mt.gemm(ma, mb, out=mc)
            c_ref = torch.matmul(a, b)
            rel = ((c_ours.float() - c_ref.float()).norm() / c_ref.float().norm()).item()
            assert rel < (1e-2 if dtype_name == "bf16" else 1e-5), f"ours and torch disagree: {rel}"
            if dtype_name == "f32":
                torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against fp32, as ours computes
            ours, peer = [], []
            for _ in range(2):  # alternate to spread clock drift over both
                ours.append(median_ms(lambda: mt.gemm(ma, mb, out=mc), torch, args.reps))
                peer.append(median_ms(lambda: torch.matmul(a, b, out=c_ref), torch, args.reps))
            t_ours, t_peer = min(ours), min(peer)
            flops = 2.0 * m * n * k
            row = {"m": m, "n": n, "k": k, "dtype": dtype_name, "ours_ms": t_ours, "torch_ms": t_peer,
                   "ours_tflops": flops / t_ours / 1e9, "torch_tflops": flops / t_peer / 1e9,
                   "ratio_ours_over_torch_speed": t_peer / t_ours, "rel_diff": rel}
            rows.append(row)
            print(f"{m:>6} {n:>6} {k:>6} {dtype_name:>5} | {t_ours:8.3f} {row['ours_tflops']:8.1f} | "
                  f"{t_peer:8.3f} {row['torch_tflops']:8.1f} | {row['ratio_ours_over_torch_speed']:.3f}")
            torch.cuda.empty_cache()
    # A projection that ends a sublayer, x_next = x + a·bᵀ: the residual add in the gemm's
    # epilogue (addend) against the gemm followed by a separate add.
    residual_rows = []
    print(f"{'m':>6} {'n':>6} {'k':>6} | {'gemm+add ms':>11} | {'epilogue ms':>11} | saved")
    for m, n, k in [(16384, 4096, 4096), (16384, 4096, 16384)]:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        tmp, nxt = torch.empty_like(x), torch.empty_like(x)
        ma, mw, mx, mtmp, mnxt = (mt.from_dlpack(t) for t in (a, w, x, tmp, nxt))

        def separate():
            mt.gemm(ma, mw, trans_b=True, out=mtmp)
            mt.add(mx, mtmp, out=mnxt)

        def fused():
            mt.gemm(ma, mw, trans_b=True, beta=1.0, addend=mx, out=mnxt)

        fused()
        ref = x.float() + a.float() @ w.float().t()
        rel = ((nxt.float() - ref).norm() / ref.norm()).item()
        assert rel < 1e-2, f"epilogue result is off: {rel}"
        t_sep = min(median_ms(separate, torch, args.reps) for _ in range(2))
        t_fused = min(median_ms(fused, torch, args.reps) for _ in range(2))
        residual_rows.append({"m": m, "n": n, "k": k, "gemm_then_add_ms": t_sep, "epilogue_ms": t_fused,
                              "saved_ms": t_sep - t_fused})
        print(f"{m:>6} {n:>6} {k:>6} | {t_sep:11.3f} | {t_fused:11.3f} | {t_sep - t_fused:.3f} ms")
        torch.cuda.empty_cache()
    head = rows[0]
    print(f"8192^3 bf16: ours {head['ours_tflops']:.1f} TFLOP/s = {100 * head['ratio_ours_over_torch_speed']:.1f}% of torch.matmul")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "gemm", "device": torch.cuda.get_device_name(), "rows": rows,
                       "residual_epilogue": residual_rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

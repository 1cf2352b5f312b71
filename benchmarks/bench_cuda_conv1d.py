"""CUDA causal depthwise conv1d (+ SiLU) at the 8B layer shapes, forward and backward.

Mamba-2 8B: conv_dim = d_inner + 2·g·n = 8192 + 2·8·128 = 10240 channels; Mamba-1 8B:
d_inner = 8192; width 4; b 4 × l 4096 tokens by default (the peer row of
PERFORMANCE.md: causal-conv1d, 0.31 ms forward, 1.19 ms forward + backward). bf16
activations, a bf16 weight and bias (the model's working copy), f32 gradients of them.
Timed with CUDA events (median after warm-up) on inputs made by torch and handed over
through DLPack. The bytes counted are those the op must move at least once (forward:
read x, write out; backward: read x and dout, write dx); achieved TB/s is set against
the 4.07 TB/s of a device copy. Outputs are poisoned (NaN) before timing and must come
out finite. Prints a table; --json PATH writes the numbers. Needs PyTorch and a GPU.
"""
from __future__ import annotations

import argparse
import json

import mambatron as mt
from gpu_timing import median_ms, require_torch_cuda

COPY_CEILING_TBS = 4.07
PEER_MS = {"fwd": 0.31, "fwd+bwd": 1.19}  # causal-conv1d, 10240 channels, b 4 × l 4096


def cases(torch, b, l, channels, width):
    dev, bf, f32 = "cuda", torch.bfloat16, torch.float32
    D = mt.from_dlpack
    x = torch.randn(b, l, channels, device=dev, dtype=f32).to(bf)
    g = torch.randn(b, l, channels, device=dev, dtype=f32).to(bf)
    w = (torch.randn(channels, width, device=dev, dtype=f32) * 0.5).to(bf)
    bias = torch.randn(channels, device=dev, dtype=f32).to(bf)
    out = torch.full_like(x, float("nan"))
    dx = torch.full_like(x, float("nan"))
    dw = torch.empty(channels, width, device=dev, dtype=f32)
    db = torch.empty(channels, device=dev, dtype=f32)
    mx, mg, mw, mb, mo, mdx, mdw, mdb = (D(t) for t in (x, g, w, bias, out, dx, dw, db))
    n = b * l * channels

    def fwd():
        mt.conv1d_forward(mx, mw, mb, silu=True, out=mo)

    def bwd():
        mt.conv1d_backward(mg, mx, mw, mb, silu=True, dx=mdx, dweight=mdw, dbias=mdb)

    def both():
        fwd()
        bwd()

    yield "fwd", fwd, 2 * n * 2, (out,)
    yield "bwd", bwd, 3 * n * 2, (dx, dw, db)
    yield "fwd+bwd", both, 5 * n * 2, (out, dx)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--b", type=int, default=4)
    ap.add_argument("--l", type=int, default=4096)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--channels", type=int, nargs="+", default=[10240, 8192])
    args = ap.parse_args()
    torch = require_torch_cuda("bench_cuda_conv1d")
    if torch is None:
        return 1
    torch.manual_seed(0)
    rows = []
    print(f"conv1d + SiLU, width {args.width}, b {args.b} x l {args.l}, bf16 activations; "
          f"ceiling {COPY_CEILING_TBS} TB/s (device copy)")
    print(f"{'channels':>8} {'pass':<8} {'ms':>8} {'GB moved':>9} {'TB/s':>6} {'of ceiling':>10} {'peer ms':>8}")
    ok = True
    for c in args.channels:
        for name, fn, nbytes, outs in cases(torch, args.b, args.l, c, args.width):
            ms = median_ms(fn, torch, args.reps)
            finite = all(bool(torch.isfinite(t).all()) for t in outs)
            ok &= finite
            tbs = nbytes / (ms * 1e-3) / 1e12
            peer = PEER_MS.get(name) if c == 10240 and args.b * args.l == 16384 else None
            row = {"channels": c, "pass": name, "ms": ms, "bytes": nbytes, "tb_per_s": tbs,
                   "fraction_of_copy": tbs / COPY_CEILING_TBS, "peer_ms": peer, "finite": finite}
            rows.append(row)
            print(f"{c:>8} {name:<8} {ms:8.3f} {nbytes / 1e9:9.3f} {tbs:6.2f} {100 * row['fraction_of_copy']:9.1f}% "
                  f"{peer if peer else '':>8}{'' if finite else '  NON-FINITE OUTPUT'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "cuda_conv1d", "device": torch.cuda.get_device_name(), "b": args.b, "l": args.l,
                       "width": args.width, "copy_ceiling_tb_per_s": COPY_CEILING_TBS, "rows": rows}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Mamba-2 SSD on CUDA at the 8B layer shape of PERFORMANCE.md: forward and forward+backward.

Shape: h 128 heads of p 64, state n 128, g 8 groups, bf16 activations, f32 A, D, dt_bias,
dt through softplus with a bias; b 4 × l 4096 and b 1 × l 4096, chunk lengths 64 and 128.
Each time is the median of CUDA-event timings after warm-up; inputs and outputs are torch
tensors handed over through DLPack and allocated once.

Floors (PERFORMANCE.md's method): the bytes an op must move at least once (forward: read
x, dt, B, C, write y; backward: read dy, x, dt, B, C, write dx, ddt, dB, dC; bf16) over the
4.07 TB/s copy ceiling, and the matrix work over the 757 TFLOP/s bf16 ceiling. Forward
FLOPs count 2·(b·l·h·(2·p·n + Q·p) + b·l·g·Q·n): the chunk states and the inter-chunk
output (p·n each per token and head), the intra-chunk product (Q·p) and C·Bᵀ per group
(Q·n), about 0.1 TFLOP at b 4 × l 4096 as PERFORMANCE.md says; the backward counts twice
the forward. The peer column is mamba_ssm's Triton mamba_chunk_scan_combined as
PERFORMANCE.md recorded it (Q 128, 2026-11-28), not measured in this run.

Before timing, a smaller problem (b 1, l 512, same heads) is checked against the CPU op
within DESIGN.md's rule (reference: CPU f64 on the same rounded inputs; the CPU's own
error: CPU f32 rounded to bf16). Prints a table; --json PATH writes the numbers. Needs a
CUDA device and PyTorch (for allocation and events only).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

import mambatron as mt
from gpu_timing import kernel_us, median_ms, print_kernel_us, profile_once, require_torch_cuda

COPY_CEILING_TBS = 4.07
BF16_CEILING_TFLOPS = 757.0
H, P, N, G = 128, 64, 128, 8
SHAPES = [(4, 4096), (1, 4096)]
CHUNKS = [128, 64]
PEER_MS = {(4, 4096): (1.36, 5.74), (1, 4096): (1.01, 3.70)}  # forward, forward+backward


def counts(b, l, q):
    """(forward bytes, forward+backward bytes, forward FLOPs, forward+backward FLOPs)."""
    act = 2  # bf16
    x, bc, dt = b * l * H * P * act, b * l * G * N * act, b * l * H * act
    fwd_bytes = 2 * x + 2 * bc + dt
    bwd_bytes = 3 * x + 4 * bc + 2 * dt
    fwd_flops = 2 * (b * l * H * (2 * P * N + q * P) + b * l * G * q * N)
    return fwd_bytes, fwd_bytes + bwd_bytes, fwd_flops, 3 * fwd_flops


def make_inputs(torch, b, l, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dev, bf, f32 = "cuda", torch.bfloat16, torch.float32

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=gen, dtype=f32)

    return dict(
        x=torch.randn(b, l, H, P, device=dev, generator=gen, dtype=f32).to(bf),
        dt=(rand(b, l, H) * 3 - 4).to(bf),
        A=-(1 + 15 * rand(H)),
        B=torch.randn(b, l, G, N, device=dev, generator=gen, dtype=f32).to(bf),
        C=torch.randn(b, l, G, N, device=dev, generator=gen, dtype=f32).to(bf),
        D=torch.ones(H, device=dev, dtype=f32),
        dt_bias=-rand(H),
    )


def check_against_cpu(torch, q):
    """Max errors of y and dx at b 1 × l 512 against the rule; True when within it."""
    inp = make_inputs(torch, 1, 512, seed=1)
    dy = torch.randn_like(inp["x"], dtype=torch.float32).to(torch.bfloat16)
    gpu = {k: mt.from_dlpack(v) for k, v in inp.items()}
    opts = dict(chunk_size=q, dt_softplus=True)
    y, _ = mt.ssd_forward(**gpu, **opts)
    dx = mt.ssd_backward(mt.from_dlpack(dy), **gpu, **opts)[0]
    host = {k: mt.from_dlpack(v.cpu()) for k, v in inp.items()}
    hdy = mt.from_dlpack(dy.cpu())
    ok, notes = True, []
    for name, out, fn in (
        ("y", y, lambda hi, d: mt.ssd_forward(**hi, **opts)[0]),
        ("dx", dx, lambda hi, d: mt.ssd_backward(d, **hi, **opts)[0]),
    ):
        ref = fn({k: v.to("f64") for k, v in host.items()}, hdy.to("f64")).numpy()
        cpu = fn({k: v.to("f32") for k, v in host.items()}, hdy.to("f32")).to("bf16").to("f64").numpy()
        got = out.to(device="cpu", dtype="f64").numpy()
        err, err_cpu = np.abs(got - ref).max(), np.abs(cpu - ref).max()
        within = err <= 2 * err_cpu + 1e-5 * np.abs(ref).max()
        ok &= bool(within)
        notes.append(f"{name} error {err:.3g} (CPU bf16 {err_cpu:.3g}){'' if within else ' OUTSIDE THE RULE'}")
    return ok, "; ".join(notes)


def forward_backward_at(torch, b, l, q):
    """A function running one forward and one backward at b × l, chunk length q."""
    inp = make_inputs(torch, b, l)
    t = {k: mt.from_dlpack(v) for k, v in inp.items()}
    dy = mt.from_dlpack(torch.randn_like(inp["x"], dtype=torch.float32).to(torch.bfloat16))
    opts = dict(chunk_size=q, dt_softplus=True)

    def both():
        mt.ssd_forward(**t, **opts)
        mt.ssd_backward(dy, **t, **opts)

    return both


def kernel_times(torch, b, l, q):
    """{kernel name: microseconds per forward+backward}."""
    return kernel_us(forward_backward_at(torch, b, l, q), torch, strip=("mambatron::cuda::ssd::",))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--kernels", action="store_true", help="also print each kernel's time at b 4, Q 64 and 128")
    ap.add_argument("--profile", action="store_true",
                    help="only one forward+backward at b 4 × l 4096, Q 128, for a profiler started with "
                         "--profile-from-start off (after warm-up)")
    args = ap.parse_args()
    torch = require_torch_cuda("bench_cuda_ssd")
    if torch is None:
        return 1
    if args.profile:
        profile_once(forward_backward_at(torch, 4, 4096, 128), torch)
        return 0
    rows, checks = [], {}
    for q in CHUNKS:
        ok, note = check_against_cpu(torch, q)
        checks[q] = {"within_rule": ok, "note": note}
        print(f"check Q {q}: {note}")
    print(f"SSD h {H} p {P} n {N} g {G}, bf16; ceilings {COPY_CEILING_TBS} TB/s, {BF16_CEILING_TFLOPS:.0f} TFLOP/s")
    print(f"{'b':>2} {'l':>5} {'Q':>4} {'pass':>8} | {'ms':>7} {'TFLOP/s':>8} {'TB/s':>6} {'floor ms':>8} "
          f"{'x floor':>7} | {'peer ms':>7} {'x peer':>6}")
    for b, l in SHAPES:
        inp = make_inputs(torch, b, l)
        t = {k: mt.from_dlpack(v) for k, v in inp.items()}
        y = torch.empty_like(inp["x"])
        fs = torch.empty(b, H, P, N, device="cuda", dtype=torch.float32)
        dy = torch.randn_like(inp["x"], dtype=torch.float32).to(torch.bfloat16)
        grads = dict(dx=torch.empty_like(inp["x"]), ddt=torch.empty_like(inp["dt"]), dA=torch.empty_like(inp["A"]),
                     dB=torch.empty_like(inp["B"]), dC=torch.empty_like(inp["C"]), dD=torch.empty_like(inp["D"]),
                     ddt_bias=torch.empty_like(inp["dt_bias"]))
        my, mfs, mdy = mt.from_dlpack(y), mt.from_dlpack(fs), mt.from_dlpack(dy)
        mgrads = {k: mt.from_dlpack(v) for k, v in grads.items()}
        for q in CHUNKS:
            opts = dict(chunk_size=q, dt_softplus=True)

            def forward():
                mt.ssd_forward(**t, **opts, out=my, final_state=mfs)

            def forward_backward():
                forward()
                mt.ssd_backward(mdy, **t, **opts, **mgrads)

            fwd_bytes, fb_bytes, fwd_flops, fb_flops = counts(b, l, q)
            for name, fn, nbytes, flops, peer in (("fwd", forward, fwd_bytes, fwd_flops, PEER_MS[(b, l)][0]),
                                                  ("fwd+bwd", forward_backward, fb_bytes, fb_flops,
                                                   PEER_MS[(b, l)][1])):
                ms = median_ms(fn, torch, args.reps)
                floor_ms = max(nbytes / (COPY_CEILING_TBS * 1e12), flops / (BF16_CEILING_TFLOPS * 1e12)) * 1e3
                row = {"b": b, "l": l, "h": H, "p": P, "n": N, "g": G, "chunk_size": q, "pass": name, "ms": ms,
                       "tflop_per_s": flops / (ms * 1e-3) / 1e12, "tb_per_s": nbytes / (ms * 1e-3) / 1e12,
                       "bytes": nbytes, "flops": flops, "floor_ms": floor_ms, "times_floor": ms / floor_ms,
                       "peer_ms_recorded": peer if q == 128 else None,
                       "times_peer": ms / peer if q == 128 else None}
                rows.append(row)
                peer_txt = f"{peer:7.2f} {ms / peer:6.2f}" if q == 128 else f"{'':7} {'':6}"
                print(f"{b:>2} {l:>5} {q:>4} {name:>8} | {ms:7.3f} {row['tflop_per_s']:8.1f} {row['tb_per_s']:6.2f} "
                      f"{floor_ms:8.3f} {row['times_floor']:7.1f} | {peer_txt}")
    kernels = {}
    if args.kernels:
        for q in CHUNKS:
            kt = kernel_times(torch, 4, 4096, q)
            kernels[q] = kt
            print_kernel_us(f"kernels, b 4 x l 4096, Q {q}, forward+backward (us per call, unfused allocations "
                            f"included):", kt)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "cuda_ssd", "device": torch.cuda.get_device_name(), "checks": checks,
                       "copy_ceiling_tb_per_s": COPY_CEILING_TBS, "bf16_ceiling_tflop_per_s": BF16_CEILING_TFLOPS,
                       "rows": rows, "kernels_us": kernels}, f, indent=2)
    return 0 if all(c["within_rule"] for c in checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""CUDA Mamba-1 selective scan at the 8B layer shape, forward and backward.

d_inner 8192, state 16, one group (B and C shared by all channels), z gate, D,
delta_bias and softplus on, as the Mamba-1 mixer calls it; b 4 × l 4096 tokens by
default (the peer row of PERFORMANCE.md: mamba_ssm's selective_scan_fn, 2.42 ms
forward, 12.1 ms forward + backward). bf16 activations, f32 A, D, delta_bias and
gradients of them. Timed with CUDA events (median after warm-up) on inputs made by
torch and handed over through DLPack. The bytes counted are those the op must move at
least once (forward: read u, delta, z, B, C, write y; backward: read u, delta, z, dy,
B, C, write du, ddelta, dz, dB, dC); achieved TB/s is set against the 4.07 TB/s of a
device copy. The scan is bound by its exponentials (b·l·d·n of them per pass), not by
bytes: the table also gives the state updates per second. Outputs are poisoned (NaN)
before timing and must come out finite. Prints a table; --json PATH writes the
numbers. Needs PyTorch and a GPU.
"""
from __future__ import annotations

import argparse
import json

import mambatron as mt
from gpu_timing import kernel_us, median_ms, print_kernel_us, profile_once, require_torch_cuda

COPY_CEILING_TBS = 4.07
PEER_MS = {"fwd": 2.42, "fwd+bwd": 12.1}  # selective_scan_fn, d 8192, n 16, b 4 × l 4096


def cases(torch, b, l, d, n, g):
    dev, bf, f32 = "cuda", torch.bfloat16, torch.float32
    D_ = mt.from_dlpack

    def act(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, device=dev, dtype=f32) * scale + shift).to(bf)

    u, z, dy = act(b, l, d), act(b, l, d), act(b, l, d)
    delta = act(b, l, d, scale=0.5, shift=-2.0)  # softplus of it: Δ around 0.1
    B, C = act(b, l, g, n), act(b, l, g, n)
    A = -torch.arange(1, n + 1, device=dev, dtype=f32).repeat(d, 1)  # S4D-real init
    Dp = torch.ones(d, device=dev, dtype=f32)
    bias = torch.randn(d, device=dev, dtype=f32) * 0.1
    y = torch.full_like(u, float("nan"))
    grads = [torch.full_like(u, float("nan")) for _ in range(3)]  # du, ddelta, dz
    dB, dC = torch.full_like(B, float("nan")), torch.full_like(C, float("nan"))
    dA, dD, dbias = torch.empty_like(A), torch.empty_like(Dp), torch.empty_like(bias)
    m = {k: D_(t) for k, t in dict(u=u, z=z, dy=dy, delta=delta, B=B, C=C, A=A, D=Dp, bias=bias, y=y, du=grads[0],
                                   ddelta=grads[1], dz=grads[2], dB=dB, dC=dC, dA=dA, dD=dD, dbias=dbias).items()}
    inputs = (m["u"], m["delta"], m["A"], m["B"], m["C"], m["D"], m["z"], m["bias"])
    N, NBC = b * l * d, b * l * g * n

    def fwd():
        mt.selective_scan_forward(*inputs, delta_softplus=True, out=m["y"])

    def bwd():
        mt.selective_scan_backward(m["dy"], *inputs, delta_softplus=True, du=m["du"], ddelta=m["ddelta"], dA=m["dA"],
                                   dB=m["dB"], dC=m["dC"], dD=m["dD"], dz=m["dz"], ddelta_bias=m["dbias"])

    def both():
        fwd()
        bwd()

    yield "fwd", fwd, (4 * N + 2 * NBC) * 2, (y,)
    yield "bwd", bwd, (7 * N + 4 * NBC) * 2, tuple(grads) + (dB, dC, dA)
    yield "fwd+bwd", both, (11 * N + 6 * NBC) * 2, (y,) + tuple(grads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--b", type=int, nargs="+", default=[4, 2])
    ap.add_argument("--l", type=int, default=4096)
    ap.add_argument("--d", type=int, default=8192)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--g", type=int, default=1)
    ap.add_argument("--kernels", action="store_true", help="also print each kernel's time at the first b")
    ap.add_argument("--profile", action="store_true",
                    help="only one forward+backward at the first b, for a profiler started with "
                         "--profile-from-start off (after warm-up)")
    args = ap.parse_args()
    torch = require_torch_cuda("bench_cuda_selective_scan")
    if torch is None:
        return 1
    torch.manual_seed(0)
    if args.profile:
        both = [fn for name, fn, _, _ in cases(torch, args.b[0], args.l, args.d, args.n, args.g) if name == "fwd+bwd"]
        profile_once(both[0], torch)
        return 0
    rows = []
    print(f"selective scan, d {args.d}, n {args.n}, g {args.g}, l {args.l}, bf16 activations; "
          f"ceiling {COPY_CEILING_TBS} TB/s (device copy)")
    print(f"{'b':>3} {'pass':<8} {'ms':>8} {'GB moved':>9} {'TB/s':>6} {'of ceiling':>10} {'Gupd/s':>8} "
          f"{'peer ms':>8} {'x peer':>7}")
    ok = True
    for b in args.b:
        updates = b * args.l * args.d * args.n
        for name, fn, nbytes, outs in cases(torch, b, args.l, args.d, args.n, args.g):
            ms = median_ms(fn, torch, args.reps, warmup=2)
            finite = all(bool(torch.isfinite(t).all()) for t in outs)
            ok &= finite
            tbs = nbytes / (ms * 1e-3) / 1e12
            peer = PEER_MS.get(name) if (b, args.l, args.d, args.n) == (4, 4096, 8192, 16) else None
            row = {"b": b, "pass": name, "ms": ms, "bytes": nbytes, "tb_per_s": tbs,
                   "fraction_of_copy": tbs / COPY_CEILING_TBS, "state_updates_per_s": updates / (ms * 1e-3),
                   "peer_ms": peer, "times_peer": ms / peer if peer else None, "finite": finite}
            rows.append(row)
            print(f"{b:>3} {name:<8} {ms:8.3f} {nbytes / 1e9:9.3f} {tbs:6.2f} {100 * row['fraction_of_copy']:9.1f}% "
                  f"{row['state_updates_per_s'] / 1e9:8.0f} {peer if peer else '':>8} "
                  f"{format(ms / peer, '.2f') if peer else '':>7}{'' if finite else '  NON-FINITE OUTPUT'}")
    kernels = {}
    if args.kernels:
        for name, fn, _, _ in cases(torch, args.b[0], args.l, args.d, args.n, args.g):
            if name != "fwd+bwd":
                kernels[name] = kernel_us(fn, torch, strip=("mambatron::cuda::scan::",))
                print_kernel_us(f"kernels, b {args.b[0]}, {name} (us per call):", kernels[name])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "cuda_selective_scan", "device": torch.cuda.get_device_name(), "l": args.l,
                       "d": args.d, "n": args.n, "g": args.g, "copy_ceiling_tb_per_s": COPY_CEILING_TBS,
                       "rows": rows, "kernels_us": kernels}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

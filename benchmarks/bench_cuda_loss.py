"""Linear + cross-entropy on CUDA beside PyTorch's linear + cross_entropy, in one run.

For each shape (bf16 h and w, f32 dw, i64 targets, the op's default chunk sizes) it
times the forward and the forward + backward (one backward call, which also returns
the loss) with CUDA events (median after warm-up), the backward once more with
chunk_size 1024 and the whole vocabulary in one chunk ("f+b 1024/V"), and the same for
torch.nn.functional.linear followed by cross_entropy on f32-upcast logits (autograd for
the backward; torch holds the whole [n, V] logits). TFLOP/s count 2·n·d·V per gemm pass
the math needs (forward 1, forward + backward 3); our backward executes one more pass
when the vocabulary takes several chunks (it recomputes each logits block). The gemms
alone (the same cuBLASLt calls on the same chunk shapes, through mt.gemm) give the
fraction of time spent outside them. Prints a table; --json PATH writes the numbers.
Needs a CUDA device and PyTorch.
"""
from __future__ import annotations

import argparse
import json

import mambatron as mt
from gpu_timing import median_ms, require_torch_cuda

SHAPES = [  # name, n tokens, d, V
    ("8B vocab", 8192, 4096, 256000),
    ("small", 4096, 1024, 32000),
]
CHUNK, VOCAB_CHUNK = 4096, 32768  # the defaults of LinearCrossEntropyOptions
ONE_CHUNK_ROWS = 1024  # rows per chunk for the variant with the whole vocabulary at once


def gemm_sequence(torch, h, w, backward: bool, chunk: int = CHUNK, vocab_chunk: int = VOCAB_CHUNK):
    """A callable running the op's gemms on its chunk shapes (no softmax work)."""
    D = mt.from_dlpack
    n, d = h.shape
    V = w.shape[0]
    C, VC = min(chunk, n), min(vocab_chunk, V) if vocab_chunk else V
    logits = torch.empty(C * VC, device="cuda", dtype=torch.float32)
    g = torch.empty(C * VC, device="cuda", dtype=torch.bfloat16).normal_(0, 1e-4)
    dhc = torch.empty(C, d, device="cuda", dtype=torch.float32)
    dw = torch.empty(V, d, device="cuda", dtype=torch.float32)
    calls = []  # (a, b, out, trans_a, trans_b, beta)
    for r0 in range(0, n, C):
        rc = min(C, n - r0)
        H = D(h[r0:r0 + rc])
        for v0 in range(0, V, VC):
            vc = min(VC, V - v0)
            calls.append((H, D(w[v0:v0 + vc]), D(logits[:rc * vc].view(rc, vc)), False, True, 0.0))
        if not backward:
            continue
        for v0 in range(0, V, VC):
            vc = min(VC, V - v0)
            W, G = D(w[v0:v0 + vc]), D(g[:rc * vc].view(rc, vc))
            if VC < V:
                calls.append((H, W, D(logits[:rc * vc].view(rc, vc)), False, True, 0.0))
            calls.append((G, W, D(dhc[:rc]), False, False, 1.0 if v0 else 0.0))
            calls.append((G, H, D(dw[v0:v0 + vc]), True, False, 1.0 if r0 else 0.0))

    def run():
        for a, b, out, ta, tb, beta in calls:
            mt.gemm(a, b, out=out, trans_a=ta, trans_b=tb, beta=beta)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch = require_torch_cuda("bench_cuda_loss")
    if torch is None:
        return 1
    F = torch.nn.functional
    torch.manual_seed(0)
    D = mt.from_dlpack
    rows = []
    print(f"{'shape':<9} {'n':>5} {'d':>5} {'V':>6} {'pass':<12} | {'ours ms':>8} {'TFLOP/s':>7} {'gemm ms':>8} "
          f"{'outside':>7} | {'torch ms':>8} {'TFLOP/s':>7} | {'speedup':>7} {'|Δloss|':>8}")
    for name, n, d, V in SHAPES:
        h = torch.randn(n, d, device="cuda", dtype=torch.float32).to(torch.bfloat16)
        w = (torch.randn(V, d, device="cuda", dtype=torch.float32) * (2.0 / d ** 0.5)).to(torch.bfloat16)
        t = torch.randint(0, V, (n,), device="cuda", dtype=torch.int64)
        dh = torch.empty_like(h)
        dw = torch.empty(V, d, device="cuda", dtype=torch.float32)
        mh, mw, mtg, mdh, mdw = D(h), D(w), D(t), D(dh), D(dw)
        flop = 2.0 * n * d * V

        def ours_fwd():
            return mt.linear_cross_entropy_forward(mh, mw, mtg)

        def ours_bwd():
            return mt.linear_cross_entropy_backward(mh, mw, mtg, dh=mdh, dw=mdw)[0]

        # One vocabulary chunk with fewer rows: no recomputed logits, C·V f32 scratch.
        def ours_bwd_one_vocab_chunk():
            return mt.linear_cross_entropy_backward(mh, mw, mtg, dh=mdh, dw=mdw, chunk_size=ONE_CHUNK_ROWS,
                                                    vocab_chunk_size=0)[0]

        hg, wg = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()

        def torch_fwd():
            with torch.no_grad():
                return F.cross_entropy(F.linear(h, w).float(), t)

        def torch_bwd():
            hg.grad = wg.grad = None
            loss = F.cross_entropy(F.linear(hg, wg).float(), t)
            loss.backward()
            return loss

        loss_ours, loss_torch = ours_fwd(), float(torch_fwd())
        torch_ms = {}
        mt.reset_peak_memory_stats("cuda")
        base = mt.memory_allocated("cuda")
        ours_bwd()
        scratch_gib = (mt.max_memory_allocated("cuda") - base) / 2**30  # mambatron holds only the op's scratch
        for label, ours, theirs, passes, gemm_fn in (
                ("fwd", ours_fwd, torch_fwd, 1, gemm_sequence(torch, h, w, False)),
                ("fwd+bwd", ours_bwd, torch_bwd, 3, gemm_sequence(torch, h, w, True)),
                (f"f+b {ONE_CHUNK_ROWS}/V", ours_bwd_one_vocab_chunk, torch_bwd, 3,
                 gemm_sequence(torch, h, w, True, ONE_CHUNK_ROWS, 0))):
            ms = median_ms(ours, torch, args.reps)
            gemm_ms = median_ms(gemm_fn, torch, args.reps)
            if theirs not in torch_ms:
                torch_ms[theirs] = median_ms(theirs, torch, args.reps)
            tms = torch_ms[theirs]
            row = {"shape": name, "n": n, "d": d, "V": V, "pass": label, "ms": ms,
                   "tflops": passes * flop / (ms * 1e-3) / 1e12, "gemm_ms": gemm_ms,
                   "fraction_outside_gemms": max(0.0, 1.0 - gemm_ms / ms), "torch_ms": tms,
                   "torch_tflops": passes * flop / (tms * 1e-3) / 1e12, "speedup": tms / ms,
                   "loss": loss_ours, "torch_loss": loss_torch, "scratch_gib_fwd_bwd": scratch_gib}
            rows.append(row)
            print(f"{name:<9} {n:>5} {d:>5} {V:>6} {label:<12} | {ms:8.2f} {row['tflops']:7.0f} {gemm_ms:8.2f} "
                  f"{100 * row['fraction_outside_gemms']:6.1f}% | {tms:8.2f} {row['torch_tflops']:7.0f} | "
                  f"{row['speedup']:6.2f}x {abs(loss_ours - loss_torch):8.1e}")
        print(f"{'':<9} our scratch in forward + backward: {scratch_gib:.2f} GiB (dw f32 is the caller's)")
        torch.cuda.empty_cache()
    print(f"peak memory (torch allocator, incl. torch's logits): {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "cuda_loss", "device": torch.cuda.get_device_name(), "chunk_size": CHUNK,
                       "vocab_chunk_size": VOCAB_CHUNK, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

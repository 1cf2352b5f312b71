"""Dense CUDA ops (activations, norms, embedding, AdamW, gradient norm) at a large shape.

Each op is timed with CUDA events (median after warm-up) on random inputs made by torch
and handed over through DLPack; the achieved bandwidth counts the bytes the op must read
and write at least once, and is set against the 4.07 TB/s that a plain device copy
reaches on the H200 (PERFORMANCE.md). Prints a table; --json PATH writes the numbers.
Needs a CUDA device and PyTorch (for allocation and events only).
"""
from __future__ import annotations

import argparse
import json

import mambatron as mt
from gpu_timing import median_ms, require_torch_cuda

COPY_CEILING_TBS = 4.07



def cases(torch, rows, d, vocab):
    """(name, callable, bytes at least moved) for every op at [rows, d], bf16 activations."""
    dev, bf, f32 = "cuda", torch.bfloat16, torch.float32
    n = rows * d
    D = mt.from_dlpack

    def act(shape, scale=1.0):
        return (torch.randn(*shape, device=dev, dtype=f32) * scale).to(bf)

    x, g = act((rows, d), 2.0), act((rows, d))
    out, dx = torch.empty_like(x), torch.empty_like(x)
    mx, mg, mo, mdx = D(x), D(g), D(out), D(dx)
    w = torch.randn(d, device=dev, dtype=f32)
    b = torch.randn(d, device=dev, dtype=f32)
    dw, db = torch.empty_like(w), torch.empty_like(w)
    mw, mb, mdw, mdb = D(w), D(b), D(dw), D(db)
    rstd = torch.empty(rows, device=dev, dtype=f32)
    mean = torch.empty(rows, device=dev, dtype=f32)
    mr, mm = D(rstd), D(mean)
    yield "gelu fwd", lambda: mt.gelu_forward(mx, out=mo), 2 * n * 2
    yield "gelu bwd", lambda: mt.gelu_backward(mg, mx, dx=mdx), 3 * n * 2
    yield "silu fwd", lambda: mt.silu_forward(mx, out=mo), 2 * n * 2
    yield "silu bwd", lambda: mt.silu_backward(mg, mx, dx=mdx), 3 * n * 2
    yield "squared_relu fwd", lambda: mt.squared_relu_forward(mx, out=mo), 2 * n * 2
    yield "squared_relu bwd", lambda: mt.squared_relu_backward(mg, mx, dx=mdx), 3 * n * 2
    yield "add (residual)", lambda: mt.add(mx, mg, out=mo), 3 * n * 2
    yield "mul", lambda: mt.mul(mx, mg, out=mo), 3 * n * 2

    # SwiGLU: x [rows, d] read as [rows, 2f] with f = d / 2, so out has n / 2 elements.
    half = torch.empty(rows, d // 2, device=dev, dtype=bf)
    ghalf = act((rows, d // 2))
    mhalf, mghalf = D(half), D(ghalf)
    yield "swiglu fwd", lambda: mt.swiglu_forward(mx, out=mhalf), (n + n // 2) * 2
    yield "swiglu bwd", lambda: mt.swiglu_backward(mghalf, mx, dx=mdx), (n // 2 + 2 * n) * 2

    yield "rmsnorm fwd", lambda: mt.rmsnorm_forward(mx, mw, 1e-5, out=mo, rstd=mr), 2 * n * 2
    mt.rmsnorm_forward(mx, mw, 1e-5, out=mo, rstd=mr)
    yield "rmsnorm bwd", lambda: mt.rmsnorm_backward(mg, mx, mw, mr, dx=mdx, dweight=mdw), 3 * n * 2
    # The model's form: the residual stream's gradient added into dx in the same pass.
    yield "rmsnorm bwd + residual", (lambda: mt.rmsnorm_backward(mg, mx, mw, mr, dx=mdx, dweight=mdw,
                                                                 dresidual=mdx)), 4 * n * 2
    yield "layernorm1p fwd", lambda: mt.layernorm1p_forward(mx, mw, mb, 1e-5, out=mo, mean=mm, rstd=mr), 2 * n * 2
    mt.layernorm1p_forward(mx, mw, mb, 1e-5, out=mo, mean=mm, rstd=mr)
    yield "layernorm1p bwd", (lambda: mt.layernorm1p_backward(mg, mx, mw, mm, mr, dx=mdx, dgamma=mdw, dbeta=mdb)), 3 * n * 2

    groups = 8
    z = act((rows, d), 2.0)
    dz = torch.empty_like(z)
    mz, mdz = D(z), D(dz)
    grstd = torch.empty(rows, groups, device=dev, dtype=f32)
    mgr = D(grstd)
    yield "gated_rmsnorm fwd", lambda: mt.gated_rmsnorm_forward(mx, mz, mw, groups, 1e-5, out=mo, rstd=mgr), 3 * n * 2
    mt.gated_rmsnorm_forward(mx, mz, mw, groups, 1e-5, out=mo, rstd=mgr)
    yield "gated_rmsnorm bwd", (lambda: mt.gated_rmsnorm_backward(mg, mx, mz, mw, mgr, groups, dy=mdx, dz=mdz,
                                                                  dweight=mdw)), 5 * n * 2
    # The 8B models' groups: d_inner 8192 in 8 groups of 1024, the same tensors as [rows / 2, 2d].
    r2, d2 = rows // 2, 2 * d
    n2 = r2 * d2
    v2 = [D(t.view(-1)[:n2].view(r2, d2)) for t in (x, z, out, g, dx, dz)]
    w2 = torch.randn(d2, device=dev, dtype=f32)
    dw2 = torch.empty_like(w2)
    grstd2 = torch.empty(r2, groups, device=dev, dtype=f32)
    mw2, mdw2, mrstd2 = D(w2), D(dw2), D(grstd2)
    yield "gated_rmsnorm fwd, groups of 1024", (lambda: mt.gated_rmsnorm_forward(v2[0], v2[1], mw2, groups, 1e-5,
                                                                                 out=v2[2], rstd=mrstd2)), 3 * n2 * 2
    mt.gated_rmsnorm_forward(v2[0], v2[1], mw2, groups, 1e-5, out=v2[2], rstd=mrstd2)
    yield "gated_rmsnorm bwd, groups of 1024", (lambda: mt.gated_rmsnorm_backward(
        v2[3], v2[0], v2[1], mw2, mrstd2, groups, dy=v2[4], dz=v2[5], dweight=mdw2)), 5 * n2 * 2

    # Embedding: an f32 table, bf16 activations; rows tokens in one sequence.
    table = torch.randn(vocab, d, device=dev, dtype=f32)
    dtable = torch.empty_like(table)
    tokens = torch.randint(0, vocab, (1, rows), device=dev, dtype=torch.int64)
    emb = torch.empty(1, rows, d, device=dev, dtype=bf)
    gemb = act((1, rows, d))
    mtab, mdtab, mtok, memb, mgemb = D(table), D(dtable), D(tokens), D(emb), D(gemb)
    yield "embedding fwd", lambda: mt.embedding_forward(mtab, mtok, out=memb), n * 4 + n * 2
    yield "embedding bwd", lambda: mt.embedding_backward(mgemb, mtok, dweight=mdtab), n * 2 + vocab * d * 4

    # AdamW over n f32 parameters with a bf16 working copy, and the gradient norm (clipping
    # adds one elementwise scale, which repeated calls would not reach: the norm drops
    # below max_norm after the first).
    p = torch.randn(n, device=dev, dtype=f32)
    gr = torch.randn(n, device=dev, dtype=f32) * 1e-3
    m1, m2 = torch.zeros_like(p), torch.zeros_like(p)
    copy = torch.empty(n, device=dev, dtype=bf)
    mp, mgr2, mm1, mm2, mcopy = D(p), D(gr), D(m1), D(m2), D(copy)
    yield "adamw + bf16 copy", (lambda: mt.adamw_update(mp, mgr2, mm1, mm2, lr=1e-4, step=1, params_copy=mcopy)), n * (16 + 12 + 2)
    yield "grad_norm f32", lambda: mt.grad_norm([mgr2]), n * 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    torch = require_torch_cuda("bench_cuda_dense")
    if torch is None:
        return 1
    torch.manual_seed(0)
    rows = []
    print(f"[{args.rows} x {args.d}] bf16 activations, f32 parameters; ceiling {COPY_CEILING_TBS} TB/s (device copy)")
    print(f"{'op':<20} {'ms':>8} {'GB moved':>9} {'TB/s':>6} {'of ceiling':>10}")
    for name, fn, nbytes in cases(torch, args.rows, args.d, args.vocab):
        ms = median_ms(fn, torch, args.reps)
        tbs = nbytes / (ms * 1e-3) / 1e12
        row = {"op": name, "ms": ms, "bytes": nbytes, "tb_per_s": tbs, "fraction_of_copy": tbs / COPY_CEILING_TBS}
        rows.append(row)
        print(f"{name:<20} {ms:8.3f} {nbytes / 1e9:9.3f} {tbs:6.2f} {100 * row['fraction_of_copy']:9.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "cuda_dense", "device": torch.cuda.get_device_name(), "rows_x_d": [args.rows, args.d],
                       "vocab": args.vocab, "copy_ceiling_tb_per_s": COPY_CEILING_TBS, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CUDA attention: causal forward and forward+backward beside PyTorch's SDPA, and decode.

Causal attention at l = 2048, 8192 and 16384 with b·l = 16K tokens, 32 query heads of 128
(32 kv heads, then 8), bf16, timed with CUDA events (median after warm-up) for
mambatron with each attention engine it has here (the built-in kernels, and cuDNN's
fused attention where it loads) and for
torch.nn.functional.scaled_dot_product_attention(is_causal=True) on the same memory in
the same run, with PyTorch's own choice of kernel and then held to its cuDNN
fused-attention backend ("-" where cuDNN does not take the case). TFLOP/s counts the
causal half: forward 2·2·b·h·l²·p / 2, forward+backward 3.5 times that (backward = 2.5
forwards); GiB is the scratch each engine allocated beyond its inputs and outputs; an
engine that cannot take a case shows "-" there, with its reason printed above the row.
Decode: one query per sequence over a 32K-token KV cache; the achieved bandwidth counts
reading the cache once, set against a plain device-to-device copy measured in the same
run (bytes read + written) and against the H200's 4.07 TB/s (PERFORMANCE.md). Prints a
table; --json PATH writes the numbers. Needs a CUDA device and PyTorch.
"""
from __future__ import annotations

import argparse
import json
import time

import mambatron as mt
from gpu_timing import median_ms, require_torch_cuda

H200_COPY_TBS = 4.07


def copy_ceiling_tbs(torch, reps):
    """TB/s of a 1 GiB device-to-device copy, counting the bytes read and written."""
    src = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), torch, reps)
    return 2 * src.numel() / (ms * 1e-3) / 1e12


def engines():
    """The attention engines this build and machine can run."""
    return ["builtin"] + (["cudnn"] if mt.cudnn_version() else [])


def attention_rows(torch, tokens, lens, hq, kv_heads, p, reps):
    dev, bf = "cuda", torch.bfloat16
    F = torch.nn.functional
    D = mt.from_dlpack
    for l in lens:
        b = max(1, tokens // l)
        for hkv in kv_heads:
            q = torch.randn(b, l, hq, p, device=dev, dtype=bf)
            k = torch.randn(b, l, hkv, p, device=dev, dtype=bf)
            v = torch.randn(b, l, hkv, p, device=dev, dtype=bf)
            dout = torch.randn(b, l, hq, p, device=dev, dtype=bf)
            out, lse = torch.empty_like(q), torch.empty(b, hq, l, device=dev, dtype=torch.float32)
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            mq, mk, mv, mo, ml, mdo = D(q), D(k), D(v), D(out), D(lse), D(dout)
            mdq, mdk, mdv = D(dq), D(dk), D(dv)

            def fwd():
                mt.attention_forward(mq, mk, mv, out=mo, lse=ml)

            def fwd_bwd():
                fwd()
                mt.attention_backward(mdo, mq, mk, mv, mo, ml, dq=mdq, dk=mdk, dv=mdv)

            # SDPA takes [b, h, l, p]: the same memory seen through a transpose.
            tq, tk, tv = (t.transpose(1, 2) for t in (q, k, v))
            gqa = hkv != hq

            def sdpa():
                with torch.no_grad():
                    F.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=gqa)

            tqg, tkg, tvg = (t.detach().clone().requires_grad_(True) for t in (tq, tk, tv))
            tdo = dout.transpose(1, 2)

            def sdpa_fwd_bwd():
                o = F.scaled_dot_product_attention(tqg, tkg, tvg, is_causal=True, enable_gqa=gqa)
                o.backward(tdo)

            flops = 2 * 2 * b * hq * l * l * p / 2
            for name, fn, ref, fl in (("fwd", fwd, sdpa, flops), ("fwd+bwd", fwd_bwd, sdpa_fwd_bwd, 3.5 * flops)):
                ref_ms = median_ms(ref, torch, reps)
                cudnn_ms = cudnn_median_ms(torch, ref, reps)
                row = {"case": f"{name} b={b} l={l} hq={hq} hkv={hkv} p={p}", "pass": name, "b": b, "l": l,
                       "hq": hq, "hkv": hkv, "p": p, "sdpa_ms": ref_ms, "sdpa_tflops": fl / (ref_ms * 1e-3) / 1e12,
                       "sdpa_cudnn_ms": cudnn_ms,
                       "sdpa_cudnn_tflops": None if cudnn_ms is None else fl / (cudnn_ms * 1e-3) / 1e12}
                for engine in engines():
                    mt.set_attention_engine(engine)
                    mt.reset_peak_memory_stats()
                    base = mt.memory_allocated()
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    try:
                        fn()  # the first call of a shape: cuDNN builds its graphs here
                    except RuntimeError as e:  # the engine cannot take this case: say why, go on
                        print(f"  ({engine} does not run {name} b={b} l={l} hkv={hkv}: {str(e)[:160]})")
                        row[engine] = {"ms": None, "refused": str(e)}
                        continue
                    torch.cuda.synchronize()
                    first_ms = (time.perf_counter() - t0) * 1e3
                    ms = median_ms(fn, torch, reps)
                    row[engine] = {"ms": ms, "tflops": fl / (ms * 1e-3) / 1e12, "ratio": ref_ms / ms,
                                   "scratch_gib": (mt.max_memory_allocated() - base) / 2**30, "first_call_ms": first_ms}
                mt.set_attention_engine("auto")
                yield row


def cudnn_median_ms(torch, fn, reps):
    """`fn`'s median time with SDPA held to the cuDNN backend; None where cuDNN refuses the case."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return median_ms(fn, torch, reps)
    except (ImportError, RuntimeError) as e:  # no cuDNN, or a shape or option it does not take
        print(f"  (cuDNN attention not timed: {(str(e).splitlines() or [''])[0][:100]})")
        return None


def decode_rows(torch, context, batches, hq, hkv, p, reps, ceiling):
    dev, bf = "cuda", torch.bfloat16
    D = mt.from_dlpack
    for b in batches:
        kc = torch.randn(b, context, hkv, p, device=dev, dtype=bf)
        vc = torch.randn(b, context, hkv, p, device=dev, dtype=bf)
        lens = torch.full((b,), context, device=dev, dtype=torch.int32)
        q = torch.randn(b, hq, p, device=dev, dtype=bf)
        out = torch.empty_like(q)
        mq, mkc, mvc, ml, mo = D(q), D(kc), D(vc), D(lens), D(out)
        ms = median_ms(lambda: mt.attention_decode(mq, mkc, mvc, ml, out=mo), torch, reps)
        nbytes = 2 * b * context * hkv * p * 2
        tbs = nbytes / (ms * 1e-3) / 1e12
        yield {"case": f"decode b={b} ctx={context} hq={hq} hkv={hkv} p={p}", "b": b, "context": context, "hq": hq,
               "hkv": hkv, "p": p, "ms": ms, "bytes": nbytes, "tb_per_s": tbs, "fraction_of_copy": tbs / ceiling,
               "fraction_of_h200_copy": tbs / H200_COPY_TBS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--lens", type=int, nargs="+", default=[2048, 8192, 16384])
    ap.add_argument("--context", type=int, default=32768)
    args = ap.parse_args()
    torch = require_torch_cuda("bench_cuda_attention")
    if torch is None:
        return 1
    torch.manual_seed(0)
    names = engines()
    print(f"causal attention, bf16, b*l = {args.tokens} tokens; TFLOP/s of the causal half; "
          f"engines: {', '.join(names)} (cuDNN {mt.cudnn_version(reason=True)})")
    head = "".join(f" {e + ' ms':>11} {'TFLOP/s':>8} {'/SDPA':>6} {'GiB':>5}" for e in names)
    print(f"{'case':<40}{head} {'SDPA ms':>9} {'TFLOP/s':>8} {'SDPA-cuDNN':>10} {'TFLOP/s':>8}")
    attn = []
    for row in attention_rows(torch, args.tokens, args.lens, 32, [32, 8], 128, args.reps):
        attn.append(row)
        ours = "".join(f" {'-':>11} {'-':>8} {'-':>6} {'-':>5}" if row[e]["ms"] is None else
                       f" {row[e]['ms']:11.3f} {row[e]['tflops']:8.1f} {row[e]['ratio']:6.2f} "
                       f"{row[e]['scratch_gib']:5.2f}" for e in names)
        cudnn = ("          -        -" if row["sdpa_cudnn_ms"] is None
                 else f" {row['sdpa_cudnn_ms']:10.3f} {row['sdpa_cudnn_tflops']:8.1f}")
        print(f"{row['case']:<40}{ours} {row['sdpa_ms']:9.3f} {row['sdpa_tflops']:8.1f}{cudnn}")
    ceiling = copy_ceiling_tbs(torch, 20)
    print(f"decode, bf16 cache read once; device copy here {ceiling:.2f} TB/s (H200: {H200_COPY_TBS})")
    print(f"{'case':<44} {'ms':>9} {'GB read':>8} {'TB/s':>6} {'of copy':>8} {'of H200 copy':>12}")
    dec = []
    for row in decode_rows(torch, args.context, [1, 8], 32, 8, 128, max(args.reps, 20), ceiling):
        dec.append(row)
        print(f"{row['case']:<44} {row['ms']:9.3f} {row['bytes'] / 1e9:8.3f} {row['tb_per_s']:6.2f} "
              f"{100 * row['fraction_of_copy']:7.1f}% {100 * row['fraction_of_h200_copy']:11.1f}%")
    for e in names:
        first = [round(r[e]["first_call_ms"], 1) if r[e]["ms"] is not None else None for r in attn]
        print(f"{e}: first call of each case (graph building included), ms: {first}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "cuda_attention", "device": torch.cuda.get_device_name(), "tokens": args.tokens,
                       "cudnn_version": mt.cudnn_version(), "engines": names, "copy_tb_per_s": ceiling,
                       "h200_copy_tb_per_s": H200_COPY_TBS, "attention": attn, "decode": dec}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

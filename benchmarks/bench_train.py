"""Training throughput on the GPU: tokens/s, model FLOP/s utilisation (MFU) and peak
memory of whole presets, bf16 mixed precision (MODELS.md §3), random tokens.

FLOPs per token follow PaLM's count: 6·N (N = parameters outside the embedding
lookup) + 12·layers_att·heads·head_dim·seq_len for attention. MFU is against the
H200's nominal dense bf16 peak (989 TFLOP/s); the measured gemm ceiling
(PERFORMANCE.md, 757 TFLOP/s) is shown beside it.

    python benchmarks/bench_train.py [--presets transformer-130m,...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import mambatron as mt

NOMINAL_TFLOPS, MEASURED_TFLOPS = 989.0, 757.0
DEFAULT = ["transformer-130m", "transformer-370m", "transformer-1.3b", "hybrid-130m", "mamba2-130m"]


def flops_per_token(cfg: mt.ModelConfig, params: int, seq_len: int) -> float:
    d = cfg.to_dict()
    embedding = d["vocab_size"] * d["d_model"]
    att = d["attention"]
    layers_att = d["pattern"].count("*")
    heads, head_dim = att["num_heads"], att["head_dim"] or d["d_model"] // att["num_heads"]
    return 6.0 * (params - embedding) + 12.0 * layers_att * heads * head_dim * seq_len


def bench(preset: str, seq_len: int, micro_batch: int, steps: int, recompute: bool = False) -> dict:
    cfg = mt.get_preset(preset)
    model = mt.Model(cfg, dtype="bf16", device="cuda:0")
    model.init(0)
    model.recompute = recompute
    trainer = mt.Trainer(model, micro_batch=micro_batch, lr=1e-4, warmup_steps=0, decay_steps=10 * steps)
    rng = np.random.default_rng(0)
    vocab = cfg.to_dict()["vocab_size"]
    batches = [rng.integers(0, vocab, size=(micro_batch, seq_len + 1), dtype=np.int32) for _ in range(4)]
    for i in range(2):  # warm-up: workspaces, gemm heuristics
        trainer.step([batches[i % 4]])
    mt.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = []
    for i in range(steps):
        losses.append(trainer.step([batches[i % 4]])["loss"])  # returns the loss: the step has finished
    dt = (time.perf_counter() - t0) / steps
    tokens = micro_batch * seq_len
    fpt = flops_per_token(cfg, model.num_parameters(), seq_len)
    tflops = fpt * tokens / dt / 1e12
    return {"preset": preset, "recompute": recompute, "parameters": model.num_parameters(), "seq_len": seq_len,
            "micro_batch": micro_batch,
            "step_ms": dt * 1e3, "tokens_per_s": tokens / dt, "model_tflops": tflops,
            "mfu": tflops / NOMINAL_TFLOPS, "of_measured_gemm": tflops / MEASURED_TFLOPS,
            "peak_memory_gib": mt.max_memory_allocated() / 2**30, "loss": losses[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(DEFAULT))
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per step (micro_batch = tokens / seq_len)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--recompute", action="store_true",
                    help="activation recomputation (model TFLOP/s and MFU still count 6N per token, not the recompute)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not mt.cuda_available():
        print("bench_train: needs a CUDA device", file=sys.stderr)
        return 1
    rows, failed = [], 0
    print(f"{'preset':<18}{'params':>14}{'step ms':>10}{'tokens/s':>12}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'of gemm':>9}{'peak GiB':>10}")
    for p in args.presets.split(","):
        try:
            r = bench(p, args.seq_len, max(1, args.tokens // args.seq_len), args.steps, args.recompute)
        except Exception as e:  # report and go on with the next preset
            print(f"{p:<18} failed: {type(e).__name__}: {str(e).splitlines()[0]}")
            failed += 1
            continue
        rows.append(r)
        print(f"{p:<18}{r['parameters']:>14,}{r['step_ms']:>10.1f}{r['tokens_per_s']:>12,.0f}"
              f"{r['model_tflops']:>9.1f}{r['mfu']:>7.1%}{r['of_measured_gemm']:>9.1%}{r['peak_memory_gib']:>10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "failed": failed}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

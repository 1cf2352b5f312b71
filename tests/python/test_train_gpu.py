"""Training on the GPU (MODELS.md §3 mixed precision): a tiny Transformer trained 200
steps in bf16 on the GPU follows the same run in f32 on the CPU (same init, same
batches), and two GPU runs of the same seed give bitwise-identical losses."""
import json
import os

import numpy as np
import pytest

import mambatron as mt
from mambatron.train import TrainArgs, train

pytestmark = pytest.mark.gpu

TINY = ["d_model=64", "mlp.ffn_hidden=128", "attention.num_heads=4", "attention.num_kv_heads=2",
        "attention.head_dim=16", "mamba2.head_dim=16", "mamba2.n_groups=1", "mamba2.d_state=16",
        "mamba1.d_state=8"]

# bf16 rounds each activation and weight read to 8 significant bits (2^-9 ≈ 0.2%
# relative); over 200 steps the two runs must stay within 3% of each other in every
# 20-step window's mean loss, and end within 3% in held-out loss.
WINDOW, REL_TOL = 20, 0.03


def run(dataset, out, device, dtype, model="tiny-transformer", steps=200):
    args = TrainArgs(model=model, set=TINY, data=dataset, seq_len=64, micro_batch=8, steps=steps, lr=3e-3,
                     min_lr=3e-4, warmup=20, eval_every=0, eval_batches=4, eval_fraction=0.1, out=str(out),
                     progress=False, plot=False, sample_tokens=0, seed=21, device=device, dtype=dtype,
                     log=["jsonl"])
    summary = train(args)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return summary, rows


def window_means(losses):
    return np.asarray(losses).reshape(-1, WINDOW).mean(axis=1)


def test_bf16_gpu_follows_f32_cpu_for_200_steps(dataset, tmp_path):
    gpu, gpu_rows = run(dataset, tmp_path / "gpu", "cuda:0", "bf16")
    cpu, cpu_rows = run(dataset, tmp_path / "cpu", "cpu", "f32")
    assert str(gpu["device"]).startswith("cuda") and gpu["dtype"] == "bf16"
    g = window_means([r["loss"] for r in gpu_rows])
    c = window_means([r["loss"] for r in cpu_rows])
    rel = np.abs(g - c) / c
    print("window means gpu", np.round(g, 4), "cpu", np.round(c, 4), "max rel", rel.max())
    assert g[-1] < g[0] - 1.0  # it learned
    assert rel.max() <= REL_TOL, (g, c)
    assert abs(gpu["eval_loss"] - cpu["eval_loss"]) <= REL_TOL * cpu["eval_loss"]


@pytest.mark.parametrize("model", ["tiny-transformer", "tiny-hybrid"])
def test_two_gpu_runs_are_bitwise_identical(dataset, tmp_path, model):
    _, a = run(dataset, tmp_path / "a", "cuda:0", "bf16", model=model, steps=30)
    _, b = run(dataset, tmp_path / "b", "cuda:0", "bf16", model=model, steps=30)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]

"""Training from Python: loss goes down, checkpoints resume bitwise (in process and after
a SIGKILL), checkpoint files are safetensors, saves are atomic, and the CLI."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mambatron as mt
from mambatron import train_checkpoint
from mambatron.cli import main
from mambatron.train import TrainArgs, train

TINY = ["d_model=32", "mlp.ffn_hidden=64", "attention.num_heads=2", "attention.num_kv_heads=1",
        "attention.head_dim=16", "mamba2.head_dim=16", "mamba2.n_groups=1", "mamba2.d_state=8", "mamba1.d_state=4"]


def args_for(dataset, out, **kw):
    base = dict(model="tiny-hybrid", set=TINY, data=dataset, seq_len=32, micro_batch=4, grad_accum=2, steps=8,
                lr=1e-2, min_lr=1e-3, warmup=2, eval_every=4, eval_batches=2, eval_fraction=0.1, out=str(out),
                progress=False, plot=False, sample_tokens=0, seed=11)
    base.update(kw)
    return TrainArgs(**base)


def read_rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_tensors(out):
    ckpt = train_checkpoint.find_latest(str(out))
    params = {k: v.numpy().copy() for k, v in mt.load_safetensors(os.path.join(ckpt, "model.safetensors")).items()}
    opt = {k: v.numpy().copy() for k, v in mt.load_safetensors(os.path.join(ckpt, "optimizer.safetensors")).items()}
    return params, opt


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_learning_rate_matches_the_formulas():
    for t in range(0, 130, 3):
        want = 1e-3 * t / 10 if t <= 10 else 1e-4 + 0.9e-3 * 0.5 * (1 + np.cos(np.pi * (t - 10) / 90))
        if t > 100:
            want = 1e-4
        got = mt.learning_rate(t, schedule="cosine", max_lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=100)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-18)
    with pytest.raises(ValueError, match="wsd_decay_steps"):
        mt.learning_rate(5, schedule="wsd", decay_steps=10)


def test_a_few_steps_lower_the_loss(dataset, tmp_path):
    s = train(args_for(dataset, tmp_path, steps=30, eval_every=0))
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 31))
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-5:]])
    assert last < first - 0.5
    assert s["eval_loss"] < s["unigram_entropy"] + 1.0  # sanity only: learned something about the text
    assert all(r["tokens"] == 2 * 4 * 32 for r in rows)
    assert rows[-1]["consumed_tokens"] == 30 * 256


def test_resume_continues_bitwise(dataset, tmp_path):
    straight, part = tmp_path / "straight", tmp_path / "part"
    train(args_for(dataset, straight, steps=8, decay_steps=8))
    train(args_for(dataset, part, steps=5, decay_steps=8))
    # A new run object, resumed: everything that shapes the trajectory comes from the checkpoint.
    train(args_for(dataset, part, steps=8, decay_steps=8, resume="auto", lr=5.0, seed=99))
    a, b = read_rows(straight), read_rows(part)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    pa, oa = final_tensors(straight)
    pb, ob = final_tensors(part)
    assert_bitwise(pa, pb)
    assert_bitwise(oa, ob)
    with open(os.path.join(train_checkpoint.find_latest(str(part)), "trainer_state.json")) as f:
        state = json.load(f)
    assert state["step"] == 8 and state["format_version"] == 1 and state["args"]["seed"] == 11
    assert state["consumed_tokens"] == 8 * 256


def test_recompute_trains_the_same_bits(dataset, tmp_path):
    kept, recomputed = tmp_path / "kept", tmp_path / "recomputed"
    train(args_for(dataset, kept, steps=4, eval_every=0))
    train(args_for(dataset, recomputed, steps=4, eval_every=0, recompute=True))
    a, b = read_rows(kept), read_rows(recomputed)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    assert_bitwise(final_tensors(kept)[0], final_tensors(recomputed)[0])


def test_killed_run_resumes_from_the_last_complete_checkpoint(dataset, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    steps = 150
    train(args_for(dataset, straight, steps=steps, eval_every=0))
    cmd = [sys.executable, "-m", "mambatron", "train", "tiny-hybrid", "--data", dataset, "--out", str(killed),
           "--steps", str(steps), "--save-every", "1", "--keep-last", "2", "--seq-len", "32", "--micro-batch", "4",
           "--grad-accum", "2", "--lr", "1e-2", "--min-lr", "1e-3", "--warmup", "2", "--eval-every", "0",
           "--eval-batches", "2", "--eval-fraction", "0.1", "--seed", "11", "--sample-tokens", "0", "--no-plot",
           "--no-progress"] + [a for s in TINY for a in ("--set", s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.time() + 60
    while not os.path.exists(killed / "latest") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.1))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    err = proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGKILL, err  # killed mid-run, not finished
    found = train_checkpoint.find_latest(str(killed))
    assert found is not None, err
    with open(os.path.join(found, "trainer_state.json")) as f:
        assert 1 <= json.load(f)["step"] < steps
    train(args_for(dataset, killed, steps=steps, eval_every=0, resume="auto"))
    assert [r["loss"] for r in read_rows(straight)] == [r["loss"] for r in read_rows(killed)]
    pa, oa = final_tensors(straight)
    pb, ob = final_tensors(killed)
    assert_bitwise(pa, pb)
    assert_bitwise(oa, ob)
    names = sorted(n for n in os.listdir(killed) if n.startswith("step_"))
    assert len(names) == 2 and names[-1] == f"step_{steps:08d}" and not any(".tmp" in n for n in names)


def test_checkpoint_loads_with_the_safetensors_package(dataset, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    train(args_for(dataset, tmp_path, steps=3, warmup=1))
    ckpt = train_checkpoint.find_latest(str(tmp_path))
    ours = mt.load_safetensors(os.path.join(ckpt, "model.safetensors"))
    theirs = st.load_file(os.path.join(ckpt, "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k].numpy(), theirs[k])
    opt = st.load_file(os.path.join(ckpt, "optimizer.safetensors"))
    n = sum(v.size for v in theirs.values())
    assert opt["exp_avg"].shape == (n,) and opt["exp_avg_sq"].dtype == np.float32
    assert (opt["exp_avg_sq"] >= 0).all()
    with open(os.path.join(ckpt, "config.json")) as f:
        assert mt.ModelConfig.from_dict(json.load(f)).d_model == 32


def tiny_trainer():
    """A tiny hybrid's config, model, trainer and one batch of tokens, for checkpoint tests."""
    cfg = mt.get_preset("tiny-hybrid").override(*TINY)
    model = mt.Model(cfg)
    model.init(0)
    trainer = mt.Trainer(model, micro_batch=2, decay_steps=10)
    return cfg, model, trainer, np.random.default_rng().integers(0, 256, size=(2, 9), dtype=np.int32)


@pytest.mark.parametrize("fail_after", ["config.json", "model.safetensors", "optimizer.safetensors",
                                        "trainer_state.json"])
def test_an_interrupted_save_leaves_no_folder(dataset, tmp_path, fail_after):
    cfg, model, trainer, tokens = tiny_trainer()
    trainer.step([tokens])
    first = train_checkpoint.save_checkpoint(str(tmp_path), model, trainer, cfg, {"args": {}})
    trainer.step([tokens])
    with pytest.raises(RuntimeError, match="simulated"):
        train_checkpoint.save_checkpoint(str(tmp_path), model, trainer, cfg, {"args": {}}, _fail_after=fail_after)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000001"]
    assert train_checkpoint.find_latest(str(tmp_path)) == first
    # The complete one still restores into fresh objects.
    m2 = mt.Model(cfg)
    t2 = mt.Trainer(m2, micro_batch=2, decay_steps=10)
    train_checkpoint.restore(t2, m2, train_checkpoint.load_checkpoint(first))
    assert t2.step_count == 1 and t2.optimizer.step_count == 1


def test_a_removal_cut_short_is_cleared_by_the_next_save(tmp_path):
    # A run killed while deleting an old checkpoint leaves either a set-aside ".old-" folder
    # or (before removals renamed first) a step folder without trainer_state.json; neither
    # counts as a checkpoint, and the next save clears both, so keep_last holds.
    cfg, model, trainer, tokens = tiny_trainer()
    saved = []
    for _ in range(3):
        trainer.step([tokens])
        saved.append(train_checkpoint.save_checkpoint(str(tmp_path), model, trainer, cfg, {"args": {}}))
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000002", "step_00000003"]
    os.remove(os.path.join(saved[1], "trainer_state.json"))  # step 2, half deleted in place
    aside = tmp_path / "step_00000001.old-abcd"
    os.makedirs(aside / "step_00000001")
    (aside / "step_00000001" / "model.safetensors").write_bytes(b"partial")
    assert train_checkpoint.find_latest(str(tmp_path)) == saved[2]
    assert [p for _, p in train_checkpoint.list_checkpoints(str(tmp_path))] == [saved[2]]
    trainer.step([tokens])
    train_checkpoint.save_checkpoint(str(tmp_path), model, trainer, cfg, {"args": {}}, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000003", "step_00000004"]


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--data", "--set", "--steps", "--resume", "--out", "--schedule", "--grad-accum", "--keep-last",
                "--eval-every", "--save-every", "--recompute", "PRESET_OR_CONFIG"):
        assert opt in out
    assert "(default:" in out


def test_cli_short_run(dataset, tmp_path, capsys):
    rc = main(["train", "tiny-hybrid", "--data", dataset, "--out", str(tmp_path), "--steps", "6", "--seq-len", "32",
               "--micro-batch", "4", "--eval-every", "3", "--eval-batches", "2", "--eval-fraction", "0.1",
               "--sample-tokens", "8", "--no-progress", "--warmup", "1"] + [a for s in TINY for a in ("--set", s)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "held-out loss" in out and "unigram entropy" in out and "sample" in out
    assert os.path.isfile(tmp_path / "loss.png") and os.path.getsize(tmp_path / "loss.png") > 100
    with open(tmp_path / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "metrics.csv") as f:
        assert len(f.read().strip().splitlines()) == 7  # header + 6 steps
    assert open(tmp_path / "latest").read().strip() == "step_00000006"


def test_large_checkpoints_are_sharded_and_load_back(tmp_path):
    cfg, model, trainer, tokens = tiny_trainer()
    trainer.step([tokens])
    path = train_checkpoint.save_checkpoint(str(tmp_path), model, trainer, cfg, {"args": {}},
                                            max_shard_bytes=16 << 10)
    files = sorted(os.listdir(path))
    shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in files and "model.safetensors" not in files
    m2 = mt.Model(cfg)
    t2 = mt.Trainer(m2, micro_batch=2, decay_steps=10)
    train_checkpoint.restore(t2, m2, train_checkpoint.load_checkpoint(path))
    for name, value in model.parameters().items():
        assert value.numpy().tobytes() == m2.parameters()[name].numpy().tobytes(), name
    assert mt.hf.load_model(tmp_path).num_parameters() == model.num_parameters()

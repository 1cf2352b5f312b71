"""Training runs: :class:`TrainArgs` and :func:`train`, which drives the native
:class:`mambatron.Trainer` (all math in C++) and does the bookkeeping around it:
data, progress, logs, held-out evaluation, checkpoints with exact resume, the loss
plot and a generated sample.

Without ``data`` a run trains on the default corpus (``mambatron.train_data``: the
Python standard library's sources, byte-tokenized). Resuming (``resume="auto"`` or a
folder) restores the model, the AdamW moments, the step and token counters and the
data loader's position, so the run continues bitwise as if never stopped; the
arguments that shape the trajectory are taken from the checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import _C
from .config import ModelConfig
from .model import Model
from .presets import get_preset
from .tokenizers import ByteTokenizer
from .train_checkpoint import find_latest, load_checkpoint, restore, save_checkpoint
from .train_data import default_corpus, unigram_entropy
from .train_report import MetricLogs, Progress, generate_sample, plot_losses


@dataclass
class TrainArgs:
    """Everything a run needs; the CLI's ``mambatron train`` options map one to one."""

    model: str = "tiny-hybrid"      #: preset name, config JSON file, or folder with config.json
    set: List[str] = field(default_factory=list)  #: config overrides "key=value" (ModelConfig.override)
    data: Optional[str] = None      #: dataset PREFIX (.bin/.idx); None: the default stdlib corpus
    append_eod: bool = True         #: the loader appends an EOD after each document
    eod_id: int = 0
    seq_len: int = 128
    micro_batch: int = 8
    grad_accum: int = 1
    steps: int = 350
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: Optional[int] = None    #: warmup steps (default: steps / 20, at most 100)
    schedule: str = "cosine"        #: constant | cosine | wsd
    decay_steps: Optional[int] = None  #: where the decay ends (default: steps)
    wsd_decay_steps: Optional[int] = None  #: WSD decay phase length (default: a fifth of decay_steps)
    wsd_decay: str = "linear"       #: linear | cosine
    clip: float = 1.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    use_seq_idx: bool = True        #: packed documents do not see each other
    recompute: bool = False         #: activation recomputation: less memory, about one more forward (same bits)
    eval_fraction: float = 0.05     #: documents held out for evaluation
    eval_every: int = 100           #: steps between held-out evaluations (0: only at the end)
    eval_batches: int = 8
    save_every: int = 0             #: steps between checkpoints (0: only at the end)
    keep_last: int = 2              #: checkpoints kept (0: all)
    out: Optional[str] = None       #: run folder (default: runs/NAME)
    resume: Optional[str] = None    #: "auto" (the run folder's latest) or a checkpoint/run folder
    seed: int = 1234                #: model init and data order
    device: str = "auto"            #: auto | cpu | cuda[:N]
    dtype: str = "auto"             #: auto (bf16 mixed precision on CUDA, f32 on the CPU) | f32 | f64 | bf16
    log: List[str] = field(default_factory=lambda: ["jsonl", "csv", "tensorboard"])
    progress: bool = True
    plot: bool = True
    sample_tokens: int = 160
    prompt: str = "def "
    corpus_bytes: int = 4 << 20     #: size budget of the default corpus

    def run_dir(self, config_name: str) -> str:
        return self.out or os.path.join("runs", config_name)


# Arguments that shape the trajectory; a resumed run takes them from its checkpoint.
TRAJECTORY_FIELDS = ("model", "set", "data", "append_eod", "eod_id", "seq_len", "micro_batch", "grad_accum", "lr",
                     "min_lr", "warmup", "schedule", "decay_steps", "wsd_decay_steps", "wsd_decay", "clip",
                     "weight_decay", "beta1", "beta2", "eps", "use_seq_idx", "eval_fraction", "seed", "dtype",
                     "corpus_bytes")


def load_config(args: TrainArgs) -> ModelConfig:
    """The model config of ``args.model`` (preset, JSON file or folder) with ``args.set`` applied."""
    cfg = ModelConfig.load(args.model) if os.path.exists(args.model) else get_preset(args.model)
    name = cfg.name or os.path.splitext(os.path.basename(os.path.normpath(args.model)))[0]
    cfg = cfg.override(*args.set) if args.set else cfg
    cfg.name = name
    return cfg


def _resume_path(args: TrainArgs, out_dir: str) -> Optional[str]:
    if args.resume is None:
        return None
    where = out_dir if args.resume == "auto" else args.resume
    if os.path.isfile(os.path.join(where, "trainer_state.json")):
        return where
    found = find_latest(where)
    if found is None and args.resume != "auto":
        raise ValueError(f"--resume {args.resume}: no complete checkpoint there")
    return found


def _pick_device(args: TrainArgs, notes: List[str]) -> str:
    if args.device != "auto":
        return args.device
    from . import best_device

    return best_device()


def compute_dtype(dtype: str, device: str) -> str:
    """``dtype`` with "auto" resolved: bf16 mixed precision on CUDA, f32 on the CPU."""
    if dtype != "auto":
        return dtype
    return "bf16" if str(device).startswith("cuda") else "f32"


def _build_model(cfg: ModelConfig, args: TrainArgs, device: str, notes: List[str]) -> Model:
    try:
        return Model(cfg, dtype=compute_dtype(args.dtype, device), device=device)
    except (ValueError, TypeError, RuntimeError) as e:
        if args.device != "auto" or device == "cpu":
            raise
        notes.append(f"the model does not run on {device} ({str(e).splitlines()[0]}); training on the CPU")
        return Model(cfg, dtype=compute_dtype(args.dtype, "cpu"), device="cpu")


def _schedule_kwargs(args: TrainArgs) -> Dict[str, Any]:
    decay = args.decay_steps if args.decay_steps is not None else args.steps
    warmup = args.warmup if args.warmup is not None else min(100, args.steps // 20)
    wsd = args.wsd_decay_steps if args.wsd_decay_steps is not None else max(1, decay // 5)
    return dict(lr=args.lr, min_lr=args.min_lr, warmup_steps=warmup, decay_steps=decay, schedule=args.schedule,
                wsd_decay_steps=wsd if args.schedule == "wsd" else 0, wsd_decay=args.wsd_decay)


def train(args: TrainArgs) -> Dict[str, Any]:
    """Runs (or resumes) a training run; returns a summary: losses, the unigram
    baseline, speed, time, and the paths of the checkpoint, logs, plot and sample."""
    t_start = time.perf_counter()
    notes: List[str] = []
    args = dataclasses.replace(args, set=list(args.set), log=list(args.log))
    cfg = load_config(args)
    out_dir = args.run_dir(cfg.name or "model")
    os.makedirs(out_dir, exist_ok=True)
    resume_from = _resume_path(args, out_dir)
    ckpt = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        saved = ckpt["state"]["args"]
        changed = [k for k in TRAJECTORY_FIELDS if k in saved and saved[k] != getattr(args, k)]
        args = dataclasses.replace(args, **{k: saved[k] for k in TRAJECTORY_FIELDS if k in saved})
        cfg = ModelConfig.from_dict(ckpt["config"])
        if changed:
            notes.append(f"resuming: {', '.join(changed)} taken from the checkpoint")
    progress = Progress(args.steps, ckpt["state"]["step"] if ckpt else 0, args.progress)
    say = progress.write

    # ---- data
    corpus = None
    if args.data is None:
        prefix, corpus = default_corpus(out_dir, progress=args.progress, max_bytes=args.corpus_bytes)
        say(f"data: Python standard library sources, {corpus['files']} files, {corpus['tokens']:,} byte tokens"
            f"{' (cached)' if corpus['reused'] else ''} -> {prefix}")
    else:
        prefix = args.data
    dataset = _C.IndexedDataset(prefix)
    loader_kw = dict(seed=args.seed, append_eod=args.append_eod, eod_id=args.eod_id)
    split = "train" if args.eval_fraction > 0 else "all"
    train_loader = _C.DataLoader(dataset, args.seq_len, shuffle=True, split=split, eval_fraction=args.eval_fraction,
                                 **loader_kw)
    eval_loader, eval_batches = None, 0
    if args.eval_fraction > 0:
        eval_loader = _C.DataLoader(dataset, args.seq_len, shuffle=False, split="eval",
                                    eval_fraction=args.eval_fraction, **loader_kw)
        eval_batches = min(args.eval_batches, eval_loader.num_samples // args.micro_batch)
        if eval_batches < args.eval_batches:
            notes.append(f"held-out split has {eval_loader.num_samples} samples: evaluating on {eval_batches} "
                         f"batches, not {args.eval_batches}")
    if train_loader.num_samples == 0:
        raise ValueError(f"{prefix}: the training split holds fewer than seq_len + 1 = {args.seq_len + 1} tokens")
    baseline = unigram_entropy(prefix, cfg.vocab_size, args.eval_fraction, args.eod_id, args.append_eod)

    # ---- model and trainer
    device = _pick_device(args, notes)
    model = _build_model(cfg, args, device, notes)
    model.init(args.seed)
    model.recompute = args.recompute
    trainer = _C.Trainer(model, micro_batch=args.micro_batch, grad_accum=args.grad_accum, clip=args.clip,
                         beta1=args.beta1, beta2=args.beta2, eps=args.eps, weight_decay=args.weight_decay,
                         use_seq_idx=args.use_seq_idx, **_schedule_kwargs(args))
    if ckpt is not None:
        saved_tokens = ckpt["state"].get("dataset", {}).get("tokens")
        if saved_tokens is not None and saved_tokens != dataset.num_tokens:
            notes.append(f"the dataset has {dataset.num_tokens:,} tokens, the checkpoint's had {saved_tokens:,}: "
                         f"the resumed run will not match an uninterrupted one")
        restore(trainer, model, ckpt)
        train_loader.load_state_dict(ckpt["state"]["data_loader"])
        say(f"resumed from {resume_from} at step {trainer.step_count}")
    start_step, start_tokens = trainer.step_count, trainer.consumed_tokens
    say(f"model: {cfg.name} ({model.num_parameters():,} parameters, {model.dtype}, {model.device}); "
        f"{args.micro_batch * args.grad_accum} x {args.seq_len} tokens per step, {args.steps} steps"
        f"{'; activations recomputed' if args.recompute else ''}; run folder {out_dir}")
    for n in notes:
        say(f"note: {n}")
    logs = MetricLogs(out_dir, args.log, start_step if ckpt else None)
    if logs.tb_note:
        notes.append(logs.tb_note)

    def state_dict() -> Dict[str, Any]:
        return {"data_loader": train_loader.state_dict(), "seed": args.seed, "args": dataclasses.asdict(args),
                "dataset": {"prefix": os.path.abspath(prefix), "tokens": dataset.num_tokens},
                "corpus": corpus, "unigram_entropy": baseline}

    # ---- the loop
    train_time, last_ckpt, eval_loss = 0.0, resume_from, None
    last = None
    try:
        for step in range(start_step + 1, args.steps + 1):
            t0 = time.perf_counter()
            st = trainer.step(train_loader)
            dt = time.perf_counter() - t0
            train_time += dt
            row = {"step": st["step"], "loss": st["loss"], "eval_loss": None, "grad_norm": st["grad_norm"],
                   "lr": st["lr"], "tokens": st["tokens"], "consumed_tokens": trainer.consumed_tokens,
                   "tokens_per_s": st["tokens"] / max(dt, 1e-9), "elapsed_s": time.perf_counter() - t_start,
                   "skipped": st["skipped"]}
            if eval_loader is not None and eval_batches > 0 and (
                    step == args.steps or (args.eval_every > 0 and step % args.eval_every == 0)):
                eval_loss = trainer.evaluate(eval_loader, eval_batches)
                row["eval_loss"] = eval_loss
                say(f"step {step}: held-out loss {eval_loss:.4f} (unigram entropy {baseline:.4f})")
            logs.log(row)
            last = row
            rate = (trainer.consumed_tokens - start_tokens) / max(train_time, 1e-9)
            progress.update(step, f"loss {st['loss']:.4f} lr {st['lr']:.2e} {rate:,.0f} tok/s",
                            final=step == args.steps)
            if step == args.steps or (args.save_every > 0 and step % args.save_every == 0):
                last_ckpt = save_checkpoint(out_dir, model, trainer, cfg, state_dict(), keep_last=args.keep_last)
    finally:
        progress.close()
        logs.close()

    summary: Dict[str, Any] = {
        "out": out_dir, "checkpoint": last_ckpt, "steps": args.steps, "start_step": start_step,
        "final_loss": last["loss"] if last else None, "eval_loss": eval_loss, "unigram_entropy": baseline,
        "parameters": model.num_parameters(), "device": str(model.device), "dtype": str(model.dtype),
        "tokens_per_s": (trainer.consumed_tokens - start_tokens) / max(train_time, 1e-9), "train_seconds": train_time, "notes": notes}
    # ---- plot and sample
    if args.plot and logs.rows:
        path = os.path.join(out_dir, "loss.png")
        how = plot_losses(logs.rows, path, f"{cfg.name}: {model.num_parameters():,} parameters", baseline)
        summary["plot"] = path
        if how != "matplotlib":
            notes.append("matplotlib is not installed: loss.png is a plain plot without labels "
                         "(blue: training loss, orange: held-out loss, gray: unigram entropy)")
    if args.sample_tokens > 0 and cfg.vocab_size == 256:
        tok = ByteTokenizer()
        prompt = [int(i) for i in tok.encode(args.prompt)] or [args.eod_id]
        ids = generate_sample(model, prompt, args.sample_tokens)
        summary["sample"] = args.prompt + tok.decode(ids)
        with open(os.path.join(out_dir, "sample.txt"), "w", encoding="utf-8") as f:
            f.write(summary["sample"] + "\n")
    elif args.sample_tokens > 0:
        notes.append("no sample: the byte prompt needs a vocabulary of 256 (give a tokenizer-aware generator)")
    summary["seconds"] = time.perf_counter() - t_start
    return summary


def format_summary(s: Dict[str, Any]) -> str:
    """The closing lines ``mambatron train`` prints."""
    lines = [f"trained steps {s['start_step'] + 1}..{s['steps']} on {s['device']} in {s['train_seconds']:.1f} s "
             f"({s['tokens_per_s']:,.0f} tokens/s; {s['seconds']:.1f} s in all)"]
    if s.get("final_loss") is not None:
        lines.append(f"final training loss {s['final_loss']:.4f}")
    if s.get("eval_loss") is not None:
        gain = s["unigram_entropy"] - s["eval_loss"]
        lines.append(f"held-out loss {s['eval_loss']:.4f} nats/token ({s['eval_loss'] / math.log(2):.3f} bits) vs "
                     f"unigram entropy {s['unigram_entropy']:.4f} of the training split ({gain:+.4f} better)")
    if s.get("checkpoint"):
        lines.append(f"checkpoint {s['checkpoint']}")
    if s.get("plot"):
        lines.append(f"loss curve {s['plot']}")
    if s.get("sample") is not None:
        lines.append(f"sample (greedy):\n{s['sample']}")
    for n in s.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)

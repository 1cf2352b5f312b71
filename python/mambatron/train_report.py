"""What a training run shows and leaves behind: the progress bar, the metric logs
(JSONL and CSV always, TensorBoard when installed), the loss-curve PNG and a sample."""
from __future__ import annotations

import csv
import json
import math
import os
import struct
import sys
import time
import zlib
from typing import Any, Dict, List, Optional

CSV_FIELDS = ["step", "loss", "eval_loss", "grad_norm", "lr", "tokens", "consumed_tokens", "tokens_per_s",
              "elapsed_s", "skipped"]


class Progress:
    """tqdm when installed, else one status line on stderr redrawn at most twice a second."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.enabled, self.bar, self.last = total, enabled, None, 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, step: int, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(text, refresh=final)
        elif final or time.perf_counter() - self.last > 0.5:
            self.last = time.perf_counter()
            width = len(str(self.total))
            print(f"\rstep {step:>{width}}/{self.total} {text}", end="\n" if final else "", file=sys.stderr,
                  flush=True)

    def write(self, text: str) -> None:
        """A message above the bar."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(("\n" if self.enabled and self.last else "") + text, file=sys.stderr, flush=True)
            self.last = 0.0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricLogs:
    """metrics.jsonl and metrics.csv in the run folder (and TensorBoard events when
    ``torch.utils.tensorboard`` or ``tensorboardX`` is installed). On resume, rows after
    the resumed step (written by the interrupted run) are dropped first."""

    def __init__(self, out_dir: str, formats: List[str], resume_step: Optional[int]):
        self.formats = set(formats)
        self.jsonl = os.path.join(out_dir, "metrics.jsonl")
        self.csv = os.path.join(out_dir, "metrics.csv")
        self.rows: List[Dict[str, Any]] = []
        if resume_step is not None and os.path.exists(self.jsonl):
            with open(self.jsonl, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a line cut off by the crash
                    if row.get("step", 0) <= resume_step:
                        self.rows.append(row)
        self._rewrite()
        self.tb = None
        self.tb_note = None
        if "tensorboard" in self.formats:
            writer = None
            try:
                from torch.utils.tensorboard import SummaryWriter as writer
            except ImportError:
                try:
                    from tensorboardX import SummaryWriter as writer
                except ImportError:
                    self.tb_note = "TensorBoard logs skipped (install tensorboard with torch, or tensorboardX)"
            if writer is not None:
                self.tb = writer(os.path.join(out_dir, "tensorboard"))

    def _rewrite(self) -> None:
        if "jsonl" in self.formats:
            with open(self.jsonl, "w", encoding="utf-8") as f:
                for row in self.rows:
                    f.write(json.dumps(row) + "\n")
        if "csv" in self.formats:
            with open(self.csv, "w", encoding="utf-8", newline="") as f:
                w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.rows)

    def log(self, row: Dict[str, Any]) -> None:
        self.rows.append(row)
        if "jsonl" in self.formats:
            with open(self.jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if "csv" in self.formats:
            with open(self.csv, "a", encoding="utf-8", newline="") as f:
                csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for key in ("loss", "eval_loss", "grad_norm", "lr", "tokens_per_s"):
                if row.get(key) is not None:
                    self.tb.add_scalar(f"train/{key}" if key != "eval_loss" else "eval/loss", row[key], row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_losses(rows: List[Dict[str, Any]], path: str, title: str, baseline: Optional[float] = None) -> str:
    """Writes the loss curve (training loss per step, held-out loss where measured, the
    unigram baseline as a line) to ``path``; returns how: 'matplotlib' or 'builtin'
    (a plain raster plot without text, when matplotlib is not installed)."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and math.isfinite(r["loss"])]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _raster_plot(train, evals, baseline, path)
        return "builtin"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), lw=1, color="tab:blue", label="training loss")
    if evals:
        ax.plot(*zip(*evals), "o-", color="tab:orange", label="held-out loss")
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="gray", label=f"unigram entropy {baseline:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def _raster_plot(train, evals, baseline, path: str, w: int = 640, h: int = 400) -> None:
    """A dependency-free PNG: white canvas, axes box, training loss in blue, held-out
    points in orange, the baseline in gray."""
    img = bytearray(b"\xff" * (w * h * 3))
    ys = [y for _, y in train + evals] + ([baseline] if baseline is not None else [])
    xs = [x for x, _ in train + evals]
    if not ys:
        ys, xs = [0.0, 1.0], [0, 1]
    x0, x1, y0, y1 = min(xs), max(max(xs), min(xs) + 1), min(ys), max(max(ys), min(ys) + 1e-9)
    m = 30

    def px(x, y):
        return (m + int((x - x0) / (x1 - x0) * (w - 2 * m)), h - m - int((y - y0) / (y1 - y0) * (h - 2 * m)))

    def dot(x, y, c, r=0):
        for dx in range(-r, r + 1):
            for dy in range(-r, r + 1):
                if 0 <= x + dx < w and 0 <= y + dy < h:
                    i = ((y + dy) * w + x + dx) * 3
                    img[i:i + 3] = bytes(c)

    def line(a, b, c):
        n = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for k in range(n + 1):
            dot(a[0] + (b[0] - a[0]) * k // n, a[1] + (b[1] - a[1]) * k // n, c)

    for a, b in (((m, m), (w - m, m)), ((w - m, m), (w - m, h - m)), ((w - m, h - m), (m, h - m)), ((m, h - m), (m, m))):
        line(a, b, (0, 0, 0))
    if baseline is not None:
        line(px(x0, baseline), px(x1, baseline), (150, 150, 150))
    for a, b in zip(train, train[1:]):
        line(px(*a), px(*b), (31, 119, 180))
    for p in evals:
        dot(*px(*p), (255, 127, 14), r=3)
    raw = b"".join(b"\x00" + bytes(img[r * w * 3:(r + 1) * w * 3]) for r in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def generate_sample(model, prompt_ids: List[int], max_new_tokens: int) -> List[int]:
    """Greedy continuation of one prompt (the closing sample of a training run)."""
    from .generate import generate

    return list(generate(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=0.0))

"""Running the synthetic tasks on a model: greedy generation, scoring, JSON, a plot."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from .tasks import Task, get_task


def evaluate_task(model, task: Union[str, Task], n: int = 100, seed: int = 0, *, lengths: Optional[Sequence[int]] = None,
                  batch_size: int = 16, keep_predictions: bool = False, **size) -> Dict[str, Any]:
    """Accuracy of ``model`` on ``n`` seeded examples of ``task``, by greedy generation.

    Each prompt is continued by exactly as many tokens as its answer has (the answers of
    every task have a fixed length), and the generated text must equal the answer.
    ``lengths``: evaluate at each prompt length (the task's ``length`` size); the result
    then has one entry per length under ``"by_length"``. Returns a JSON-ready dict.
    """
    from ..generate import generate

    task = get_task(task) if isinstance(task, str) else task
    if lengths:
        runs = [evaluate_task(model, task, n, seed, batch_size=batch_size, keep_predictions=keep_predictions,
                              **{**size, "length": int(L)}) for L in lengths]
        return {"task": task.name, "n": n, "seed": seed, "size": size, "lengths": [int(L) for L in lengths],
                "accuracy": [r["accuracy"] for r in runs], "by_length": runs}
    start = time.perf_counter()
    examples = task.make_examples(n, seed, **size)
    predictions: List[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        out = generate(model, [e.prompt_ids.tolist() for e in chunk], [len(e.answer_ids) for e in chunk],
                       temperature=0.0, stop_tokens=[])
        predictions += [bytes(int(t) & 0xFF for t in ids).decode("latin-1") for ids in out]
    answers = [e.answer for e in examples]
    result = {"task": task.name, "n": n, "seed": seed, "size": task.sizes(size),
              "accuracy": task.score(predictions, answers),
              "chance": sum(e.chance for e in examples) / max(len(examples), 1),
              "mean_length": sum(e.length for e in examples) / max(len(examples), 1),
              "max_length": max((e.length for e in examples), default=0),
              "seconds": time.perf_counter() - start}
    if keep_predictions:
        result["predictions"], result["answers"] = predictions, answers
    return result


def save_json(result: Dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


def plot_accuracy(results: Dict[str, Dict[str, Any]], path: str, title: Optional[str] = None) -> Optional[str]:
    """Accuracy against prompt length, one line per model: ``results`` maps a model's
    name to an :func:`evaluate_task` result made with ``lengths``. Writes ``path`` and
    returns it, or returns None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        xs = [run["mean_length"] for run in r["by_length"]]
        ax.plot(xs, r["accuracy"], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or next(iter(results.values()))["task"] if results else "")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

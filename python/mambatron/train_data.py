"""The default training corpus and its unigram baseline.

Every machine with Python has the standard library's own ``.py`` sources, so
``mambatron train`` without ``--data`` trains on them: the files under
``sysconfig.get_paths()['stdlib']`` (test suites and installed packages left out),
sorted by path, taken evenly spread through that order up to a byte budget, one
document per file, byte-tokenized (``mambatron.tokenizers.ByteTokenizer``, EOD = 0).
The dataset is prepared once under the run folder and reused while the file list is
unchanged.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sysconfig

import numpy as np

from . import data
from ._C import IndexedDataset

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def stdlib_files(max_bytes: int = 4 << 20, max_file_bytes: int = 100_000) -> list[str]:
    """The standard library's .py files chosen for the default corpus, in sorted order."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for n in names:
            path = os.path.join(dirpath, n)
            if n.endswith(".py") and 0 < os.path.getsize(path) <= max_file_bytes:
                found.append(path)
    found.sort(key=lambda p: os.path.relpath(p, root))
    if not found:
        raise ValueError(f"no Python sources found under {root}; give --data PREFIX")
    total = sum(os.path.getsize(p) for p in found)
    if total <= max_bytes:
        return found
    # An even spread through the sorted list (every k-th file), so that every part of
    # the library is represented, then cut at the budget.
    stride = max(1, math.ceil(total / max_bytes))
    chosen, size = [], 0
    for p in found[::stride]:
        if size + os.path.getsize(p) > max_bytes:
            break
        chosen.append(p)
        size += os.path.getsize(p)
    return chosen


def default_corpus(out_dir: str, progress: bool = True, max_bytes: int = 4 << 20) -> tuple[str, dict]:
    """Prefix of the stdlib dataset under ``out_dir/data`` (prepared when missing or
    stale) and a summary: files, documents, tokens, and whether it was reused."""
    files = stdlib_files(max_bytes)
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p}\0{os.path.getsize(p)}\0{int(os.path.getmtime(p))}\n".encode())
    folder = os.path.join(out_dir, "data")
    prefix = os.path.join(folder, "python_stdlib")
    manifest = prefix + ".json"
    try:
        with open(manifest, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("sha256") == digest.hexdigest() and os.path.exists(prefix + ".idx"):
            IndexedDataset(prefix)  # validates the files
            return prefix, {**saved["summary"], "reused": True}
    except (OSError, ValueError, KeyError):
        pass
    os.makedirs(folder, exist_ok=True)
    res = data.prepare(files, prefix, tokenizer="byte", progress=progress)
    summary = {"source": sysconfig.get_paths()["stdlib"], "files": res["files"], "documents": res["documents"],
               "tokens": res["tokens"]}
    tmp = manifest + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"sha256": digest.hexdigest(), "summary": summary}, f, indent=2)
    os.replace(tmp, manifest)
    return prefix, {**summary, "reused": False}


def split_documents(num_documents: int, eval_fraction: float) -> int:
    """Documents in the training split: the DataLoader holds out the last
    ceil(eval_fraction · documents)."""
    return num_documents - (math.ceil(eval_fraction * num_documents) if eval_fraction > 0 else 0)


def unigram_entropy(prefix: str, vocab_size: int, eval_fraction: float = 0.0, eod_id: int = 0,
                    append_eod: bool = True) -> float:
    """Entropy in nats of the token frequencies of the training split (with one EOD per
    document when the loader appends them): the loss of the best model that ignores
    context, the baseline a trained model must beat."""
    ds = IndexedDataset(prefix)
    doc_index = ds.document_index()
    n_train = split_documents(ds.num_documents, eval_fraction)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for s in range(int(doc_index[n_train])):
        ids = np.asarray(ds.get(s)).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"{prefix}: token ids outside [0, {vocab_size}) in sequence {s}")
        counts += np.bincount(ids, minlength=vocab_size)
    if append_eod:
        counts[eod_id] += n_train
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())

"""Perplexity of a model on a (held-out) Megatron indexed dataset."""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np


def perplexity(model, prefix: str, seq_len: int = 512, batches: int = 8, eval_fraction: float = 0.0, *,
               batch_size: int = 4, tokenizer: Any = "byte", append_eod: bool = True, eod_id: int = 0,
               use_seq_idx: bool = True) -> Dict[str, Any]:
    """Mean loss of ``model`` over ``batches`` batches of ``batch_size`` samples of
    ``seq_len + 1`` tokens, read in order from the held-out split (the last
    ``eval_fraction`` of the documents; the whole dataset when 0), packed as the
    training loader packs them.

    Returns nats per token, perplexity (exp of it), bits per byte (the byte tokenizer:
    one token is one byte; another tokenizer: the targets decoded to UTF-8 and counted),
    and the counts. Every batch has the same number of targets, so the mean of the
    batch losses is the mean over all targets.
    """
    from .._C import DataLoader, IndexedDataset
    from ..tokenizers import load_tokenizer

    loader = DataLoader(IndexedDataset(prefix), seq_len, shuffle=False, split="eval" if eval_fraction > 0 else "all",
                        eval_fraction=eval_fraction, append_eod=append_eod, eod_id=eod_id)
    available = loader.num_samples // batch_size
    if available < 1:
        raise ValueError(f"{prefix}: {loader.num_samples} samples of {seq_len + 1} tokens in the split, "
                         f"fewer than one batch of {batch_size}")
    batches = min(batches, available)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    byte_level = tok is not None and getattr(tok, "name", None) == "byte"
    total, n_bytes = 0.0, 0
    for _ in range(batches):
        tokens, seq_idx = loader.next_batch(batch_size)
        tokens = np.asarray(tokens)
        idx = np.ascontiguousarray(np.asarray(seq_idx)[:, :-1]) if use_seq_idx else None
        total += model.loss(tokens, None, idx)
        if tok is not None and not byte_level:
            n_bytes += sum(len(tok.decode(row[1:]).encode("utf-8")) for row in tokens)
    nats = total / batches
    targets = batches * batch_size * seq_len
    if byte_level:
        bpb = nats / math.log(2)
    elif tok is not None and n_bytes:
        bpb = nats * targets / n_bytes / math.log(2)
    else:
        bpb = None
    return {"prefix": prefix, "seq_len": seq_len, "batches": batches, "batch_size": batch_size,
            "eval_fraction": eval_fraction, "tokens": targets, "nats_per_token": nats,
            "perplexity": math.exp(nats), "bits_per_byte": bpb}

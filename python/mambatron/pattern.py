"""Layer patterns: one character per sublayer of the residual stack (MODELS.md §1).

``M`` Mamba-2 mixer, ``m`` Mamba-1 mixer, ``*`` self-attention, ``-`` MLP. A model is
given either by an explicit pattern or by a total layer count with attention and MLP
ratios, which :func:`allocate_layers` turns into a pattern with Megatron-LM's hybrid
allocation. This module needs nothing but the standard library.
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Dict, Optional

#: Pattern symbol -> sublayer kind, in the order used for reports.
KINDS: Dict[str, str] = {"M": "mamba2", "m": "mamba1", "*": "attention", "-": "mlp"}
SYMBOLS = "".join(KINDS)


def _check_ratio(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} = {value!r} must be a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} = {value!r} is out of range: it must lie in [0, 1]")
    return float(value)


def _check_num_layers(num_layers) -> int:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers = {num_layers!r} must be a positive integer")
    return num_layers


def allocate_layers(num_layers: int, attention_ratio: float = 0.0, mlp_ratio: float = 0.0) -> str:
    """The hybrid pattern of ``num_layers`` sublayers with Megatron-LM's allocation.

    ``attention_ratio`` and ``mlp_ratio`` are fractions of all sublayers (each in [0, 1],
    sum at most 1). The counts are A = round(N·a) attention and P = round(N·r) MLP
    sublayers (Python's round, half to even); attention is spread evenly between Mamba-2
    sublayers, then P of the remaining Mamba-2 sublayers become MLP, spread evenly.
    The arithmetic is in floating point exactly as MODELS.md states it, so the result
    matches Megatron-LM's layer for layer.
    """
    n = _check_num_layers(num_layers)
    a = _check_ratio("attention_ratio", attention_ratio)
    r = _check_ratio("mlp_ratio", mlp_ratio)
    if a + r > 1.0 + 1e-12:  # tolerance for sums such as 0.1 + 0.9 in binary floating point
        raise ValueError(f"attention_ratio + mlp_ratio = {a} + {r} = {a + r} must not exceed 1")
    n_attn = round(n * a)
    n_mlp = round(n * r)
    if n_attn + n_mlp > n:
        raise ValueError(
            f"num_layers = {n} with attention_ratio = {a} and mlp_ratio = {r} rounds to "
            f"{n_attn} attention + {n_mlp} MLP sublayers, more than {n}; lower a ratio")

    n_mamba = n - n_attn
    layers = []
    step = n_mamba / (n_attn + 1)
    x = step
    for _ in range(n):
        if x < 0.5:
            layers.append("*")
            x += step
        else:
            layers.append("M")
            x -= 1

    if n_mlp > 0:
        step = (n_mamba - n_mlp) / n_mlp
        x = step
        for i, symbol in enumerate(layers):
            if symbol != "M":
                continue
            if x < 0.5:
                layers[i] = "-"
                x += step
            else:
                x -= 1
    return "".join(layers)


def layer_counts(pattern: str) -> Dict[str, int]:
    """Number of sublayers of each kind: {"mamba2": .., "mamba1": .., "attention": .., "mlp": ..}."""
    counts = Counter(pattern)
    return {kind: counts.get(symbol, 0) for symbol, kind in KINDS.items()}


def validate_pattern(pattern: str, num_layers: Optional[int] = None,
                     attention_ratio: Optional[float] = None, mlp_ratio: Optional[float] = None) -> str:
    """Check an explicit pattern and return it.

    Raises ValueError for an empty pattern, a symbol outside ``M m * -``, a length that
    differs from ``num_layers`` (when given), or, when ratios are also given, per-symbol
    counts that differ from :func:`allocate_layers` for the same length and ratios. The
    same counts in a different order are allowed with a warning.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern = {pattern!r} must be a non-empty string of the symbols "
                         f"'M' (Mamba-2), 'm' (Mamba-1), '*' (attention), '-' (MLP)")
    bad = list(dict.fromkeys(c for c in pattern if c not in KINDS))  # in order of appearance
    if bad:
        where = pattern.index(bad[0])
        raise ValueError(f"pattern = {pattern!r} has invalid symbol(s) {', '.join(map(repr, bad))} "
                         f"(first at position {where}); allowed are 'M', 'm', '*', '-'")
    if num_layers is not None:
        _check_num_layers(num_layers)
        if len(pattern) != num_layers:
            raise ValueError(f"pattern has {len(pattern)} sublayers but num_layers = {num_layers}")
    if attention_ratio is not None or mlp_ratio is not None:
        expected = allocate_layers(len(pattern), attention_ratio or 0.0, mlp_ratio or 0.0)
        if Counter(pattern) != Counter(expected):
            raise ValueError(
                f"pattern {pattern!r} has {_count_text(pattern)} but attention_ratio = {attention_ratio} "
                f"and mlp_ratio = {mlp_ratio} over {len(pattern)} sublayers give {_count_text(expected)}")
        if pattern != expected:
            warnings.warn(f"pattern {pattern!r} has the counts of the ratios but not the order of "
                          f"the allocation {expected!r}; using the given pattern", stacklevel=2)
    return pattern


def resolve_pattern(pattern: Optional[str] = None, num_layers: Optional[int] = None,
                    attention_ratio: Optional[float] = None, mlp_ratio: Optional[float] = None) -> str:
    """The pattern a model uses: the explicit one (validated) or the allocation from the ratios."""
    if pattern is not None:
        return validate_pattern(pattern, num_layers, attention_ratio, mlp_ratio)
    if num_layers is None:
        raise ValueError("give either pattern or num_layers (with attention_ratio and mlp_ratio)")
    return allocate_layers(num_layers, attention_ratio or 0.0, mlp_ratio or 0.0)


def compact_pattern(pattern: str) -> str:
    """A short form for printing: ``[M]x56`` or ``[*-]x32`` for repeats, else the pattern."""
    n = len(pattern)
    for period in range(1, n // 2 + 1):
        if n % period == 0 and pattern[:period] * (n // period) == pattern:
            return f"[{pattern[:period]}]x{n // period}"
    return pattern


def _count_text(pattern: str) -> str:
    counts = Counter(pattern)
    return ", ".join(f"{counts[s]} {s!r}" for s in KINDS if counts[s]) or "no sublayers"

"""Layer patterns: Megatron's hybrid allocation (MODELS.md §1) and pattern validation."""
import warnings

import pytest

from mambatron.pattern import (allocate_layers, compact_pattern, layer_counts, resolve_pattern,
                               validate_pattern)

HYBRID_56 = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"
HYBRID_48 = "M-M-M--M-*M-M-M-M--*M-M-M-M-*M--M-M-M-*M-M--M-M-"


def reference_allocation(n, a, r):
    """MODELS.md §1 step by step, written apart from the library: a list of kinds,
    then the attention slots, then the MLP slots among the Mamba ones."""
    n_attn, n_mlp = round(n * a), round(n * r)
    n_mamba = n - n_attn
    kinds = []
    gap = n_mamba / (n_attn + 1)
    budget = gap
    while len(kinds) < n:
        attention_here = budget < 0.5
        kinds.append("*" if attention_here else "M")
        budget = budget + gap if attention_here else budget - 1
    if n_mlp:
        gap = (n_mamba - n_mlp) / n_mlp
        budget = gap
        mamba_slots = [i for i, k in enumerate(kinds) if k == "M"]
        for i in mamba_slots:
            if budget < 0.5:
                kinds[i] = "-"
                budget += gap
            else:
                budget -= 1
    return "".join(kinds)


def test_megatron_check_patterns():
    assert allocate_layers(56, 0.08, 0.5) == HYBRID_56
    assert allocate_layers(48, 0.08, 0.5) == HYBRID_48
    assert layer_counts(HYBRID_56) == {"mamba2": 24, "mamba1": 0, "attention": 4, "mlp": 28}


def test_pure_and_extreme_ratios():
    assert allocate_layers(7) == "M" * 7
    assert allocate_layers(5, 1.0, 0.0) == "*" * 5
    assert allocate_layers(5, 0.0, 1.0) == "-" * 5
    assert allocate_layers(1, 0.0, 0.0) == "M"
    # A single attention layer sits in the middle of the Mamba layers.
    assert allocate_layers(5, 0.2, 0.0) == "MM*MM"


RATIOS = sorted({i / 20 for i in range(21)} | {0.08, 0.125, 1 / 3})


@pytest.mark.parametrize("n", range(1, 101))
def test_sweep_counts_and_reference(n):
    checked = 0
    for a in RATIOS:
        for r in RATIOS:
            if a + r > 1.0 + 1e-12:
                continue
            n_attn, n_mlp = round(n * a), round(n * r)
            if n_attn + n_mlp > n:
                with pytest.raises(ValueError, match="rounds to"):
                    allocate_layers(n, a, r)
                continue
            got = allocate_layers(n, a, r)
            assert len(got) == n
            assert layer_counts(got) == {"mamba2": n - n_attn - n_mlp, "mamba1": 0,
                                         "attention": n_attn, "mlp": n_mlp}, (n, a, r, got)
            assert got == reference_allocation(n, a, r), (n, a, r)
            checked += 1
    assert checked > 100


def test_round_half_to_even():
    # 10 · 0.25 = 2.5 rounds to 2 and 10 · 0.35 = 3.5 to 4 (Python's round).
    assert layer_counts(allocate_layers(10, 0.25, 0.0))["attention"] == 2
    assert layer_counts(allocate_layers(10, 0.0, 0.35))["mlp"] == 4


@pytest.mark.parametrize("a, r, message", [
    (-0.1, 0.0, "attention_ratio = -0.1 is out of range"),
    (1.5, 0.0, "attention_ratio = 1.5 is out of range"),
    (0.0, -1.0, "mlp_ratio = -1.0 is out of range"),
    (0.0, 2.0, "mlp_ratio = 2.0 is out of range"),
    (0.6, 0.5, "must not exceed 1"),
    ("0.1", 0.0, "must be a number"),
    (0.0, True, "must be a number"),
])
def test_ratios_out_of_range(a, r, message):
    with pytest.raises(ValueError, match=message):
        allocate_layers(10, a, r)


@pytest.mark.parametrize("n", [0, -3, 2.0, True, None])
def test_bad_layer_count(n):
    with pytest.raises(ValueError, match="num_layers"):
        allocate_layers(n, 0.1, 0.1)


def test_rounding_beyond_layer_count_is_an_error():
    with pytest.raises(ValueError, match="rounds to 2 attention \\+ 2 MLP sublayers, more than 3"):
        allocate_layers(3, 0.5, 0.5)


def test_invalid_symbols():
    with pytest.raises(ValueError, match=r"invalid symbol\(s\) 'x', 'A' \(first at position 2\)"):
        validate_pattern("M-x*A")
    with pytest.raises(ValueError, match="invalid symbol"):
        validate_pattern("M M")
    for bad in ("", None, 5):
        with pytest.raises(ValueError, match="non-empty string"):
            validate_pattern(bad)


def test_wrong_length():
    with pytest.raises(ValueError, match="pattern has 4 sublayers but num_layers = 5"):
        validate_pattern("M*-m", num_layers=5)
    assert validate_pattern("M*-m", num_layers=4) == "M*-m"


def test_pattern_with_ratios():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_pattern(HYBRID_56, 56, 0.08, 0.5) == HYBRID_56
    with pytest.raises(ValueError, match="has 24 'M', 4 '\\*', 28 '-' but attention_ratio = 0.1"):
        validate_pattern(HYBRID_56, 56, 0.1, 0.5)
    with pytest.raises(ValueError, match="'m'"):
        validate_pattern(HYBRID_56.replace("M", "m", 1), 56, 0.08, 0.5)
    reordered = "".join(sorted(HYBRID_56))
    with pytest.warns(UserWarning, match="not the order"):
        assert validate_pattern(reordered, None, 0.08, 0.5) == reordered


def test_resolve_pattern():
    assert resolve_pattern(None, 48, 0.08, 0.5) == HYBRID_48
    assert resolve_pattern("MM", None, None, None) == "MM"
    assert resolve_pattern(None, 4, None, None) == "MMMM"
    with pytest.raises(ValueError, match="give either pattern or num_layers"):
        resolve_pattern()


def test_compact_pattern():
    assert compact_pattern("M" * 56) == "[M]x56"
    assert compact_pattern("*-" * 32) == "[*-]x32"
    assert compact_pattern("M") == "M"
    assert compact_pattern(HYBRID_56) == HYBRID_56

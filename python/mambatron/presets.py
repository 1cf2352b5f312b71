"""Named model configurations (MODELS.md §1, "Presets").

Names are ``FAMILY-SIZE``; the families are ``hybrid`` (Mamba-2, attention and MLP),
``mamba2``, ``mamba`` (Mamba-1) and ``transformer``.

- ``*-8b``: the 8B models of MODELS.md (d_model 4096, 56 sublayers of Mamba or the
  56-sublayer hybrid pattern, or 32 attention+MLP pairs; vocabulary 256000, untied
  output layer), and ``hybrid-800m`` (the 48-sublayer hybrid pattern, d_model 1024).
- ``*-130m``, ``*-370m``, ``*-1.3b``, ``*-2.7b`` for every family: the depth × width of
  the public Mamba / Mamba-2 releases (24×768, 48×1024, 48×2048, 64×2560). Like those
  releases they use the GPT-NeoX vocabulary padded to 50280 (Mamba-1) or 50288 (the
  others) with the output layer tied to the embedding, and the pure Mamba-2 ones use one
  group. Depth counts sublayers, so ``transformer-130m`` is 12 attention+MLP pairs and the
  hybrids use the 8B ratios (8% attention, 50% MLP). Attention heads are 64 wide.
  The size is the release's name; the exact count is ``ModelConfig.parameter_count()``.
- ``tiny-hybrid`` (all four sublayer kinds), ``tiny-mamba2``, ``tiny-mamba``,
  ``tiny-transformer``: d_model 128, byte vocabulary (256), a few sublayers; for tests,
  the demo and notebooks.

Every field of a preset can be changed with ``ModelConfig.replace`` or ``override``.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, List

from .config import AttentionConfig, Mamba1Config, Mamba2Config, MLPConfig, ModelConfig
from .pattern import allocate_layers

#: The 56-sublayer hybrid of the 8B model: allocate_layers(56, 0.08, 0.5).
HYBRID_8B_PATTERN = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"
#: The 48-sublayer hybrid: allocate_layers(48, 0.08, 0.5).
HYBRID_800M_PATTERN = "M-M-M--M-*M-M-M-M--*M-M-M-M-*M--M-M-M-*M-M--M-M-"

#: Size name -> (sublayers, d_model) of the public Mamba / Mamba-2 releases.
SMALL_SIZES = {"130m": (24, 768), "370m": (48, 1024), "1.3b": (48, 2048), "2.7b": (64, 2560)}
NEOX_VOCAB_MAMBA1 = 50280   # 50277 padded to a multiple of 8
NEOX_VOCAB = 50288          # 50277 padded to a multiple of 16


def _transformer_attention(d: int, head_dim: int) -> AttentionConfig:
    return AttentionConfig(num_heads=d // head_dim, head_dim=head_dim, rotary_fraction=0.5, rope_base=10000.0)


def _hybrid_8b() -> ModelConfig:
    return ModelConfig(pattern=HYBRID_8B_PATTERN, d_model=4096, vocab_size=256000,
                       attention=AttentionConfig(num_heads=32, num_kv_heads=8, head_dim=128),
                       mlp=MLPConfig(ffn_hidden=16384, activation="gelu"))


def _mamba2_8b() -> ModelConfig:
    return ModelConfig(pattern="M" * 56, d_model=4096, vocab_size=256000)


def _transformer_8b() -> ModelConfig:
    return ModelConfig(pattern="*-" * 32, d_model=4096, vocab_size=256000, norm="layernorm1p",
                       attention=_transformer_attention(4096, 128),
                       mlp=MLPConfig(ffn_hidden=16384, activation="squared_relu"))


def _mamba_8b() -> ModelConfig:
    return ModelConfig(pattern="m" * 56, d_model=4096, vocab_size=256000)


def _hybrid_800m() -> ModelConfig:
    return ModelConfig(pattern=HYBRID_800M_PATTERN, d_model=1024, vocab_size=256000,
                       attention=AttentionConfig(num_heads=16, num_kv_heads=8, head_dim=64),
                       mlp=MLPConfig(ffn_hidden=4096, activation="gelu"))


def _small(family: str, layers: int, d: int) -> Callable[[], ModelConfig]:
    def build() -> ModelConfig:
        common = dict(d_model=d, vocab_size=NEOX_VOCAB, tie_embeddings=True)
        if family == "mamba2":
            return ModelConfig(pattern="M" * layers, mamba2=Mamba2Config(n_groups=1), **common)
        if family == "mamba":
            return ModelConfig(pattern="m" * layers, **{**common, "vocab_size": NEOX_VOCAB_MAMBA1})
        if family == "transformer":
            return ModelConfig(pattern="*-" * (layers // 2), norm="layernorm1p",
                               attention=_transformer_attention(d, 64),
                               mlp=MLPConfig(activation="squared_relu"), **common)
        heads = d // 64
        return ModelConfig(pattern=allocate_layers(layers, 0.08, 0.5),
                           attention=AttentionConfig(num_heads=heads, num_kv_heads=8 if heads % 8 == 0 else 4,
                                                     head_dim=64),
                           mlp=MLPConfig(activation="gelu"), **common)
    return build


_TINY_MAMBA2 = dict(head_dim=32, d_state=16, n_groups=2, chunk_size=16)


def _tiny(pattern: str, **kwargs) -> Callable[[], ModelConfig]:
    def build() -> ModelConfig:
        base = dict(pattern=pattern, d_model=128, vocab_size=256, mamba2=Mamba2Config(**_TINY_MAMBA2),
                    mamba1=Mamba1Config(d_state=16),
                    attention=AttentionConfig(num_heads=4, num_kv_heads=2, head_dim=32),
                    mlp=MLPConfig(ffn_hidden=512, activation="gelu"))
        return ModelConfig(**{**base, **kwargs})
    return build


_PRESETS: Dict[str, Callable[[], ModelConfig]] = {
    "hybrid-8b": _hybrid_8b,
    "mamba2-8b": _mamba2_8b,
    "transformer-8b": _transformer_8b,
    "mamba-8b": _mamba_8b,
    "hybrid-800m": _hybrid_800m,
    **{f"{family}-{size}": _small(family, layers, d)
       for family in ("hybrid", "mamba2", "mamba", "transformer")
       for size, (layers, d) in SMALL_SIZES.items()},
    "tiny-hybrid": _tiny("Mm*-M-"),
    "tiny-mamba2": _tiny("M" * 4),
    "tiny-mamba": _tiny("m" * 4),
    "tiny-transformer": _tiny("*-" * 4, norm="layernorm1p",
                              attention=AttentionConfig(num_heads=4, head_dim=32, rotary_fraction=0.5),
                              mlp=MLPConfig(ffn_hidden=512, activation="squared_relu")),
}


def list_presets() -> List[str]:
    """The preset names, 8B models first, then the small sizes by family, then the tiny ones."""
    return list(_PRESETS)


def get_preset(name: str) -> ModelConfig:
    """A fresh, validated :class:`ModelConfig` for the preset ``name`` (case-insensitive).

    Raises ValueError naming close matches and listing all presets for an unknown name.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _PRESETS:
        close = difflib.get_close_matches(str(key), list(_PRESETS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r}.{hint} Presets: {', '.join(_PRESETS)}")
    config = _PRESETS[key]()
    config.name = key
    return config.validate()

"""Model configuration: what a model is, independent of any weights (MODELS.md §1–2).

:class:`ModelConfig` holds the layer pattern (or a layer count with ratios), the widths
and the options of each sublayer kind, and round-trips through JSON. From it alone it
computes the exact parameter count by sublayer kind and a memory estimate, without
allocating anything. This module needs nothing but the standard library.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

from .pattern import KINDS, layer_counts, resolve_pattern

NORMS = ("rmsnorm", "layernorm1p")
ACTIVATIONS = ("gelu", "squared_relu", "swiglu")
DTYPE_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2}

#: Rows and vocabulary entries per block of the fused linear cross-entropy (ops.h defaults);
#: its fp32 scratch is one such block of logits.
LOSS_ROW_CHUNK = 4096
LOSS_VOCAB_CHUNK = 32768


@dataclass
class Mamba2Config:
    """Mamba-2 (SSD) mixer options. Widths are in channels, chunk_size in tokens."""

    expand: int = 2            #: d_inner = expand · d_model
    head_dim: int = 64         #: p; the mixer has h = d_inner / p heads
    d_state: int = 128         #: n, the state size per head
    n_groups: int = 8          #: g; B and C are shared by the h/g heads of a group
    d_conv: int = 4            #: width of the causal depthwise convolution
    chunk_size: int = 128      #: Q, tokens per chunk of the SSD training kernel
    dt_min: float = 1e-3       #: initial Δ is drawn log-uniformly in [dt_min, dt_max]
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4  #: initial Δ is clamped to at least this
    A_init_min: float = 1.0    #: A_log is initialised to ln U(A_init_min, A_init_max)
    A_init_max: float = 16.0


@dataclass
class Mamba1Config:
    """Mamba-1 (selective scan) mixer options. Widths are in channels."""

    expand: int = 2            #: d_inner = expand · d_model
    d_state: int = 16          #: n, the state size per channel
    dt_rank: Union[int, str] = "auto"  #: rank of the Δ projection; "auto" = ceil(d_model / 16)
    d_conv: int = 4            #: width of the causal depthwise convolution
    dt_min: float = 1e-3       #: initial Δ is drawn log-uniformly in [dt_min, dt_max]
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4  #: initial Δ is clamped to at least this


@dataclass
class AttentionConfig:
    """Self-attention options."""

    num_heads: int = 32                  #: query heads
    num_kv_heads: Optional[int] = None   #: key/value heads (grouped-query); None = num_heads
    head_dim: Optional[int] = None       #: channels per head; None = d_model / num_heads
    rotary_fraction: float = 0.0         #: share of each head's dims under RoPE; 0 = NoPE
    rope_base: float = 10000.0           #: RoPE frequency base


@dataclass
class MLPConfig:
    """MLP options: fc1 (d_model -> ffn_hidden, twice that for SwiGLU), activation, fc2."""

    ffn_hidden: Optional[int] = None     #: hidden width f; None = 4 · d_model
    activation: str = "gelu"             #: gelu | squared_relu | swiglu


SECTIONS = {"mamba2": Mamba2Config, "mamba1": Mamba1Config, "attention": AttentionConfig, "mlp": MLPConfig}


@dataclass
class ModelConfig:
    """A model: layer pattern, widths, sublayer options and numeric formats.

    Give ``pattern`` (one symbol per sublayer: ``M`` Mamba-2, ``m`` Mamba-1, ``*``
    attention, ``-`` MLP) or ``num_layers`` with ``attention_ratio`` and ``mlp_ratio``
    (Megatron's hybrid allocation); both may be given if their counts agree.
    """

    pattern: Optional[str] = None
    num_layers: Optional[int] = None
    attention_ratio: Optional[float] = None
    mlp_ratio: Optional[float] = None
    d_model: int = 1024                  #: residual width d
    vocab_size: int = 256000             #: V, rows of the embedding and the output layer
    norm: str = "rmsnorm"                #: rmsnorm | layernorm1p (w = 1 + γ, with bias)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False         #: output layer shares the embedding matrix
    init_std: float = 0.02               #: std of the normal init of matrices
    dtype: str = "bf16"                  #: matrices and activations in compute
    param_dtype: str = "f32"             #: master weights, gradients and optimizer state
    name: Optional[str] = None           #: a label, e.g. the preset name
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    mamba1: Mamba1Config = field(default_factory=Mamba1Config)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)

    # ---- derived widths -------------------------------------------------------------
    @property
    def layers(self) -> str:
        """The resolved pattern, one symbol per sublayer."""
        return resolve_pattern(self.pattern, self.num_layers, self.attention_ratio, self.mlp_ratio)

    @property
    def mamba2_d_inner(self) -> int:
        return self.mamba2.expand * self.d_model

    @property
    def mamba2_num_heads(self) -> int:
        return self.mamba2_d_inner // self.mamba2.head_dim

    @property
    def mamba2_conv_dim(self) -> int:
        """Channels through the Mamba-2 convolution: x, B and C."""
        return self.mamba2_d_inner + 2 * self.mamba2.n_groups * self.mamba2.d_state

    @property
    def mamba1_d_inner(self) -> int:
        return self.mamba1.expand * self.d_model

    @property
    def mamba1_dt_rank(self) -> int:
        r = self.mamba1.dt_rank
        return math.ceil(self.d_model / 16) if r == "auto" else r

    @property
    def attn_head_dim(self) -> int:
        a = self.attention
        return a.head_dim if a.head_dim is not None else self.d_model // a.num_heads

    @property
    def attn_num_kv_heads(self) -> int:
        a = self.attention
        return a.num_kv_heads if a.num_kv_heads is not None else a.num_heads

    @property
    def ffn_hidden(self) -> int:
        return self.mlp.ffn_hidden if self.mlp.ffn_hidden is not None else 4 * self.d_model

    # ---- JSON -----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelConfig":
        """A validated config from a dict like :meth:`to_dict` makes; missing keys take defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(data).__name__}")
        kwargs: Dict[str, Any] = {}
        for key, value in data.items():
            if key in SECTIONS:
                kwargs[key] = _section_from(key, value)
            elif key in _TOP_FIELDS:
                kwargs[key] = value
            else:
                raise ValueError(f"unknown config key {key!r}{_suggest(key)}")
        return cls(**kwargs).validate()

    @classmethod
    def from_json(cls, text: Union[str, Dict[str, Any]]) -> "ModelConfig":
        """A validated config from JSON text (or from an already parsed dict)."""
        if isinstance(text, dict):
            return cls.from_dict(text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"model config is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the config as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, source: Union[str, os.PathLike, Dict[str, Any]]) -> "ModelConfig":
        """A validated config from a JSON or TOML file, a folder holding config.json, or a
        dict. TOML uses the same keys, with tables for the sections ([mamba2], [mlp], ...)."""
        if isinstance(source, dict):
            return cls.from_dict(source)
        path = os.fspath(source)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if path.endswith(".toml"):
            try:
                import tomllib  # Python 3.11+
            except ImportError:  # pragma: no cover - older Pythons
                try:
                    import tomli as tomllib
                except ImportError:
                    raise ValueError(f"{path}: reading TOML needs Python 3.11+ or the 'tomli' package") from None
            with open(path, "rb") as f:
                try:
                    return cls.from_dict(tomllib.load(f))
                except tomllib.TOMLDecodeError as e:
                    raise ValueError(f"{path}: not valid TOML: {e}") from None
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    # ---- overrides ------------------------------------------------------------------
    def replace(self, **overrides: Any) -> "ModelConfig":
        """A validated copy with fields replaced; self is unchanged.

        Keys are top-level fields (``d_model=2048``), sections given as a dict of their
        fields (``mamba2={"d_state": 64}``, other fields kept) or as a section object,
        or a field name that only one section has (``n_groups=4``).
        """
        new = dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s)) for s in SECTIONS})
        for key, value in overrides.items():
            if key in SECTIONS:
                if isinstance(value, dict):
                    for sub, v in value.items():
                        section, name = _resolve_key(f"{key}.{sub}")
                        setattr(getattr(new, section), name, v)
                else:
                    setattr(new, key, _section_from(key, value))
                continue
            section, name = _resolve_key(key)
            setattr(getattr(new, section) if section else new, name, value)
        return new.validate()

    def override(self, *assignments: str) -> "ModelConfig":
        """A validated copy with ``"key=value"`` assignments applied, as from a CLI ``--set``.

        Keys are dotted (``mamba2.d_state=64``) or flat when unambiguous (``d_model=2048``,
        ``n_groups=4``); the value is converted to the field's type: integers, floats,
        booleans (true/false, yes/no, on/off, 1/0), strings, and ``none`` for optional fields.
        """
        top: Dict[str, Any] = {}
        sections: Dict[str, Dict[str, Any]] = {}
        for text in assignments:
            key, value = parse_assignment(text)
            section, name = _resolve_key(key)
            converted = _convert(value, _FIELD_TYPES[section][name], key)
            (sections.setdefault(section, {}) if section else top)[name] = converted
        return self.replace(**top, **sections)

    # ---- checks ---------------------------------------------------------------------
    def validate(self) -> "ModelConfig":
        """Raise ValueError naming the field and value of the first inconsistency; return self."""
        for name in ("d_model", "vocab_size"):
            _check_int(name, getattr(self, name), 1)
        _check_choice("norm", self.norm, NORMS)
        _check_positive("norm_eps", self.norm_eps)
        _check_positive("init_std", self.init_std)
        _check_choice("dtype", self.dtype, tuple(DTYPE_BYTES))
        _check_choice("param_dtype", self.param_dtype, tuple(DTYPE_BYTES))
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings = {self.tie_embeddings!r} must be true or false")
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"name = {self.name!r} must be a string or null")
        for section, cls in SECTIONS.items():
            if not isinstance(getattr(self, section), cls):
                raise ValueError(f"{section} = {getattr(self, section)!r} must be a {cls.__name__}")
        counts = layer_counts(self.layers)
        if counts["mamba2"]:
            self._validate_mamba2()
        if counts["mamba1"]:
            self._validate_mamba1()
        if counts["attention"]:
            self._validate_attention()
        if counts["mlp"]:
            _check_choice("mlp.activation", self.mlp.activation, ACTIVATIONS)
            if self.mlp.ffn_hidden is not None:
                _check_int("mlp.ffn_hidden", self.mlp.ffn_hidden, 1)
        return self

    def _validate_mamba2(self) -> None:
        c = self.mamba2
        for name in ("expand", "head_dim", "d_state", "n_groups", "d_conv", "chunk_size"):
            _check_int(f"mamba2.{name}", getattr(c, name), 1)
        if self.mamba2_d_inner % c.head_dim:
            raise ValueError(f"mamba2.head_dim = {c.head_dim} must divide the Mamba-2 inner width "
                             f"{self.mamba2_d_inner} (d_model {self.d_model} x expand {c.expand})")
        if self.mamba2_num_heads % c.n_groups:
            raise ValueError(f"mamba2.n_groups = {c.n_groups} must divide the Mamba-2 head count "
                             f"{self.mamba2_num_heads} (inner width {self.mamba2_d_inner} / head_dim {c.head_dim})")
        _check_dt_range("mamba2", c)
        _check_positive("mamba2.A_init_min", c.A_init_min)
        if not c.A_init_max >= c.A_init_min:
            raise ValueError(f"mamba2.A_init_max = {c.A_init_max} must be at least "
                             f"mamba2.A_init_min = {c.A_init_min}")

    def _validate_mamba1(self) -> None:
        c = self.mamba1
        for name in ("expand", "d_state", "d_conv"):
            _check_int(f"mamba1.{name}", getattr(c, name), 1)
        if c.dt_rank != "auto":
            _check_int("mamba1.dt_rank", c.dt_rank, 1, also='or "auto"')
        _check_dt_range("mamba1", c)

    def _validate_attention(self) -> None:
        a = self.attention
        _check_int("attention.num_heads", a.num_heads, 1)
        if a.head_dim is None:
            if self.d_model % a.num_heads:
                raise ValueError(f"attention.num_heads = {a.num_heads} must divide d_model = {self.d_model} "
                                 f"when attention.head_dim is not given")
        else:
            _check_int("attention.head_dim", a.head_dim, 1)
        if a.num_kv_heads is not None:
            _check_int("attention.num_kv_heads", a.num_kv_heads, 1)
            if a.num_heads % a.num_kv_heads:
                raise ValueError(f"attention.num_kv_heads = {a.num_kv_heads} must divide "
                                 f"attention.num_heads = {a.num_heads}")
        _check_number("attention.rotary_fraction", a.rotary_fraction)
        if not 0.0 <= a.rotary_fraction <= 1.0:
            raise ValueError(f"attention.rotary_fraction = {a.rotary_fraction} must lie in [0, 1] (0 = NoPE)")
        rotary_dims = a.rotary_fraction * self.attn_head_dim
        if rotary_dims != int(rotary_dims) or int(rotary_dims) % 2:
            raise ValueError(f"attention.rotary_fraction = {a.rotary_fraction} gives {rotary_dims} rotary dims "
                             f"of head_dim {self.attn_head_dim}; it must be an even whole number")
        _check_positive("attention.rope_base", a.rope_base)

    # ---- sizes ----------------------------------------------------------------------
    def sublayer_shapes(self, symbol: str) -> Dict[str, Tuple[int, ...]]:
        """Parameter shapes of one sublayer of kind ``symbol``, its pre-norm included (MODELS.md §2)."""
        d = self.d_model
        shapes = self._norm_shapes("norm")
        if symbol == "M":
            c, di, h = self.mamba2, self.mamba2_d_inner, self.mamba2_num_heads
            gn = c.n_groups * c.d_state
            shapes.update({
                "mixer.in_proj.weight": (2 * di + 2 * gn + h, d),  # z | x B C | dt
                "mixer.conv1d.weight": (self.mamba2_conv_dim, 1, c.d_conv),
                "mixer.conv1d.bias": (self.mamba2_conv_dim,),
                "mixer.dt_bias": (h,), "mixer.A_log": (h,), "mixer.D": (h,),
                "mixer.norm.weight": (di,),  # gated grouped RMSNorm
                "mixer.out_proj.weight": (d, di),
            })
        elif symbol == "m":
            c, di, r = self.mamba1, self.mamba1_d_inner, self.mamba1_dt_rank
            shapes.update({
                "mixer.in_proj.weight": (2 * di, d),  # x | z
                "mixer.conv1d.weight": (di, 1, c.d_conv), "mixer.conv1d.bias": (di,),
                "mixer.x_proj.weight": (r + 2 * c.d_state, di),  # dt_low | B | C
                "mixer.dt_proj.weight": (di, r), "mixer.dt_proj.bias": (di,),
                "mixer.A_log": (di, c.d_state), "mixer.D": (di,),
                "mixer.out_proj.weight": (d, di),
            })
        elif symbol == "*":
            p, hq, hkv = self.attn_head_dim, self.attention.num_heads, self.attn_num_kv_heads
            shapes.update({"mixer.qkv_proj.weight": ((hq + 2 * hkv) * p, d), "mixer.o_proj.weight": (d, hq * p)})
        elif symbol == "-":
            f = self.ffn_hidden
            fc1 = 2 * f if self.mlp.activation == "swiglu" else f
            shapes.update({"mixer.fc1.weight": (fc1, d), "mixer.fc2.weight": (d, f)})
        else:
            raise ValueError(f"unknown sublayer symbol {symbol!r}; allowed are {', '.join(map(repr, KINDS))}")
        return shapes

    def parameter_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Every parameter of the model by name, in order: embedding, sublayers, final norm, output."""
        shapes = {"embedding.weight": (self.vocab_size, self.d_model)}
        per_kind = {s: self.sublayer_shapes(s) for s in set(self.layers)}
        for i, symbol in enumerate(self.layers):
            shapes.update({f"layers.{i}.{k}": v for k, v in per_kind[symbol].items()})
        shapes.update(self._norm_shapes("norm_f"))
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, self.d_model)
        return shapes

    def parameter_count(self) -> Dict[str, int]:
        """Parameters by part: embedding, each sublayer kind (all of its layers, pre-norms
        included), final_norm, output (0 when tied) and total."""
        counts = layer_counts(self.layers)
        emb = self.vocab_size * self.d_model
        out = {"embedding": emb}
        for symbol, kind in KINDS.items():
            n = counts[kind]
            out[kind] = n * _numel(self.sublayer_shapes(symbol)) if n else 0
        out["final_norm"] = _numel(self._norm_shapes("norm_f"))
        out["output"] = 0 if self.tie_embeddings else emb
        out["total"] = sum(out.values())
        return out

    def memory_estimate(self, batch: int = 1, seq_len: int = 4096) -> Dict[str, Any]:
        """Bytes needed to train on ``batch`` sequences of ``seq_len`` tokens, and to run
        inference on ``batch`` sequences with a context of ``seq_len`` tokens, by part and
        in total; computed, nothing is allocated.

        training: weights (the compute copy of matrices in ``dtype``; A_log, D, dt_bias and
        norm weights are used from the master copy), master_weights, gradients, optimizer
        (AdamW first and second moments), all three in ``param_dtype``; activations kept
        for backward. inference: weights (matrices in ``dtype``, the rest in
        ``param_dtype``), state (per sequence: conv states in ``dtype``, SSM states in fp32,
        a KV cache of ``seq_len`` tokens), activations.

        The activation figures are rough. Training: per token, each sublayer keeps the
        values of :meth:`_activation_elements` in ``dtype``, the final norm its input and
        output, and the fused loss one fp32 block of at most 4096 rows by 32768 vocabulary
        entries. Inference: the largest sublayer's values over the prompt (layers run one
        after another) plus fp32 logits of the last position of each sequence.
        """
        _check_int("batch", batch, 1)
        _check_int("seq_len", seq_len, 1)
        shapes = self.parameter_shapes()
        cb, pb = DTYPE_BYTES[self.dtype], DTYPE_BYTES[self.param_dtype]
        kept = sum(math.prod(s) for n, s in shapes.items() if _stays_full_precision(n))
        total = sum(math.prod(s) for s in shapes.values())
        matrices = total - kept
        tokens = batch * seq_len
        counts = layer_counts(self.layers)
        saved = {s: self._activation_elements(s) for s in KINDS if counts[KINDS[s]]}

        train_weights = 0 if self.dtype == self.param_dtype else matrices * cb
        train_act = tokens * cb * (sum(counts[KINDS[s]] * e for s, e in saved.items()) + 2 * self.d_model)
        train_act += min(tokens, LOSS_ROW_CHUNK) * min(self.vocab_size, LOSS_VOCAB_CHUNK) * 4
        training = {"weights": train_weights, "master_weights": total * pb, "gradients": total * pb,
                    "optimizer": 2 * total * pb, "activations": train_act}
        training["total"] = sum(training.values())

        infer_weights = matrices * cb + kept * pb
        state = batch * sum(counts[KINDS[s]] * self._state_bytes(s, seq_len) for s in saved)
        work = max(saved.values(), default=0)
        infer_act = tokens * cb * work + batch * self.vocab_size * 4
        inference = {"weights": infer_weights, "state": state, "activations": infer_act}
        inference["total"] = sum(inference.values())
        return {"batch": batch, "seq_len": seq_len, "training": training, "inference": inference}

    def _activation_elements(self, symbol: str) -> int:
        """Rough values per token that one sublayer keeps for backward: its residual input
        and normed input (2d) plus the mixer's projections and intermediate outputs;
        SSM states inside a chunk and attention scores are recomputed, not kept."""
        d = self.d_model
        if symbol == "M":
            di, h, conv = self.mamba2_d_inner, self.mamba2_num_heads, self.mamba2_conv_dim
            mixer = (di + conv + h) + conv + di + di  # in_proj out, conv out, y, gated-norm out
        elif symbol == "m":
            di, r, n = self.mamba1_d_inner, self.mamba1_dt_rank, self.mamba1.d_state
            mixer = 2 * di + di + (r + 2 * n) + di + di + di  # in_proj, conv, x_proj, Δ, y, gated y
        elif symbol == "*":
            p, hq, hkv = self.attn_head_dim, self.attention.num_heads, self.attn_num_kv_heads
            mixer = (hq + 2 * hkv) * p + hq * p + hq  # qkv, attention out, log-sum-exp per head
        else:
            f = self.ffn_hidden
            mixer = (2 * f if self.mlp.activation == "swiglu" else f) + f  # fc1 out, activation out
        return 2 * d + mixer

    def _state_bytes(self, symbol: str, seq_len: int) -> int:
        """Inference state of one sequence in one sublayer, in bytes."""
        cb = DTYPE_BYTES[self.dtype]
        if symbol == "M":
            c = self.mamba2
            return self.mamba2_conv_dim * (c.d_conv - 1) * cb + self.mamba2_num_heads * c.head_dim * c.d_state * 4
        if symbol == "m":
            c, di = self.mamba1, self.mamba1_d_inner
            return di * (c.d_conv - 1) * cb + di * c.d_state * 4
        if symbol == "*":
            return 2 * self.attn_num_kv_heads * self.attn_head_dim * seq_len * cb
        return 0

    def _norm_shapes(self, prefix: str) -> Dict[str, Tuple[int, ...]]:
        shapes = {f"{prefix}.weight": (self.d_model,)}
        if self.norm == "layernorm1p":
            shapes[f"{prefix}.bias"] = (self.d_model,)
        return shapes


# ---- helpers ------------------------------------------------------------------------
_TOP_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - set(SECTIONS)
_FIELD_TYPES: Dict[Optional[str], Dict[str, Any]] = {
    None: {k: v for k, v in typing.get_type_hints(ModelConfig).items() if k not in SECTIONS},
    **{s: typing.get_type_hints(cls) for s, cls in SECTIONS.items()},
}
_ALL_KEYS = sorted(_TOP_FIELDS) + [f"{s}.{k}" for s in SECTIONS for k in _FIELD_TYPES[s]]


def parse_assignment(text: str) -> Tuple[str, str]:
    """Split ``"key=value"`` into its stripped parts; ValueError if there is no ``=`` or key."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"override {text!r} must have the form key=value, e.g. mamba2.d_state=64")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {text!r} has no key before '='")
    return key, value.strip()


def _resolve_key(key: str) -> Tuple[Optional[str], str]:
    """(section or None, field) for a dotted or flat key; ValueError for unknown or ambiguous keys."""
    if "." in key:
        section, name = key.split(".", 1)
        if section in SECTIONS and name in _FIELD_TYPES[section]:
            return section, name
        raise ValueError(f"unknown config key {key!r}{_suggest(key)}")
    if key in _TOP_FIELDS:
        return None, key
    if key in SECTIONS:
        raise ValueError(f"{key!r} is a section; set its fields, e.g. {key}.{next(iter(_FIELD_TYPES[key]))}=...")
    owners = [s for s in SECTIONS if key in _FIELD_TYPES[s]]
    if len(owners) == 1:
        return owners[0], key
    if owners:
        raise ValueError(f"config key {key!r} is ambiguous; use one of {', '.join(f'{s}.{key}' for s in owners)}")
    raise ValueError(f"unknown config key {key!r}{_suggest(key)}")


def _suggest(key: str) -> str:
    candidates = _ALL_KEYS + [k.split(".", 1)[1] for k in _ALL_KEYS if "." in k]
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(map(repr, dict.fromkeys(close)))}?" if close else ""


def _convert(text: str, hint: Any, key: str) -> Any:
    """``text`` as a value of the annotated type ``hint`` (int, float, bool, str, Optional, Union)."""
    args = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    if type(None) in args and text.lower() in ("none", "null"):
        return None
    errors = []
    for t in (a for a in args if a is not type(None)):
        try:
            if t is bool:
                low = text.lower()
                if low in ("true", "yes", "on", "1"):
                    return True
                if low in ("false", "no", "off", "0"):
                    return False
                raise ValueError("not a boolean")
            if t is int:
                return int(text)
            if t is float:
                return float(text)
            if t is str:
                return text
        except ValueError:
            errors.append(t.__name__)
    raise ValueError(f"{key} = {text!r} is not a valid {' or '.join(errors)}")


def _section_from(name: str, value: Any) -> Any:
    cls = SECTIONS[name]
    if isinstance(value, cls):
        return dataclasses.replace(value)
    if not isinstance(value, dict):
        raise ValueError(f"{name} = {value!r} must be an object of {cls.__name__} fields")
    for key in value:
        if key not in _FIELD_TYPES[name]:
            raise ValueError(f"unknown config key {name}.{key!r}{_suggest(f'{name}.{key}')}")
    return cls(**value)


def _check_int(name: str, value: Any, minimum: int, also: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} = {value!r} must be an integer >= {minimum}{' ' + also if also else ''}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} = {value!r} must be a number")


def _check_positive(name: str, value: Any) -> None:
    _check_number(name, value)
    if not 0 < value < math.inf:
        raise ValueError(f"{name} = {value!r} must be a positive finite number")


def _check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} = {value!r} is not one of {', '.join(choices)}")


def _check_dt_range(section: str, c: Any) -> None:
    for name in ("dt_min", "dt_max", "dt_init_floor"):
        _check_positive(f"{section}.{name}", getattr(c, name))
    if c.dt_max < c.dt_min:
        raise ValueError(f"{section}.dt_max = {c.dt_max} must be at least {section}.dt_min = {c.dt_min}")


def _stays_full_precision(name: str) -> bool:
    """Parameters kept in param_dtype in compute too (MODELS.md §3): A_log, D, dt_bias, norms."""
    parts = name.split(".")
    return parts[-1] in ("A_log", "D", "dt_bias") or "norm" in parts or "norm_f" in parts


def _numel(shapes: Dict[str, Tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())

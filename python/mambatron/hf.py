"""Hugging Face ``mamba`` / ``mamba2`` checkpoints: export ours, import theirs.

A Hugging Face folder holds config.json (``model_type`` mamba or mamba2 with the
transformers config keys) and model.safetensors with these names:

    backbone.embeddings.weight              <-> embedding.weight
    backbone.layers.N.norm.weight           <-> layers.N.norm.weight
    backbone.layers.N.mixer.<same suffix>   <-> layers.N.mixer.<same suffix>
    backbone.norm_f.weight                  <-> norm_f.weight
    lm_head.weight                          <-> lm_head.weight (absent when tied)

The mixer suffixes are the same in both (mamba: in_proj, conv1d, x_proj, dt_proj, A_log,
D, out_proj; mamba2: in_proj, conv1d, dt_bias, A_log, D, norm, out_proj) and so are the
row orders of the packed projections: in_proj is z | xBC | dt for Mamba-2 and x | z for
Mamba-1, x_proj is dt | B | C, as in MODELS.md; no tensor is reordered.

Only pure patterns map onto these families (``M``×L to mamba2, ``m``×L to mamba) with
RMSNorm and no bias but the conv bias; hybrids (``nemotron_h``) are future work.
Transformers' own (torch) Mamba-2 path normalises the gated output over the whole
d_inner, not per group as MODELS.md and the fused mamba_ssm kernel do (checked against
transformers 5.17): exported Mamba-2 models with n_groups > 1 give other logits there,
so export_hf warns; with n_groups = 1 the two agree (tests/python/test_hf.py).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Dict, Tuple, Union

from . import _C
from .config import ModelConfig

FAMILIES = ("mamba", "mamba2")
_SYMBOL = {"mamba": "m", "mamba2": "M"}


def _to_hf_name(name: str) -> str:
    if name == "lm_head.weight":
        return name
    if name == "embedding.weight":
        return "backbone.embeddings.weight"
    return "backbone." + name  # layers.N.*, norm_f.weight


def _from_hf_name(name: str) -> str:
    if name == "lm_head.weight":
        return name
    if name == "backbone.embeddings.weight":
        return "embedding.weight"
    if name.startswith("backbone."):
        return name[len("backbone."):]
    raise ValueError(f"import_hf: unexpected tensor {name!r} (expected backbone.* or lm_head.weight)")


def _family_of(cfg: ModelConfig, family: str | None) -> str:
    layers = cfg.layers
    kinds = set(layers)
    if kinds == {"M"}:
        found = "mamba2"
    elif kinds == {"m"}:
        found = "mamba"
    else:
        raise ValueError(f"export_hf: pattern {layers!r} is not a pure Mamba-1 ('m'...) or Mamba-2 ('M'...) stack; "
                         "hybrid export (nemotron_h) is not supported yet")
    if family is not None and family != found:
        raise ValueError(f"export_hf: family {family!r} does not match the pattern {layers!r} ({found})")
    if cfg.norm != "rmsnorm":
        raise ValueError(f"export_hf: norm {cfg.norm!r}; the Hugging Face mamba families use rmsnorm")
    return found


def hf_config(cfg: ModelConfig, family: str | None = None, **extra: Any) -> Dict[str, Any]:
    """The transformers config.json dict of a pure Mamba-1 or Mamba-2 config; ``extra``
    adds or overrides keys (e.g. ``eos_token_id``)."""
    family = _family_of(cfg, family)
    out: Dict[str, Any] = {
        "model_type": family,
        "architectures": ["MambaForCausalLM" if family == "mamba" else "Mamba2ForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": len(cfg.layers),
        "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
        "use_bias": False, "use_conv_bias": True, "hidden_act": "silu", "residual_in_fp32": True,
        "initializer_range": cfg.init_std, "rescale_prenorm_residual": False, "use_cache": True,
        "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0,
    }
    if family == "mamba":
        c = cfg.mamba1
        out.update({"state_size": c.d_state, "expand": c.expand, "conv_kernel": c.d_conv,
                    "intermediate_size": cfg.mamba1_d_inner, "time_step_rank": cfg.mamba1_dt_rank,
                    "time_step_min": c.dt_min, "time_step_max": c.dt_max, "time_step_floor": c.dt_init_floor,
                    "time_step_scale": 1.0, "time_step_init_scheme": "random", "use_mambapy": False})
    else:
        c = cfg.mamba2
        out.update({"state_size": c.d_state, "expand": c.expand, "conv_kernel": c.d_conv, "n_groups": c.n_groups,
                    "head_dim": c.head_dim, "num_heads": cfg.mamba2_num_heads, "chunk_size": c.chunk_size,
                    "time_step_rank": math.ceil(cfg.d_model / 16), "time_step_min": c.dt_min,
                    "time_step_max": c.dt_max, "time_step_floor": c.dt_init_floor, "rms_norm": True})
    out.update(extra)
    return out


def _config_and_parameters(source) -> Tuple[ModelConfig, Dict[str, Any]]:
    """(ModelConfig, {our name: tensor}) of a Model or of a checkpoint folder of ours."""
    if isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        return ModelConfig.load(folder), _C.load_safetensors(folder)
    cfg = getattr(source, "model_config", None)
    if cfg is None:
        cfg = ModelConfig.from_dict({k: v for k, v in source.config.items()})
    return cfg, dict(source.parameters())


def export_hf(model_or_checkpoint, folder: Union[str, os.PathLike], family: str | None = None,
              dtype: Any = None, **extra_config: Any) -> Dict[str, Any]:
    """Writes ``folder``/config.json and model.safetensors in the Hugging Face layout of
    ``family`` ("mamba" or "mamba2"; None: from the pattern). The source is a Model or
    a checkpoint folder of ours; ``dtype`` converts the tensors (default: as they are).
    Returns the config dict written."""
    cfg, params = _config_and_parameters(model_or_checkpoint)
    if family is not None and family not in FAMILIES:
        raise ValueError(f"export_hf: family {family!r} is not one of {', '.join(FAMILIES)}")
    config = hf_config(cfg, family, **extra_config)
    if config["model_type"] == "mamba2" and cfg.mamba2.n_groups > 1:
        warnings.warn(f"export_hf: n_groups = {cfg.mamba2.n_groups}; transformers' torch Mamba-2 normalises the "
                      "gated output over all groups at once, so its logits will differ from ours (the fused "
                      "mamba_ssm path groups as we do)", stacklevel=2)
    tensors = {}
    for name, t in params.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        tensors[_to_hf_name(name)] = t if dtype is None else t.to(dtype=dtype)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    _C.save_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})
    return config


def _require(cfg: Dict[str, Any], key: str, want: Any, why: str) -> None:
    if key in cfg and cfg[key] != want:
        raise ValueError(f"import_hf: config {key} = {cfg[key]!r}; only {want!r} is supported ({why})")


def config_from_hf(hf: Dict[str, Any]) -> ModelConfig:
    """Our ModelConfig of a transformers mamba/mamba2 config dict."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"import_hf: model_type {family!r} is not one of {', '.join(FAMILIES)} "
                         "(nemotron_h and other hybrids are not supported yet)")
    _require(hf, "use_bias", False, "no projection biases")
    _require(hf, "use_conv_bias", True, "the conv1d has a bias")
    _require(hf, "hidden_act", "silu", "SiLU after the conv and on the gate")
    d, n_layers = int(hf["hidden_size"]), int(hf["num_hidden_layers"])
    expand = int(hf.get("expand", 2))
    kwargs: Dict[str, Any] = {
        "pattern": _SYMBOL[family] * n_layers, "d_model": d, "vocab_size": int(hf["vocab_size"]),
        "norm": "rmsnorm", "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", family == "mamba")),
        "init_std": float(hf.get("initializer_range", 0.02)),
    }
    if family == "mamba":
        rank = hf.get("time_step_rank", "auto")
        section = {"mamba1": {"expand": expand, "d_state": int(hf.get("state_size", 16)),
                              "dt_rank": "auto" if rank == "auto" else int(rank),
                              "d_conv": int(hf.get("conv_kernel", 4))}}
    else:
        _require(hf, "rms_norm", True, "the gated RMSNorm")
        limit = hf.get("time_step_limit")
        if limit is not None and (float(limit[0]) != 0.0 or not math.isinf(float(limit[1]))):
            raise ValueError(f"import_hf: time_step_limit = {limit!r}; only (0, inf) is supported (Δ is not clamped)")
        head_dim = int(hf.get("head_dim", 64))
        if "num_heads" in hf and int(hf["num_heads"]) * head_dim != expand * d:
            raise ValueError(f"import_hf: num_heads {hf['num_heads']} x head_dim {head_dim} != expand {expand} x "
                             f"hidden_size {d}")
        section = {"mamba2": {"expand": expand, "head_dim": head_dim, "d_state": int(hf.get("state_size", 128)),
                              "n_groups": int(hf.get("n_groups", 8)), "d_conv": int(hf.get("conv_kernel", 4)),
                              "chunk_size": int(hf.get("chunk_size", 256))}}
    return ModelConfig(**kwargs).replace(**section)


def import_hf(folder: Union[str, os.PathLike]) -> Tuple[ModelConfig, Dict[str, Any]]:
    """(ModelConfig, {our name: tensor}) of a Hugging Face mamba/mamba2 folder, ready for
    ``Model(config).load_parameters(tensors)``. A tied checkpoint's lm_head, if stored, is dropped."""
    folder = os.fspath(folder)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    cfg = config_from_hf(hf)
    tensors = {_from_hf_name(k): v for k, v in _C.load_safetensors(folder).items()}
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors:
        raise ValueError(f"import_hf: {folder} has tie_word_embeddings false but no lm_head.weight")
    expected = cfg.parameter_shapes()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"import_hf: {folder}: tensors missing {missing[:5]}, unexpected {extra[:5]}")
    return cfg, tensors


def load_model(folder: Union[str, os.PathLike], dtype: Any = "f32", device: Any = "cpu"):
    """A Model from a checkpoint folder: ours (config.json is a ModelConfig), a training
    run's folder (its newest checkpoint), or a Hugging Face mamba/mamba2 folder
    (config.json has model_type)."""
    from .model import Model

    from .train_checkpoint import find_latest

    folder = os.fspath(folder)
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path) and os.path.isdir(folder) and find_latest(folder):
        folder = find_latest(folder)  # a training run's folder: its newest checkpoint
        path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{folder}: no config.json; expected a checkpoint folder or a training run's folder")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if "model_type" in raw:
        cfg, tensors = import_hf(folder)
    else:
        cfg, tensors = ModelConfig.from_dict(raw), _C.load_safetensors(folder)
    model = Model(cfg, dtype=dtype, device=device)
    model.load_parameters(tensors)
    return model

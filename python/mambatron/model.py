"""The language model: a thin Python face on the native ``mambatron._C.Model``.

All math runs in C++; this module only turns a preset name, a :class:`ModelConfig`
or a dict into the native model and adds a constructor that initialises it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

from . import _C
from .config import ModelConfig
from .presets import get_preset

ConfigLike = Union[str, ModelConfig, Dict[str, Any]]


def resolve_config(config: ConfigLike) -> ModelConfig:
    """A validated ModelConfig from a preset name, a ModelConfig or a dict of its fields."""
    if isinstance(config, ModelConfig):
        return config.validate()
    if isinstance(config, str):
        return get_preset(config)
    if isinstance(config, dict):
        return ModelConfig.from_dict(config)
    raise TypeError(f"a model config must be a preset name, a ModelConfig or a dict, got {type(config).__name__}")


class Model(_C.Model):
    """A Mamba-1 / Mamba-2 / Transformer / hybrid language model (MODELS.md).

    ``Model(config, dtype="f32", device="cpu")`` allocates the parameters (zeros); call
    :meth:`init` or :meth:`load_parameters`, or build it with :meth:`from_config`.
    ``config`` is a preset name (``"tiny-hybrid"``), a :class:`ModelConfig` or a dict.
    """

    def __init__(self, config: ConfigLike, dtype: Any = "f32", device: Any = "cpu") -> None:
        cfg = resolve_config(config)
        super().__init__(cfg, dtype, device)
        self.model_config = cfg  #: the Python config it was built from

    @classmethod
    def from_config(cls, config: ConfigLike, dtype: Any = "f32", device: Any = "cpu",
                    seed: Optional[int] = 0, **overrides: Any) -> "Model":
        """A model initialised with ``seed`` (None leaves the parameters at zero).

        ``overrides`` are applied with :meth:`ModelConfig.replace` (``d_model=64``,
        ``mamba2={"d_state": 16}``, ...).
        """
        cfg = resolve_config(config)
        if overrides:
            cfg = cfg.replace(**overrides)
        model = cls(cfg, dtype=dtype, device=device)
        if seed is not None:
            model.init(seed)
        return model

    def __repr__(self) -> str:
        c = self.config
        return (f"mambatron.Model(pattern={c['pattern']!r}, d_model={c['d_model']}, vocab_size={c['vocab_size']}, "
                f"parameters={self.num_parameters():,}, dtype={self.dtype}, device={self.device})")

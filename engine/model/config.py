"""`ModelArgs`: the one description of a Llama model's shape (HF config.json, Meta params.json)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.files import read_json_object

META_DEFAULT_CONTEXT = 4096
"""Meta's params.json has no context length; Llama 2 was trained with 4096 positions."""


@dataclass
class ModelArgs:
    """Shape and constants of a Llama 2 model; derived sizes are computed, never stored twice."""

    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    hidden_dim: int
    n_kv_heads: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = META_DEFAULT_CONTEXT
    bos_id: int = 1
    eos_id: int = 2
    rope_interleaved: bool = True
    """Which head dimensions rotary embeddings rotate together: Meta's checkpoints pair (0,1),
    (2,3)...; Hugging Face's permute wq/wk rows so the pairs are (i, i + d/2) (see model.Rotary)."""
    head_dim: int = field(init=False)
    n_rep: int = field(init=False)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim"):
            if getattr(self, name) <= 0:
                raise EngineError(
                    f"model config has {name}={getattr(self, name)}; it must be positive"
                )
        if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
            raise EngineError(
                f"model config has rms_norm_eps={self.norm_eps}; it must be a positive number"
            )
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise EngineError(
                f"model config has rope_theta={self.rope_theta}; it must be a positive number"
            )
        if self.max_seq_len < 2:
            raise EngineError(
                f"model config has a context of {self.max_seq_len} positions; it needs at least 2"
            )
        if self.dim % self.n_heads:
            raise EngineError(f"model dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise EngineError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        self.head_dim = self.dim // self.n_heads
        # Each key/value head serves n_rep query heads (grouped-query attention).
        self.n_rep = self.n_heads // self.n_kv_heads

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "config.json") -> ModelArgs:
        """Read a transformers LlamaConfig dict; refuse other architectures by name."""
        model_type = cfg.get("model_type")
        if model_type != "llama":
            raise EngineError(
                f"{source}: model_type is '{model_type}', not 'llama'; Loopchat runs Llama 2 "
                "architecture models only"
            )
        if cfg.get("rope_scaling"):
            rope = cfg["rope_scaling"]
            kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else rope
            if kind not in (None, "default"):
                raise EngineError(
                    f"{source}: rope_scaling '{kind}' is not supported (Llama 2 has none)"
                )
        try:
            head_dim = cfg.get("head_dim")
            head_dim = None if head_dim is None else _integer(head_dim, "head_dim")
            args = cls(
                dim=int(cfg["hidden_size"]),
                n_layers=int(cfg["num_hidden_layers"]),
                n_heads=int(cfg["num_attention_heads"]),
                n_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
                vocab_size=int(cfg["vocab_size"]),
                hidden_dim=int(cfg["intermediate_size"]),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                rope_theta=float(cfg.get("rope_theta", 10000.0)),
                max_seq_len=int(cfg.get("max_position_embeddings", META_DEFAULT_CONTEXT)),
                bos_id=_first_id(cfg.get("bos_token_id"), 1),
                eos_id=_first_id(cfg.get("eos_token_id"), 2),
                rope_interleaved=False,
            )
        except KeyError as missing:
            raise EngineError(
                f"{source} lacks {missing}; it is not a complete Llama config"
            ) from None
        except EngineError as exc:
            raise EngineError(f"{source}: {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise EngineError(f"{source} has a malformed value: {exc}") from None
        if head_dim is not None and head_dim != args.head_dim:
            raise EngineError(
                f"{source}: head_dim {head_dim} != hidden_size / heads; not supported"
            )
        return args

    @classmethod
    def from_meta_params(
        cls, params: dict[str, Any], vocab_size: int, source: str = "params.json"
    ) -> ModelArgs:
        """Read Meta's params.json; the MLP size is derived the way Meta's reference derives it."""
        try:
            dim = int(params["dim"])
            multiple_of = int(params.get("multiple_of", 256))
            hidden = int(2 * (4 * dim) / 3)
            if params.get("ffn_dim_multiplier") is not None:
                hidden = int(float(params["ffn_dim_multiplier"]) * hidden)
            hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
            declared_vocab = int(params.get("vocab_size", -1))
            return cls(
                dim=dim,
                n_layers=int(params["n_layers"]),
                n_heads=int(params["n_heads"]),
                n_kv_heads=int(params["n_kv_heads"]) if params.get("n_kv_heads") else None,
                vocab_size=declared_vocab if declared_vocab > 0 else vocab_size,
                hidden_dim=hidden,
                norm_eps=float(params.get("norm_eps", 1e-5)),
                rope_theta=float(params.get("rope_theta", 10000.0)),
                max_seq_len=int(params.get("max_seq_len", META_DEFAULT_CONTEXT)),
            )
        except KeyError as missing:
            raise EngineError(
                f"{source} lacks {missing}; it is not a complete Llama params file"
            ) from None
        except EngineError as exc:
            raise EngineError(f"{source}: {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise EngineError(f"{source} has a malformed value: {exc}") from None


def _integer(value: Any, name: str) -> int:
    """An integer setting; "abc", 1.5 or true are malformed, not silently converted."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} is {value!r}, not an integer")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} is {value!r}, not an integer") from None
    if number != float(value):
        raise ValueError(f"{name} is {value!r}, not an integer")
    return number


def _first_id(value: Any, default: int) -> int:
    """HF configs may give one id or a list of ids; the engine stops on the first."""
    if isinstance(value, list):
        value = value[0] if value else None
    return default if value is None else int(value)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON config file, naming the file when it is unreadable (see
    engine.files)."""
    return read_json_object(path)

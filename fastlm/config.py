"""ModelConfig: the one source of a model's shapes, with presets for published architectures."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import FastLMValueError


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and hyper-parameters of a Llama-style decoder-only language model."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    d_ff: int
    max_seq_len: int = 2048
    tie_weights: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FastLMValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise FastLMValueError(
                f"d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise FastLMValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise FastLMValueError(f"head_dim = d_model / num_heads must be even for RoPE, got {self.head_dim}")
        if not self.rope_theta > 0:
            raise FastLMValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.norm_eps > 0:
            raise FastLMValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        """A preset by name (see :data:`PRESETS`), with any field overridden by keyword."""
        try:
            preset = PRESETS[name]
        except KeyError:
            raise FastLMValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
        return dataclasses.replace(preset, **overrides)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    "llama2-7b": ModelConfig(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                             d_ff=11008, max_seq_len=4096, tie_weights=False, rope_theta=10000.0,
                             norm_eps=1e-5),
    "llama3-8b": ModelConfig(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                             d_ff=14336, max_seq_len=8192, tie_weights=False, rope_theta=500000.0,
                             norm_eps=1e-5),
    "smollm2-135m": ModelConfig(vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3,
                                d_ff=1536, max_seq_len=8192, tie_weights=True, rope_theta=100000.0,
                                norm_eps=1e-5),
}

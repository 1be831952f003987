"""ModelConfig: the one source of a model's shapes, its component choices and its random initialisation.

Every decoder-only family fastlm runs is the same block with different switches (the textbook's point):

============================  ===========================================================================
choice (field)                families
============================  ===========================================================================
``rope_style``                "interleaved" pairs (x[2i], x[2i+1]): llama, mistral (GGUF permutes their Q/K
                              rows for it); "neox" rotate-half (x[i], x[i + r/2]): qwen2/3, phi3, gemma
``rope_freq_divisors``        per-pair divisors of the frequencies: llama3 scaling (Llama 3.1/3.2)
``rope_scaling``              linear: positions / factor (gemma3's global layers)
``rope_dim``                  partial rotary: only the first r dims of a head rotate (phi3 variants)
``head_dim``                  independent of d_model / num_heads (qwen3, gemma)
``qkv_bias``                  biases on the Q/K/V projections (qwen2)
``qk_norm``                   per-head RMSNorm of q and k before RoPE (qwen3, gemma3)
``activation``                "silu" (SwiGLU) or "gelu_tanh" (GeGLU: gemma)
``norm_offset``               RMSNorm scales by (offset + w): 1 for Hugging Face gemma weights
``scale_embeddings``          embeddings x sqrt(d_model) (gemma)
``post_norms``                RMSNorm of the attention and FFN outputs before the residual add (gemma2/3)
``attn_softcap``,             c * tanh(x / c) on the attention scores / the final logits (gemma2); 0 is off
``final_softcap``
``attn_scale``                scores x this instead of 1/sqrt(head_dim) (gemma's query_pre_attn_scalar)
``sliding_window``,           the layers in ``local_layers`` let query i see key j only if i - j < W; they
``local_layers``,             rotate with their own base ``rope_local_theta`` and no scaling (gemma2: even
``rope_local_theta``          layers, gemma3: 5 of every 6)
``tie_weights``               the output projection is the embedding table
============================  ===========================================================================
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .errors import FastLMValueError
from .validation import make_rng

# The longest context a model may declare (GGUF context_length, Hugging Face max_position_embeddings):
# 16 Mi positions, above every released model's (Llama 4 Scout's 10 M). Buffers per position are sized by
# the caches and sequences that calls ask for, so a large declared context costs nothing until used.
MAX_SEQ_LEN = 1 << 24

ROPE_STYLES = ("interleaved", "neox")
ACTIVATIONS = ("silu", "gelu_tanh")


@dataclass(frozen=True)
class ModelConfig:
    """Shapes, hyper-parameters and component choices of a decoder-only language model (see the module
    docstring for the choices; the defaults are Llama 2's)."""

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
    arch: str = "llama"
    head_dim: int | None = None                  # None: d_model // num_heads
    rope_style: str = "interleaved"
    rope_dim: int | None = None                  # None: the whole head
    rope_freq_divisors: tuple[float, ...] | None = None
    rope_scaling: float = 1.0
    rope_local_theta: float | None = None        # None: rope_theta
    qkv_bias: bool = False
    qk_norm: bool = False
    activation: str = "silu"
    norm_offset: float = 0.0
    scale_embeddings: bool = False
    post_norms: bool = False
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    attn_scale: float | None = None              # None: 1 / sqrt(head_dim)
    sliding_window: int = 0
    local_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        if self.max_seq_len > MAX_SEQ_LEN:
            raise FastLMValueError(f"max_seq_len must be at most {MAX_SEQ_LEN} (fastlm.config.MAX_SEQ_LEN), "
                                   f"got {self.max_seq_len}")
        if self.num_heads % self.num_kv_heads:
            raise FastLMValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise FastLMValueError(f"d_model ({self.d_model}) must be a multiple of num_heads "
                                       f"({self.num_heads}), or head_dim given")
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        _check_positive_int("head_dim", self.head_dim)
        if self.rope_dim is None:
            object.__setattr__(self, "rope_dim", self.head_dim)
        _check_positive_int("rope_dim", self.rope_dim)
        if self.rope_dim % 2 or self.rope_dim > self.head_dim:
            raise FastLMValueError(f"rope_dim must be even and at most head_dim ({self.head_dim}), "
                                   f"got {self.rope_dim}")
        if self.rope_style not in ROPE_STYLES:
            raise FastLMValueError(f"rope_style must be one of {ROPE_STYLES}, got {self.rope_style!r}")
        if self.activation not in ACTIVATIONS:
            raise FastLMValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name in ("rope_theta", "norm_eps", "rope_scaling"):
            if not getattr(self, name) > 0:
                raise FastLMValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("attn_softcap", "final_softcap"):
            if not getattr(self, name) >= 0:
                raise FastLMValueError(f"{name} must be >= 0 (0 is off), got {getattr(self, name)!r}")
        if self.rope_local_theta is not None and not self.rope_local_theta > 0:
            raise FastLMValueError(f"rope_local_theta must be > 0, got {self.rope_local_theta!r}")
        if self.attn_scale is not None and not self.attn_scale > 0:
            raise FastLMValueError(f"attn_scale must be > 0, got {self.attn_scale!r}")
        if self.rope_freq_divisors is not None:
            divisors = tuple(float(x) for x in self.rope_freq_divisors)
            if len(divisors) != self.rope_dim // 2 or not all(x > 0 for x in divisors):
                raise FastLMValueError(f"rope_freq_divisors must hold rope_dim / 2 = {self.rope_dim // 2} "
                                       f"positive numbers, got {len(divisors)}")
            object.__setattr__(self, "rope_freq_divisors", divisors)
        if isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int) \
                or self.sliding_window < 0:
            raise FastLMValueError(f"sliding_window must be an integer >= 0 (0: none), got {self.sliding_window!r}")
        local = tuple(sorted(set(int(i) for i in self.local_layers)))
        if any(not 0 <= i < self.num_layers for i in local):
            raise FastLMValueError(f"local_layers must be layer indices in [0, {self.num_layers}), got {local}")
        if bool(local) != (self.sliding_window > 0):
            raise FastLMValueError("local_layers and sliding_window go together: a window needs its layers, "
                                   "local layers need a window")
        object.__setattr__(self, "local_layers", local)

    # ---------------------------------------------------------------------------------- derived values

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def scores_scale(self) -> float:
        """The factor of q . k in the attention scores."""
        return 1.0 / math.sqrt(self.head_dim) if self.attn_scale is None else self.attn_scale

    def window(self, layer: int) -> int:
        """Layer ``layer``'s attention window (0: it sees every earlier position)."""
        return self.sliding_window if layer in self.local_layers else 0

    def rope_inv_freq(self, layer: int) -> np.ndarray:
        """(rope_dim / 2,) float64 angular frequencies of layer ``layer``: pair i turns by position * f_i.

        Global layers: theta^(-2i / r) / divisor_i / linear factor; local (sliding-window) layers: their own
        base, unscaled."""
        i = np.arange(0, self.rope_dim, 2) / self.rope_dim
        if layer in self.local_layers:
            return (self.rope_theta if self.rope_local_theta is None else self.rope_local_theta) ** -i
        freq = self.rope_theta ** -i / self.rope_scaling
        return freq if self.rope_freq_divisors is None else freq / np.array(self.rope_freq_divisors)

    def choices(self) -> dict[str, object]:
        """The component choices that differ from Llama 2's defaults, for display."""
        base = ModelConfig(1, 2, 1, 1, 1, 1)
        skip = {"vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff", "max_seq_len",
                "norm_eps", "rope_theta", "head_dim", "rope_dim"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in skip and getattr(self, f.name) != getattr(base, f.name)}
        if self.head_dim * self.num_heads != self.d_model:
            out["head_dim"] = self.head_dim
        if self.rope_dim != self.head_dim:
            out["rope_dim"] = self.rope_dim
        return out

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        """A preset by name (see :data:`PRESETS`), with any field overridden by keyword."""
        try:
            preset = PRESETS[name]
        except KeyError:
            raise FastLMValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
        return preset.replace(**overrides)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with ``changes``; head_dim and rope_dim follow the new shape unless given."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.head_dim == self.d_model // self.num_heads and "head_dim" not in changes:
            fields["head_dim"] = None
        if self.rope_dim == self.head_dim and "rope_dim" not in changes:
            fields["rope_dim"] = None
        return ModelConfig(**{**fields, **changes})


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise FastLMValueError(f"{name} must be a positive integer, got {value!r}")


def llama3_rope_divisors(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                         high_freq_factor: float, original_max_position: int) -> tuple[float, ...]:
    """Llama 3.1's frequency scaling as per-pair divisors (what GGUF stores as ``rope_freqs.weight``):
    wavelengths longer than original_max / low_freq_factor are divided by ``factor``, shorter than
    original_max / high_freq_factor kept, and those between blended smoothly."""
    freq = theta ** -(np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * np.pi / freq
    smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1 - smooth) / factor + smooth)          # freq / blended = (1 - s) freq / factor + s freq
    divisors = np.where(wavelen > original_max_position / low_freq_factor, factor,
                        np.where(wavelen < original_max_position / high_freq_factor, 1.0, blended))
    return tuple(float(x) for x in divisors)


# ----------------------------------------------------------------------------------- weights and their draws

def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of ``config``, in GGUF names without ``.weight`` (biases keep
    ``.bias``); linear weights are (out, in)."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {"token_embd": (c.vocab_size, c.d_model)}
    for i in range(c.num_layers):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm": (c.d_model,), b + "attn_q": (c.q_dim, c.d_model),
            b + "attn_k": (c.kv_dim, c.d_model), b + "attn_v": (c.kv_dim, c.d_model),
            b + "attn_output": (c.d_model, c.q_dim), b + "ffn_norm": (c.d_model,),
            b + "ffn_gate": (c.d_ff, c.d_model), b + "ffn_up": (c.d_ff, c.d_model),
            b + "ffn_down": (c.d_model, c.d_ff),
        })
        if c.qkv_bias:
            shapes.update({b + "attn_q.bias": (c.q_dim,), b + "attn_k.bias": (c.kv_dim,),
                           b + "attn_v.bias": (c.kv_dim,)})
        if c.qk_norm:
            shapes.update({b + "attn_q_norm": (c.head_dim,), b + "attn_k_norm": (c.head_dim,)})
        if c.post_norms:
            shapes.update({b + "post_attention_norm": (c.d_model,), b + "post_ffw_norm": (c.d_model,)})
    shapes["output_norm"] = (c.d_model,)
    if not c.tie_weights:
        shapes["output"] = (c.vocab_size, c.d_model)
    return shapes


def is_norm(name: str) -> bool:
    """Whether a parameter is an RMSNorm scale (norm_offset applies to these)."""
    return name.endswith("norm")


def init_parameters(config: ModelConfig, seed=None) -> dict[str, np.ndarray]:
    """Random float64 weights for ``config``, drawn in one fixed order from ``numpy.random.default_rng(seed)``.

    Both the reference and the fast model take their weights from here, so one seed gives both the same
    model. Matrices are Xavier-normal, in the order :func:`parameter_shapes` lists them; biases are normal
    with std 0.1 (drawn in that order too); norm scales are 1 - norm_offset (an effective scale of one) and
    draw nothing.
    """
    rng = make_rng(seed)
    params = {}
    for name, shape in parameter_shapes(config).items():
        if len(shape) == 2:
            params[name] = rng.normal(0.0, np.sqrt(2.0 / (shape[0] + shape[1])), size=shape)
        elif is_norm(name):
            params[name] = np.full(shape, 1.0 - config.norm_offset)
        else:
            params[name] = rng.normal(0.0, 0.1, size=shape)
    return params


PRESETS: dict[str, ModelConfig] = {
    "llama2-7b": ModelConfig(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                             d_ff=11008, max_seq_len=4096, tie_weights=False, rope_theta=10000.0,
                             norm_eps=1e-5),
    "llama3-8b": ModelConfig(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                             d_ff=14336, max_seq_len=8192, tie_weights=False, rope_theta=500000.0,
                             norm_eps=1e-5),
    "llama3.2-1b": ModelConfig(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                               d_ff=8192, max_seq_len=131072, tie_weights=True, rope_theta=500000.0,
                               norm_eps=1e-5, rope_freq_divisors=llama3_rope_divisors(
                                   64, 500000.0, 32.0, 1.0, 4.0, 8192)),
    "smollm2-135m": ModelConfig(vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3,
                                d_ff=1536, max_seq_len=8192, tie_weights=True, rope_theta=100000.0,
                                norm_eps=1e-5),
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2,
                                d_ff=4864, max_seq_len=32768, tie_weights=True, rope_theta=1000000.0,
                                norm_eps=1e-6, arch="qwen2", rope_style="neox", qkv_bias=True),
    "gemma2-2b": ModelConfig(vocab_size=256000, d_model=2304, num_layers=26, num_heads=8, num_kv_heads=4,
                             d_ff=9216, max_seq_len=8192, tie_weights=True, norm_eps=1e-6, arch="gemma2",
                             head_dim=256, rope_style="neox", activation="gelu_tanh", scale_embeddings=True,
                             post_norms=True, attn_softcap=50.0, final_softcap=30.0, sliding_window=4096,
                             local_layers=tuple(range(0, 26, 2))),
}

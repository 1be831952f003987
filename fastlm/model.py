"""CausalLM, the fast path: the reference model's mathematics in float32 (or float64 on request), with the
hot loops in compiled kernels and the dense projections in BLAS."""
from __future__ import annotations

import numpy as np

from . import _gather
from .config import ModelConfig
from .errors import FastLMTypeError
from .generation import naive_generate
from .reference import init_parameters
from .sampling import sample_token
from .validation import check_token_ids

_DTYPES = (np.float32, np.float64)


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _DTYPES:
        raise FastLMTypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class RMSNorm:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis, in the model dtype."""

    def __init__(self, weight: np.ndarray, eps: float):
        self.weight = weight                                   # (d,)
        self.eps = weight.dtype.type(eps)                      # a typed scalar keeps float32 in float32

    def forward(self, x: np.ndarray) -> np.ndarray:
        mean_square = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(mean_square + self.eps) * self.weight


class TransformerBlock:
    """One pre-norm decoder block. Q/K/V weights live in one fused (q_dim + 2 kv_dim, d) matrix and gate/up
    in one (2 d_ff, d) matrix, so each is a single GEMM; ``wq`` etc. are views into them."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray], index: int, dtype: np.dtype):
        p = lambda name: params[f"blk.{index}.{name}"]  # noqa: E731
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.attn_norm = RMSNorm(np.asarray(p("attn_norm"), dtype=dtype), c.norm_eps)
        self.w_qkv = np.ascontiguousarray(np.concatenate([p("attn_q"), p("attn_k"), p("attn_v")]), dtype=dtype)
        self.wq, self.wk, self.wv = np.split(self.w_qkv, [q_dim, q_dim + kv_dim])
        self.wo = np.ascontiguousarray(p("attn_output"), dtype=dtype)                      # (d, q_dim)
        self.ffn_norm = RMSNorm(np.asarray(p("ffn_norm"), dtype=dtype), c.norm_eps)
        self.w_gate_up = np.ascontiguousarray(np.concatenate([p("ffn_gate"), p("ffn_up")]), dtype=dtype)
        self.w_gate, self.w_up = np.split(self.w_gate_up, 2)                               # (d_ff, d) each
        self.w_down = np.ascontiguousarray(p("ffn_down"), dtype=dtype)                     # (d, d_ff)
        self.scale = dtype.type(1.0 / np.sqrt(c.head_dim))

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Rotate interleaved pairs of x (B, L, H, dk) with tables (L, dk/2)."""
        even, odd = x[..., 0::2], x[..., 1::2]
        cos, sin = cos[:, None, :], sin[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def attention(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        B, L, _ = x.shape
        h, hkv, dk = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = x @ self.w_qkv.T                                                  # (B, L, (h + 2 hkv) dk)
        q = self._rope(qkv[..., : h * dk].reshape(B, L, h, dk), cos, sin)
        k = self._rope(qkv[..., h * dk: (h + hkv) * dk].reshape(B, L, hkv, dk), cos, sin)
        v = qkv[..., (h + hkv) * dk:].reshape(B, L, hkv, dk)
        group = h // hkv
        # (B, hkv, group, L, dk): the query heads of one group share their K/V head without copying it.
        q = q.reshape(B, L, hkv, group, dk).transpose(0, 2, 3, 1, 4)
        k, v = k.transpose(0, 2, 1, 3)[:, :, None], v.transpose(0, 2, 1, 3)[:, :, None]
        scores = (q @ k.swapaxes(-1, -2)) * self.scale                           # (B, hkv, group, L, L)
        scores[..., np.triu(np.ones((L, L), dtype=bool), k=1)] = -np.inf        # the causal mask
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
        out = (weights @ v).transpose(0, 3, 1, 2, 4).reshape(B, L, h * dk)
        return out @ self.wo.T

    def ffn(self, x: np.ndarray) -> np.ndarray:
        gate_up = x @ self.w_gate_up.T                                          # (B, L, 2 d_ff)
        gate, up = np.split(gate_up, 2, axis=-1)
        return (gate / (1 + np.exp(-gate)) * up) @ self.w_down.T

    def forward(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        h = x + self.attention(self.attn_norm.forward(x), cos, sin)
        return h + self.ffn(self.ffn_norm.forward(h))


class CausalLM:
    """A Llama-style decoder-only language model.

    Built from random weights (``seed``) with the same draws as :class:`fastlm.reference.CausalLM`, so a
    float64 model and the reference hold identical weights and a float32 model holds them rounded.
    """

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 d_ff: int, max_seq_len: int = 2048, tie_weights: bool = False, rope_theta: float = 10000.0,
                 norm_eps: float = 1e-6, seed=None, dtype=np.float32):
        config = ModelConfig(vocab_size, d_model, num_layers, num_heads, num_kv_heads, d_ff, max_seq_len,
                             tie_weights, rope_theta, norm_eps)
        self._build(config, init_parameters(config, seed), _check_dtype(dtype))

    @classmethod
    def from_config(cls, config: ModelConfig, seed=None, dtype=np.float32) -> "CausalLM":
        return cls(config.vocab_size, config.d_model, config.num_layers, config.num_heads,
                   config.num_kv_heads, config.d_ff, config.max_seq_len, config.tie_weights,
                   config.rope_theta, config.norm_eps, seed=seed, dtype=dtype)

    def _build(self, config: ModelConfig, params: dict[str, np.ndarray], dtype: np.dtype) -> None:
        self.config, self.dtype = config, dtype
        self.embedding = np.ascontiguousarray(params["token_embd"], dtype=dtype)          # (V, d)
        self.blocks = [TransformerBlock(config, params, i, dtype) for i in range(config.num_layers)]
        self.final_norm = RMSNorm(np.asarray(params["output_norm"], dtype=dtype), config.norm_eps)
        output = self.embedding if config.tie_weights else np.ascontiguousarray(params["output"], dtype=dtype)
        self.W_out = output.T                                      # (d, V); tied: a view of the embedding
        # RoPE tables (max_seq_len, head_dim / 2), computed once in float64 and rounded to the model dtype.
        dk = config.head_dim
        inv_freq = config.rope_theta ** (-np.arange(0, dk, 2) / dk)
        angles = np.arange(config.max_seq_len)[:, None] * inv_freq
        self.rope_cos, self.rope_sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the embedding table for validated (B, L) int64 ids, by the compiled gather kernel."""
        out = np.empty(ids.shape + (self.config.d_model,), dtype=self.dtype)
        _gather.embedding_gather(self.embedding, ids, out)
        return out

    def forward(self, token_ids) -> np.ndarray:
        """Logits (B, L, V) in the model dtype for integer ids of shape (L,) or (B, L)."""
        ids = check_token_ids(token_ids, self.vocab_size, self.max_seq_len)
        L = ids.shape[1]
        x = self.embed(ids)
        cos, sin = self.rope_cos[:L], self.rope_sin[:L]
        for block in self.blocks:
            x = block.forward(x, cos, sin)
        return self.final_norm.forward(x) @ self.W_out

    def generate(self, prompt_tokens, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, eos_token_id: int | None = None,
                 seed=None) -> np.ndarray:
        """Sample up to ``max_new_tokens`` tokens after the prompt; returns (B, L + n) int64, prompt included.

        Stops at ``max_seq_len`` or once every row has produced ``eos_token_id`` (finished rows are padded
        with it). The same ``seed`` gives the same tokens.
        """
        return naive_generate(self.forward, sample_token, self.config, prompt_tokens, max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                              eos_token_id=eos_token_id, seed=seed)

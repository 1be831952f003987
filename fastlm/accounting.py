"""Parameter and FLOP accounting for a Llama-style decoder.

A multiply-add counts 2 FLOPs. Counted: the Q/K/V/O projections, attention scores (QK^T) and values (AV),
the three SwiGLU matmuls and the output projection; norms, RoPE, softmax and the embedding lookup are
O(L * d) and left out. Both generation counts let each of the n new tokens enter the model once (the
last one too, as the textbook does), so the naive loop runs sequences of p+1, ..., p+n tokens and the
cached loop runs the prompt once and then one token per step.
"""
from __future__ import annotations

from .config import ModelConfig
from .validation import check_int


def count_model_parameters(vocab_size: int, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
                           d_ff: int, tie_weights: bool = False) -> dict[str, int]:
    """Parameter counts by component: embedding, per_block (and its parts), blocks, final_norm,
    output_projection (0 when tied) and total."""
    c = ModelConfig(vocab_size, d_model, num_layers, num_heads, num_kv_heads, d_ff)
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    attention = d_model * q_dim + 2 * d_model * kv_dim + q_dim * d_model
    ffn = 3 * d_model * d_ff
    norms = 2 * d_model
    per_block = attention + ffn + norms
    counts = {
        "embedding": vocab_size * d_model,
        "attention_per_block": attention,
        "ffn_per_block": ffn,
        "norms_per_block": norms,
        "per_block": per_block,
        "blocks": num_layers * per_block,
        "final_norm": d_model,
        "output_projection": 0 if tie_weights else d_model * vocab_size,
    }
    counts["total"] = counts["embedding"] + counts["blocks"] + counts["final_norm"] + counts["output_projection"]
    return counts


def _forward_flops(c: ModelConfig, new_tokens: int, attended_keys: int, logit_rows: int) -> int:
    """FLOPs of one forward call: ``new_tokens`` tokens through every block, ``attended_keys`` (query, key)
    score pairs per head and layer, and ``logit_rows`` rows through the output projection."""
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    projections = 2 * new_tokens * (c.d_model * (q_dim + 2 * kv_dim) + q_dim * c.d_model)
    attention = 2 * 2 * c.num_heads * attended_keys * c.head_dim       # scores and weighted values
    ffn = 2 * new_tokens * 3 * c.d_model * c.d_ff
    return c.num_layers * (projections + attention + ffn) + 2 * logit_rows * c.d_model * c.vocab_size


def generation_flops(prompt_len: int, num_new_tokens: int, vocab_size: int, d_model: int, num_layers: int,
                     num_heads: int, num_kv_heads: int, d_ff: int) -> dict:
    """The naive loop: step i re-runs the whole sequence of s = p + i + 1 tokens, materialising the full
    s x s score matrix and projecting every position to logits."""
    c = ModelConfig(vocab_size, d_model, num_layers, num_heads, num_kv_heads, d_ff)
    prompt_len, num_new_tokens = check_int("prompt_len", prompt_len), check_int("num_new_tokens", num_new_tokens)
    per_step = []
    for i in range(num_new_tokens):
        s = prompt_len + i + 1
        per_step.append(_forward_flops(c, s, s * s, s))
    n, p = num_new_tokens, prompt_len
    return {"total": sum(per_step), "per_step": per_step, "token_steps": n * p + n * (n + 1) // 2}


def generation_flops_with_cache(prompt_len: int, num_new_tokens: int, vocab_size: int, d_model: int,
                                num_layers: int, num_heads: int, num_kv_heads: int, d_ff: int) -> dict:
    """With a KV cache: one causal prefill over the prompt (query i scores i + 1 keys, only the last position
    is projected to logits), then each step runs one token against a cache of p + i keys plus itself."""
    c = ModelConfig(vocab_size, d_model, num_layers, num_heads, num_kv_heads, d_ff)
    p, n = check_int("prompt_len", prompt_len), check_int("num_new_tokens", num_new_tokens)
    prefill = _forward_flops(c, p, p * (p + 1) // 2, 1) if p else 0
    per_step = [_forward_flops(c, 1, p + i + 1, 1) for i in range(n)]
    return {"total": prefill + sum(per_step), "prefill": prefill, "per_step": per_step, "token_steps": p + n}

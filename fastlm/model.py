"""CausalLM, the fast path: the textbook model's mathematics (every family's component choices, see
:mod:`fastlm.config`) in float32 (or float64 on request), with the hot loops in compiled kernels and the
dense projections in BLAS."""
from __future__ import annotations

import copy
import threading
from types import SimpleNamespace
from typing import Iterator

import numpy as np

from . import _attention, _blocks, _gather, _layers, _linear, _qlinear, _quant
from .config import ModelConfig, init_parameters, parameter_shapes
from .errors import FastLMTypeError, FastLMValueError, ModelFormatError
from .kvcache import KVCache
from . import generation
from .generation import Generation, TokenEvent
from .validation import check_int, check_token_ids
from .weights.quant import QuantizedTensor

Matrix = np.ndarray | QuantizedTensor   # a weight (out, in): float, or blocks that the kernels compute on

_DTYPES = (np.float32, np.float64)


def check_params(config: ModelConfig, params: dict[str, Matrix]) -> None:
    """Every tensor ``config`` needs is present with its shape (nanoGPT's habit: assert every weight)."""
    for name, shape in parameter_shapes(config).items():
        if name not in params:
            raise ModelFormatError(f"missing tensor {name!r} (expected shape {shape})")
        if tuple(params[name].shape) != shape:
            raise ModelFormatError(f"tensor {name!r} has shape {tuple(params[name].shape)}, expected {shape}")


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _DTYPES:
        raise FastLMTypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class RMSNorm:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis, by the compiled kernel."""

    def __init__(self, weight: np.ndarray, eps: float, dtype=None):
        self.weight = np.ascontiguousarray(weight, dtype=dtype)   # (d,)
        self.eps = float(eps)

    def forward(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalise rows of x (..., d) in the model dtype; ``out`` may be ``x``."""
        x = np.ascontiguousarray(x, dtype=self.weight.dtype)
        out = np.empty_like(x) if out is None else out
        d = x.shape[-1]
        _layers.rmsnorm(x.reshape(-1, d), self.weight, self.eps, out.reshape(-1, d))
        return out


class Workspace:
    """Activation buffers for up to ``capacity`` tokens, allocated once and reused by every layer and every
    step, and the attention kernel's scratch for those calls against caches of up to ``max_keys`` positions
    (None: as many as the caches it has served, grown by :meth:`reserve_keys`; a number fixes it).
    ``views(B, L)`` cuts them for a call over B rows of L tokens (cached per shape, so a decode loop
    allocates nothing)."""

    def __init__(self, config: ModelConfig, dtype: np.dtype, capacity: int, max_keys: int | None = None,
                 quantized: bool = False):
        c = config
        h, hkv, dk = c.num_heads, c.num_kv_heads, c.head_dim
        self.capacity = capacity
        self.max_keys = min(capacity, c.max_seq_len) if max_keys is None else max_keys
        self._grows = max_keys is None
        self._widths = {                       # values per token
            "x": c.d_model,                    # residual stream
            "xn": c.d_model,                   # normalised input of a sub-layer
            "qkv": (h + 2 * hkv) * dk,         # fused Q/K/V projection
            "q": h * dk,                       # rotated queries
            "attn": h * dk,                    # attention output per head
            "gate_up": 2 * c.d_ff,             # fused gate/up projection
            "act": c.d_ff,                     # silu(gate) * up
            "last": c.d_model,                 # final hidden state of each row's last position
        }
        self._flat = {name: np.empty(capacity * w, dtype) for name, w in self._widths.items()}
        self._attn_dims, self._dtype = (h, hkv, dk), dtype
        self._views: dict[tuple[int, int], SimpleNamespace] = {}
        # The widest input of a projection: the quantized kernels' scratch holds a call's activations.
        self._max_in = max(c.d_model, c.d_ff, h * dk) if quantized else 0
        self._size_scratch(_attention.num_threads())

    def _size_scratch(self, threads: int) -> None:
        """The kernels' worst case over every call this workspace serves, on ``threads`` threads."""
        size = _attention.max_scratch_size(self.capacity, *self._attn_dims, self.max_keys, threads)
        self._attn_scratch = np.empty(size, self._dtype)
        self.qscratch = (np.empty(_qlinear.scratch_size(self.capacity, self._max_in, threads), np.uint8)
                         if self._max_in else None)
        self._threads = threads
        self._views.clear()                    # they hold the previous scratch

    def reserve_keys(self, max_keys: int) -> None:
        """Make the scratch serve caches of ``max_keys`` positions: grows a workspace made without a fixed
        ``max_keys``, raises for one made with a smaller one."""
        if max_keys <= self.max_keys:
            return
        if not self._grows:
            raise FastLMValueError(f"workspace max_keys {self.max_keys} is below the cache's max_len {max_keys}")
        self.max_keys = max_keys
        self._size_scratch(self._threads)

    def views(self, B: int, L: int) -> SimpleNamespace:
        if B * L > self.capacity:
            raise FastLMValueError(f"a call over {B} x {L} tokens exceeds the workspace capacity {self.capacity}")
        threads = _attention.num_threads()
        if threads > self._threads:            # set_num_threads raised the count since: grow, once
            self._size_scratch(threads)
        views = self._views.get((B, L))
        if views is None:
            N = B * L
            flat = {name: buf[: N * self._widths[name]] for name, buf in self._flat.items()}
            views = SimpleNamespace(
                x=flat["x"].reshape(N, -1),
                layer_buffers=tuple(flat[name] for name in ("xn", "qkv", "q", "attn", "gate_up", "act")),
                last=self._flat["last"][: B * self._widths["last"]].reshape(B, -1),
                last_index=np.arange(L - 1, N, L, dtype=np.int64).reshape(1, B),
                attn_scratch=self._attn_scratch, qscratch=self.qscratch)
            self._views[(B, L)] = views
        return views


def as_matrix(w: Matrix, dtype: np.dtype) -> Matrix:
    """A weight as the model computes with it: blocks stay blocks in a float32 model (the block kernels
    compute in float32); anything else becomes a contiguous ``dtype`` array."""
    if isinstance(w, QuantizedTensor):
        return w if dtype == np.float32 else w.dequantize(dtype)
    return np.ascontiguousarray(w, dtype=dtype)


def fused(parts: list[Matrix], dtype: np.dtype) -> np.ndarray | tuple[QuantizedTensor, ...]:
    """Matrices that share their input, as one projection: block-format parts stay as loaded (the kernels run
    them in one pass, outputs side by side); float ones become one array of all their rows (as do all of
    them if the file mixes float and block parts)."""
    parts = [as_matrix(p, dtype) for p in parts]
    if all(isinstance(p, QuantizedTensor) for p in parts):
        return tuple(parts)
    dense = [p.dequantize(dtype) if isinstance(p, QuantizedTensor) else p for p in parts]
    return np.ascontiguousarray(np.concatenate(dense), dtype=dtype)


class TransformerBlock:
    """The weights of one decoder block, run by the compiled forward pass (``fastlm._blocks``):
    h = x + post(attn(norm(x))); out = h + post(ffn(norm(h))), the post norms only where the family has them.

    Each matrix is a float array or, as loaded, a :class:`QuantizedTensor` (a file may mix types, e.g. a Q6_K
    attn_v among Q4_K matrices); Q/K/V and gate/up are fused projections (see :func:`fused`). Norm scales
    are stored with the config's ``norm_offset`` folded in; ``rope_cos`` / ``rope_sin`` are this layer's
    (positions, rope_dim / 2) tables (local layers have their own base), as long as the model has grown them
    (see :meth:`CausalLM.compiled_for`).
    """

    def __init__(self, config: ModelConfig, params: dict[str, Matrix], index: int, dtype: np.dtype,
                 tables: tuple[np.ndarray, np.ndarray]):
        c = config
        p = lambda name: params[f"blk.{index}.{name}"]  # noqa: E731
        norm = lambda name: RMSNorm(np.asarray(p(name), dtype=np.float64) + c.norm_offset, c.norm_eps,  # noqa: E731
                                    dtype)
        vector = lambda name: np.ascontiguousarray(p(name), dtype=dtype)  # noqa: E731
        self.attn_norm, self.ffn_norm = norm("attn_norm"), norm("ffn_norm")
        self.w_qkv = fused([p("attn_q"), p("attn_k"), p("attn_v")], dtype)                  # (q_dim + 2 kv_dim, d)
        self.qkv_bias = (np.concatenate([vector("attn_q.bias"), vector("attn_k.bias"), vector("attn_v.bias")])
                         if c.qkv_bias else None)                                           # (q_dim + 2 kv_dim,)
        self.q_norm = norm("attn_q_norm").weight if c.qk_norm else None                     # (head_dim,)
        self.k_norm = norm("attn_k_norm").weight if c.qk_norm else None
        self.wo = as_matrix(p("attn_output"), dtype)                                       # (d, q_dim)
        self.post_attn_norm = norm("post_attention_norm") if c.post_norms else None
        self.w_gate_up = fused([p("ffn_gate"), p("ffn_up")], dtype)                        # (2 d_ff, d)
        self.w_down = as_matrix(p("ffn_down"), dtype)                                      # (d, d_ff)
        self.post_ffn_norm = norm("post_ffw_norm") if c.post_norms else None
        self.rope_cos, self.rope_sin = tables
        self.window = c.window(index)

    def matrices(self) -> list[Matrix]:
        """Every weight matrix, fused parts one by one."""
        return [w for group in (self.w_qkv, self.wo, self.w_gate_up, self.w_down)
                for w in (group if isinstance(group, tuple) else (group,))]


class CausalLM:
    """A Llama-style decoder-only language model.

    Built from random weights (``seed``) with the same draws as :class:`fastlm.reference.CausalLM`, so a
    float64 model and the reference hold identical weights and a float32 model holds them rounded.
    """

    prefill_chunk = 512   # tokens per row in one prefill pass: bounds activation memory for long prompts
    rope_rows = 512       # positions the RoPE tables start with; they grow with the caches calls use

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 d_ff: int, max_seq_len: int = 2048, tie_weights: bool = False, rope_theta: float = 10000.0,
                 norm_eps: float = 1e-6, seed=None, dtype=np.float32, **choices):
        config = ModelConfig(vocab_size, d_model, num_layers, num_heads, num_kv_heads, d_ff, max_seq_len,
                             tie_weights, rope_theta, norm_eps, **choices)
        self._build(config, init_parameters(config, seed), _check_dtype(dtype))

    @classmethod
    def from_config(cls, config: ModelConfig, seed=None, dtype=np.float32) -> "CausalLM":
        """Random weights for ``config``: the same draws as :class:`fastlm.reference.CausalLM`'s."""
        model = cls.__new__(cls)
        model._build(config, init_parameters(config, seed), _check_dtype(dtype))
        return model

    @classmethod
    def from_params(cls, config: ModelConfig, params: dict[str, Matrix], dtype=np.float32) -> "CausalLM":
        """A model holding the given weights: names and shapes of :func:`fastlm.config.parameter_shapes`
        (GGUF tensor names without ``.weight``), linear weights (out, in), Q/K rows laid out for the config's
        ``rope_style``. Shapes are checked against ``config``. Matrices given as
        :class:`~fastlm.weights.QuantizedTensor` stay in block form in a float32 model: the projections and the
        embedding lookup compute on the blocks (activations in float32)."""
        check_params(config, params)
        model = cls.__new__(cls)
        model._build(config, params, _check_dtype(dtype))
        return model

    def _build(self, config: ModelConfig, params: dict[str, Matrix], dtype: np.dtype) -> None:
        self.config, self.dtype = config, dtype
        c = config
        self.embedding = as_matrix(params["token_embd"], dtype)                             # (V, d)
        self.embed_scale = dtype.type(np.sqrt(c.d_model)) if c.scale_embeddings else None
        # RoPE frequencies per kind of layer (global, local); their tables cover the positions that calls
        # have needed so far (compiled_for), never the file's whole context up front.
        self._rope_freqs = {}
        for i in range(c.num_layers):
            self._rope_freqs.setdefault(i in c.local_layers, c.rope_inv_freq(i))
        tables = self._rope_tables(min(self.rope_rows, c.max_seq_len))
        self.blocks = [TransformerBlock(c, params, i, dtype, tables[i in c.local_layers])
                       for i in range(c.num_layers)]
        self.final_norm = RMSNorm(np.asarray(params["output_norm"], np.float64) + c.norm_offset, c.norm_eps,
                                  dtype)
        # The output projection (V, d); tied, it is the embedding table itself, blocks included.
        self.output = self.embedding if c.tie_weights else as_matrix(params["output"], dtype)
        self.quantized = any(isinstance(w, QuantizedTensor) for w in self._matrices())
        self._compiled = self._compile(self.blocks)
        self._rope_len = self.blocks[0].rope_cos.shape[0]    # set after _compiled, read before it
        self._growing = threading.Lock()

    def _rope_tables(self, positions: int) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
        """cos and sin (positions, rope_dim / 2) per kind of layer, computed in float64 and rounded."""
        tables = {}
        for local, freq in self._rope_freqs.items():
            angles = np.arange(positions)[:, None] * freq
            tables[local] = (np.cos(angles).astype(self.dtype), np.sin(angles).astype(self.dtype))
        return tables

    def _compile(self, blocks: list[TransformerBlock]) -> _blocks.Blocks:
        c = self.config
        return _blocks.Blocks(blocks, c.num_heads, c.num_kv_heads, c.head_dim, c.rope_dim, c.rope_style == "neox",
                              c.activation == "gelu_tanh", c.scores_scale, c.attn_softcap)

    def compiled_for(self, positions: int) -> _blocks.Blocks:
        """The compiled blocks, their RoPE tables covering at least ``positions`` positions (capped at
        max_seq_len). Tables grow, at least doubling, when a call needs more; the new tables go to new compiled
        blocks over copies of the TransformerBlocks, so a call running on the old ones in another thread keeps
        them, tables included, alive until it returns."""
        positions = min(positions, self.max_seq_len)
        if self._rope_len >= positions:
            return self._compiled
        with self._growing:
            if self._rope_len < positions:
                n = min(self.max_seq_len, max(positions, 2 * self._rope_len))
                tables = self._rope_tables(n)
                blocks = [copy.copy(b) for b in self.blocks]
                for i, block in enumerate(blocks):
                    block.rope_cos, block.rope_sin = tables[i in self.config.local_layers]
                self._compiled, self.blocks = self._compile(blocks), blocks
                self._rope_len = n
            return self._compiled

    @property
    def W_out(self) -> np.ndarray:
        """The textbook's (d_model, V) output projection: ``logits = x @ W_out``; tied, a view of the
        embedding (blocks are decoded to float first)."""
        w = self.output.dequantize(self.dtype) if isinstance(self.output, QuantizedTensor) else self.output
        return w.T

    def _matrices(self) -> Iterator[Matrix]:
        yield self.embedding
        if self.output is not self.embedding:
            yield self.output
        for b in self.blocks:
            yield from b.matrices()

    @property
    def weight_types(self) -> dict[str, int]:
        """How many weight matrices the model computes with in each format (``"F32"``, ``"Q4_1"``, ...)."""
        names = [w.qtype.name if isinstance(w, QuantizedTensor) else self.dtype.name.replace("float", "F")
                 for w in self._matrices()]
        return {n: names.count(n) for n in sorted(set(names))}

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def forward(self, token_ids) -> np.ndarray:
        """Logits (B, L, V) in the model dtype for integer ids of shape (L,) or (B, L)."""
        ids = check_token_ids(token_ids, self.vocab_size, self.max_seq_len)
        B, L = ids.shape
        c = self.config
        ws = Workspace(c, self.dtype, B * L, max_keys=L, quantized=self.quantized).views(B, L)
        # No cache to keep: every layer's keys and values pass through the same buffers (a layer axis of 1).
        k, v = (np.empty((1, B, c.num_kv_heads, L, c.head_dim), self.dtype) for _ in range(2))
        self._run(ids, k, v, np.zeros(B, np.int64), ws)
        logits = np.empty((B * L, self.vocab_size), self.dtype)
        self._project(ws.x, logits, ws)
        return logits.reshape(B, L, -1)

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` (default max_seq_len) tokens."""
        if max_len is not None and max_len > self.max_seq_len:
            raise FastLMValueError(f"max_len {max_len} exceeds the model's max_seq_len {self.max_seq_len}")
        return KVCache(self.config, batch_size, max_len, self.dtype)

    def new_workspace(self, capacity: int, max_keys: int | None = None) -> Workspace:
        """Activation buffers for calls over up to ``capacity`` tokens in all (B * L), into caches of up to
        ``max_keys`` positions (default: the caches it is used with, its scratch growing to the longest)."""
        max_keys = None if max_keys is None else check_int("max_keys", max_keys, 1)
        return Workspace(self.config, self.dtype, check_int("capacity", capacity, 1), max_keys, self.quantized)

    def prefill(self, token_ids, cache: KVCache, first_row: int = 0, workspace: Workspace | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
        """Run (B, L) tokens through the model, appending them to cache rows first_row .. first_row + B - 1
        (each row continues at its own cached length), and return the last position's logits (B, V).

        Long prompts go in chunks of as many tokens per row as ``workspace`` holds, so memory stays bounded.
        """
        ids = check_token_ids(token_ids, self.vocab_size, self.max_seq_len)
        B, L = ids.shape
        rows = self._check_rows(cache, first_row, B, L)
        ws = workspace if workspace is not None else self.new_workspace(B * min(L, self.prefill_chunk),
                                                                        cache.max_len)
        if ws.capacity < B:
            raise FastLMValueError(f"workspace capacity {ws.capacity} is below the batch size {B}")
        ws.reserve_keys(cache.max_len)
        chunk = ws.capacity // B
        for start in range(0, L, chunk):
            views = ws.views(B, min(chunk, L - start))
            part = ids if L <= chunk else np.ascontiguousarray(ids[:, start:start + chunk])
            self._run(part, cache.k[:, rows], cache.v[:, rows], cache.lengths[rows], views)
            cache.lengths[rows] += part.shape[1]
        # Only each row's last position goes through the output projection.
        _gather.embedding_gather(views.x, views.last_index, views.last.reshape(1, B, -1))
        if out is None:
            out = np.empty((B, self.vocab_size), self.dtype)
        self._project(views.last, out, views)
        return out

    def decode(self, tokens, cache: KVCache, first_row: int = 0, workspace: Workspace | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """One new token per row (B,) appended to cache rows first_row .. first_row + B - 1; returns the
        next-token logits (B, V). With a workspace and ``out`` given, a step allocates nothing."""
        ids = np.asarray(tokens)
        return self.prefill(ids.reshape(-1, 1) if ids.ndim == 1 else ids, cache, first_row, workspace, out)

    def _check_rows(self, cache: KVCache, first_row: int, B: int, L: int) -> slice:
        if not isinstance(cache, KVCache) or cache.k.dtype != self.dtype or cache.k.shape[0] != len(self.blocks):
            raise FastLMTypeError("cache must be a KVCache made by this model's new_cache()")
        first_row = check_int("first_row", first_row, 0)
        if first_row + B > cache.batch_size:
            raise FastLMValueError(f"rows {first_row}..{first_row + B - 1} exceed the cache's {cache.batch_size} rows")
        rows = slice(first_row, first_row + B)
        longest = int(cache.lengths[rows].max()) + L
        if longest > cache.max_len:
            raise FastLMValueError(f"{L} more tokens would take a row to {longest} positions, past the cache's "
                                   f"max_len {cache.max_len}")
        return rows

    def _run(self, ids: np.ndarray, k: np.ndarray, v: np.ndarray, start_pos: np.ndarray,
             ws: SimpleNamespace) -> None:
        """Embed validated ids (B, L) and run them through every block: the final residual stream is in
        ws.x (B * L, d); each layer's keys and values go into k, v (layers, B, hkv, T, dk) at positions
        start_pos[b] + i."""
        B, L = ids.shape
        if isinstance(self.embedding, QuantizedTensor):
            _quant.gather_rows(self.embedding.data, self.embedding.qtype, ids, ws.x.reshape(B, L, -1))
        else:
            _gather.embedding_gather(self.embedding, ids, ws.x.reshape(B, L, -1))
        if self.embed_scale is not None:
            np.multiply(ws.x, self.embed_scale, out=ws.x)
        compiled = self.compiled_for(k.shape[3])
        compiled.run(ws.x, *ws.layer_buffers, k, v, start_pos, ws.attn_scratch, ws.qscratch)

    def _project(self, hidden: np.ndarray, out: np.ndarray, ws: SimpleNamespace) -> None:
        """Final RMSNorm (in place) and the output projection of hidden (M, d) into out (M, V)."""
        self.final_norm.forward(hidden, out=hidden)
        if isinstance(self.output, QuantizedTensor):
            _qlinear.linear(hidden, self.output.data, self.output.qtype, out, 0.0, ws.qscratch)
        else:
            _linear.linear(hidden, self.output, out)
        cap = self.config.final_softcap
        if cap:                                    # cap * tanh(logits / cap), in place
            np.multiply(out, out.dtype.type(1 / cap), out=out)
            np.tanh(out, out=out)
            np.multiply(out, out.dtype.type(cap), out=out)

    # The seed's generation API, as thin methods over the engine's free functions (fastlm.generation).

    def generate(self, prompt_tokens, max_new_tokens: int, *args, **options) -> np.ndarray:
        """:func:`fastlm.generation.generate` on this model: (B, L + n) int64, prompts included."""
        return generation.generate(self, prompt_tokens, max_new_tokens, *args, **options)

    def generate_batch(self, prompts, max_new_tokens: int, **options) -> list[Generation]:
        """:func:`fastlm.generation.generate_batch` on this model: one :class:`Generation` per prompt."""
        return generation.generate_batch(self, prompts, max_new_tokens, **options)

    def stream(self, prompts, max_new_tokens: int, **options) -> Iterator[TokenEvent]:
        """:func:`fastlm.generation.stream` on this model: each new token as soon as it is sampled."""
        return generation.stream(self, prompts, max_new_tokens, **options)

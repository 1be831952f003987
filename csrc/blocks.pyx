# Every transformer block of a forward pass in one compiled call.
#
# A decode step of a small model is many small kernels: SmolLM2-135M runs 30 blocks of 9 kernels per token.
# Called one by one from Python, each pays for argument parsing, buffer acquisition and its own checks, about
# 3 us apiece, 0.7 ms a token in all. Here the checks run once per pass, then the same kernels (the *_core.pxi
# files, shared with the single-kernel modules) run back to back on raw pointers without the GIL: one Python
# call per forward pass, whatever the number of layers.
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, exp, expf, sqrt, tanh, tanhf
from libc.stdint cimport int8_t, int64_t, uint8_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from openmp cimport omp_get_max_threads
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

import os

import numpy as np

from fastlm.errors import FastLMValueError
from fastlm.weights.quant import QuantizedTensor

ctypedef fused floating:
    float
    double

include "layers_core.pxi"
include "linear_core.pxi"
include "attention_core.pxi"
include "qlinear_core.pxi"

cdef bint _cpu_simd = fl_cpu_has(FL_ISA_AVX2)
include "simd_switch.pxi"


cdef struct Projection:
    # One float matrix (nparts == 0: dense, rows x cols of the model's type), or up to 3 block-format matrices
    # that share their input, their outputs side by side (Q, K, V; gate, up), as loaded.
    const void* dense
    QPart parts[3]
    int nparts, rows, cols


cdef struct Layer:
    const void* attn_norm
    const void* ffn_norm
    const void* post_attn_norm     # NULL: no norm of the attention output before its residual add
    const void* post_ffn_norm      # NULL: likewise for the FFN output
    RopeSpec rope                  # bias, q/k norms and RoPE tables of the Q/K/V split
    int64_t window                 # 0: full causal attention; W: sliding window of W positions
    Projection qkv, wo, gate_up, down


cdef const void* _address(a, dtype, shape=None):
    """The data of a C-contiguous array of ``dtype`` (and ``shape``, if given; raises otherwise); None is
    NULL, a component the model does not have."""
    if a is None:
        return NULL
    if shape is not None and np.shape(a) != shape:
        raise ValueError(f"a vector has shape {np.shape(a)}, expected {shape}")
    if not isinstance(a, np.ndarray) or a.dtype != dtype or not a.flags.c_contiguous:
        raise TypeError(f"expected a C-contiguous {np.dtype(dtype)} array, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")
    return <const void*><size_t>a.ctypes.data


cdef Projection _projection(w, dtype, Py_ssize_t rows, Py_ssize_t cols) except *:
    """The kernels' view of a (rows, cols) weight: a float array of ``dtype``, or a QuantizedTensor or a tuple
    of them (their rows one after another; float32 models only)."""
    cdef Projection p
    parts = (w,) if isinstance(w, QuantizedTensor) else w if isinstance(w, tuple) else None
    p.nparts, p.rows, p.cols = 0, 0, cols
    if parts is None:
        if tuple(w.shape) != (rows, cols):
            raise ValueError(f"a weight has shape {tuple(w.shape)}, expected {(rows, cols)}")
        p.dense, p.rows = _address(w, dtype), rows
        return p
    if dtype != np.float32:
        raise TypeError("block-quantized weights need a float32 model")
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"a projection holds 1 to 3 matrices, got {len(parts)}")
    for part in parts:
        if not isinstance(part, QuantizedTensor) or part.shape[1] != cols:
            raise ValueError(f"expected block-format matrices of {cols} columns, got {part!r}")
        check_qtype(int(part.qtype), cols)
        p.parts[p.nparts].data = <const uint8_t*>_address(part.data, np.uint8)
        p.parts[p.nparts].qtype, p.parts[p.nparts].rows = int(part.qtype), part.shape[0]
        p.nparts += 1
        p.rows += part.shape[0]
    if p.rows != rows:
        raise ValueError(f"matrices of {p.rows} rows in all, expected {rows}")
    return p


cdef class Blocks:
    """A model's transformer blocks as the pointers that :func:`run` reads: built once per model, it holds
    references to every array it points into. ``blocks`` are :class:`fastlm.model.TransformerBlock`s;
    the rest are the model's component choices (see :class:`fastlm.config.ModelConfig`)."""

    cdef Layer* layers
    cdef readonly int num_layers, d_model, num_heads, num_kv_heads, head_dim, d_ff, max_in
    cdef readonly bint quantized, gelu
    cdef double eps, scale, softcap
    cdef object dtype
    cdef Py_ssize_t rope_len
    cdef list _keep

    def __cinit__(self, blocks, int num_heads, int num_kv_heads, int head_dim, int rope_dim, bint neox,
                  bint gelu, double scale, double softcap):
        if not blocks:
            raise ValueError("a model has at least one block")
        self.dtype = blocks[0].rope_cos.dtype
        if self.dtype not in (np.float32, np.float64):
            raise TypeError("RoPE tables must be float32 or float64")
        if rope_dim < 2 or rope_dim % 2 or rope_dim > head_dim:
            raise ValueError(f"rope_dim {rope_dim} must be even, in [2, head_dim = {head_dim}]")
        self.num_layers, self.num_heads = len(blocks), num_heads
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.gelu, self.scale, self.softcap = gelu, scale, softcap
        self.rope_len = blocks[0].rope_cos.shape[0]
        self._keep = []
        self.layers = <Layer*>malloc(self.num_layers * sizeof(Layer))
        if self.layers == NULL:
            raise MemoryError()
        self.d_model, self.d_ff = blocks[0].w_down.shape
        cdef Py_ssize_t d = self.d_model, ff = self.d_ff, q = num_heads * head_dim
        cdef Py_ssize_t kv = num_kv_heads * head_dim
        cdef Layer* layer
        cdef int i
        tables = (self.rope_len, rope_dim // 2)
        for i, block in enumerate(blocks):
            layer = &self.layers[i]
            layer.attn_norm = _address(block.attn_norm.weight, self.dtype, (d,))
            layer.ffn_norm = _address(block.ffn_norm.weight, self.dtype, (d,))
            layer.post_attn_norm = _address(getattr(block.post_attn_norm, "weight", None), self.dtype, (d,))
            layer.post_ffn_norm = _address(getattr(block.post_ffn_norm, "weight", None), self.dtype, (d,))
            layer.rope.bias = _address(block.qkv_bias, self.dtype, (q + 2 * kv,))
            layer.rope.q_norm = _address(block.q_norm, self.dtype, (head_dim,))
            layer.rope.k_norm = _address(block.k_norm, self.dtype, (head_dim,))
            layer.rope.eps = block.attn_norm.eps
            layer.rope.cos = _address(block.rope_cos, self.dtype, tables)
            layer.rope.sin = _address(block.rope_sin, self.dtype, tables)
            layer.rope.rope_dim, layer.rope.neox = rope_dim, neox
            layer.window = block.window
            layer.qkv = _projection(block.w_qkv, self.dtype, q + 2 * kv, d)
            layer.wo = _projection(block.wo, self.dtype, d, q)
            layer.gate_up = _projection(block.w_gate_up, self.dtype, 2 * ff, d)
            layer.down = _projection(block.w_down, self.dtype, d, ff)
            self._keep.append(block)
            self.eps = block.attn_norm.eps
        self.max_in = max(d, ff, q)
        self.quantized = any(isinstance(w, QuantizedTensor) for b in blocks for w in b.matrices())

    def __dealloc__(self):
        free(self.layers)

    def run(self, floating[:, ::1] x, floating[::1] xn, floating[::1] qkv, floating[::1] q, floating[::1] attn,
            floating[::1] gate_up, floating[::1] act, floating[:, :, :, :, :] k_cache,
            floating[:, :, :, :, :] v_cache, const int64_t[::1] start_pos, floating[::1] attn_scratch,
            uint8_t[::1] qscratch=None):
        """Advance the residual stream x (B * L, d), row b's L tokens at positions start_pos[b] + i, through
        every block in place, writing each layer's keys and values into k_cache / v_cache (layers, B, hkv, T,
        dk): each layer's (B, hkv, T, dk) part contiguous; a first axis of 1 is one buffer that every layer
        reuses. xn ... act are activation buffers of at least B * L times their row widths; attn_scratch
        holds attention's scratch for these shapes, qscratch the block kernels' (quantized weights)."""
        cdef int B = start_pos.shape[0], h = self.num_heads, hkv = self.num_kv_heads, dk = self.head_dim
        cdef Py_ssize_t N = x.shape[0], T = k_cache.shape[3], i
        cdef int L = <int>(N // B) if B else 0
        if B == 0 or N == 0 or N % B:
            raise ValueError(f"blocks.run: x has {N} rows, not a positive multiple of the {B} start positions")
        if floating is float:
            if self.dtype != np.float32:
                raise TypeError("blocks.run: float32 buffers for a float64 model")
        elif self.dtype != np.float64:
            raise TypeError("blocks.run: float64 buffers for a float32 model")
        if x.shape[1] != self.d_model:
            raise ValueError(f"blocks.run: x rows have {x.shape[1]} values, the model {self.d_model}")
        for name, buf, width in (("xn", xn.shape[0], self.d_model), ("qkv", qkv.shape[0], (h + 2 * hkv) * dk),
                                 ("q", q.shape[0], h * dk), ("attn", attn.shape[0], h * dk),
                                 ("gate_up", gate_up.shape[0], 2 * self.d_ff), ("act", act.shape[0], self.d_ff)):
            if buf < N * width:
                raise ValueError(f"blocks.run: {name} holds {buf} values, fewer than {N} x {width}")
        cdef Py_ssize_t k_layer = _check_cache("k_cache", k_cache, self.num_layers, B, hkv, dk)
        cdef Py_ssize_t v_layer = _check_cache("v_cache", v_cache, self.num_layers, B, hkv, dk)
        if _dims(v_cache.shape, 5)[1:] != _dims(k_cache.shape, 5)[1:]:
            raise ValueError("blocks.run: k_cache and v_cache differ in shape")
        cdef int64_t lo = start_pos[0], hi = start_pos[0]
        for i in range(B):
            lo, hi = min(lo, start_pos[i]), max(hi, start_pos[i])
        if lo < 0 or hi + L > min(T, self.rope_len):
            raise ValueError(f"blocks.run: start positions {lo}..{hi} with {L} tokens do not fit the cache ({T}) "
                             f"and RoPE table ({self.rope_len}) lengths")
        cdef Py_ssize_t need = _plan(B, L, h, hkv, dk, hi + L, omp_get_max_threads()).elements
        if attn_scratch.shape[0] < need:
            raise ValueError(f"blocks.run: attn_scratch holds {attn_scratch.shape[0]} values, fewer than {need}")
        cdef uint8_t* qs = NULL
        if self.quantized:
            need = qlinear_scratch_size(N, self.max_in, omp_get_max_threads())
            if qscratch is None or qscratch.shape[0] < need:
                raise ValueError(f"blocks.run: qscratch must hold {need} bytes for {N} tokens")
            qs = &qscratch[0]
        with nogil:
            self._run(&x[0, 0], &xn[0], &qkv[0], &q[0], &attn[0], &gate_up[0], &act[0],
                      &k_cache[0, 0, 0, 0, 0], k_layer, &v_cache[0, 0, 0, 0, 0], v_layer, &start_pos[0],
                      B, L, T, hi, &attn_scratch[0], qs)

    cdef void _run(self, floating* x, floating* xn, floating* qkv, floating* q, floating* attn,
                   floating* gate_up, floating* act, floating* k_cache, Py_ssize_t k_layer, floating* v_cache,
                   Py_ssize_t v_layer, const int64_t* start_pos, int B, int L, Py_ssize_t T, int64_t hi,
                   floating* attn_scratch, uint8_t* qscratch) noexcept nogil:
        cdef int n = B * L, h = self.num_heads, hkv = self.num_kv_heads, dk = self.head_dim, i
        cdef bint simd = _simd
        cdef Layer* layer
        cdef floating* kc
        cdef floating* vc
        for i in range(self.num_layers):
            layer = &self.layers[i]
            kc, vc = k_cache + i * k_layer, v_cache + i * v_layer
            rmsnorm_run(x, <const floating*>layer.attn_norm, self.eps, xn, n, self.d_model)
            _project(xn, &layer.qkv, qkv, n, 0, simd, qscratch)
            rope_qkv_run(qkv, &layer.rope, start_pos, q, kc, vc, B, L, h, hkv, dk, T)
            attention_run(q, kc, vc, start_pos, attn, B, L, h, hkv, dk, T, hi, self.scale, layer.window,
                          self.softcap, attn_scratch, simd)
            self._residual(attn, &layer.wo, <const floating*>layer.post_attn_norm, x, xn, n, simd, qscratch)
            rmsnorm_run(x, <const floating*>layer.ffn_norm, self.eps, xn, n, self.d_model)
            _project(xn, &layer.gate_up, gate_up, n, 0, simd, qscratch)
            gated_run(gate_up, act, n, self.d_ff, self.gelu, simd)
            self._residual(act, &layer.down, <const floating*>layer.post_ffn_norm, x, xn, n, simd, qscratch)

    cdef void _residual(self, const floating* inp, const Projection* w, const floating* post_norm,
                               floating* x, floating* tmp, int n, bint simd, uint8_t* qscratch) noexcept nogil:
        """x += w(inp), or with a post-norm x += norm(w(inp)) through tmp (n, d_model)."""
        if post_norm == NULL:
            _project(inp, w, x, n, 1, simd, qscratch)      # the residual add rides the projection
        else:
            _project(inp, w, tmp, n, 0, simd, qscratch)
            rmsnorm_run(tmp, post_norm, self.eps, tmp, n, self.d_model)
            add_run(x, tmp, n, self.d_model)


cdef tuple _dims(Py_ssize_t* shape, int ndim):
    """A memoryview's shape (or strides) as a tuple, for error messages."""
    return tuple([shape[i] for i in range(ndim)])


cdef Py_ssize_t _check_cache(str name, floating[:, :, :, :, :] c, int layers, int B, int hkv, int dk) except -1:
    """The cache's layer stride in elements (0 for one buffer shared by all layers), once its shape and the
    contiguity of each layer's part are checked."""
    cdef Py_ssize_t item = sizeof(floating), T = c.shape[3]
    if c.shape[0] not in (1, layers) or c.shape[1] != B or c.shape[2] != hkv or c.shape[4] != dk:
        raise ValueError(f"blocks.run: {name} has shape {_dims(c.shape, 5)}, expected ({layers} or 1, {B}, "
                         f"{hkv}, T, {dk})")
    if (c.strides[4] != item or c.strides[3] != dk * item or c.strides[2] != T * dk * item
            or c.strides[1] != hkv * T * dk * item):
        raise ValueError(f"blocks.run: each layer of {name} must be C-contiguous, strides {_dims(c.strides, 5)}")
    if c.shape[0] == 1:
        return 0
    if c.strides[0] % item:
        raise ValueError(f"blocks.run: {name}'s layer stride is not a whole number of elements")
    return c.strides[0] // item


cdef inline void _project(const floating* x, const Projection* w, floating* out, int n, int beta, bint simd,
                          uint8_t* qscratch) noexcept nogil:
    """out (n, rows) = x (n, cols) @ w.T + beta * out, on the dense or the block kernels."""
    if w.nparts == 0:
        linear_run(x, <const floating*>w.dense, out, n, w.cols, w.rows, beta, simd)
    elif floating is float:
        qlinear_parts(x, w.parts, w.nparts, out, n, w.cols, beta, qscratch, simd)

# Causal grouped-query attention, flash style: out = softmax(q k^T * scale + causal mask) v, one query tile
# at a time against key tiles, with an online (running max, running sum) softmax. The (L, T) score matrix
# never exists; each thread holds one query tile, one key tile of scores and one output accumulator.
#
# A work item is (batch row b, KV head, query tile, key split). Its M = Tq * group query rows are the Tq
# query positions of the tile times the `group` query heads that read this KV head, so every K/V tile
# loaded serves the whole group. Key tiles lying wholly in the tile's future are never visited (causal),
# and the last visited tile is cut at the tile's last position, so prefill does about half the square.
# When there are too few items to keep every thread busy (decode: L = 1, B * hkv small), each item's key
# range is split across threads and the partial (max, sum, accumulator) triples are merged afterwards.
#
# The tile kernels come in a hand-written AVX2/FMA float32 version (attention_impl.h) and a portable one in
# vector-extension C (attention_portable.h) for float32 and float64, the latter compiled twice: for the
# baseline CPU and for AVX2/FMA. The AVX2 versions run when the CPU has them, unless set_simd(False).
from cython.parallel cimport parallel, prange, threadid
from openmp cimport omp_get_max_threads
from libc.math cimport INFINITY, tanh, tanhf
from libc.stdint cimport int64_t
from libc.string cimport memset

import math
import os

import numpy as np

from fastlm.errors import FastLMTypeError, FastLMValueError
from fastlm.validation import check_int

ctypedef fused floating:
    float
    double

include "attention_core.pxi"

cdef extern from "cpu_isa.h" nogil:
    enum:
        FL_ISA_AVX2
    int fl_cpu_has(int isa)

cdef bint _cpu_simd = fl_cpu_has(FL_ISA_AVX2)
include "simd_switch.pxi"
cdef Py_ssize_t _allocations = 0   # calls that allocated their own scratch (scratch=None)


def allocations():
    """How many attention() calls have allocated their own scratch (no ``scratch`` given) in this process: a
    debug counter, for tests that check a decode loop allocates nothing."""
    return _allocations


def num_threads():
    """The thread count attention() plans for now (OpenMP's maximum for the calling thread), the
    ``num_threads`` of scratch_size."""
    return omp_get_max_threads()


def query_tile(num_heads, num_kv_heads):
    """Query positions per tile, Tq: Tq * (num_heads // num_kv_heads) rows share each loaded K/V tile."""
    if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
        raise FastLMValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads "
                               f"({num_kv_heads})")
    return max(1, TARGET_ROWS // (num_heads // num_kv_heads))


def scratch_elements(L, num_heads, num_kv_heads, head_dim):
    """Per-thread scratch, in elements, for queries of length L: independent of L beyond one query tile of
    M = Tq * (num_heads // num_kv_heads) rows."""
    m = max(1, min(query_tile(num_heads, num_kv_heads), L)) * (num_heads // num_kv_heads)
    return _per_thread(m, head_dim)


def scratch_size(B, L, num_heads, num_kv_heads, head_dim, T, num_threads):
    """Elements of the ``scratch`` that attention() needs for q (B, L, num_heads, head_dim) against caches
    of T positions on num_threads threads (num_threads()): the worst case over start_pos, whose largest
    values split the key ranges most."""
    for name, value, low in (("B", B, 0), ("L", L, 0), ("num_heads", num_heads, 1),
                             ("num_kv_heads", num_kv_heads, 1), ("head_dim", head_dim, 1), ("T", T, 0),
                             ("num_threads", num_threads, 1)):
        check_int(name, value, low)
    query_tile(num_heads, num_kv_heads)                       # a positive multiple
    return _plan(B, L, num_heads, num_kv_heads, head_dim, T, num_threads).elements


def max_scratch_size(tokens, num_heads, num_kv_heads, head_dim, T, num_threads):
    """At least the scratch_size() of any call over B x L <= tokens queries: one scratch serves them all.

    A call's need grows with its rows per query tile, at most those of min(tokens, Tq) positions, and
    depends on its count of (row, query tile) pairs through the key split: a count of at most tokens, and
    nothing is split from ITEMS_PER_THREAD x num_threads on. Calls over B rows of that one tile, for every
    such count B, bound them all."""
    check_int("tokens", tokens, 1)
    L = min(tokens, query_tile(num_heads, num_kv_heads))
    return max(scratch_size(B, L, num_heads, num_kv_heads, head_dim, T, num_threads)
               for B in range(1, min(tokens, ITEMS_PER_THREAD * num_threads) + 1))


# ----------------------------------------------------------------------------------------------- entry

def _check_array(name, a, ndim, dtype=None):
    if not isinstance(a, np.ndarray):
        raise FastLMTypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.ndim != ndim:
        raise FastLMValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise FastLMTypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise FastLMValueError(f"{name} must be C-contiguous (strides {a.strides} for shape {a.shape})")


def attention(q, k_cache, v_cache, start_pos, out, double scale, *, window=0, softcap=0.0, scratch=None):
    """Causal grouped-query attention over a KV cache, written into ``out``.

    q (B, L, h, dk): queries at absolute positions start_pos[b] + i, RoPE applied. k_cache, v_cache
    (B, hkv, T, dk): keys (RoPE applied) and values of positions 0..T-1; positions up to
    start_pos[b] + L - 1 must be filled. start_pos (B,) int64. out (B, L, h, dk) is overwritten; it may be
    q itself. Query head j reads KV head j // (h // hkv); the query at position P sees keys 0..P. q, the
    caches and out share one dtype, float32 or float64, and are C-contiguous. ``scale`` multiplies the
    scores (1 / sqrt(dk)). ``window`` W > 0 (sliding-window layers): the query at P sees keys P - W + 1..P
    only, and keys further back are never read. ``softcap`` c > 0: scores become c * tanh(scores / c).

    ``scratch``: working memory, a writeable 1-D C-contiguous array of q's dtype with at least
    ``scratch_size(B, L, h, hkv, dk, T, num_threads())`` elements, overlapping no other argument; its
    contents are overwritten. Without it each call allocates its own.
    """
    _check_array("q", q, 4)
    if q.dtype not in (np.float32, np.float64):
        raise FastLMTypeError(f"q must have dtype float32 or float64, got {q.dtype}")
    _check_array("k_cache", k_cache, 4, q.dtype)
    _check_array("v_cache", v_cache, 4, q.dtype)
    _check_array("start_pos", start_pos, 1, np.int64)
    _check_array("out", out, 4, q.dtype)
    B, L, h, dk = q.shape
    hkv, T = k_cache.shape[1], k_cache.shape[2]
    if dk < 1:
        raise FastLMValueError(f"q head_dim must be >= 1, got shape {q.shape}")
    if h < 1 or hkv < 1 or h % hkv:
        raise FastLMValueError(f"q heads ({h}) must be a positive multiple of k_cache heads ({hkv})")
    if k_cache.shape != (B, hkv, T, dk):
        raise FastLMValueError(f"k_cache must have shape (B, hkv, T, dk) = ({B}, hkv, T, {dk}) to match q "
                               f"{q.shape}, got {k_cache.shape}")
    if v_cache.shape != k_cache.shape:
        raise FastLMValueError(f"v_cache must have the shape of k_cache {k_cache.shape}, got {v_cache.shape}")
    if start_pos.shape != (B,):
        raise FastLMValueError(f"start_pos must have shape ({B},), got {start_pos.shape}")
    if out.shape != q.shape:
        raise FastLMValueError(f"out must have the shape of q {q.shape}, got {out.shape}")
    if not out.flags.writeable:
        raise FastLMValueError("out must be writeable")
    if np.may_share_memory(out, k_cache) or np.may_share_memory(out, v_cache):
        raise FastLMValueError("out must not overlap k_cache or v_cache")
    if out is not q and np.may_share_memory(out, q):
        raise FastLMValueError("out must be q itself or not overlap it")
    if not math.isfinite(scale):
        raise FastLMValueError(f"scale must be finite, got {scale}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
        raise FastLMValueError(f"window must be an integer >= 0 (0: none), got {window!r}")
    if not (math.isfinite(softcap) and softcap >= 0):
        raise FastLMValueError(f"softcap must be finite and >= 0 (0: off), got {softcap!r}")
    if scratch is not None:
        _check_scratch(scratch, q, k_cache, v_cache, out)
    if q.dtype == np.float32:
        _attention[float](q, k_cache, v_cache, start_pos, out, scale, window, softcap, scratch)
    else:
        _attention[double](q, k_cache, v_cache, start_pos, out, scale, window, softcap, scratch)


cdef int _check_scratch(scratch, q, k_cache, v_cache, out) except -1:
    _check_array("scratch", scratch, 1, q.dtype)
    B, L, h, dk = q.shape
    need = _plan(B, L, h, k_cache.shape[1], dk, k_cache.shape[2], omp_get_max_threads()).elements
    if scratch.shape[0] < need:
        raise FastLMValueError(f"scratch holds {scratch.shape[0]} elements, fewer than the {need} of "
                               f"scratch_size() for q {q.shape} and T = {k_cache.shape[2]} on "
                               f"{omp_get_max_threads()} threads")
    if not scratch.flags.writeable:
        raise FastLMValueError("scratch must be writeable")
    if (np.may_share_memory(scratch, q) or np.may_share_memory(scratch, k_cache)
            or np.may_share_memory(scratch, v_cache) or np.may_share_memory(scratch, out)):
        raise FastLMValueError("scratch must not overlap q, k_cache, v_cache or out")
    return 0


cdef int _attention(const floating[:, :, :, ::1] q, const floating[:, :, :, ::1] k_cache,
                    const floating[:, :, :, ::1] v_cache, const int64_t[::1] start_pos,
                    floating[:, :, :, ::1] out, double scale, int64_t window, double softcap,
                    floating[::1] scratch) except -1:
    """The kernel behind attention(), which has validated every argument but the range of start_pos."""
    global _allocations
    cdef int B = q.shape[0], L = q.shape[1], h = q.shape[2], dk = q.shape[3]
    cdef int hkv = k_cache.shape[1]
    cdef Py_ssize_t T = k_cache.shape[2]
    cdef int64_t lo = start_pos[0] if B else 0, hi = lo
    cdef int b
    for b in range(B):
        lo = min(lo, start_pos[b])
        hi = max(hi, start_pos[b])
    if lo < 0 or hi + L > T:
        raise FastLMValueError(f"start_pos must lie in [0, T - L] = [0, {T - L}] (T = {T}, L = {L}), got "
                               f"values from {lo} to {hi}")
    if B == 0 or L == 0:
        return 0
    cdef Plan p = _plan(B, L, h, hkv, dk, hi + L, omp_get_max_threads())
    if scratch is None:
        scratch = np.empty(p.elements, dtype=np.float32 if floating is float else np.float64)
        _allocations += 1
    with nogil:
        attention_run(&q[0, 0, 0, 0], &k_cache[0, 0, 0, 0], &v_cache[0, 0, 0, 0], &start_pos[0],
                      &out[0, 0, 0, 0], B, L, h, hkv, dk, T, hi, scale, window, softcap, &scratch[0], _simd)
    return 0

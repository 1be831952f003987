# Per-token layers of the transformer block: RMSNorm, RoPE (fused with the Q/K/V split and the write into
# the K/V cache) and the gated activations (SwiGLU, GeGLU). Each loops over tokens in parallel; the inner
# loops are plain contiguous arithmetic that the compiler vectorises (layers_core.pxi), but for the gated
# activations' exponentials, which layers_impl.h computes with AVX2 where the CPU has it. Callers validate
# shapes; the checks here guard the kernels.
from cython.parallel cimport prange
from libc.math cimport exp, expf, sqrt
from libc.stdint cimport int64_t
from libc.string cimport memcpy

import os

cdef extern from "cpu_isa.h" nogil:
    enum:
        FL_ISA_AVX2
    int fl_cpu_has(int isa)

ctypedef fused floating:
    float
    double


cdef tuple _dims(Py_ssize_t* shape, int ndim):
    """A memoryview's shape as a tuple, for error messages."""
    return tuple([shape[i] for i in range(ndim)])

include "layers_core.pxi"

cdef bint _cpu_simd = fl_cpu_has(FL_ISA_AVX2)
include "simd_switch.pxi"


def rmsnorm(const floating[:, ::1] x, const floating[::1] weight, double eps, floating[:, ::1] out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for each row t of x (N, d). out may be x."""
    cdef Py_ssize_t N = x.shape[0], d = x.shape[1]
    if weight.shape[0] != d or out.shape[0] != N or out.shape[1] != d:
        raise ValueError(f"rmsnorm: x {_dims(x.shape, 2)}, weight ({weight.shape[0]},), "
                         f"out {_dims(out.shape, 2)} do not match")
    if N:
        with nogil:
            rmsnorm_run(&x[0, 0], &weight[0], eps, &out[0, 0], N, d)


def rope_qkv(const floating[:, :, ::1] qkv, const floating[:, ::1] cos, const floating[:, ::1] sin,
             const int64_t[::1] start_pos, floating[:, :, :, ::1] q_out,
             floating[:, :, :, ::1] k_cache, floating[:, :, :, ::1] v_cache, *, bint neox=False,
             const floating[::1] bias=None, const floating[::1] q_norm=None, const floating[::1] k_norm=None,
             double eps=1e-6):
    """Split the fused projection qkv (B, L, (h + 2 hkv) dk) into heads, rotate Q and K, and write
    q_out (B, L, h, dk) and the K/V caches (B, hkv, T, dk) at positions start_pos[b] + i.

    RoPE rotates the first rope_dim = 2 * cos.shape[1] values of each head, as interleaved pairs
    (x[2j], x[2j+1]) or, with ``neox``, rotate-half pairs (x[j], x[j + rope_dim/2]), by the angle whose
    cos/sin sit at cos[pos, j] (tables (max_len, rope_dim/2), computed once per model). ``bias``
    ((h + 2 hkv) dk,) is added first; ``q_norm`` / ``k_norm`` (dk,) RMSNorm each query / key head before
    the rotation.
    """
    cdef Py_ssize_t B = qkv.shape[0], L = qkv.shape[1]
    cdef Py_ssize_t h = q_out.shape[2], dk = q_out.shape[3], hkv = k_cache.shape[1], T = k_cache.shape[2]
    cdef Py_ssize_t b
    if (qkv.shape[2] != (h + 2 * hkv) * dk or q_out.shape[0] != B or q_out.shape[1] != L
            or _dims(k_cache.shape, 4) != _dims(v_cache.shape, 4) or k_cache.shape[0] != B
            or k_cache.shape[3] != dk or cos.shape[1] < 1 or 2 * cos.shape[1] > dk
            or _dims(sin.shape, 2) != _dims(cos.shape, 2) or start_pos.shape[0] != B):
        raise ValueError(f"rope_qkv: inconsistent shapes qkv {_dims(qkv.shape, 3)}, q_out {_dims(q_out.shape, 4)}, "
                         f"k_cache {_dims(k_cache.shape, 4)}, v_cache {_dims(v_cache.shape, 4)}, "
                         f"cos {_dims(cos.shape, 2)}, start_pos ({start_pos.shape[0]},)")
    for name, vec, n in (("bias", bias, qkv.shape[2]), ("q_norm", q_norm, dk), ("k_norm", k_norm, dk)):
        if vec is not None and vec.shape[0] != n:
            raise ValueError(f"rope_qkv: {name} has {vec.shape[0]} values, expected {n}")
    for b in range(B):
        if start_pos[b] < 0 or start_pos[b] + L > min(T, cos.shape[0]):
            raise ValueError(f"rope_qkv: start_pos[{b}] = {start_pos[b]} with L = {L} does not fit "
                             f"the cache ({T}) and RoPE table ({cos.shape[0]}) lengths")
    cdef RopeSpec spec
    spec.bias = NULL if bias is None else &bias[0]
    spec.q_norm = NULL if q_norm is None else &q_norm[0]
    spec.k_norm = NULL if k_norm is None else &k_norm[0]
    spec.eps, spec.cos, spec.sin, spec.rope_dim, spec.neox = eps, &cos[0, 0], &sin[0, 0], 2 * cos.shape[1], neox
    if B * L:
        with nogil:
            rope_qkv_run(&qkv[0, 0, 0], &spec, &start_pos[0], &q_out[0, 0, 0, 0],
                         &k_cache[0, 0, 0, 0], &v_cache[0, 0, 0, 0], B, L, h, hkv, dk, T)


def gated(const floating[:, ::1] gate_up, floating[:, ::1] out, *, bint gelu=False):
    """out (N, f) = act(gate) * up, where gate_up (N, 2f) holds [gate | up] per row: act is silu (SwiGLU),
    or with ``gelu`` GELU's tanh approximation (GeGLU)."""
    cdef Py_ssize_t N = out.shape[0], f = out.shape[1]
    if gate_up.shape[0] != N or gate_up.shape[1] != 2 * f:
        raise ValueError(f"gated: gate_up {_dims(gate_up.shape, 2)} must be (N, 2f) for out {_dims(out.shape, 2)}")
    if N:
        with nogil:
            gated_run(&gate_up[0, 0], &out[0, 0], N, f, gelu, _simd)

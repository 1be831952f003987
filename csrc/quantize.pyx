# Quantization of float32 data into ggml block formats: the inverse of quant.pyx's dequantizers, with the
# quantizers of ggml_types.h's table (ggml_quantize.h: bit for bit ggml's reference quantizers; see there).
#
# Work splits into chunks of whole blocks quantized in parallel.
from cython.parallel cimport prange
from libc.stdint cimport uint8_t

include "ggml_types.pxi"

# The types that encode (the table's rows with a quantizer), and their blocks.
BLOCKS = {t: GGML_BLOCKS[t] for t in GGML_NAMES if blk_traits_of(t).quantize != NULL}
NAMES = {t: GGML_NAMES[t] for t in BLOCKS}

# Below this many elements a parallel region costs more than it saves; a chunk is one unit of parallel work.
cdef Py_ssize_t PARALLEL_MIN = 65536
cdef Py_ssize_t CHUNK_ELEMENTS = 16384


cdef void _run(blk_quantize_fn fn, const float* x, uint8_t* y, Py_ssize_t n_blocks, Py_ssize_t elements,
               Py_ssize_t nbytes, Py_ssize_t per_chunk, Py_ssize_t n_chunks, bint parallel) noexcept nogil:
    cdef Py_ssize_t c, b, end
    if parallel:
        for c in prange(n_chunks, schedule="dynamic"):   # dynamic: a descheduled thread delays no one
            end = min((c + 1) * per_chunk, n_blocks)
            for b in range(c * per_chunk, end):
                fn(x + b * elements, y + b * nbytes)
    else:
        for b in range(n_blocks):
            fn(x + b * elements, y + b * nbytes)


def quantize(const float[::1] x, int qtype, uint8_t[::1] out):
    """Encode the float32 values ``x`` as ggml type ``qtype`` (one of ``BLOCKS``: F32, F16, Q8_0, Q4_0, Q4_1,
    Q5_0, Q5_1, Q2_K ... Q6_K, IQ4_NL, IQ4_XS) into ``out``, which must hold exactly ``len(x) / elements * bytes`` of the type's blocks."""
    if qtype not in BLOCKS:
        raise ValueError(f"qtype must be one of {sorted(BLOCKS)} ({', '.join(NAMES.values())}), got {qtype}")
    cdef Py_ssize_t elements = BLOCKS[qtype][0], nbytes = BLOCKS[qtype][1]
    cdef Py_ssize_t n = x.shape[0]
    if n % elements:
        raise ValueError(f"x must hold whole {elements}-element blocks of type {qtype}, got {n} elements")
    cdef Py_ssize_t n_blocks = n // elements
    if out.shape[0] != n_blocks * nbytes:
        raise ValueError(f"out must hold {n_blocks * nbytes} bytes ({n_blocks} blocks of {nbytes}), "
                         f"got {out.shape[0]}")
    if n_blocks == 0:
        return
    cdef blk_quantize_fn fn = blk_traits_of(qtype).quantize
    cdef Py_ssize_t per_chunk = max(CHUNK_ELEMENTS // elements, 1)
    cdef Py_ssize_t n_chunks = (n_blocks + per_chunk - 1) // per_chunk
    cdef bint parallel = n >= PARALLEL_MIN
    with nogil:
        _run(fn, &x[0], &out[0], n_blocks, elements, nbytes, per_chunk, n_chunks, parallel)

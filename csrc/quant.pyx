# Dequantization of GGUF / safetensors tensor data: raw little-endian bytes -> float32 or float64, with the
# decoders of ggml_types.h's table (ggml_blocks.h: bit for bit ggml's reference dequantizers; see there).
#
# Every format is a sequence of fixed-size blocks (F16 and BF16 are blocks of one element), so the work
# splits into chunks of whole blocks decoded in parallel.
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t

ctypedef fused floating:
    float
    double

include "ggml_types.pxi"

BLOCKS = GGML_BLOCKS        # every type decodes
NAMES = GGML_NAMES

# Below this many elements a parallel region costs more than it saves; a chunk is one unit of parallel work.
cdef Py_ssize_t PARALLEL_MIN = 65536
cdef Py_ssize_t CHUNK_ELEMENTS = 16384


cdef inline void _decode(const blk_traits* t, const uint8_t* src, floating* dst, Py_ssize_t n) noexcept nogil:
    """Decode the n elements (whole blocks) of type t at ``src`` into ``dst``."""
    if floating is float:
        t.decode_f32(src, dst, n)
    else:
        t.decode_f64(src, dst, n)


def dequantize(const uint8_t[::1] raw, int qtype, floating[::1] out):
    """Decode ``raw`` (whole blocks of ggml type ``qtype``) into ``out``, chunks of blocks in parallel."""
    if qtype not in BLOCKS:
        raise ValueError(f"dequantize: unsupported ggml type {qtype}")
    cdef Py_ssize_t block_elements = BLOCKS[qtype][0], block_bytes = BLOCKS[qtype][1]
    cdef Py_ssize_t n = out.shape[0]
    if n % block_elements or raw.shape[0] != n // block_elements * block_bytes:
        raise ValueError(f"dequantize: {raw.shape[0]} bytes of ggml type {qtype} do not hold {n} elements")
    if n == 0:
        return
    cdef Py_ssize_t nblocks = n // block_elements
    cdef Py_ssize_t per_chunk = max(1, CHUNK_ELEMENTS // block_elements)
    cdef Py_ssize_t nchunks = (nblocks + per_chunk - 1) // per_chunk, c, first
    cdef const uint8_t* src = &raw[0]
    cdef floating* dst = &out[0]
    cdef const blk_traits* traits = blk_traits_of(qtype)
    for c in prange(nchunks, nogil=True, schedule="static", num_threads=1 if n < PARALLEL_MIN else 0):
        first = c * per_chunk
        _decode(traits, src + first * block_bytes, dst + first * block_elements,
                min(per_chunk, nblocks - first) * block_elements)


def gather_rows(const uint8_t[:, ::1] table, int qtype, const int64_t[:, ::1] ids, floating[:, :, ::1] out):
    """out[b, l, :] = dequant(table[ids[b, l]]): the embedding lookup from a quantized (V, row_bytes) table,
    bit for bit dequantize()'s values. Rows are decoded in parallel when there are enough elements."""
    if qtype not in BLOCKS:
        raise ValueError(f"gather_rows: unsupported ggml type {qtype}")
    cdef Py_ssize_t block_elements = BLOCKS[qtype][0], block_bytes = BLOCKS[qtype][1]
    cdef Py_ssize_t V = table.shape[0], row_bytes = table.shape[1], k = out.shape[2]
    cdef Py_ssize_t B = ids.shape[0], L = ids.shape[1]
    if out.shape[0] != B or out.shape[1] != L:
        raise ValueError(f"gather_rows: out has shape ({out.shape[0]}, {out.shape[1]}, {k}), ids ({B}, {L})")
    if k % block_elements or row_bytes != k // block_elements * block_bytes:
        raise ValueError(f"gather_rows: table rows of {row_bytes} bytes of ggml type {qtype} do not hold "
                         f"{k} elements (out's last dimension)")
    cdef Py_ssize_t b, l, i, nrows = B * L
    cdef int64_t t
    for b in range(B):
        for l in range(L):
            t = ids[b, l]
            if t < 0 or t >= V:
                raise ValueError(f"gather_rows: id {t} at [{b}, {l}] outside the table's rows [0, {V})")
    if nrows == 0 or k == 0:
        return
    cdef const uint8_t* src = &table[0, 0]
    cdef const int64_t* idp = &ids[0, 0]
    cdef floating* dst = &out[0, 0, 0]
    cdef const blk_traits* traits = blk_traits_of(qtype)
    for i in prange(nrows, nogil=True, schedule="static", num_threads=1 if nrows * k < PARALLEL_MIN else 0):
        _decode(traits, src + idp[i] * row_bytes, dst + i * k, k)

# Embedding gather: out[b, l, :] = table[ids[b, l], :].
#
# The caller (fastlm.model) has already checked shapes, dtypes, contiguity and that every id lies in
# [0, V): this kernel trusts its input and touches no Python object while it copies.
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy

ctypedef fused floating:
    float
    double


def embedding_gather(const floating[:, ::1] table, const int64_t[:, ::1] ids, floating[:, :, ::1] out):
    """Copy row ``ids[b, l]`` of ``table`` (V, d) into ``out[b, l]`` (B, L, d), rows in parallel."""
    cdef Py_ssize_t B = ids.shape[0], L = ids.shape[1], d = table.shape[1]
    cdef Py_ssize_t n = B * L, i
    cdef size_t row_bytes = d * sizeof(floating)
    cdef const int64_t* flat_ids = &ids[0, 0]
    cdef const floating* src = &table[0, 0]
    cdef floating* dst = &out[0, 0, 0]
    # Parallel only when there is enough to copy to pay for waking threads.
    with nogil:
        if n * d >= 65536:
            for i in prange(n, schedule="static"):
                memcpy(dst + i * d, src + flat_ids[i] * d, row_bytes)
        else:
            for i in range(n):
                memcpy(dst + i * d, src + flat_ids[i] * d, row_bytes)

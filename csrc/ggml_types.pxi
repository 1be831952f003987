# The ggml tensor types fastlm knows: the formats' table of ggml_types.h (one row per format: block geometry,
# decoders, quantizer, dot kernels per SIMD level) and the one CPU probe of cpu_isa.h, seen from Cython.
# Included after any `cdef extern from "qlinear_impl.h"` (which fills the table's kernel column).
from libc.stdint cimport uint8_t

cdef extern from "ggml_types.h" nogil:
    ctypedef void (*blk_decode_f32_fn)(const uint8_t* src, float* y, size_t k) noexcept nogil
    ctypedef void (*blk_decode_f64_fn)(const uint8_t* src, double* y, size_t k) noexcept nogil
    ctypedef void (*blk_quantize_fn)(const float* x, uint8_t* y) noexcept nogil
    ctypedef struct blk_traits:
        const char* name
        int elems
        int bytes
        blk_decode_f32_fn decode_f32
        blk_decode_f64_fn decode_f64
        blk_quantize_fn quantize
        void* ints_avx2
        int int_n_max
    const blk_traits* blk_traits_of(int qtype)
    enum:
        BLK_ID_MAX
        BLK_F32
        BLK_F16
        BLK_BF16
        BLK_Q8_0
        FL_ISA_PORTABLE
        FL_ISA_AVX2
        FL_ISA_COUNT
    const char* FL_ISA_NAMES[]
    int fl_cpu_has(int isa)
    int fl_cpu_isa()

# Every type the table knows: id -> name, id -> (elements, bytes) of one block.
GGML_NAMES = {t: blk_traits_of(t).name.decode() for t in range(BLK_ID_MAX + 1) if blk_traits_of(t) != NULL}
GGML_BLOCKS = {t: (blk_traits_of(t).elems, blk_traits_of(t).bytes) for t in GGML_NAMES}
# The SIMD levels, by name, and the ones this CPU runs.
ISA_NAMES = [FL_ISA_NAMES[i].decode() for i in range(FL_ISA_COUNT)]
CPU_ISAS = [ISA_NAMES[i] for i in range(FL_ISA_COUNT) if fl_cpu_has(i)]

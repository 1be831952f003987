# The ggml tensor types fastlm's kernels know, by their ids in GGUF tensor infos, and each one's block.

cdef enum:
    T_F32 = 0
    T_F16 = 1
    T_Q4_0 = 2
    T_Q4_1 = 3
    T_Q8_0 = 8
    T_Q4_K = 12
    T_Q6_K = 14
    T_BF16 = 30

# (elements, bytes) of one block of each type; F32, F16 and BF16 are blocks of one element.
GGML_BLOCKS = {T_F32: (1, 4), T_F16: (1, 2), T_BF16: (1, 2), T_Q8_0: (32, 34), T_Q4_0: (32, 18),
               T_Q4_1: (32, 20), T_Q4_K: (256, 144), T_Q6_K: (256, 210)}

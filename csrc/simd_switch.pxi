# A module's SIMD switch: FASTLM_SIMD=0 turns it off at import, fastlm.set_simd flips every module's.
# Needs: os, and `cdef bint _cpu_simd` (whether the CPU has what the module's SIMD kernels use) set before.

cdef bint _simd = _cpu_simd and os.environ.get("FASTLM_SIMD", "1") != "0"


def set_simd(bint enabled):
    """Run this module's AVX2/FMA kernels (True, where the CPU has them) or its portable ones (False)."""
    global _simd
    _simd = enabled and _cpu_simd


def simd_enabled():
    """True when this module runs its AVX2/FMA kernels."""
    return bool(_simd)

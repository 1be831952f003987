/* The one CPU probe: which x86 SIMD level this machine runs, decided once per process.
 *
 * Levels, each a column of the formats' table (ggml_types.h), best first:
 *   AVX512_VNNI  AVX-512 F/BW/VL + VNNI (vpdpwssd on 512 bits)
 *   AVX512       AVX-512 F/BW/VL
 *   AVX_VNNI     AVX2 + FMA + F16C + AVX-VNNI (vpdpwssd on 256 bits, VEX: Alder Lake and later)
 *   AVX2         AVX2 + FMA + F16C
 *   PORTABLE     plain C
 * A level needs every feature of the levels it falls back to (FL_ISA_FALLBACK), so a kernel missing at one
 * level is taken from the next one down. The features are cpuid's as the compiler's runtime reads them, which
 * also checks that the OS saves the registers (XCR0). AMX is never probed nor used: cpuid advertises it on
 * machines whose OS does not grant it, where ldtilecfg faults.
 *
 * Code for a level is compiled with target attributes, not -march, so the extension loads on any x86-64.
 */
#ifndef FASTLM_CPU_ISA_H
#define FASTLM_CPU_ISA_H

enum { FL_ISA_PORTABLE = 0, FL_ISA_AVX2 = 1, FL_ISA_AVX_VNNI = 2, FL_ISA_AVX512 = 3, FL_ISA_AVX512_VNNI = 4,
       FL_ISA_COUNT = 5 };

static const char *const FL_ISA_NAMES[FL_ISA_COUNT] = {"portable", "avx2", "avx_vnni", "avx512", "avx512_vnni"};
/* The level each one falls back to (-1: none). */
static const int FL_ISA_FALLBACK[FL_ISA_COUNT] = {-1, FL_ISA_PORTABLE, FL_ISA_AVX2, FL_ISA_AVX2, FL_ISA_AVX512};

/* Whether the CPU runs every feature of level isa. */
static int fl_cpu_has(int isa)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                     && __builtin_cpu_supports("f16c");
    const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                       && __builtin_cpu_supports("avx512vl");
    switch (isa) {
    case FL_ISA_PORTABLE: return 1;
    case FL_ISA_AVX2: return avx2;
    case FL_ISA_AVX_VNNI: return avx2 && __builtin_cpu_supports("avxvnni");
    case FL_ISA_AVX512: return avx512;
    case FL_ISA_AVX512_VNNI: return avx512 && __builtin_cpu_supports("avx512vnni");
    }
    return 0;
#else
    return isa == FL_ISA_PORTABLE;
#endif
}

/* The best level this CPU runs, probed once. */
static int fl_cpu_isa(void)
{
    static int best = -1;
    if (best < 0) {
        int isa = FL_ISA_COUNT - 1;
        while (isa > FL_ISA_PORTABLE && !fl_cpu_has(isa)) isa--;
        best = isa;
    }
    return best;
}

#endif

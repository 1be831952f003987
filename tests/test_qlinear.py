"""Projections on GGUF block-quantized weights (fastlm._qlinear) against x @ dequant(w).T in float64, with the
gguf package making the blocks (its quantizers) and decoding them (ggml's reference dequantizers).

Error bounds, per output element out[j, i] = x_j . w_i (w_i the dequantized row):
  - float paths (F16 at any N, every type from DEC_N_MIN to PANEL_N_MIN, and from PANEL_N_MIN on every type
    without SIMD): float32 accumulation,
    |err| <= FLOAT_TOL * ||x_j|| * ||w_i||, and ||out - ref|| / ||ref|| <= FLOAT_TOL.
  - int16-activation paths (every block type at N < DEC_N_MIN; GEMM_TYPES from PANEL_N_MIN on, with SIMD: the
    integer GEMM): each activation group of g elements (g = 32,
    or 256 for the formats with 256-element blocks) is rounded to d * q with d = max|x_b| / Q (q int16, round
    to nearest; Q = 32767 for g = 32, 16383 for g = 256), so each element moves by at most d / 2 = max|x_b| / 2Q.
    Per group, |w_b . e_b| <= ||w_b|| * sqrt(g) * max|x_b| / 2Q <= ||w_b|| * ||x_b|| * sqrt(g) / 2Q, and by
    Cauchy-Schwarz over groups |err| <= sqrt(g) / 2Q * ||x_j|| * ||w_i|| (8.6e-5 for g = 32, 4.9e-4 for
    256), plus the float part (FLOAT_TOL): int16_abs(qtype).
    The rounding errors are independent, uniform in +-d/2, so on random data the Frobenius relative error is
    about 1 / (2Q sqrt(3)) * max/rms ~ 9e-6 * max/rms for g = 32, ~ 8e-5 here (the outlier channel makes
    max/rms ~ 8), twice that for g = 256: asserted <= INT16_REL = 3e-4. int8 activations (d = max|x_b| / 127) break both by far: 258x the rounding,
    2e-2 Frobenius and 6e-3 * ||x|| ||w|| elementwise on these data.
"""
import functools

import gguf
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastlm import _qlinear, _quant

F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K = 1, 2, 3, 8, 12, 14
NAMES = dict(_qlinear.NAMES)                            # every type the kernels multiply by: F16 + the blocks
QTYPES = sorted(NAMES)
BLOCKS = dict(_qlinear.QL_BLOCKS)
INT_TYPES = set(QTYPES) - {F16}
# Types whose blocks gguf's quantizers make; the others get random blocks with finite fp16 scales, at these
# byte offsets.
QUANTIZABLE = {F16, Q4_0, Q4_1, 6, 7, Q8_0}
SCALE_OFFSETS = {10: [80, 82], 11: [108], Q4_K: [0, 2], 13: [0, 2], Q6_K: [208], 20: [0], 23: [0]}
FLOAT_TOL = 1e-5
INT16_REL = 3e-4

NS = [1, 2, 3, 4, 5, 7, 8, 17, 31, 32, 64, 96, 130]
ROWS = [1, 7, 37, 100]


def ks(qtype):
    return [256, 512] if BLOCKS[qtype][0] == 256 else [32, 96, 576]


@functools.lru_cache(maxsize=None)
def weights(qtype, rows, k, seed=0):
    """(raw bytes (rows, row_bytes), dequantized float64 (rows, k)) of random weights of ``qtype``."""
    rng = np.random.default_rng([seed, qtype, rows, k])
    if qtype not in QUANTIZABLE:
        # gguf's quantizers do not cover these types: random blocks with finite fp16 scales instead.
        be, bs = BLOCKS[qtype]
        raw = rng.integers(0, 256, size=(rows * k // be, bs), dtype=np.uint8)
        for off in SCALE_OFFSETS[qtype]:
            raw[:, off:off + 2] = (rng.normal(0, 0.01, len(raw)).astype(np.float16).view(np.uint8)
                                   .reshape(-1, 2))
        raw = raw.reshape(rows, -1)
    else:
        w = (rng.normal(size=(rows, k)) / np.sqrt(k)).astype(np.float32)
        w[:, :3] *= 4                                   # a few larger weights, as real matrices have
        raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType(qtype)).view(np.uint8).reshape(rows, -1)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(qtype)).astype(np.float64).reshape(rows, k)
    raw.setflags(write=False)
    return raw, ref


def activations(n, k, seed=1):
    x = np.random.default_rng([seed, n, k]).normal(size=(n, k)).astype(np.float32)
    x[:, 5] *= 8                                        # an outlier channel, as LLM activations have
    return x


def int16_abs(qtype):
    g = BLOCKS[qtype][0]
    return np.sqrt(g) / (2 * (16383 if g == 256 else 32767))


def int_path(qtype, n):
    if n >= _qlinear.PANEL_N_MIN[qtype]:
        return qtype in _qlinear.GEMM_TYPES and _qlinear.simd_enabled() and _qlinear.isa() != "portable"
    return qtype in INT_TYPES and n < _qlinear.DEC_N_MIN[qtype]


def assert_close(out, x, ref_w, qtype, n, prior=None, beta=0.0):
    assert out.dtype == np.float32
    ref = x.astype(np.float64) @ ref_w.T
    if prior is not None:
        ref += beta * prior.astype(np.float64)
    scale = np.linalg.norm(x.astype(np.float64), axis=1)[:, None] * np.linalg.norm(ref_w, axis=1)[None, :]
    if prior is not None:
        scale = scale + np.abs(beta * prior)
    err = np.abs(out - ref)
    assert np.all(np.isfinite(out))
    if int_path(qtype, n):
        assert np.all(err <= (int16_abs(qtype) + FLOAT_TOL) * scale + 1e-30)
        if ref.size >= 64:
            assert np.linalg.norm(err) <= INT16_REL * np.linalg.norm(ref)
    else:
        assert np.all(err <= FLOAT_TOL * scale + 1e-30)
        if ref.size >= 64:
            assert np.linalg.norm(err) <= FLOAT_TOL * np.linalg.norm(ref)


@pytest.mark.parametrize("qtype", QTYPES, ids=NAMES.get)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("n", NS)
def test_matches_dequantized_product(qtype, rows, n, simd):
    for k in ks(qtype):
        raw, ref_w = weights(qtype, rows, k)
        x = activations(n, k)
        out = np.full((n, rows), np.nan, np.float32)    # beta = 0 must never read out
        _qlinear.linear(x, raw, qtype, out)
        assert_close(out, x, ref_w, qtype, n)


@pytest.mark.parametrize("qtype", QTYPES, ids=NAMES.get)
@pytest.mark.parametrize("n", [32, 128], ids=["decode-and-dot", "panel"])
def test_float_paths_decode_the_blocks_bit_for_bit(qtype, n, simd):
    """The row decoders of the float paths give ggml's values bit for bit: with the rows of the identity as x,
    each output is one product w * 1 among products by 0, so out.T is the dequantized matrix itself."""
    if int_path(qtype, n):
        pytest.skip(f"{NAMES[qtype]}'s prefill takes the integer GEMM here (test_matches_dequantized_product)")
    k = ks(qtype)[-1]
    raw, ref_w = weights(qtype, 37, k)
    assert n >= _qlinear.DEC_N_MIN[qtype] and (n >= _qlinear.PANEL_N_MIN[qtype]) == (n == 128)
    eye = np.eye(k, dtype=np.float32)
    for start in sorted({*range(0, k - n + 1, n), k - n}):
        out = np.empty((n, 37), np.float32)
        _qlinear.linear(np.ascontiguousarray(eye[start:start + n]), raw, qtype, out)
        np.testing.assert_array_equal(out.T, ref_w[:, start:start + n].astype(np.float32))


@pytest.mark.parametrize("qtype", QTYPES, ids=NAMES.get)
@pytest.mark.parametrize("n", [1, 8, 130])
def test_beta_accumulates(qtype, n, simd):
    k = ks(qtype)[-1]
    raw, ref_w = weights(qtype, 37, k)
    x = activations(n, k)
    prior = np.random.default_rng(5).normal(size=(n, 37)).astype(np.float32)
    for beta in (1.0, 0.5):
        out = prior.copy()
        _qlinear.linear(x, raw, qtype, out, beta)
        assert_close(out, x, ref_w, qtype, n, prior, beta)


@pytest.mark.parametrize("qtype", QTYPES, ids=NAMES.get)
@pytest.mark.parametrize("n", [1, 3, 8, 64])
def test_simd_and_portable_agree(qtype, n):
    before = _qlinear.simd_enabled()
    _qlinear.set_simd(True)
    if not _qlinear.simd_enabled():
        pytest.skip("no AVX2/FMA/F16C on this CPU")
    k = ks(qtype)[-1]
    raw, ref_w = weights(qtype, 100, k)
    x = activations(n, k)
    outs = []
    for flag in (True, False):
        _qlinear.set_simd(flag)
        out = np.empty((n, 100), np.float32)
        _qlinear.linear(x, raw, qtype, out)
        outs.append(out)
    _qlinear.set_simd(before)
    # The same int16 activations (identical values on both paths) and exact integer dots: the two differ only
    # in the order of the float accumulation, even on the integer paths.
    scale = np.abs(x).astype(np.float64) @ np.abs(ref_w).T
    assert np.all(np.abs(outs[0] - outs[1]) <= 1e-5 * scale)


@pytest.mark.parametrize("isa", _qlinear.ISA_NAMES)
@pytest.mark.parametrize("qtype", sorted(INT_TYPES), ids=NAMES.get)
def test_every_simd_level_matches(isa, qtype):
    """The integer kernels (and the integer GEMM, N = 130) of each SIMD level the CPU has (set_isa), against the
    float64 product."""
    if isa not in _qlinear.CPU_ISAS:
        pytest.skip(f"this CPU does not run {isa} (it runs {', '.join(_qlinear.CPU_ISAS)})")
    before_simd, before_isa = _qlinear.simd_enabled(), _qlinear.isa()
    try:
        _qlinear.set_simd(True)
        _qlinear.set_isa(isa)
        for n in (1, 4, 7, 130):
            k = ks(qtype)[-1]
            raw, ref_w = weights(qtype, 37, k)
            x = activations(n, k)
            out = np.full((n, 37), np.nan, np.float32)
            _qlinear.linear(x, raw, qtype, out)
            assert_close(out, x, ref_w, qtype, n)
    finally:
        _qlinear.set_isa(before_isa)
        _qlinear.set_simd(before_simd)


def test_set_isa_rejects_levels_the_cpu_lacks():
    with pytest.raises(ValueError, match="SIMD level"):
        _qlinear.set_isa("sse9")
    for isa in set(_qlinear.ISA_NAMES) - set(_qlinear.CPU_ISAS):
        with pytest.raises(ValueError, match=isa):
            _qlinear.set_isa(isa)


@pytest.mark.parametrize("qtype", [10, 11, Q4_K, 13, Q6_K, 23, Q8_0], ids=NAMES.get)
def test_extreme_blocks_stay_exact(qtype, simd):
    """The largest integers a block can hold (sub-scales times values, which the integer GEMM multiplies out:
    Q6_K's -128 x -32 = 4096) against the largest activations: the int32 sums must not overflow."""
    be, bs = BLOCKS[qtype]
    k = 512
    raw = np.zeros((4, k // be, bs), np.uint8)
    if qtype == Q6_K:
        raw[..., 192:208] = 0x80                        # scales -128, q = 0 - 32 = -32 everywhere
        raw[..., 208:210] = np.array([1e-3], np.float16).view(np.uint8)
    elif qtype == 11:                                   # Q3_K: scales 0 - 32 = -32, q = 0 - 4 = -4 (no high bit)
        raw[..., 108:110] = np.array([1e-3], np.float16).view(np.uint8)
    elif qtype == 10:                                   # Q2_K: scale 15, min 15, q = 3
        raw[..., 0:16], raw[..., 16:80] = 0xFF, 0xFF
        raw[..., 80:84] = np.tile(np.array([1e-3], np.float16).view(np.uint8), 2)
    elif qtype in (Q4_K, 13):                           # Q4_K / Q5_K: scales and mins 63, q = 15 / 31
        raw[..., 4:] = 0xFF
        raw[..., 0:4] = np.tile(np.array([1e-3], np.float16).view(np.uint8), 2)
    elif qtype == 23:                                   # IQ4_XS: scales 31 - 32 ... levels -127
        raw[..., 2:8] = 0x00
        raw[..., 0:2] = np.array([1e-3], np.float16).view(np.uint8)
    else:                                               # Q8_0: q = -128
        raw[..., 2:] = 0x80
        raw[..., 0:2] = np.array([1e-3], np.float16).view(np.uint8)
    raw = raw.reshape(4, -1)
    ref_w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(qtype)).astype(np.float64)
    for n in (3, 130):                                  # the integer dots, and the integer GEMM where it serves
        x = np.full((n, k), -1.0, np.float32)           # every element rounds to -32767 (-16383 in groups of 256)
        x[1::2] = 1.0
        out = np.empty((n, 4), np.float32)
        _qlinear.linear(x, raw, qtype, out)
        np.testing.assert_allclose(out, x.astype(np.float64) @ ref_w.T, rtol=1e-5)


@pytest.mark.parametrize("qtype", QTYPES, ids=NAMES.get)
@pytest.mark.parametrize("n", [1, 8, 130])
def test_one_and_two_threads_agree(qtype, n):
    """Each output row is computed whole by one thread: the row kernels (decode, small batches) and the AVX2
    GEMMs of the prefill panels (integer, and float for F16) give the same bits on any thread count. The
    portable prefill path hands panels of rows to sgemm, and how the rows are split into panels follows the
    threads; some BLAS builds (OpenBLAS 0.3.30's Haswell kernels on AMD Zen, seen here) round an element
    differently with the panel's height, so there the two agree to float32 rounding."""
    k = ks(qtype)[-1]
    raw, ref_w = weights(qtype, 100, k)
    x = activations(n, k)
    outs = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="openmp"):
            out = np.empty((n, 100), np.float32)
            _qlinear.linear(x, raw, qtype, out)
        outs.append(out)
    if n < _qlinear.PANEL_N_MIN[qtype] or _qlinear.simd_enabled():
        np.testing.assert_array_equal(outs[0], outs[1])
    else:
        scale = np.abs(x).astype(np.float64) @ np.abs(ref_w).T
        assert np.all(np.abs(outs[0] - outs[1]) <= 1e-6 * scale)


def test_scratch_and_allocation_counter():
    raw, ref_w = weights(Q4_0, 100, 576)
    for n in (1, 8, 130):
        x = activations(n, 576)
        out = np.empty((n, 100), np.float32)
        before = _qlinear.allocations()
        _qlinear.linear(x, raw, Q4_0, out)
        assert _qlinear.allocations() == before + 1
        scratch = np.empty(_qlinear.scratch_size(n, 576, _qlinear.num_threads()), np.uint8)
        for _ in range(3):
            _qlinear.linear(x, raw, Q4_0, out, 0.0, scratch)
        assert _qlinear.allocations() == before + 1
        assert_close(out, x, ref_w, Q4_0, n)
        # an offset view (unaligned start) of a big-enough buffer works too
        big = np.empty(scratch.size + 3, np.uint8)
        _qlinear.linear(x, raw, Q4_0, out, 0.0, big[3:])
        assert_close(out, x, ref_w, Q4_0, n)


def test_scratch_size_grows():
    for n in (1, 8, 130):
        assert _qlinear.scratch_size(n, 576, 1) < _qlinear.scratch_size(n, 576, 2)
    assert _qlinear.scratch_size(1, 576, 2) < _qlinear.scratch_size(130, 576, 2)
    with pytest.raises(ValueError):
        _qlinear.scratch_size(0, 576, 1)


def test_bad_inputs_raise():
    raw, _ = weights(Q4_0, 7, 96)
    x = activations(2, 96)
    out = np.empty((2, 7), np.float32)
    cases = [
        (x, raw, 5, out),                                       # unsupported type
        (x, raw, 0, out),                                       # F32 is not a block type here
        (x, raw, Q8_0, out),                                    # row_bytes does not match Q8_0's
        (activations(2, 64), raw, Q4_0, out),                   # k mismatch with row_bytes
        (activations(2, 40), raw, Q4_0, out),                   # k not a multiple of 32
        (x, raw, Q4_0, np.empty((3, 7), np.float32)),           # out rows
        (x, raw, Q4_0, np.empty((2, 8), np.float32)),           # out columns
        (x, raw, Q4_0, np.empty((2, 7), np.float64)),           # out dtype
        (x.astype(np.float64), raw, Q4_0, out),                 # x dtype
        (np.asfortranarray(x), raw, Q4_0, out),                 # non-contiguous x
        (x, raw[:, ::2], Q4_0, out),                            # non-contiguous w
        (x[:, :0], raw[:, :0], Q4_0, np.empty((2, 7), np.float32)),   # empty
        (x[:0], raw, Q4_0, np.empty((0, 7), np.float32)),       # no rows
    ]
    for args in cases:
        with pytest.raises(ValueError):
            _qlinear.linear(*args)
    with pytest.raises(ValueError, match="scratch"):
        _qlinear.linear(x, raw, Q4_0, out, 0.0, np.empty(16, np.uint8))
    with pytest.raises(ValueError, match="overlap"):
        pool = np.zeros(1 << 16, np.uint8)
        xin = pool[:x.nbytes].view(np.float32).reshape(x.shape)
        xin[:] = x
        _qlinear.linear(xin, raw, Q4_0, out, 0.0, pool)
    big = np.zeros(4096, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        _qlinear.linear(big[:192].reshape(2, 96), raw, Q4_0, big[100:114].reshape(2, 7))
    kq, _ = weights(Q4_K, 1, 256)
    with pytest.raises(ValueError, match="multiple"):
        _qlinear.linear(activations(1, 128), kq[:, :72], Q4_K, np.empty((1, 1), np.float32))


def test_simd_switch():
    before = _qlinear.simd_enabled()
    _qlinear.set_simd(False)
    assert not _qlinear.simd_enabled()
    _qlinear.set_simd(True)
    assert _qlinear.simd_enabled() in (True, False)
    _qlinear.set_simd(before)


# ---------------------------------------------------------------------------------------- gather_rows

@pytest.mark.parametrize("qtype", QTYPES, ids=NAMES.get)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, L", [(1, 1), (2, 3), (4, 64)])
def test_gather_rows_bit_exact(qtype, dtype, B, L):
    k = ks(qtype)[-1]
    raw, _ = weights(qtype, 100, k)
    full = np.empty(100 * k, dtype)
    _quant.dequantize(raw.reshape(-1), qtype, full)
    full = full.reshape(100, k)
    ids = np.random.default_rng(B * L).integers(0, 100, size=(B, L)).astype(np.int64)
    out = np.full((B, L, k), np.nan, dtype)
    _quant.gather_rows(raw, qtype, ids, out)
    np.testing.assert_array_equal(out.view(np.uint8), full[ids].view(np.uint8))


def test_gather_rows_rejects_bad_input():
    raw, _ = weights(Q8_0, 7, 96)
    out = np.empty((1, 2, 96), np.float32)
    for bad in (7, -1, 1 << 40):
        with pytest.raises(ValueError, match=str(bad)):
            _quant.gather_rows(raw, Q8_0, np.array([[0, bad]], np.int64), out)
    with pytest.raises(ValueError):
        _quant.gather_rows(raw, Q8_0, np.array([[0, 1, 2]], np.int64), out)           # ids / out shape
    with pytest.raises(ValueError):
        _quant.gather_rows(raw, Q4_0, np.array([[0, 1]], np.int64), out)              # row bytes
    with pytest.raises(ValueError):
        _quant.gather_rows(raw, 99, np.array([[0, 1]], np.int64), out)                # type
    with pytest.raises(ValueError):
        _quant.gather_rows(raw, Q8_0, np.array([[0, 1]], np.int64), np.empty((1, 2, 64), np.float32))

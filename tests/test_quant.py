"""Dequantization kernels against the gguf package's NumPy dequantizers (ggml's reference), bit for bit."""
import gguf
import numpy as np
import pytest

from fastlm import _quant
from fastlm.errors import FastLMTypeError, ModelFormatError
from fastlm.weights.quant import BLOCK_SIZES, GGMLType, dequantize, tensor_nbytes

BLOCK_TYPES = [t for t in GGMLType if BLOCK_SIZES[t][0] > 1]
# Byte offsets of the fp16 scales in each block: random bytes there could be inf or NaN, so they are set
# to finite values (with a subnormal and a zero among them).
SCALE_OFFSETS = {GGMLType.Q8_0: [0], GGMLType.Q4_0: [0], GGMLType.Q4_1: [0, 2], GGMLType.Q5_0: [0],
                 GGMLType.Q5_1: [0, 2], GGMLType.IQ4_NL: [0], GGMLType.Q2_K: [80, 82], GGMLType.Q3_K: [108],
                 GGMLType.Q4_K: [0, 2], GGMLType.Q5_K: [0, 2], GGMLType.Q6_K: [208], GGMLType.IQ4_XS: [0]}


def random_blocks(qtype, n_blocks, rng):
    """n_blocks random blocks of ``qtype`` with finite scales, as a flat uint8 array."""
    block_bytes = BLOCK_SIZES[qtype][1]
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        scales = rng.normal(0.0, 0.05, n_blocks).astype(np.float16)
        scales[::7], scales[3::7] = np.float16(6e-8), 0.0      # the smallest subnormal, and zero
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def gguf_reference(raw, qtype, shape):
    return gguf.quants.dequantize(raw.reshape(shape[:-1] + (-1,)), gguf.GGMLQuantizationType(int(qtype)))


def assert_bits_equal(a, b):
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows, blocks_per_row", [(1, 1), (3, 5), (7, 3), (1, 300)])
def test_blocks_match_gguf_bit_for_bit(qtype, rows, blocks_per_row, rng):
    block_elements = BLOCK_SIZES[qtype][0]
    shape = (rows, blocks_per_row * block_elements)
    raw = random_blocks(qtype, rows * blocks_per_row, rng)
    expected = gguf_reference(raw, qtype, shape)

    out32 = dequantize(raw, qtype, shape, np.float32)
    assert_bits_equal(out32, expected)
    # float64 holds the exact values, so rounding them once to float32 gives ggml's float32 results.
    out64 = dequantize(raw, qtype, shape, np.float64)
    assert out64.dtype == np.float64 and out64.shape == shape
    assert_bits_equal(out64.astype(np.float32), expected)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_large_tensor_takes_the_parallel_path(qtype, rng):
    block_elements = BLOCK_SIZES[qtype][0]
    shape = (96, 1024 // block_elements * block_elements * 2)       # > 65,536 elements: many chunks
    raw = random_blocks(qtype, shape[0] * shape[1] // block_elements, rng)
    assert_bits_equal(dequantize(raw, qtype, shape), gguf_reference(raw, qtype, shape))


def test_f16_every_value():
    raw = np.arange(1 << 16, dtype=np.uint16).view(np.uint8)
    expected = raw.view(np.float16).astype(np.float32)
    finite = ~np.isnan(expected)
    for dtype in (np.float32, np.float64):
        out = dequantize(raw, GGMLType.F16, (1 << 16,), dtype)
        assert out.dtype == dtype
        np.testing.assert_array_equal(np.isnan(out), ~finite)
        assert_bits_equal(out.astype(np.float32)[finite], expected[finite])


def test_bf16_every_value():
    raw = np.arange(1 << 16, dtype=np.uint16).view(np.uint8)
    expected = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    out = dequantize(raw, "BF16", (256, 256), np.float32)
    np.testing.assert_array_equal(out.reshape(-1).view(np.uint32), expected.view(np.uint32))
    out64 = dequantize(raw, "BF16", (256, 256), np.float64).reshape(-1)
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(out64), ~finite)
    np.testing.assert_array_equal(out64[finite], expected[finite].astype(np.float64))


def test_f32_float32_is_a_view_and_float64_a_conversion(rng):
    values = rng.normal(size=(3, 5)).astype(np.float32)
    raw = values.view(np.uint8).reshape(-1)
    raw.flags.writeable = False
    view = dequantize(raw, GGMLType.F32, (3, 5))
    np.testing.assert_array_equal(view, values)
    assert np.shares_memory(view, raw) and not view.flags.writeable
    out64 = dequantize(raw, 0, (3, 5), np.float64)
    assert out64.dtype == np.float64
    np.testing.assert_array_equal(out64, values.astype(np.float64))
    # Misaligned F32 bytes are decoded (copied) rather than viewed.
    shifted = np.zeros(raw.size + 1, np.uint8)
    shifted[1:] = raw
    np.testing.assert_array_equal(dequantize(shifted[1:], "F32", (3, 5)), values)


def test_tensor_nbytes():
    assert tensor_nbytes(GGMLType.Q4_1, (576, 1536)) == 576 * 1536 // 32 * 20
    assert tensor_nbytes("Q6_K", (2, 512)) == 2 * 2 * 210
    assert tensor_nbytes("F16", (3, 5)) == 30


def test_bad_arguments_raise(rng):
    raw = random_blocks(GGMLType.Q8_0, 2, rng)
    with pytest.raises(ModelFormatError, match="unsupported tensor type"):
        dequantize(raw, 9, (64,))                                  # Q8_1
    with pytest.raises(ModelFormatError, match="unsupported tensor type"):
        dequantize(raw, "Q8_K", (64,))
    with pytest.raises(ModelFormatError, match="whole 32-element blocks"):
        dequantize(raw, "Q8_0", (2, 34))
    with pytest.raises(ModelFormatError, match="takes 102 bytes, got 68"):
        dequantize(raw, "Q8_0", (96,))
    with pytest.raises(FastLMTypeError, match="float32 or float64"):
        dequantize(raw, "Q8_0", (64,), np.float16)
    with pytest.raises(FastLMTypeError, match="uint8"):
        dequantize(raw.view(np.int8), "Q8_0", (64,))


def test_kernel_checks_sizes_before_decoding(rng):
    raw = random_blocks(GGMLType.Q4_K, 2, rng)
    with pytest.raises(ValueError, match="do not hold"):
        _quant.dequantize(raw, int(GGMLType.Q4_K), np.empty(513, np.float32))
    with pytest.raises(ValueError, match="do not hold"):
        _quant.dequantize(raw[:-1], int(GGMLType.Q4_K), np.empty(512, np.float32))
    with pytest.raises(ValueError, match="unsupported ggml type"):
        _quant.dequantize(raw, 15, np.empty(512, np.float32))     # Q8_K

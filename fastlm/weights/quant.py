"""Tensor data types of GGUF files (ggml types) and their decoding to float32 / float64.

Every type is a sequence of fixed-size blocks; a row (the fastest axis) holds whole blocks:

=======  ========  =====  ======================================================================
type     elements  bytes  layout (little-endian; d, m, dmin are fp16)
=======  ========  =====  ======================================================================
F32      1         4      float32
F16      1         2      IEEE half
BF16     1         2      bfloat16 (the top half of a float32)
Q8_0     32        34     d, int8 q[32]: x = d * q
Q4_0     32        18     d, 16 bytes: low nibble of byte j = q[j], high nibble = q[j + 16]; x = d * (q - 8)
Q4_1     32        20     d, m, nibbles as Q4_0: x = d * q + m
Q5_0     32        22     d, qh (32 fifth bits), nibbles as Q4_0: x = d * (q - 16)
Q5_1     32        24     d, m, qh, nibbles: x = d * q + m
IQ4_NL   32        18     d, nibbles as Q4_0 indexing 16 fixed levels (-127 ... 113): x = d * level
Q2_K     256       84     16 (4-bit scale, 4-bit min) pairs, 2-bit q, d, dmin: x = d * scale * q - dmin * min,
                          one pair per 16 elements
Q3_K     256       110    high-bit mask, 2-bit q, sixteen 6-bit scales, d: x = d * (scale - 32) * (q - 4 * !h)
Q4_K     256       144    d, dmin, eight 6-bit (scale, min) in 12 bytes, 4-bit q:
                          x = d * scale * q - dmin * min, one (scale, min) per 32 elements
Q5_K     256       176    as Q4_K with a fifth bit per element (qh[32])
Q6_K     256       210    ql[128] low 4 bits, qh[64] high 2 bits, int8 scales[16], d:
                          x = d * scale * (q - 32), one scale per 16 elements
IQ4_XS   256       136    d, eight 6-bit scales, IQ4_NL's levels: x = d * (scale - 32) * level
=======  ========  =====  ======================================================================

Each type is one row of the compiled formats' table (``csrc/ggml_types.h``: block geometry, decoders,
quantizer, dot kernels per SIMD level); :class:`GGMLType` and :data:`BLOCK_SIZES` are read from it. The
decoding runs in the compiled kernel :func:`fastlm._quant.dequantize`; its float32 results equal ggml's (and
the ``gguf`` package's) bit for bit.
"""
from __future__ import annotations

import sys
from enum import IntEnum
from math import prod

import numpy as np

from .. import _qlinear, _quant
from ..errors import FastLMTypeError, ModelFormatError

__all__ = ["GGMLType", "BLOCK_SIZES", "KERNEL_TYPES", "QuantizedTensor", "tensor_nbytes", "dequantize"]


# The ggml tensor types fastlm decodes, by their ids in GGUF tensor infos: the compiled table's rows.
GGMLType = IntEnum("GGMLType", {name: qtype for qtype, name in sorted(_quant.NAMES.items())},
                   module=__name__, qualname="GGMLType")


# (elements, bytes) of one block of each type: the kernel's own table, so the two cannot disagree.
BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {t: _quant.BLOCKS[int(t)] for t in GGMLType}


def _check_qtype(qtype) -> GGMLType:
    try:
        return GGMLType[qtype] if isinstance(qtype, str) else GGMLType(qtype)
    except (KeyError, ValueError):
        raise ModelFormatError(f"unsupported tensor type {qtype!r}; supported: "
                               f"{', '.join(t.name for t in GGMLType)}") from None


def tensor_nbytes(qtype, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ``qtype`` with numpy ``shape`` (its last axis is the row, made of whole blocks)."""
    qtype = _check_qtype(qtype)
    block_elements, block_bytes = BLOCK_SIZES[qtype]
    if not shape or shape[-1] % block_elements:
        raise ModelFormatError(f"a {qtype.name} tensor needs rows of whole {block_elements}-element blocks, "
                               f"got shape {tuple(shape)}")
    return prod(shape) // block_elements * block_bytes


def dequantize(raw: np.ndarray, qtype, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Decode the bytes ``raw`` (uint8) of a ``qtype`` tensor (a :class:`GGMLType`, its id or name) into a
    new ``dtype`` array of numpy ``shape`` (the last axis is ggml's ne[0]).

    F32 data decoded to float32 comes back as a view of ``raw`` (read-only when ``raw`` is), not a copy.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise FastLMTypeError(f"dtype must be float32 or float64, got {dtype}")
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise FastLMTypeError(f"raw must be a uint8 numpy array, got {type(raw).__name__}"
                              f"{'' if not isinstance(raw, np.ndarray) else ' of ' + str(raw.dtype)}")
    qtype = _check_qtype(qtype)
    shape = tuple(int(n) for n in shape)
    nbytes = tensor_nbytes(qtype, shape)
    raw = raw.reshape(-1)
    if raw.size != nbytes:
        raise ModelFormatError(f"a {qtype.name} tensor of shape {shape} takes {nbytes} bytes, got {raw.size}")
    if (qtype == GGMLType.F32 and dtype == np.float32 and sys.byteorder == "little"
            and raw.ctypes.data % 4 == 0):
        return raw.view(np.float32).reshape(shape)
    out = np.empty(shape, dtype)
    _quant.dequantize(raw, int(qtype), out.reshape(-1))
    return out


# Types that fastlm multiplies by in place: the block kernels' own table, so the two cannot disagree.
KERNEL_TYPES = tuple(GGMLType(t) for t in _qlinear.QL_BLOCKS)


class QuantizedTensor:
    """A weight matrix kept in its block format: ``data`` (rows, row_bytes) uint8 holds each row's blocks as
    the file stores them (often a read-only view of the memory-mapped file), ``shape`` is the logical
    (rows, columns) float matrix. fastlm's compiled kernels multiply by it and gather its rows directly."""

    __slots__ = ("data", "qtype", "shape")

    def __init__(self, data: np.ndarray, qtype, shape: tuple[int, int]):
        qtype = _check_qtype(qtype)
        shape = tuple(int(n) for n in shape)
        if len(shape) != 2:
            raise FastLMTypeError(f"a QuantizedTensor is a matrix, got shape {shape}")
        row_bytes = tensor_nbytes(qtype, shape[1:])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size != shape[0] * row_bytes:
            raise ModelFormatError(f"a {qtype.name} matrix of shape {shape} takes {shape[0] * row_bytes} bytes, "
                                   f"got {getattr(data, 'size', data)!r}")
        self.data = np.ascontiguousarray(data).reshape(shape[0], row_bytes)
        self.qtype, self.shape = qtype, shape

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """The float matrix these blocks encode."""
        return dequantize(self.data, self.qtype, self.shape, dtype)

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.qtype.name}, shape={self.shape})"

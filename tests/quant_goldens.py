"""The inputs of the quantization goldens (tests/data/quant_goldens.*), shared by the test and by their generator
bench/make_quant_goldens.py, which runs llama.cpp on them.

Every value is a function of integers only (a splitmix64 hash, exact float64 arithmetic, one rounding to
float32), so the floats do not depend on NumPy's random streams or version: the test rebuilds the same files
that llama.cpp quantized, and compares fastlm's bytes with the recorded ones.
"""
from __future__ import annotations

import zlib

import numpy as np

from fastlm.weights.gguf_writer import GGUFValue, TensorSpec, ValueType, write_gguf
from fastlm.weights.quant import GGMLType

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _M64


def uniform(seed: int, n: int) -> np.ndarray:
    """n float64 values in [0, 1), multiples of 2^-24, from hashing (seed, index)."""
    with np.errstate(over="ignore"):
        base = np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)
        z = _splitmix64(np.arange(n, dtype=np.uint64) + base)
    return (z >> np.uint64(40)).astype(np.float64) / 2.0 ** 24


def matrix(seed: int, rows: int, cols: int) -> np.ndarray:
    """A float32 (rows, cols) matrix of bell-shaped values (the sum of three uniforms), each row at its own
    scale 2^-12 ... 2^4, one element in 64 an outlier 6x as large; exact in float64 until the final rounding."""
    u = uniform(seed, 3 * rows * cols).reshape(3, rows, cols)
    x = u[0] + u[1] + u[2] - 1.5
    scale = 2.0 ** np.floor(uniform(seed + 1, rows) * 17 - 12)
    outlier = np.where(uniform(seed + 2, rows * cols).reshape(rows, cols) < 1 / 64, 6.0, 1.0)
    return (x * outlier * scale[:, None]).astype(np.float32)


def tricky_rows(cols: int = 256) -> np.ndarray:
    """Rows that take the quantizers' edge paths: all zeros, one zero sub-block, constants, one nonzero
    element, tiny (sub-GROUP_MAX_EPS) values, fp16-subnormal scales, huge scales, integer grids with ties, only
    positive and only negative values."""
    r = [np.zeros(cols), np.r_[np.zeros(32), matrix(5, 1, cols - 32)[0]], np.full(cols, -3.0), np.full(cols, 7.25)]
    one = np.zeros(cols)
    one[77] = -2.5
    r.append(one)
    r.append(matrix(6, 1, cols)[0] * 1e-17)
    r.append(matrix(7, 1, cols)[0] / np.abs(matrix(7, 1, cols)[0]).max() * 1e-6)
    r.append(matrix(8, 1, cols)[0] / np.abs(matrix(8, 1, cols)[0]).max() * 3e4)
    grid = np.floor(uniform(9, cols) * 16) - 8
    r.append(grid)
    r.append(grid + 0.5)
    r.append(np.abs(matrix(10, 1, cols)[0]) + 0.25)
    r.append(-np.abs(matrix(11, 1, cols)[0]))
    return np.array(r, dtype=np.float32)


def small_matrix() -> np.ndarray:
    """(16, 256): the tricky rows and four plain ones; its bytes are stored in full."""
    return np.concatenate([tricky_rows(256), matrix(3, 4, 256)])


def large_matrix() -> np.ndarray:
    """(256, 1024): plain rows at many scales; the hash of its bytes is stored."""
    return matrix(4, 256, 1024)


# ------------------------------------------------------------------------- the llama-shaped golden models
#
# Tensors of a few rows each (llama.cpp's quantizer reads the hyper-parameters, never checks the shapes): what
# decides a tensor's type in a mix is its name, its layer and its row width. "deep" has 16 layers (so every
# n/8 and n/16 rule of llama.cpp's mixes bites), 4 query heads per KV head, rows of 256 (K-quants fit) and an
# ffn_down of rows of 288 (a multiple of 32, not of 256: the fallback to the 32-element types). "tied" is
# fastlm's TINY-like 2-layer model without an output tensor, rows of 64 and a ffn_down of rows of 48 (no block
# fits: F16).

MODELS = {
    "deep": dict(layers=16, d_model=256, d_ff=288, heads=8, kv_heads=2, vocab=32, rows=4, tied=False),
    "tied": dict(layers=2, d_model=64, d_ff=48, heads=4, kv_heads=4, vocab=32, rows=4, tied=True),
}


def model_tensors(spec: dict) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 values of a golden model, in llama.cpp's file order."""
    d, ff, rows = spec["d_model"], spec["d_ff"], spec["rows"]

    def m(name, r, c):
        return matrix(zlib.crc32(name.encode()), r, c)

    out = {"token_embd.weight": m("token_embd.weight", spec["vocab"], d)}
    if not spec["tied"]:
        out["output.weight"] = m("output.weight", spec["vocab"], d)
    out["output_norm.weight"] = np.ones(d, np.float32)
    for i in range(spec["layers"]):
        p = f"blk.{i}."
        for name, shape in (("attn_norm", (d,)), ("attn_q", (rows, d)), ("attn_k", (rows, d)),
                            ("attn_v", (rows, d)), ("attn_output", (rows, d)), ("ffn_norm", (d,)),
                            ("ffn_gate", (rows, d)), ("ffn_up", (rows, d)), ("ffn_down", (rows, ff))):
            out[p + name + ".weight"] = (np.ones(shape, np.float32) if len(shape) == 1
                                         else m(p + name + ".weight", *shape))
    return out


def write_model(path, spec: dict, tensors: dict[str, np.ndarray] | None = None) -> None:
    """A golden model (or any ``tensors`` under its hyper-parameters) as an all-F32 llama GGUF."""
    tensors = model_tensors(spec) if tensors is None else tensors
    u32 = lambda v: GGUFValue(ValueType.UINT32, v)                                   # noqa: E731
    metadata = {
        "general.architecture": "llama",
        "general.name": "fastlm-quant-golden",
        "general.file_type": u32(0),
        "llama.context_length": u32(64),
        "llama.embedding_length": u32(spec["d_model"]),
        "llama.block_count": u32(spec["layers"]),
        "llama.feed_forward_length": u32(spec["d_ff"]),
        "llama.attention.head_count": u32(spec["heads"]),
        "llama.attention.head_count_kv": u32(spec["kv_heads"]),
        "llama.rope.dimension_count": u32(spec["d_model"] // spec["heads"]),
        "llama.attention.layer_norm_rms_epsilon": GGUFValue(ValueType.FLOAT32, 1e-5),
        "llama.rope.freq_base": GGUFValue(ValueType.FLOAT32, 10000.0),
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(spec["vocab"])],
        "tokenizer.ggml.scores": GGUFValue(ValueType.ARRAY, [0.0] * spec["vocab"], ValueType.FLOAT32),
        "tokenizer.ggml.token_type": GGUFValue(ValueType.ARRAY, [1] * spec["vocab"], ValueType.INT32),
        "general.quantization_version": u32(2),
    }
    write_gguf(path, metadata, [TensorSpec(n, x.shape, GGMLType.F32, x) for n, x in tensors.items()])

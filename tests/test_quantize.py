"""Quantization: the kernel bit for bit against ggml's quantizers (as the gguf package mirrors the simple ones,
and as llama.cpp itself wrote the K-quants and IQ4 types: tests/data/quant_goldens.npz), llama-quantize's
per-tensor choices and bytes for every file type on two golden models (tests/data/quant_mixes.json, written by
bench/make_quant_goldens.py), and whole GGUF files re-encoded by quantize_file, synthetic and the real model."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as G  # noqa: E402

import fastlm  # noqa: E402
from fastlm import _quantize, reference  # noqa: E402
from fastlm.config import ModelConfig  # noqa: E402
from fastlm.errors import FastLMTypeError, FastLMValueError, ModelFormatError  # noqa: E402
from fastlm.quantize import (FILE_TYPE_ALIASES, FILE_TYPES, QUANT_TYPES, ModelFacts, quantize,  # noqa: E402
                             quantize_file, tensor_types)
from fastlm.weights import GGUFFile, dequantize, load_gguf  # noqa: E402
from fastlm.weights.gguf_writer import GGUFValue, TensorSpec, ValueType, read_metadata, write_gguf  # noqa: E402
from fastlm.weights.quant import BLOCK_SIZES, GGMLType, tensor_nbytes  # noqa: E402

import quant_goldens as qg  # noqa: E402
from conftest import GOLDEN, TINY  # noqa: E402

# The types the gguf package also quantizes, and those only llama.cpp's goldens vouch for.
TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
DATA = Path(__file__).parent / "data"
GOLDEN_BYTES = np.load(DATA / "quant_goldens.npz")
GOLDEN_MIXES = json.loads((DATA / "quant_mixes.json").read_text())["mixes"]


def ggml_bytes(x: np.ndarray, qtype: str) -> np.ndarray:
    """What ggml's reference quantizer (via the gguf package) writes for float32 ``x``."""
    return np.ascontiguousarray(gguf.quants.quantize(np.asarray(x, np.float32), G[qtype])).view(np.uint8).reshape(-1)


def tricky_data(rng) -> np.ndarray:
    """(n, 32k) rows: random scales over many decades, zero blocks, huge and tiny values, mixed signs, ties."""
    rows = [rng.standard_normal(256) * 10.0 ** e for e in range(-30, 31, 3)]
    rows.append(np.zeros(256))                                           # all-zero blocks
    rows.append(np.r_[np.zeros(32), rng.standard_normal(224)])             # one zero block in a row
    rows.append(np.full(256, -3.0))                                        # constant blocks (Q4_1: d = 0)
    rows.append(np.full(256, 7.25))
    rows.append(rng.choice([-1e37, 1e37, 0.0, 1e-37], 256))                # huge: d overflows fp16
    rows.append(rng.choice([-1e-40, 3e-41, 0.0, 1e-45], 256))              # float32 subnormals
    rows.append(rng.standard_normal(256) * 1e-6)                          # d in the fp16 subnormal range
    rows.append(rng.standard_normal(256) * 3e4)                           # d near fp16 max
    # Exact .5 ties: Q8_0 with amax 127 (d = 1) rounds k + 0.5 half away from zero.
    ties = rng.integers(-126, 126, 256) + 0.5
    ties[::32] = 127.0
    rows.append(ties)
    rows.append(-ties)
    # Q4_0 / Q5_0 with max -8 / -16 (d = 1): x + 8.5 / 16.5 lands on integers; Q4_1 / Q5_1 with min 0 and
    # max 15 / 31 (d = 1): x + 0.5 too.
    for top in (8, 16):
        symmetric = rng.integers(-top, top, 256) - 0.5
        symmetric[::32] = -top
        asymmetric = rng.integers(0, 2 * top - 1, 256) + 0.5
        asymmetric[::32], asymmetric[1::32] = 0.0, 2 * top - 1
        rows += [symmetric, asymmetric]
    rows.append(np.where(rng.random(256) < 0.5, -1, 1) * rng.integers(0, 1000, 256) / 8.0)   # mixed signs
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("qtype", TYPES)
def test_kernel_matches_ggml_reference_bit_for_bit(qtype, rng):
    x = tricky_data(rng)
    np.testing.assert_array_equal(quantize(x, qtype), ggml_bytes(x, qtype))


@pytest.mark.parametrize("qtype", [t for t in QUANT_TYPES if t != "F32"])
def test_kernel_matches_llama_cpp_bit_for_bit(qtype):
    # llama.cpp's own bytes (llama_model_quantize, pure): the edge rows in full, 256 x 1024 plain rows by hash
    small, large = qg.small_matrix(), qg.large_matrix()
    np.testing.assert_array_equal(quantize(small, qtype), GOLDEN_BYTES[f"{qtype}.small"])
    assert hashlib.sha256(quantize(large, qtype).tobytes()).digest() == GOLDEN_BYTES[f"{qtype}.large_sha256"].tobytes()


@pytest.mark.parametrize("qtype", TYPES + K_TYPES)
def test_large_parallel_input_does_not_depend_on_chunking(qtype, rng):
    x = (rng.standard_normal((300, 1024)) * rng.uniform(1e-3, 10, (300, 1))).astype(np.float32)
    whole = quantize(x, qtype)                                    # parallel: many chunks
    if qtype in TYPES:
        np.testing.assert_array_equal(whole, ggml_bytes(x, qtype))
    rows = np.concatenate([quantize(row, qtype) for row in x[:8]])  # serial: small inputs
    np.testing.assert_array_equal(rows, whole[:rows.size])


# Root-mean-square error over rms(x) of N(0, 1) rows, a little above what ggml's quantizers reach.
RELATIVE_RMSE = {"Q2_K": 0.33, "Q3_K": 0.18, "Q4_K": 0.08, "Q5_K": 0.04, "Q6_K": 0.02, "IQ4_NL": 0.085,
                 "IQ4_XS": 0.085}


@pytest.mark.parametrize("qtype", K_TYPES)
def test_k_quants_decode_like_ggml_and_within_their_error(qtype, rng):
    x = tricky_data(rng)
    x = x[np.abs(x).max(axis=1) < 1e30]
    q = quantize(x, qtype)
    theirs = gguf.quants.dequantize(q.reshape(x.shape[0], -1), G[qtype]).reshape(x.shape)
    np.testing.assert_array_equal(dequantize(q, qtype, x.shape), theirs)
    plain = rng.standard_normal((64, 512)).astype(np.float32)
    back = dequantize(quantize(plain, qtype), qtype, plain.shape)
    assert np.sqrt(np.mean((back - plain) ** 2)) < RELATIVE_RMSE[qtype]
    for row in (np.zeros(256, np.float32), np.full(256, 2.5, np.float32)):   # zeros stay zeros; constants stay near
        np.testing.assert_allclose(dequantize(quantize(row, qtype), qtype, row.shape), row, atol=0.02)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16"])
def test_decoding_our_bytes_equals_ggml_decoding(qtype, rng):
    x = tricky_data(rng)
    x = x[np.abs(x).max(axis=1) < 1e30]     # the huge rows decode to inf * 0 = nan in ggml's order too
    q = quantize(x, qtype)
    ours = dequantize(q, qtype, x.shape)
    theirs = gguf.quants.dequantize(q.reshape(x.shape[0], -1), G[qtype]).reshape(x.shape)
    np.testing.assert_array_equal(ours, theirs)


def test_fp16_conversion_rounds_to_nearest_even_everywhere():
    # A stride through every float32 bit pattern (NaNs aside), plus the rounding edges of half precision.
    bits = np.arange(0, 2 ** 32, 251, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    edges = np.array([65504, 65519.996, 65520, -65520, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001,
                      2.0 ** -26, 3 * 2.0 ** -26, 2.0 ** -14 - 2.0 ** -25, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11,
                      -0.0, np.inf, -np.inf, 1e-45], np.float32)
    x = np.r_[x[~np.isnan(x)], edges]
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(quantize(x, "F16").view(np.uint16), expected.view(np.uint16))


def test_f32_is_a_plain_copy(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(quantize(x, "F32").view(np.float32).reshape(3, 5), x)


def test_kernel_validates_before_running():
    x = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="qtype"):
        _quantize.quantize(x, 16, np.empty(1000, np.uint8))          # IQ2_S: fastlm does not write it
    with pytest.raises(ValueError, match="whole 256-element blocks"):
        _quantize.quantize(x, 12, np.empty(144, np.uint8))            # Q4_K needs rows of 256
    with pytest.raises(ValueError, match="out must hold 68 bytes"):
        _quantize.quantize(x, 8, np.empty(67, np.uint8))
    with pytest.raises(ValueError, match="whole 32-element blocks"):
        _quantize.quantize(np.zeros(48, np.float32), 2, np.empty(18, np.uint8))
    _quantize.quantize(np.zeros(0, np.float32), 3, np.empty(0, np.uint8))      # nothing to do is fine


def test_python_wrapper_validates():
    with pytest.raises(FastLMValueError, match="unknown quantization type 'Q7_K'"):
        quantize(np.zeros(32), "Q7_K")
    with pytest.raises(FastLMValueError, match="unknown quantization type"):
        quantize(np.zeros(32), GGMLType.BF16)
    with pytest.raises(FastLMValueError, match="unknown quantization type 'Q4_K_M'"):
        quantize(np.zeros(256), "Q4_K_M")                   # a file type, not a tensor type
    with pytest.raises(FastLMValueError, match="32-element blocks"):
        quantize(np.zeros((2, 48)), "Q4_0")
    with pytest.raises(FastLMValueError, match="256-element blocks"):
        quantize(np.zeros((2, 288)), "IQ4_XS")
    with pytest.raises(FastLMTypeError, match="float"):
        quantize(np.zeros(256, np.uint8), "Q6_K")
    with pytest.raises(FastLMTypeError, match="float"):
        quantize(np.zeros(32, np.int32), "Q8_0")
    # float64 input is rounded to float32 first, as ggml's converter does; names are case-insensitive
    x = np.linspace(-1, 1, 64)
    np.testing.assert_array_equal(quantize(x, "q8_0"), ggml_bytes(x.astype(np.float32), "Q8_0"))
    assert quantize(np.zeros((4, 64)), GGMLType.Q4_1).size == tensor_nbytes("Q4_1", (4, 64))


def test_the_type_names():
    assert set(QUANT_TYPES) == set(TYPES + K_TYPES)
    assert FILE_TYPES == {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
                          "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
                          "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30}      # llama.cpp's LLAMA_FTYPE
    assert FILE_TYPE_ALIASES == {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


# ------------------------------------------------------------------------------- llama-quantize's choices

@pytest.mark.parametrize("model", sorted(GOLDEN_MIXES))
def test_mix_choices_and_bytes_equal_llama_quantize(tmp_path, model):
    spec = qg.MODELS[model]
    src = tmp_path / f"{model}.gguf"
    qg.write_model(src, spec)
    order = list(qg.model_tensors(spec))
    for key, expected in GOLDEN_MIXES[model].items():
        file_type, pure = key.split(" ")[0], key.endswith(" pure")
        dst = quantize_file(src, tmp_path / "out.gguf", file_type, pure=pure).dst
        out = GGUFFile(dst)
        assert " ".join(out.tensors[n].type_name for n in order) == expected["types"], key
        digest = hashlib.sha256(b"".join(out._raw(out.tensors[n]).tobytes() for n in order)).hexdigest()
        assert digest == expected["sha256"], key
        assert out.metadata["general.file_type"] == expected["file_type"] == FILE_TYPES[file_type]
        facts = ModelFacts.of(out.metadata)
        chosen = tensor_types({n: out.tensors[n].shape for n in order}, file_type, facts, pure)
        assert [GGMLType.F32 if t is None else t for t in chosen.values()] == [out.tensors[n].qtype for n in order]


def shapes_of(names, cols=256, rows=8):
    return {n: ((cols,) if n.endswith("_norm.weight") else (rows, cols)) for n in names}


def llama_names(layers):
    return ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{t}.weight" for i in range(layers)
        for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]


def test_mix_rules_one_line_each():
    # (file type, model facts, tensor) -> type, as llama.cpp's llama_tensor_get_type gives it
    names, Q = llama_names(32), GGMLType
    shapes = shapes_of(names)
    dense, gqa4 = ModelFacts(layers=32, heads=32, kv_heads=32), ModelFacts(layers=32, heads=32, kv_heads=8)
    cases = [
        ("Q4_K_M", dense, "token_embd.weight", Q.Q6_K),          # tied: the output projection at Q6_K
        ("Q8_0", dense, "token_embd.weight", Q.Q8_0),
        ("Q4_0", dense, "token_embd.weight", Q.Q6_K),
        ("F16", dense, "token_embd.weight", Q.F16),
        ("Q4_K_M", dense, "output_norm.weight", None),            # norms: copied
        ("Q4_K_M", dense, "blk.0.attn_v.weight", Q.Q6_K),          # use_more_bits: first eighth
        ("Q4_K_M", dense, "blk.4.attn_v.weight", Q.Q4_K),
        ("Q4_K_M", dense, "blk.6.attn_v.weight", Q.Q6_K),          # (6 - 4) % 3 == 2
        ("Q4_K_M", dense, "blk.28.ffn_down.weight", Q.Q6_K),       # last eighth
        ("Q4_K_M", dense, "blk.10.attn_q.weight", Q.Q4_K),
        ("Q4_K_S", dense, "blk.3.attn_v.weight", Q.Q5_K), ("Q4_K_S", dense, "blk.4.attn_v.weight", Q.Q4_K),
        ("Q3_K_M", dense, "blk.1.attn_v.weight", Q.Q5_K), ("Q3_K_M", dense, "blk.2.attn_v.weight", Q.Q4_K),
        ("Q3_K_M", dense, "blk.1.ffn_down.weight", Q.Q5_K), ("Q3_K_M", dense, "blk.2.ffn_down.weight", Q.Q4_K),
        ("Q3_K_M", dense, "blk.9.attn_output.weight", Q.Q4_K),
        ("Q3_K_L", dense, "blk.9.attn_output.weight", Q.Q5_K),
        ("Q2_K", dense, "blk.9.attn_v.weight", Q.Q3_K), ("Q2_K", gqa4, "blk.9.attn_v.weight", Q.Q4_K),
        ("IQ4_XS", gqa4, "blk.9.attn_v.weight", Q.Q5_K), ("IQ4_XS", dense, "blk.9.attn_v.weight", Q.IQ4_XS),
        ("IQ4_NL", dense, "blk.3.ffn_down.weight", Q.Q5_K), ("IQ4_NL", dense, "blk.4.ffn_down.weight", Q.IQ4_NL),
        ("Q5_K_S", dense, "blk.0.attn_v.weight", Q.Q5_K),
        ("Q3_K_M", ModelFacts(layers=80, heads=64, kv_heads=8), "blk.9.attn_v.weight", Q.Q5_K),  # a 70B
        ("Q4_K_M", ModelFacts(layers=32, heads=32, kv_heads=8, experts=8), "blk.9.attn_v.weight", Q.Q8_0),
        ("Q4_K_M", ModelFacts(layers=32, heads=32, kv_heads=8, experts=8), "blk.9.attn_k.weight", Q.Q8_0),
        ("Q3_K_L", ModelFacts("falcon", layers=32), "blk.9.ffn_down.weight", Q.Q4_K),
        ("Q4_K_M", ModelFacts("falcon", layers=32), "token_embd.weight", Q.Q8_0),
    ]
    for file_type, facts, name, expected in cases:
        assert tensor_types(shapes, file_type, facts)[name] == expected, (file_type, facts, name)
    assert tensor_types(shapes, "Q4_K", dense) == tensor_types(shapes, "q4_k_m", dense)   # the alias
    pure = tensor_types(shapes, "Q4_K_M", dense, pure=True)
    assert {t for n, t in pure.items() if not n.endswith("_norm.weight")} == {Q.Q4_K}


def test_row_width_fallbacks():
    Q = GGMLType
    for file_type, cols, expected in [("Q2_K", 288, Q.Q4_0), ("Q3_K_S", 288, Q.Q4_0), ("Q4_K_S", 288, Q.Q5_0),
                                      ("Q5_K_S", 288, Q.Q5_1), ("Q6_K", 288, Q.Q8_0), ("IQ4_XS", 288, Q.IQ4_NL),
                                      ("Q4_K_S", 48, Q.F16), ("Q4_0", 48, Q.F16), ("Q8_0", 48, Q.F16),
                                      ("F16", 48, Q.F16), ("F32", 48, Q.F32), ("Q4_0", 96, Q.Q4_0)]:
        got = tensor_types({"blk.0.attn_q.weight": (4, cols), "output.weight": (4, 256)}, file_type, pure=True)
        assert got["blk.0.attn_q.weight"] == expected, (file_type, cols)
    # an output projection whose rows do not fit the file's blocks: Q8_0, then F16
    assert tensor_types({"output.weight": (4, 288)}, "Q4_K_M")["output.weight"] == Q.Q8_0
    assert tensor_types({"output.weight": (4, 48)}, "Q4_K_M")["output.weight"] == Q.F16
    # a single row is no matrix for llama.cpp
    assert tensor_types({"blk.0.attn_q.weight": (1, 256)}, "Q4_0")["blk.0.attn_q.weight"] is None


def test_tensor_types_validates():
    with pytest.raises(FastLMValueError, match="unknown quantization type 'Q4_K_X'"):
        tensor_types({}, "Q4_K_X")
    with pytest.raises(FastLMValueError, match="unknown quantization type"):
        tensor_types({}, "IQ2_XXS")
    facts = ModelFacts.of({"general.architecture": "qwen2", "qwen2.block_count": 80,
                           "qwen2.attention.head_count": [64] * 80, "qwen2.attention.head_count_kv": [8] * 80})
    assert facts == ModelFacts("qwen2", 80, 64, 8, 0) and facts.gqa == 8 and facts.is_70b
    assert ModelFacts.of({}).gqa == 1 and ModelFacts.of({"llama.attention.head_count_kv": 0}).gqa == 0
    with pytest.raises(ModelFormatError, match="llama.block_count must be a non-negative integer, got 'x'"):
        ModelFacts.of({"llama.block_count": "x"})


# ------------------------------------------------------------------------------------- quantize_file

def write_tiny_model(path, seed=0, src_type="F32"):
    """A TINY llama model as a GGUF file (tensors in ``src_type`` where the rows allow)."""
    config = ModelConfig(**TINY, tie_weights=False)
    params = reference.init_parameters(config, seed)
    metadata = {
        "general.architecture": "llama",
        "general.name": "tiny",
        "general.file_type": GGUFValue(ValueType.UINT32, 0),
        "llama.context_length": GGUFValue(ValueType.UINT32, config.max_seq_len),
        "llama.embedding_length": GGUFValue(ValueType.UINT32, config.d_model),
        "llama.block_count": GGUFValue(ValueType.UINT32, config.num_layers),
        "llama.feed_forward_length": GGUFValue(ValueType.UINT32, config.d_ff),
        "llama.attention.head_count": GGUFValue(ValueType.UINT32, config.num_heads),
        "llama.attention.head_count_kv": GGUFValue(ValueType.UINT32, config.num_kv_heads),
        "llama.attention.layer_norm_rms_epsilon": GGUFValue(ValueType.FLOAT32, 1e-5),
        "llama.rope.freq_base": GGUFValue(ValueType.FLOAT32, 10000.0),
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(config.vocab_size)],
        "tokenizer.ggml.scores": GGUFValue(ValueType.ARRAY, [float(-i) for i in range(config.vocab_size)],
                                           ValueType.FLOAT32),
        "tokenizer.ggml.token_type": GGUFValue(ValueType.ARRAY, [1] * config.vocab_size, ValueType.INT32),
        "general.quantization_version": GGUFValue(ValueType.UINT32, 2),
    }
    specs = []
    for name, w in params.items():
        qtype = src_type if w.ndim == 2 and w.shape[-1] % BLOCK_SIZES[GGMLType[src_type]][0] == 0 else "F32"
        specs.append(TensorSpec(f"{name}.weight", w.shape, qtype, quantize(w, qtype)))
    write_gguf(path, metadata, specs)
    return params


@pytest.mark.parametrize("qtype", [*FILE_TYPES, "Q4_K"])
@pytest.mark.parametrize("src_type", ["F32", "Q8_0"])
def test_quantize_file_on_a_synthetic_model(tmp_path, qtype, src_type):
    src, dst = tmp_path / "tiny.gguf", tmp_path / f"tiny-{qtype}.gguf"
    write_tiny_model(src, src_type=src_type)
    seen = []
    summary = quantize_file(src, dst, qtype, progress=lambda *a: seen.append(a))
    before, after = GGUFFile(src), GGUFFile(dst)
    assert [s[2] for s in seen] == list(before.tensors) and seen[0][:2] == (0, len(before.tensors))
    assert summary.n_tensors == len(after.tensors) and summary.bytes_out == dst.stat().st_size
    assert summary.qtype == FILE_TYPE_ALIASES.get(qtype, qtype)
    assert sum(summary.tensor_types.values()) == summary.n_tensors
    chosen = tensor_types({n: i.shape for n, i in before.tensors.items()}, qtype, ModelFacts.of(before.metadata))
    for name, info in after.tensors.items():
        old = before.tensors[name]
        expected_type = old.qtype if chosen[name] is None else chosen[name]
        assert info.qtype == expected_type and info.shape == old.shape
        raw = np.frombuffer(after._map, np.uint8, info.nbytes, info.offset)
        if expected_type == old.qtype:                       # copied as it is
            np.testing.assert_array_equal(raw, before._raw(old))
        else:
            x = before.tensor(name)
            ours = quantize(x, expected_type)
            np.testing.assert_array_equal(raw, ours)
            if info.type_name in TYPES:
                np.testing.assert_array_equal(raw, ggml_bytes(x, info.type_name))
    if qtype not in ("F32", "F16", "Q8_0"):
        # rows of d_model = 32: the output projection's Q6_K does not fit, Q8_0 does; d_ff = 48: no block fits
        assert after.tensors["output.weight"].type_name == "Q8_0"
        assert after.tensors["blk.0.ffn_down.weight"].type_name == "F16"
    meta_in, meta_out = read_metadata(src), read_metadata(dst)
    assert meta_out.pop("general.file_type") == GGUFValue(ValueType.UINT32, FILE_TYPES[summary.qtype])
    meta_in.pop("general.file_type")
    assert meta_out == meta_in
    config, params, _ = load_gguf(dst)
    assert config == load_gguf(src)[0]


def test_quantize_file_errors(tmp_path):
    src = tmp_path / "tiny.gguf"
    write_tiny_model(src)
    with pytest.raises(FastLMValueError, match="unknown quantization type 'Q3_K_XL'"):
        quantize_file(src, tmp_path / "out.gguf", "Q3_K_XL")
    with pytest.raises(FastLMValueError, match="unknown quantization type 'IQ2_XXS'"):
        quantize_file(src, tmp_path / "out.gguf", "IQ2_XXS")
    with pytest.raises(ModelFormatError, match="no such file"):
        quantize_file(tmp_path / "missing.gguf", tmp_path / "out.gguf", "Q8_0")
    with pytest.raises(FastLMValueError, match="is the input file"):
        quantize_file(src, src, "Q8_0")
    with pytest.raises(FastLMValueError, match="is the input file"):
        quantize_file(src, tmp_path / "." / "tiny.gguf", "Q8_0")
    with pytest.raises(FastLMValueError, match="does not exist"):
        quantize_file(src, tmp_path / "no" / "such" / "dir.gguf", "Q8_0")
    with pytest.raises(FastLMValueError, match="is a directory"):
        quantize_file(src, tmp_path, "Q8_0")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    with pytest.raises(ModelFormatError, match="bad.gguf"):
        quantize_file(bad, tmp_path / "out.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "tiny.gguf"]   # nothing half-written


def test_quantize_file_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    src, dst = tmp_path / "tiny.gguf", tmp_path / "out.gguf"
    write_tiny_model(src)
    dst.write_bytes(b"old contents")
    calls = []

    def progress(i, n, name, a, b):
        calls.append(name)
        if i == 5:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        quantize_file(src, dst, "Q4_0", progress=progress)
    assert len(calls) == 6 and dst.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf", "tiny.gguf"]


# ------------------------------------------------------------------------------------------ the real model

REAL_TYPES = TYPES + ["Q4_K_M", "Q6_K"]


@pytest.mark.parametrize("qtype", REAL_TYPES)
def test_real_model_quantizes_exactly_like_ggml(smollm2_formats, smollm2_gguf_path, qtype):
    src, dst = GGUFFile(smollm2_gguf_path), GGUFFile(smollm2_formats[qtype])
    assert list(dst.tensors) == list(src.tensors)
    chosen = tensor_types({n: i.shape for n, i in src.tensors.items()}, qtype, ModelFacts.of(src.metadata))
    # SmolLM2 ties its output projection to token_embd: Q6_K in llama.cpp's quantized types, but rows of
    # d_model = 576 are not whole 256-element blocks, so Q8_0 (so are attn_*'s and ffn_gate / ffn_up's: the
    # K-quant files fall back to 32-element types there; ffn_down's rows of 1536 keep them)
    assert chosen["token_embd.weight"] == {"F32": GGMLType.F32, "F16": GGMLType.F16}.get(qtype, GGMLType.Q8_0)
    for name, info in dst.tensors.items():
        old = src.tensors[name]
        assert info.shape == old.shape
        assert info.qtype == (old.qtype if chosen[name] is None else chosen[name])
        raw = np.frombuffer(dst._map, np.uint8, info.nbytes, info.offset)
        if info.qtype == old.qtype:                      # copied: the norms, and Q4_1's own matrices
            np.testing.assert_array_equal(raw, src._raw(old), err_msg=name)
            continue
        x = src.tensor(name)
        expected = ggml_bytes(x, info.type_name) if info.type_name in TYPES else quantize(x, info.qtype)
        np.testing.assert_array_equal(raw, expected, err_msg=name)
    # fastlm's decoding of the new bytes equals ggml's, on the embedding and one whole layer
    for name in ["token_embd.weight", "output_norm.weight", *(n for n in dst.tensors if n.startswith("blk.0."))]:
        info = dst.tensors[name]
        raw = np.frombuffer(dst._map, np.uint8, info.nbytes, info.offset)
        theirs = gguf.quants.dequantize(raw.reshape(info.shape[0], -1) if len(info.shape) == 2 else raw,
                                        G(info.qtype)).reshape(info.shape)
        np.testing.assert_array_equal(dst.tensor(name), theirs, err_msg=name)


@pytest.mark.parametrize("qtype", REAL_TYPES)
def test_real_model_metadata_is_preserved(smollm2_formats, smollm2_gguf_path, qtype):
    path = smollm2_formats[qtype]
    before, after = read_metadata(smollm2_gguf_path), read_metadata(path)
    assert after["general.file_type"] == GGUFValue(ValueType.UINT32, FILE_TYPES[qtype])
    assert list(after) == list(before)                            # same keys, same order, same types and bits
    assert {k: v for k, v in after.items() if k != "general.file_type"} == \
           {k: v for k, v in before.items() if k != "general.file_type"}


def test_real_model_metadata_reads_the_same_in_the_gguf_package(smollm2_formats, smollm2_gguf_path):
    path = smollm2_formats["Q4_0"]
    reader, original = gguf.GGUFReader(path), gguf.GGUFReader(smollm2_gguf_path)
    assert reader.fields["general.file_type"].types == [gguf.GGUFValueType.UINT32]
    assert reader.fields["general.file_type"].contents() == 2
    for key, field in original.fields.items():
        if not key.startswith("GGUF.") and key != "general.file_type":
            assert reader.fields[key].types == field.types, key
            assert reader.fields[key].contents() == field.contents(), key
    assert [(t.name, t.tensor_type, list(t.shape)) for t in reader.tensors] == \
           [(t.name, G.F32 if len(t.shape) == 1 else G.Q8_0 if t.name == "token_embd.weight" else G.Q4_0,
             list(t.shape)) for t in original.tensors]


def test_real_model_quantized_files_load(smollm2_formats, smollm2_gguf_path):
    config, original, _ = load_gguf(smollm2_gguf_path)
    loaded_config, params, _ = load_gguf(smollm2_formats["F32"])
    assert loaded_config == config
    for name, w in original.items():        # F32 stores the source's float32 values as they are
        np.testing.assert_array_equal(params[name], w, err_msg=name)
    lm = fastlm.load(smollm2_formats["Q4_0"])
    assert lm.config == config
    case = GOLDEN["tokenizer"][0]
    assert lm.encode(case["text"], add_special_tokens=False) == case["ids"]

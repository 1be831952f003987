"""Models that keep their weights in block formats: the same results as their dequantised float32 twins, within
each format's stated error, on a small random model and on the real one in every format `fastlm quantize`
writes."""
from pathlib import Path

import gguf
import numpy as np
import pytest

import fastlm
from fastlm import ModelConfig, _attention, _qlinear, reference
from fastlm.perplexity import perplexity
from fastlm.weights import GGMLType, QuantizedTensor
from fastlm.weights.quant import BLOCK_SIZES

from conftest import GOLDEN

# Head dim 64, and rows of 256 values: every block type, K-quants included, can hold every matrix.
CONFIG = ModelConfig(vocab_size=97, d_model=256, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=512,
                     max_seq_len=64)
TYPES = [t for t in GGMLType if t in fastlm.weights.quant.KERNEL_TYPES]
# Decode logits against the dequantised model's, relative to the logits' spread: F16 multiplies in float32;
# the block types take int16 activations (rounding error up to half a step of amax / 32767 per value, or of
# amax / 16383 for the 256-element formats, about 1e-5 of a dot product), compounded through the layers.
DECODE_TOLERANCE = {t: 1e-4 if t == GGMLType.F16 else 1e-3 for t in TYPES}


# The gguf package cannot encode these types: their blocks are random bytes with small fp16 scales at these
# offsets.
K_SCALES = {GGMLType.Q2_K: ([80, 82], 2e-3), GGMLType.Q3_K: ([108], 1e-3), GGMLType.Q4_K: ([0, 2], 2e-3),
            GGMLType.Q5_K: ([0, 2], 1e-3), GGMLType.Q6_K: ([208], 1e-4), GGMLType.IQ4_NL: ([0], 2e-3),
            GGMLType.IQ4_XS: ([0], 2e-4)}


def encode(w, qtype, rng):
    if qtype in K_SCALES:
        offsets, scale = K_SCALES[qtype]
        blocks = rng.integers(0, 256, size=(w.size // BLOCK_SIZES[qtype][0], BLOCK_SIZES[qtype][1]), dtype=np.uint8)
        for offset in offsets:
            d = rng.uniform(0.5, 1.0, len(blocks)).astype(np.float16) * np.float16(scale)
            blocks[:, offset:offset + 2] = d.view(np.uint8).reshape(-1, 2)
        return blocks.reshape(-1)
    raw = gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType(int(qtype)))
    return raw.view(np.uint8).reshape(-1)                 # F16 comes back as float16


def quantized_params(qtype, seed=0):
    """Random weights with every matrix encoded as ``qtype`` by the gguf package (ggml's reference)."""
    params = reference.init_parameters(CONFIG, seed)
    rng = np.random.default_rng(seed)
    return {name: QuantizedTensor(encode(w, qtype, rng), qtype, w.shape) if w.ndim == 2 else w
            for name, w in params.items()}


def dequantized(params):
    return {k: v.dequantize() if isinstance(v, QuantizedTensor) else v for k, v in params.items()}


@pytest.fixture(scope="module", params=TYPES, ids=lambda t: t.name)
def twins(request):
    params = quantized_params(request.param)
    return (request.param, fastlm.CausalLM.from_params(CONFIG, params),
            fastlm.CausalLM.from_params(CONFIG, dequantized(params)))


def test_weights_stay_in_block_form(twins):
    qtype, quantized, dense = twins
    assert quantized.quantized and not dense.quantized
    assert quantized.weight_types == {qtype.name: 2 + 7 * CONFIG.num_layers}
    assert dense.weight_types == {"F32": 2 + 4 * CONFIG.num_layers}      # Q/K/V and gate/up stacked
    assert isinstance(quantized.embedding, QuantizedTensor) and quantized.output is not quantized.embedding


def test_prefill_matches_the_dequantised_model(twins, rng):
    # Many tokens at once run on float32 rows of the decoded blocks: only float32 rounding differs.
    _, quantized, dense = twins
    ids = rng.integers(0, CONFIG.vocab_size, size=(2, 40))
    expected = dense.forward(ids)
    np.testing.assert_allclose(quantized.forward(ids), expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_decode_matches_the_dequantised_model(twins, rng):
    qtype, quantized, dense = twins
    prompt = rng.integers(0, CONFIG.vocab_size, size=(3, 5))
    tokens = rng.integers(0, CONFIG.vocab_size, size=(6, 3))
    logits = []
    for m in (quantized, dense):
        cache, ws = m.new_cache(3, 16), m.new_workspace(15)
        steps = [m.prefill(prompt, cache, workspace=ws)] + [m.decode(t, cache, workspace=ws) for t in tokens]
        logits.append(np.stack(steps))
    spread = logits[1].std()
    assert np.abs(logits[0] - logits[1]).max() <= DECODE_TOLERANCE[qtype] * spread * 10
    assert np.sqrt(np.mean((logits[0] - logits[1]) ** 2)) <= DECODE_TOLERANCE[qtype] * spread


def test_portable_kernels_match_the_simd_ones(twins, rng):
    _, quantized, _ = twins
    prompt = rng.integers(0, CONFIG.vocab_size, size=(2, 20))
    before = fastlm.simd_enabled()
    results = []
    try:
        for simd in (True, False):
            fastlm.set_simd(simd)
            cache = quantized.new_cache(2, 24)
            first = quantized.prefill(prompt, cache)
            results.append((first, quantized.decode(first.argmax(axis=1), cache)))
    finally:
        fastlm.set_simd(before)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * np.abs(b).max())


def test_decode_allocates_nothing(twins):
    _, quantized, _ = twins
    cache, ws = quantized.new_cache(2, 16), quantized.new_workspace(8)
    out = np.empty((2, CONFIG.vocab_size), np.float32)
    quantized.prefill(np.array([[1, 2, 3], [4, 5, 6]]), cache, workspace=ws, out=out)
    before = _qlinear.allocations(), _attention.allocations()
    for t in range(5):
        quantized.decode(np.array([t, t + 1]), cache, workspace=ws, out=out)
    assert (_qlinear.allocations(), _attention.allocations()) == before


def test_generation_is_reproducible(twins):
    _, quantized, _ = twins
    runs = [quantized.generate([[1, 2, 3]], 8, temperature=0.9, seed=5) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_a_float64_model_decodes_the_blocks():
    params = quantized_params(GGMLType.Q4_0)
    m = fastlm.CausalLM.from_params(CONFIG, params, dtype=np.float64)
    assert not m.quantized and m.weight_types == {"F64": 2 + 4 * CONFIG.num_layers}
    ref = reference.CausalLM.from_params(CONFIG, {k: np.asarray(v, np.float64)
                                                  for k, v in dequantized(params).items()})
    ids = np.arange(10)
    np.testing.assert_allclose(m.forward(ids), ref.forward(ids), rtol=0, atol=1e-10)


def test_a_model_may_mix_types(rng):
    # As llama.cpp's mixes do (Q6_K attn_v and ffn_down among Q4_K matrices, Q5_0 / Q8_0 where a row is not a
    # multiple of 256; here among Q4_0 ones, whose weights gguf's quantizer makes): each matrix runs on its own type's kernel, Q, K, V (and gate, up) of three types in one
    # pass.
    params = quantized_params(GGMLType.Q4_0)
    rng = np.random.default_rng(1)
    mix = [("blk.0.attn_q", GGMLType.Q5_0), ("blk.0.attn_output", GGMLType.Q4_K), ("blk.0.attn_k", GGMLType.IQ4_NL), ("blk.0.attn_v", GGMLType.Q6_K),
           ("blk.0.ffn_gate", GGMLType.Q2_K), ("blk.0.ffn_up", GGMLType.Q3_K), ("blk.0.ffn_down", GGMLType.Q5_K),
           ("blk.1.attn_q", GGMLType.Q5_1), ("blk.1.attn_k", GGMLType.F16), ("blk.1.attn_v", GGMLType.Q8_0),
           ("blk.1.attn_output", GGMLType.IQ4_XS), ("blk.1.ffn_up", GGMLType.Q4_1)]
    for name, qtype in mix:
        w = params[name].dequantize()
        params[name] = QuantizedTensor(encode(w, qtype, rng), qtype, w.shape)
    m = fastlm.CausalLM.from_params(CONFIG, params)
    assert m.weight_types == {"Q4_0": 2 + 7 * CONFIG.num_layers - len(mix), **{t.name: 1 for _, t in mix}}
    dense = fastlm.CausalLM.from_params(CONFIG, dequantized(params))
    ids = rng.integers(0, CONFIG.vocab_size, size=(2, 20))
    expected = dense.forward(ids)
    np.testing.assert_allclose(m.forward(ids), expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    steps = []
    for model in (m, dense):                                # decode: the integer kernels of every type
        cache = model.new_cache(2, 24)
        steps.append(np.stack([model.prefill(ids[:, :4], cache)]
                              + [model.decode(ids[:, j], cache) for j in range(4, 12)]))
    np.testing.assert_allclose(steps[0], steps[1], rtol=0, atol=1e-3 * np.abs(steps[1]).max())


# ------------------------------------------------------------------------------------ the real model

FORMATS = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M", "Q6_K"]
ENGLISH = (Path(__file__).parent / "data" / "english.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def real_formats(smollm2_gguf_path, smollm2_formats):
    """The real model as shipped (Q4_1 blocks, Q8_0 embedding) and re-encoded into each format, each loaded
    quantized and dequantised."""
    paths = {"shipped": smollm2_gguf_path, **{name: smollm2_formats[name] for name in FORMATS}}
    return {name: (fastlm.load(p), fastlm.load(p, dequantize=True)) for name, p in paths.items()}


CASES = GOLDEN["prompts"] + GOLDEN["chats"]


def teacher_forced_choices(lm) -> np.ndarray:
    """Teacher forcing through the decode path: each golden prompt prefilled into its own cache row, then the
    recorded continuations decoded one token per row per step, all rows in one batch; the argmax after the
    prompt and after every token, (rows, steps)."""
    m = lm.model
    steps = len(CASES[0]["greedy_new_ids"])
    assert all(len(c["greedy_new_ids"]) == steps for c in CASES)
    cache = m.new_cache(len(CASES), max(len(c["ids"]) for c in CASES) + steps)
    choices = np.empty((len(CASES), steps), np.int64)
    for row, case in enumerate(CASES):
        choices[row, 0] = m.prefill([case["ids"]], cache, first_row=row).argmax()
    forced = np.array([c["greedy_new_ids"] for c in CASES])
    for j in range(steps - 1):
        choices[:, j + 1] = m.decode(forced[:, j], cache).argmax(axis=1)
    return choices


@pytest.mark.parametrize("name", ["shipped"] + FORMATS)
def test_teacher_forced_top1_agrees_with_the_float32_path(real_formats, name):
    quantized, dense = real_formats[name]
    assert quantized.model.quantized and not dense.model.quantized
    agree = teacher_forced_choices(quantized) == teacher_forced_choices(dense)
    assert agree.mean() >= 0.99, f"{name}: {agree.sum()} of {agree.size} greedy choices agree"


@pytest.fixture(scope="module")
def english_perplexity(real_formats):
    """{format: (perplexity computed on the blocks, on the same weights dequantised)} on a fixed English text."""
    tokens = real_formats["shipped"][0].encode(ENGLISH)
    return {name: tuple(perplexity(lm.model, tokens, n_ctx=256).ppl for lm in pair)
            for name, pair in real_formats.items()}


@pytest.mark.parametrize("name", ["shipped"] + FORMATS)
def test_perplexity_within_one_percent_of_the_float32_path(english_perplexity, name):
    ppl_blocks, ppl_float = english_perplexity[name]
    assert abs(ppl_blocks / ppl_float - 1) <= 0.01, (ppl_blocks, ppl_float)
    assert 5 < ppl_float < 60


@pytest.mark.parametrize("name", ["F16", "Q8_0", "Q4_1"])
def test_reencoding_keeps_perplexity(english_perplexity, name):
    # Against the shipped weights in float32. (Q4_0 cannot hold Q4_1's asymmetric grids: +13 % here.)
    assert abs(english_perplexity[name][0] / english_perplexity["shipped"][1] - 1) <= 0.01


def test_real_weights_stay_mapped(real_formats):
    quantized, _ = real_formats["shipped"]
    m = quantized.model
    assert m.weight_types == {"Q4_1": 7 * 30, "Q8_0": 1}
    # Every matrix is a view of the file's bytes: nothing is copied, decoded or concatenated at load.
    assert m.output is m.embedding
    assert all(isinstance(w, QuantizedTensor) and not w.data.flags.owndata for w in m._matrices())



# -------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("data, qtype, shape, error, message", [
    (np.zeros(18 * 4, np.uint8), "Q4_0", (4, 32, 1), fastlm.errors.FastLMTypeError, "is a matrix"),
    (np.zeros(18 * 3, np.uint8), "Q4_0", (4, 32), fastlm.errors.ModelFormatError, "takes 72 bytes"),
    (np.zeros(18 * 4, np.float32), "Q4_0", (4, 32), fastlm.errors.ModelFormatError, "takes 72 bytes"),
    (np.zeros(18 * 4, np.uint8), "Q4_0", (4, 48), fastlm.errors.ModelFormatError, "whole 32-element blocks"),
    (np.zeros(18 * 4, np.uint8), "Q8_K", (4, 32), fastlm.errors.ModelFormatError, "unsupported tensor type"),
    (np.zeros(144 * 4, np.uint8), "Q4_K", (4, 128), fastlm.errors.ModelFormatError, "whole 256-element blocks"),
])
def test_quantized_tensor_rejects_inconsistent_blocks(data, qtype, shape, error, message):
    with pytest.raises(error, match=message):
        QuantizedTensor(data, qtype, shape)


def test_gguf_matrices_as_stored_reject_what_is_not_one(smollm2_gguf_path):
    gguf_file = fastlm.weights.GGUFFile(smollm2_gguf_path)
    assert gguf_file.quantized("blk.0.ffn_up.weight").qtype == GGMLType.Q4_1
    with pytest.raises(fastlm.errors.ModelFormatError, match="no tensor 'missing.weight'"):
        gguf_file.quantized("missing.weight")
    with pytest.raises(fastlm.errors.ModelFormatError, match="is not a matrix"):
        gguf_file.quantized("output_norm.weight")

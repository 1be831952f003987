"""Hugging Face safetensors checkpoints: the rotate-half RoPE layout, dtypes, shards and bad files."""
import json
import struct

import numpy as np
import pytest
import safetensors.numpy as st

import fastlm
from fastlm import ModelConfig, reference
from fastlm.errors import ModelFormatError
from fastlm.reference import init_parameters
from fastlm.weights import load_safetensors, permute_rotate_half
from fastlm.weights.safetensors import _hf_names

CONFIG = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=48,
                     max_seq_len=32, rope_theta=20000.0, norm_eps=1e-5)
IDS = [[7, 3, 60, 0, 12, 12, 5, 41, 9]]


# ------------------------------------------------------------- the Hugging Face model, rotate-half RoPE

def hf_rope(x, theta):
    """Hugging Face's RoPE on x (B, H, L, hd): pairs (x[i], x[i + hd/2]) rotate together."""
    hd, L = x.shape[-1], x.shape[-2]
    angles = np.arange(L)[:, None] * theta ** (-np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    rotated = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos + rotated * sin


def hf_attention(x, wq, wk, wv, wo, config):
    B, L, _ = x.shape
    split = lambda y, h: y.reshape(B, L, h, config.head_dim).transpose(0, 2, 1, 3)  # noqa: E731
    q = hf_rope(split(x @ wq.T, config.num_heads), config.rope_theta)
    k = hf_rope(split(x @ wk.T, config.num_kv_heads), config.rope_theta)
    v = split(x @ wv.T, config.num_kv_heads)
    group = config.num_heads // config.num_kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(config.head_dim) + reference.create_causal_mask(L)
    return (reference.softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, L, -1) @ wo.T


def hf_forward(config, w, ids):
    """LlamaForCausalLM in float64 NumPy, on Hugging Face names and layout."""
    def norm(x, weight):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + config.norm_eps) * weight

    x = w["model.embed_tokens.weight"][np.asarray(ids)]
    for i in range(config.num_layers):
        p = lambda name: w[f"model.layers.{i}.{name}.weight"]  # noqa: E731
        x = x + hf_attention(norm(x, p("input_layernorm")), p("self_attn.q_proj"), p("self_attn.k_proj"),
                             p("self_attn.v_proj"), p("self_attn.o_proj"), config)
        h = norm(x, p("post_attention_layernorm"))
        x = x + (reference.silu(h @ p("mlp.gate_proj").T) * (h @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
    head = w["model.embed_tokens.weight"] if config.tie_weights else w["lm_head.weight"]
    return norm(x, w["model.norm.weight"]) @ head.T


def hf_weights(config, seed=0):
    """Random weights under Hugging Face names (norms random too, so a wrong mapping shows)."""
    rng = np.random.default_rng(seed + 1)
    ours = {name: w if w.ndim == 2 else rng.uniform(0.5, 1.5, w.shape)
            for name, w in init_parameters(config, seed).items()}
    return {hf: ours[name] for name, (hf, _, _) in _hf_names(config, "llama").items()}


# ------------------------------------------------------------------------------------------------ writing

def config_json(config, **changes):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
            "hidden_size": config.d_model, "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
            "intermediate_size": config.d_ff, "max_position_embeddings": config.max_seq_len,
            "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps,
            "tie_word_embeddings": config.tie_weights, "hidden_act": "silu", "rope_scaling": None, **changes}


def to_bf16(w):
    """bfloat16 bits of w (truncated): the stored values are exactly those bits as float32."""
    return (w.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def write_raw_safetensors(path, tensors):
    """A safetensors file written by hand: ``tensors`` maps names to (dtype string, shape, raw array)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + raw.nbytes]}
        offset += raw.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _, _, raw in tensors.values():
            f.write(np.ascontiguousarray(raw).tobytes())


def write_checkpoint(root, config, weights, dtype="F32", shards=1, cfg=None):
    """Write ``weights`` (HF names) as a checkpoint; returns the values as stored, in float64."""
    root.mkdir(exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg or config_json(config)))
    names = list(weights)
    stored = {}
    groups = [names[i::shards] for i in range(shards)]
    files = ["model.safetensors"] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
                                                       for i in range(shards)]
    for filename, group in zip(files, groups):
        if dtype == "BF16":
            bits = {n: to_bf16(weights[n]) for n in group}
            write_raw_safetensors(root / filename, {n: ("BF16", b.shape, b) for n, b in bits.items()})
            stored.update({n: (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
                           for n, b in bits.items()})
        else:
            arrays = {n: weights[n].astype(np.float32 if dtype == "F32" else np.float16) for n in group}
            st.save_file(arrays, str(root / filename))
            stored.update({n: a.astype(np.float64) for n, a in arrays.items()})
    if shards > 1:
        weight_map = {n: f for f, group in zip(files, groups) for n in group}
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return stored


# ---------------------------------------------------------------------------------------------- the layout

def test_permutation_moves_rows_as_documented():
    w = np.arange(2 * 8)[:, None] * np.ones((1, 3))            # 2 heads of head_dim 8, rows numbered
    rows = permute_rotate_half(w, num_heads=2)[:, 0]
    np.testing.assert_array_equal(rows, [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15])


def test_rotate_half_attention_equals_interleaved_attention_on_permuted_weights(rng):
    c = CONFIG
    wq, wk, wv, wo = (rng.normal(size=s) for s in [(c.d_model, c.d_model), (c.num_kv_heads * c.head_dim, c.d_model),
                                                    (c.num_kv_heads * c.head_dim, c.d_model), (c.d_model, c.d_model)])
    x = rng.normal(size=(2, 9, c.d_model))
    ours = reference.GroupedQueryAttention(c.d_model, c.num_heads, c.num_kv_heads, c.rope_theta,
                                           permute_rotate_half(wq, c.num_heads),
                                           permute_rotate_half(wk, c.num_kv_heads), wv, wo)
    np.testing.assert_allclose(ours.forward(x, reference.create_causal_mask(9)),
                               hf_attention(x, wq, wk, wv, wo, c), rtol=1e-10, atol=1e-10)
    # Unpermuted, the two conventions differ: the permutation is what makes them agree.
    unpermuted = reference.GroupedQueryAttention(c.d_model, c.num_heads, c.num_kv_heads, c.rope_theta,
                                                 wq, wk, wv, wo)
    assert not np.allclose(unpermuted.forward(x, reference.create_causal_mask(9)), hf_attention(x, wq, wk, wv, wo, c))


# ---------------------------------------------------------------------------------------- valid checkpoints

@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_checkpoint_loads_to_the_hugging_face_logits(tmp_path, dtype, tied):
    config = CONFIG.replace(tie_weights=tied)
    stored = write_checkpoint(tmp_path / "ckpt", config, hf_weights(config), dtype)
    expected = hf_forward(config, stored, IDS)

    loaded_config, params, meta = load_safetensors(tmp_path / "ckpt", dtype=np.float64)
    assert loaded_config == config and meta["model_type"] == "llama"
    logits64 = fastlm.CausalLM.from_params(config, params, dtype=np.float64).forward(IDS)
    np.testing.assert_allclose(logits64, expected, rtol=1e-9, atol=1e-9)

    _, params32, _ = load_safetensors(tmp_path / "ckpt")
    assert all(p.dtype == np.float32 for p in params32.values())
    logits32 = fastlm.CausalLM.from_params(config, params32).forward(IDS)
    assert logits32.dtype == np.float32
    np.testing.assert_allclose(logits32, expected, rtol=1e-4, atol=1e-4)


def test_checkpoint_of_a_fastlm_model_loads_back_exactly(tmp_path):
    """fastlm weights, stored the Hugging Face way (Q/K rows un-permuted), load back bit for bit."""
    ours = {n: w.astype(np.float32) for n, w in init_parameters(CONFIG, seed=3).items()}

    def to_hf(w, heads):                  # inverse of permute_rotate_half
        return w.reshape(heads, CONFIG.head_dim // 2, 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)

    hf = {}
    for name, (hf_name, _, _) in _hf_names(CONFIG, "llama").items():
        w = ours[name]
        hf[hf_name] = to_hf(w, CONFIG.num_heads) if name.endswith("attn_q") else \
            to_hf(w, CONFIG.num_kv_heads) if name.endswith("attn_k") else w
    write_checkpoint(tmp_path / "ckpt", CONFIG, hf)
    config, params, _ = load_safetensors(tmp_path / "ckpt")
    for name, w in ours.items():
        np.testing.assert_array_equal(params[name], w, err_msg=name)
    np.testing.assert_array_equal(fastlm.CausalLM.from_params(config, params).forward(IDS),
                                  fastlm.CausalLM.from_params(CONFIG, ours).forward(IDS))


def test_sharded_checkpoint(tmp_path):
    stored = write_checkpoint(tmp_path / "ckpt", CONFIG, hf_weights(CONFIG), "F16", shards=3)
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()
    config, params, _ = load_safetensors(tmp_path / "ckpt", dtype=np.float64)
    np.testing.assert_allclose(fastlm.CausalLM.from_params(config, params, dtype=np.float64).forward(IDS),
                               hf_forward(CONFIG, stored, IDS), rtol=1e-9, atol=1e-9)


def test_rope_buffers_and_a_tied_head_copy_are_skipped(tmp_path):
    config = CONFIG.replace(tie_weights=True)
    weights = hf_weights(config)
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(CONFIG.head_dim // 2)
    write_checkpoint(tmp_path / "ckpt", config, weights)
    assert "output" not in load_safetensors(tmp_path / "ckpt")[1]


def test_config_defaults_and_newer_rope_parameters(tmp_path):
    cfg = config_json(CONFIG)
    for key in ("num_key_value_heads", "rope_theta", "tie_word_embeddings"):
        del cfg[key]
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 30000.0}
    weights = hf_weights(CONFIG.replace(num_kv_heads=4))
    write_checkpoint(tmp_path / "ckpt", CONFIG, weights, cfg=cfg)
    config, _, _ = load_safetensors(tmp_path / "ckpt")
    assert (config.num_kv_heads, config.rope_theta, config.tie_weights) == (4, 30000.0, False)


# -------------------------------------------------------------------------------------------------- bad files

@pytest.fixture
def ckpt(tmp_path):
    write_checkpoint(tmp_path / "ckpt", CONFIG, hf_weights(CONFIG))
    return tmp_path / "ckpt"


def test_missing_directory(tmp_path):
    with pytest.raises(ModelFormatError, match="not a checkpoint directory"):
        load_safetensors(tmp_path / "absent")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(ModelFormatError, match=r"config\.json: no such file"):
        load_safetensors(ckpt)


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"config\.json: cannot read as JSON"):
        load_safetensors(ckpt)


def test_missing_weights_file(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="neither model.safetensors nor"):
        load_safetensors(ckpt)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}, "unsupported architecture"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "RoPE scaling 'yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3 RoPE scaling needs"),
    ({"attention_bias": True}, "missing tensor 'model.layers.0.self_attn.q_proj.bias'"),
    ({"mlp_bias": True}, "MLP biases"),
    ({"hidden_act": "gelu"}, "activation 'gelu'"),
    ({"head_dim": 16}, "has shape"),
    ({"num_attention_heads": 5}, "invalid model shape"),
    ({"vocab_size": "many"}, r"vocab_size must be an integer in \[1, inf\], got 'many'"),
    # Absurd sizes are refused from config.json alone, before anything is sized by them.
    ({"max_position_embeddings": 2 ** 31}, r"max_position_embeddings must be an integer in \[1, 16777216\]"),
    ({"max_position_embeddings": 0}, r"max_position_embeddings must be an integer in \[1, 16777216\]"),
    ({"num_hidden_layers": 10 ** 9}, r"num_hidden_layers must be an integer in \[1, 4096\]"),
    ({"num_key_value_heads": 3}, "invalid model shape: num_heads .* must be a multiple of num_kv_heads"),
    ({"head_dim": True}, "head_dim must be an integer"),
    ({"partial_rotary_factor": "half"}, "invalid model shape"),
    ({"rope_theta": [1]}, "invalid model shape"),
])
def test_unsupported_or_invalid_config(ckpt, changes, message):
    (ckpt / "config.json").write_text(json.dumps(config_json(CONFIG, **changes)))
    with pytest.raises(ModelFormatError, match=message):
        load_safetensors(ckpt)


def test_missing_config_key(ckpt):
    cfg = config_json(CONFIG)
    del cfg["intermediate_size"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="missing key 'intermediate_size'"):
        load_safetensors(ckpt)


def test_truncated_file(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    for cut in (0, 5, 100, len(data) - 1):
        (ckpt / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match=r"model\.safetensors: (empty|truncated|header length"
                                                   r"|tensor .* outside)"):
            load_safetensors(ckpt)


def test_absurd_header_length(ckpt):
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[:8] = struct.pack("<Q", 2 ** 62)
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="header length 4611686018427387904 exceeds"):
        load_safetensors(ckpt)


def test_header_not_json(ckpt):
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[8] = ord("[")
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="header is not valid JSON"):
        load_safetensors(ckpt)


def raw_checkpoint(ckpt, tensors):
    """Replace the checkpoint's weights with a hand-written file of HF weights, then edit ``tensors``."""
    raw = {n: ("F32", w.shape, w.astype(np.float32)) for n, w in hf_weights(CONFIG).items()}
    raw.update(tensors)
    write_raw_safetensors(ckpt / "model.safetensors", raw)


def test_data_offsets_outside_the_file(ckpt):
    path = ckpt / "model.safetensors"
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + n])
    header["model.norm.weight"]["data_offsets"] = [0, 2 ** 40]
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + path.read_bytes()[8 + n:])
    with pytest.raises(ModelFormatError, match=r"'model\.norm\.weight' has data offsets \[0, 1099511627776\] "
                                               r"outside"):
        load_safetensors(ckpt)


def test_data_size_does_not_match_shape(ckpt):
    raw_checkpoint(ckpt, {"model.norm.weight": ("F32", (CONFIG.d_model,), np.ones(CONFIG.d_model // 2, np.float32))})
    with pytest.raises(ModelFormatError, match=r"'model\.norm\.weight' .* needs 128 bytes, its data offsets span 64"):
        load_safetensors(ckpt)


def test_malformed_header_entry(ckpt):
    raw_checkpoint(ckpt, {"model.norm.weight": ("F32", ("x",), np.ones(CONFIG.d_model, np.float32))})
    with pytest.raises(ModelFormatError, match=r"malformed header entry for 'model\.norm\.weight'"):
        load_safetensors(ckpt)


def test_unsupported_dtype(ckpt):
    raw_checkpoint(ckpt, {"model.norm.weight": ("F64", (CONFIG.d_model,), np.ones(CONFIG.d_model))})
    with pytest.raises(ModelFormatError, match="unsupported dtype F64"):
        load_safetensors(ckpt)


def test_missing_tensor(ckpt):
    weights = hf_weights(CONFIG)
    del weights["model.layers.1.mlp.up_proj.weight"]
    write_checkpoint(ckpt, CONFIG, weights)
    with pytest.raises(ModelFormatError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_safetensors(ckpt)


def test_mis_shaped_tensor(ckpt):
    weights = hf_weights(CONFIG)
    weights["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, CONFIG.d_model))
    write_checkpoint(ckpt, CONFIG, weights)
    with pytest.raises(ModelFormatError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape "
                                               r"\(8, 32\), expected \(16, 32\)"):
        load_safetensors(ckpt)


def test_unexpected_tensor(ckpt):
    weights = hf_weights(CONFIG)
    weights["model.layers.0.self_attn.q_proj.bias"] = np.zeros(CONFIG.d_model)
    write_checkpoint(ckpt, CONFIG, weights)
    with pytest.raises(ModelFormatError, match=r"unexpected tensors .*q_proj\.bias"):
        load_safetensors(ckpt)


def test_shard_outside_the_directory(tmp_path):
    write_checkpoint(tmp_path / "ckpt", CONFIG, hf_weights(CONFIG), shards=2)
    index = tmp_path / "ckpt" / "model.safetensors.index.json"
    contents = json.loads(index.read_text())
    contents["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    index.write_text(json.dumps(contents))
    with pytest.raises(ModelFormatError, match="is not a plain file name"):
        load_safetensors(tmp_path / "ckpt")


def test_tensor_in_two_shards(tmp_path):
    weights = hf_weights(CONFIG)
    write_checkpoint(tmp_path / "ckpt", CONFIG, weights, shards=2)
    index = tmp_path / "ckpt" / "model.safetensors.index.json"
    shard = tmp_path / "ckpt" / json.loads(index.read_text())["weight_map"]["model.norm.weight"]
    other = next(p for p in (tmp_path / "ckpt").glob("*.safetensors") if p != shard)
    st.save_file({"model.norm.weight": np.ones(CONFIG.d_model, np.float32),
                  **st.load_file(str(other))}, str(other))
    with pytest.raises(ModelFormatError, match=r"'model\.norm\.weight' is also in"):
        load_safetensors(tmp_path / "ckpt")

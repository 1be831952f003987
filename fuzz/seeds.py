"""The fuzzers' starting inputs: tiny valid files of each kind fastlm reads, a few kilobytes each.

GGUF models in several tensor types with both tokenizer kinds and a chat template, a GGUF holding one tensor
of every type and metadata of every value type, a safetensors checkpoint of the same tiny model, a
tokenizer_config.json, and chat templates of the shapes models ship.
"""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np

from fastlm.config import ModelConfig
from fastlm.quantize import quantize
from fastlm.config import init_parameters
from fastlm.weights.safetensors import _hf_names
from fastlm.weights.gguf_writer import GGUFValue, TensorSpec, ValueType, write_gguf

CONFIG = ModelConfig(vocab_size=16, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, d_ff=32,
                     max_seq_len=16, tie_weights=True, rope_theta=10000.0, norm_eps=1e-5)

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")
LLAMA2 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) "
          "%}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}{% else %}"
          "{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}")
TOOLS = ("{%- set ns = namespace(system='') -%}{%- for m in messages -%}{%- if m.role == 'system' -%}"
         "{%- set ns.system = m.content -%}{%- endif -%}{%- endfor -%}{{ ns.system | upper }}"
         "{%- if tools is defined -%}{{ tools | tojson(indent=2) }}{%- endif -%}"
         "{%- for m in messages | selectattr('role', 'ne', 'system') -%}{{ loop.index }}: {{ m.content | "
         "replace('\\n', ' ') | truncate(40) }} {{ strftime_now('%Y') | length }}{%- endfor -%}")
TEMPLATES = [CHATML, LLAMA2, TOOLS, "{{ messages | map(attribute='content') | join('\\n') }}"]

# Byte-level BPE (GPT-2 alphabet: printable ASCII stands for itself) with one merge, and SentencePiece pieces.
_GPT2_TOKENS = ["<|im_start|>", "<|im_end|>", "a", "b", "c", "ab", "H", "e", "l", "o", "Ġ", "1", "2", ",",
                "!", "Ġa"]
_SPM_TOKENS = ["<unk>", "<s>", "</s>", "<0x0A>", "▁", "a", "b", "ab", "▁a", "▁ab", "H", "e", "l", "o", "!", ","]


def _tokenizer_metadata(kind: str) -> dict:
    if kind == "gpt2":
        return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
                "tokenizer.ggml.tokens": _GPT2_TOKENS, "tokenizer.ggml.merges": ["a b", "Ġ a"],
                "tokenizer.ggml.token_type": [3, 3] + [1] * 14,
                "tokenizer.ggml.bos_token_id": 0,
                "tokenizer.ggml.eos_token_id": 1,
                "tokenizer.chat_template": CHATML}
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": _SPM_TOKENS,
            "tokenizer.ggml.scores": [0.0, 0.0, 0.0, 0.0] + [-float(i) for i in range(12)],
            "tokenizer.ggml.token_type": [2, 3, 3, 6] + [1] * 12,
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.chat_template": LLAMA2}


def _model_metadata(config: ModelConfig) -> dict:
    u32 = lambda v: GGUFValue(ValueType.UINT32, v)   # noqa: E731
    return {"general.architecture": "llama", "llama.block_count": u32(config.num_layers),
            "llama.context_length": u32(config.max_seq_len), "llama.embedding_length": u32(config.d_model),
            "llama.feed_forward_length": u32(config.d_ff), "llama.attention.head_count": u32(config.num_heads),
            "llama.attention.head_count_kv": u32(config.num_kv_heads),
            "llama.rope.dimension_count": u32(config.head_dim),
            "llama.rope.freq_base": GGUFValue(ValueType.FLOAT32, config.rope_theta),
            "llama.attention.layer_norm_rms_epsilon": GGUFValue(ValueType.FLOAT32, config.norm_eps)}


def _gguf_bytes(metadata: dict, tensors: list[TensorSpec]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.gguf"
        write_gguf(path, metadata, tensors)
        return path.read_bytes()


def model_gguf(matrix_type: str = "Q8_0", tokenizer: str = "gpt2", tied: bool = True,
               config: ModelConfig = CONFIG, extra: dict | None = None) -> bytes:
    """A tiny llama model: matrices in ``matrix_type`` (F32, F16, Q8_0, Q4_0, Q4_1), norms in F32."""
    config = config.replace(tie_weights=tied)
    tensors = []
    for name, w in init_parameters(config, seed=0).items():
        if w.ndim == 2 and matrix_type != "F32":
            data = w.astype(np.float16) if matrix_type == "F16" else quantize(w, matrix_type)
            tensors.append(TensorSpec(f"{name}.weight", w.shape, matrix_type, data))
        else:
            tensors.append(TensorSpec(f"{name}.weight", w.shape, "F32", w.astype(np.float32)))
    return _gguf_bytes({**_model_metadata(config), **_tokenizer_metadata(tokenizer), **(extra or {})}, tensors)


def every_type_gguf() -> bytes:
    """No model: one small tensor of every type fastlm decodes, and a key of every metadata value type."""
    rng = np.random.default_rng(0)
    raw = lambda n: rng.integers(0, 256, n, dtype=np.uint8)          # noqa: E731  any bytes decode
    tensors = [TensorSpec("f32", (2, 4), "F32", rng.normal(size=(2, 4)).astype(np.float32)),
               TensorSpec("f16", (3,), "F16", rng.normal(size=3).astype(np.float16)),
               TensorSpec("bf16", (2, 2), "BF16", raw(8)), TensorSpec("q8_0", (1, 32), "Q8_0", raw(34)),
               TensorSpec("q4_0", (2, 32), "Q4_0", raw(36)), TensorSpec("q4_1", (1, 32), "Q4_1", raw(20)),
               TensorSpec("q4_k", (1, 256), "Q4_K", raw(144)), TensorSpec("q6_k", (1, 256), "Q6_K", raw(210))]
    metadata = {f"t.{t.name.lower()}": GGUFValue(t, v) for t, v in [
        (ValueType.UINT8, 1), (ValueType.INT8, -1), (ValueType.UINT16, 2), (ValueType.INT16, -2),
        (ValueType.UINT32, 3), (ValueType.INT32, -3), (ValueType.FLOAT32, 0.5), (ValueType.BOOL, True),
        (ValueType.STRING, "s"), (ValueType.UINT64, 4), (ValueType.INT64, -4), (ValueType.FLOAT64, 0.25)]}
    metadata["t.array"] = GGUFValue(ValueType.ARRAY, [1, 2, 3], ValueType.INT32)
    metadata["t.nested"] = GGUFValue(ValueType.ARRAY, [GGUFValue(ValueType.ARRAY, ["x", "y"], ValueType.STRING)],
                                     ValueType.ARRAY)
    metadata["general.alignment"] = GGUFValue(ValueType.UINT32, 64)
    return _gguf_bytes(metadata, tensors)


def gguf_seeds() -> list[bytes]:
    return [model_gguf("Q8_0", "gpt2"), model_gguf("F16", "llama", tied=False), model_gguf("Q4_0", "gpt2"),
            model_gguf("Q4_1", "llama"), model_gguf("F32", "gpt2", tied=False), every_type_gguf()]


# ------------------------------------------------------------------------------------------------ safetensors

HF_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": CONFIG.vocab_size,
             "hidden_size": CONFIG.d_model, "num_hidden_layers": CONFIG.num_layers,
             "num_attention_heads": CONFIG.num_heads, "num_key_value_heads": CONFIG.num_kv_heads,
             "intermediate_size": CONFIG.d_ff, "max_position_embeddings": CONFIG.max_seq_len,
             "rope_theta": CONFIG.rope_theta, "rms_norm_eps": CONFIG.norm_eps, "tie_word_embeddings": True,
             "hidden_act": "silu"}


def safetensors_bytes(tensors: dict[str, tuple[str, tuple[int, ...], bytes]], header_extra: dict | None = None
                      ) -> bytes:
    """A safetensors file: ``tensors`` maps names to (dtype, shape, raw bytes), laid out in order."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    header.update(header_extra or {})
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def model_safetensors(dtype: str = "F32") -> bytes:
    """The tiny tied model as a Hugging Face checkpoint's model.safetensors (F32, F16 or BF16)."""
    tensors, hf = {}, {ours: theirs for ours, (theirs, _, _) in _hf_names(CONFIG, "llama").items()}
    for name, w in init_parameters(CONFIG, seed=0).items():
        w32 = w.astype(np.float32)
        raw = {"F32": w32, "F16": w32.astype(np.float16), "BF16": (w32.view(np.uint32) >> 16).astype(np.uint16)}
        tensors[hf[name]] = (dtype, w.shape, raw[dtype].tobytes())
    return safetensors_bytes(tensors)


def hf_config_seeds() -> list[bytes]:
    """config.json files of the tiny model, with the keys other families and RoPE variants read."""
    variants = [{}, {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8}},
                {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "partial_rotary_factor": 0.5},
                {"model_type": "qwen2", "sliding_window": 4, "use_sliding_window": True, "max_window_layers": 0},
                {"model_type": "gemma3_text", "sliding_window": 4, "sliding_window_pattern": 2,
                 "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 16, "head_dim": 16,
                 "rope_local_base_freq": 10000.0, "final_logit_softcapping": 30.0},
                {"layer_types": ["sliding_attention"], "sliding_window": 8,
                 "rope_parameters": {"full_attention": {"rope_theta": 1e4}, "sliding_attention": {"rope_theta": 1e3}}}]
    return [json.dumps({**HF_CONFIG, **v}).encode() for v in variants]


def safetensors_seeds() -> list[bytes]:
    from .malformed import malformed_safetensors
    valid = model_safetensors("F32")
    return [valid, model_safetensors("F16"), model_safetensors("BF16"),
            *list(malformed_safetensors(valid).values())[:6]]


# --------------------------------------------------------------------------------- tokenizers and templates

def tokenizer_json() -> str:
    """A small byte-level BPE tokenizer.json (the kind SmolLM2 ships) with ChatML's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    vocab = {tok: i for i, tok in enumerate(_GPT2_TOKENS)}
    tok = Tokenizer(models.BPE(vocab, [("a", "b"), ("Ġ", "a")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    return tok.to_str()


def tokenizer_config_seeds() -> list[bytes]:
    configs = [{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML},
               {"bos_token": {"content": "<|im_start|>", "special": True}, "eos_token": None,
                "chat_template": [{"name": "default", "template": LLAMA2}, {"name": "tool_use", "template": TOOLS}]},
               {}]
    return [json.dumps(c).encode() for c in configs]


def template_input(template: str, *contents: str) -> bytes:
    """A templates-fuzzer input: the template source, then message contents, NUL-separated (see
    :func:`fuzz.templates.split`)."""
    return "\0".join([template, *contents]).encode()


def template_seeds() -> list[bytes]:
    return [template_input(t, "Hello, world!", "Hi. How can I help?", "Name three colors.") for t in TEMPLATES]

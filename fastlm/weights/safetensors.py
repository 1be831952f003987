"""Hugging Face checkpoints (Llama, Mistral, Qwen2, Qwen3, Phi3, Gemma2, Gemma3 ``*ForCausalLM``):
``config.json`` plus safetensors weights.

A safetensors file is a uint64 little-endian header length N, N bytes of JSON, then the data. The JSON
maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (relative to the data start),
plus an optional ``"__metadata__"``. The files are parsed here over a memory map rather than through the
``safetensors`` package, whose NumPy API cannot return bfloat16 and copies every tensor into memory: each
tensor is decoded straight from the map, after its offsets are checked against the file.

Hugging Face stores Q and K for rotate-half RoPE (pairs ``(x[i], x[i + head_dim/2])``). For the families
whose GGUF files rotate interleaved pairs ``(x[2i], x[2i+1])`` (llama, mistral) the loader permutes their rows
(:func:`permute_rotate_half`), so both files give the same weights; the others keep rotate-half ("neox").
"""
from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MAX_SEQ_LEN, ModelConfig, llama3_rope_divisors, parameter_shapes
from ..errors import FastLMTypeError, FastLMValueError, ModelFormatError
from .gguf import _check_disjoint, _map_file
from .quant import GGMLType, dequantize

__all__ = ["load_safetensors", "read_config", "permute_rotate_half", "MODEL_TYPES"]

MAX_HEADER_BYTES = 100_000_000     # the safetensors library's own limit
_DTYPES = {"F32": (GGMLType.F32, 4), "F16": (GGMLType.F16, 2), "BF16": (GGMLType.BF16, 2)}
# Buffers some checkpoints carry that fastlm recomputes: safe to skip.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def permute_rotate_half(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows of a Q or K weight (num_heads * head_dim, in) from Hugging Face's rotate-half layout to fastlm's
    interleaved pairs: in each head, new row 2i = old row i and new row 2i + 1 = old row i + head_dim / 2."""
    rows, cols = w.shape
    half = rows // num_heads // 2
    return np.ascontiguousarray(w.reshape(num_heads, 2, half, cols).transpose(0, 2, 1, 3)).reshape(rows, cols)


class _SafetensorsFile:
    """A safetensors header over a read-only memory map: ``tensors`` maps names to (dtype, shape, begin, end),
    offsets absolute in the file and checked to lie inside it."""

    def __init__(self, path: Path):
        self.path = path
        self._map = _map_file(path, "safetensors")
        size = len(self._map)
        if size < 8:
            self._fail(f"truncated file: {size} bytes, shorter than the 8-byte header length")
        n = struct.unpack_from("<Q", self._map, 0)[0]
        if n > min(MAX_HEADER_BYTES, size - 8):
            self._fail(f"header length {n} exceeds the file ({size} bytes) or the {MAX_HEADER_BYTES}-byte limit")
        try:
            header = json.loads(self._map[8:8 + n])
        except (ValueError, RecursionError) as e:
            self._fail(f"header is not valid JSON: {e}")
        if not isinstance(header, dict):
            self._fail("header is not a JSON object")
        header.pop("__metadata__", None)
        data_start, data_size = 8 + n, size - 8 - n
        self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            try:
                dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
                ok = (isinstance(dtype, str) and all(type(d) is int and d >= 0 for d in shape)
                      and type(begin) is int and type(end) is int)
            except (TypeError, KeyError, ValueError):
                ok = False
            if not ok:
                self._fail(f"malformed header entry for {name!r}: {entry!r}")
            if not 0 <= begin <= end <= data_size:
                self._fail(f"tensor {name!r} has data offsets [{begin}, {end}] outside the file's "
                           f"{data_size} bytes of data")
            self.tensors[name] = (dtype, tuple(shape), data_start + begin, data_start + end)
        _check_disjoint([(begin, end) for _, _, begin, end in self.tensors.values()], self._fail)

    def _fail(self, problem: str):
        raise ModelFormatError(f"{self.path}: {problem}")

    def tensor(self, name: str, dtype: np.dtype) -> np.ndarray:
        stored, shape, begin, end = self.tensors[name]
        if stored not in _DTYPES:
            self._fail(f"tensor {name!r} has unsupported dtype {stored}; fastlm reads {', '.join(_DTYPES)}")
        qtype, itemsize = _DTYPES[stored]
        if end - begin != prod(shape) * itemsize:
            self._fail(f"tensor {name!r} ({stored}, shape {list(shape)}) needs {prod(shape) * itemsize} bytes, "
                       f"its data offsets span {end - begin}")
        return dequantize(np.frombuffer(self._map, np.uint8, end - begin, begin), qtype, shape, dtype)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ModelFormatError(f"{path}: cannot read as JSON: {e}") from None


# model_type -> (the GGUF arch name fastlm reports, the choices the type fixes); the rest is read from
# config.json. Gemma's norms scale by (1 + w); the GGUF converter folds that 1 into the file, HF does not.
_GEMMA = dict(rope_style="neox", activation="gelu_tanh", scale_embeddings=True, post_norms=True, norm_offset=1.0)
MODEL_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", dict(rope_style="interleaved")),
    "mistral": ("llama", dict(rope_style="interleaved")),
    "qwen2": ("qwen2", dict(rope_style="neox")),
    "qwen3": ("qwen3", dict(rope_style="neox", qk_norm=True)),
    "phi3": ("phi3", dict(rope_style="neox")),
    "gemma2": ("gemma2", _GEMMA),
    "gemma3_text": ("gemma3", dict(_GEMMA, qk_norm=True)),
}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
MAX_LAYERS = 4096                  # config.json's num_hidden_layers, read before any tensor is (Llama 3 405B: 126)
# Integer keys of config.json: (smallest, largest) value; a key may be absent or null where it has a default.
_INT_KEYS = {"vocab_size": (1, None), "hidden_size": (1, None), "num_hidden_layers": (1, MAX_LAYERS),
             "num_attention_heads": (1, None), "num_key_value_heads": (1, None), "intermediate_size": (1, None),
             "head_dim": (1, None), "max_position_embeddings": (1, MAX_SEQ_LEN), "sliding_window": (0, None)}


def _config(cfg: Any, path: Path) -> ModelConfig:
    """The ModelConfig of a config.json; variants fastlm would compute differently raise, naming them."""
    def fail(problem: str):
        raise ModelFormatError(f"{path}: {problem}")

    if not isinstance(cfg, dict):
        fail("not a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        fail(f"unsupported architecture: model_type {model_type!r} ({cfg.get('architectures')}); fastlm runs "
             f"{', '.join(MODEL_TYPES)}")
    arch, fixed = MODEL_TYPES[model_type]
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if key not in cfg:
            fail(f"missing key {key!r}")
    for key, (low, high) in _INT_KEYS.items():
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low
                                  or high is not None and value > high):
            fail(f"{key} must be an integer in [{low}, {high or 'inf'}], got {value!r}")
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    if cfg.get("mlp_bias"):
        fail("MLP biases are not supported")
    activation = cfg.get("hidden_activation") or cfg.get("hidden_act", "silu")
    if _ACTIVATIONS.get(activation) != fixed.get("activation", "silu"):
        fail(f"activation {activation!r} is not supported for {model_type}")
    try:
        return _model_config(cfg, model_type, arch, fixed, fail)
    except ModelFormatError:
        raise
    except (TypeError, ValueError, ArithmeticError) as e:      # a value of the wrong type or out of range
        fail(f"invalid model shape: {e}")


def _model_config(cfg: dict, model_type: str, arch: str, fixed: dict, fail) -> ModelConfig:
    """_config's reading of a config.json whose integer keys are checked: any other value that does not
    convert raises TypeError or ValueError, which _config turns into a ModelFormatError."""
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    types = _layer_types(cfg, model_type, layers)
    global_rope, local_rope = _rope(cfg, types, fail)
    rope_dim = int(head_dim * float(global_rope.get("partial_rotary_factor",
                                                    cfg.get("partial_rotary_factor", 1.0))))
    kind = global_rope.get("rope_type", global_rope.get("type", "default"))
    divisors, scaling = None, 1.0
    if kind == "llama3":
        try:
            divisors = llama3_rope_divisors(rope_dim, float(global_rope["rope_theta"]), float(global_rope["factor"]),
                                            float(global_rope["low_freq_factor"]),
                                            float(global_rope["high_freq_factor"]),
                                            int(global_rope["original_max_position_embeddings"]))
        except (KeyError, TypeError, ValueError) as e:
            fail(f"llama3 RoPE scaling needs factor, low/high_freq_factor, original_max_position_embeddings: {e}")
    elif kind == "linear":
        scaling = float(global_rope.get("factor", 1.0))
    elif kind != "default":
        fail(f"RoPE scaling {kind!r} is not supported (fastlm reads default, linear and llama3)")
    if local_rope.get("rope_type", local_rope.get("type", "default")) != "default":
        fail("scaled RoPE on sliding-window layers is not supported")
    local = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    softcaps = {k: float(cfg.get(k) or 0.0) for k in ("attn_logit_softcapping", "final_logit_softcapping")}
    return ModelConfig(
        vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], num_layers=layers, num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, d_ff=cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        tie_weights=bool(cfg.get("tie_word_embeddings", arch.startswith("gemma"))),
        rope_theta=float(global_rope.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        arch=arch, head_dim=head_dim, rope_dim=rope_dim, rope_freq_divisors=divisors, rope_scaling=scaling,
        rope_local_theta=float(local_rope["rope_theta"]) if local and "rope_theta" in local_rope else None,
        qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        attn_softcap=softcaps["attn_logit_softcapping"], final_softcap=softcaps["final_logit_softcapping"],
        attn_scale=float(cfg["query_pre_attn_scalar"]) ** -0.5 if cfg.get("query_pre_attn_scalar") else None,
        sliding_window=int(cfg.get("sliding_window") or 0) if local else 0, local_layers=local,
        **fixed,
    )


def _layer_types(cfg: dict, model_type: str, layers: int) -> list[str]:
    """"sliding_attention" or "full_attention" per layer: config.json's ``layer_types`` where it has them,
    else each family's rule (Gemma 2: even layers slide; Gemma 3: all but every sixth; Qwen: layers from
    max_window_layers on, if use_sliding_window; others: every layer, when sliding_window is set)."""
    if isinstance(cfg.get("layer_types"), list) and len(cfg["layer_types"]) == layers:
        return list(cfg["layer_types"])
    if not cfg.get("sliding_window"):
        return ["full_attention"] * layers
    if model_type == "gemma2":
        rule = lambda i: i % 2 == 0  # noqa: E731
    elif model_type == "gemma3_text":
        pattern = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6
        rule = lambda i: (i + 1) % pattern != 0  # noqa: E731
    elif model_type in ("qwen2", "qwen3"):
        rule = lambda i: bool(cfg.get("use_sliding_window")) and i >= cfg.get("max_window_layers", 0)  # noqa: E731
    else:
        rule = lambda i: True  # noqa: E731
    return ["sliding_attention" if rule(i) else "full_attention" for i in range(layers)]


def _rope(cfg: dict, types: list[str], fail) -> tuple[dict, dict]:
    """The RoPE parameters of full-attention and of sliding-window layers, from transformers 5's
    ``rope_parameters`` (one dict, or one per layer type) or the older ``rope_theta`` / ``rope_scaling`` /
    ``rope_local_base_freq``."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    if params is not None and not isinstance(params, dict) or scaling is not None and not isinstance(scaling, dict):
        fail("rope_parameters and rope_scaling must be JSON objects")
    if params and all(isinstance(v, dict) for v in params.values()):
        full = params.get("full_attention", {})
        return full, params.get("sliding_attention", full)
    full = {"rope_theta": cfg.get("rope_theta", 10000.0), **(scaling or {}), **(params or {})}
    local = {"rope_theta": cfg["rope_local_base_freq"]} if "rope_local_base_freq" in cfg else \
        {"rope_theta": full["rope_theta"]}
    return full, local


def _hf_names(config: ModelConfig, model_type: str) -> dict[str, tuple[str, int, int]]:
    """fastlm name -> (Hugging Face tensor, first row, end row) for every tensor the model needs; Phi-3's
    fused projections are row ranges of one tensor."""
    shapes = parameter_shapes(config)
    names = {"token_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight",
             "output": "lm_head.weight"}
    gemma = config.arch.startswith("gemma")
    per_layer = {
        "attn_norm": "input_layernorm.weight", "attn_q": "self_attn.q_proj.weight",
        "attn_k": "self_attn.k_proj.weight", "attn_v": "self_attn.v_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias", "attn_q_norm": "self_attn.q_norm.weight",
        "attn_k_norm": "self_attn.k_norm.weight", "attn_output": "self_attn.o_proj.weight",
        "ffn_norm": "pre_feedforward_layernorm.weight" if gemma else "post_attention_layernorm.weight",
        "post_attention_norm": "post_attention_layernorm.weight",
        "post_ffw_norm": "post_feedforward_layernorm.weight",
        "ffn_gate": "mlp.gate_proj.weight", "ffn_up": "mlp.up_proj.weight", "ffn_down": "mlp.down_proj.weight",
    }
    fused = {"attn_q": "self_attn.qkv_proj.weight", "attn_k": "self_attn.qkv_proj.weight",
             "attn_v": "self_attn.qkv_proj.weight", "ffn_gate": "mlp.gate_up_proj.weight",
             "ffn_up": "mlp.gate_up_proj.weight"} if model_type == "phi3" else {}
    where, row = {}, {}
    for name, shape in shapes.items():
        prefix, _, short = name.partition(".") if name.startswith("blk.") else ("", "", name)
        if prefix:
            index, _, short = short.partition(".")
            hf_prefix = f"model.layers.{index}."
            hf = hf_prefix + fused.get(short, per_layer[short])
        else:
            hf = names[name]
        start = row.get(hf, 0)
        where[name] = (hf, start, start + shape[0])
        row[hf] = start + shape[0]
    return where


def _shard_files(root: Path) -> list[Path]:
    single, index = root / "model.safetensors", root / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        raise ModelFormatError(f"{root}: neither model.safetensors nor model.safetensors.index.json is there")
    contents = _read_json(index)
    weight_map = contents.get("weight_map") if isinstance(contents, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ModelFormatError(f"{index}: no weight_map of tensor names to file names")
    names = sorted(set(weight_map.values()))
    for name in names:
        if Path(name).name != name or name.startswith("."):    # shards live beside the index, nowhere else
            raise ModelFormatError(f"{index}: shard file name {name!r} is not a plain file name")
    return [root / name for name in names]


def read_config(path) -> ModelConfig:
    """The ModelConfig of a checkpoint directory, from its config.json alone."""
    return _config(_read_json(Path(path) / "config.json"), Path(path) / "config.json")


def load_safetensors(path, dtype=np.float32) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
    """Load a Hugging Face checkpoint directory of a model type in :data:`MODEL_TYPES`:
    ``(config, params, metadata)``.

    The directory holds ``config.json`` and ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``; tensors may be float32, float16 or bfloat16. ``params`` uses
    fastlm's names and shapes, decoded to ``dtype``, with Q/K rows permuted to interleaved-pair RoPE for the
    llama-style families and fused tensors split; ``metadata`` is the parsed config.json. Any problem raises
    :class:`~fastlm.errors.ModelFormatError`.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise FastLMTypeError(f"dtype must be float32 or float64, got {dtype}")
    root = Path(path)
    if not root.is_dir():
        raise ModelFormatError(f"{root}: not a checkpoint directory (expected config.json and "
                               f"model.safetensors inside)")
    cfg = _read_json(root / "config.json")
    config = _config(cfg, root / "config.json")

    where: dict[str, _SafetensorsFile] = {}
    for shard in map(_SafetensorsFile, _shard_files(root)):
        for name in shard.tensors:
            if name in where:
                raise ModelFormatError(f"{shard.path}: tensor {name!r} is also in {where[name].path}")
            where[name] = shard
    if config.num_layers > len(where):             # before listing the names of that many layers
        raise ModelFormatError(f"{root / 'config.json'}: num_hidden_layers = {config.num_layers}, more layers "
                               f"than the checkpoint has tensors")
    names = _hf_names(config, cfg["model_type"])
    used = {hf for hf, _, _ in names.values()}
    tied_head = {"lm_head.weight"} if config.tie_weights else set()   # a tied copy some checkpoints keep
    unexpected = sorted(n for n in set(where) - used - tied_head if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ModelFormatError(f"{root}: unexpected tensors for a {config.num_layers}-layer {cfg['model_type']} "
                               f"model: {unexpected[:8]}")
    shapes = parameter_shapes(config)
    rows = {}
    for name, (hf, start, stop) in names.items():
        if hf not in where:
            raise ModelFormatError(f"{root}: missing tensor {hf!r} (expected shape {shapes[name]}) for "
                                   f"{cfg['model_type']}")
        shape = where[hf].tensors[hf][1]
        rows[hf] = max(rows.get(hf, 0), stop)
        if shape[1:] != shapes[name][1:] or len(shape) != len(shapes[name]):
            raise ModelFormatError(f"{where[hf].path}: tensor {hf!r} has shape {shape}, expected {shapes[name]}")
    for hf, n in rows.items():
        shape = where[hf].tensors[hf][1]
        if shape[0] != n:
            raise ModelFormatError(f"{where[hf].path}: tensor {hf!r} has shape {shape}, expected "
                                   f"{(n, *shape[1:])}")

    loaded = {hf: where[hf].tensor(hf, dtype) for hf in sorted(used)}
    params = {}
    for name, (hf, start, stop) in names.items():
        w = loaded[hf][start:stop]
        if config.rope_style == "interleaved" and name.removesuffix(".bias").endswith(("attn_q", "attn_k")):
            heads = config.num_heads if "attn_q" in name else config.num_kv_heads
            w = permute_rotate_half(w.reshape(w.shape[0], -1), heads).reshape(w.shape)
        params[name] = w
    return config, params, cfg

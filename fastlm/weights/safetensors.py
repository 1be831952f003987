"""Hugging Face checkpoints of ``LlamaForCausalLM``: ``config.json`` plus safetensors weights.

A safetensors file is a uint64 little-endian header length N, N bytes of JSON, then the data. The JSON
maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (relative to the data start),
plus an optional ``"__metadata__"``. The files are parsed here over a memory map rather than through the
``safetensors`` package, whose NumPy API cannot return bfloat16 and copies every tensor into memory: each
tensor is decoded straight from the map, after its offsets are checked against the file.

Hugging Face stores Q and K for rotate-half RoPE (pairs ``(x[i], x[i + head_dim/2])``); fastlm rotates
interleaved pairs ``(x[2i], x[2i+1])``, so the loader permutes their rows (:func:`permute_rotate_half`).
"""
from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import FastLMTypeError, FastLMValueError, ModelFormatError
from ..reference import parameter_shapes
from .gguf import _check_disjoint, _map_file
from .quant import GGMLType, dequantize

__all__ = ["load_safetensors", "permute_rotate_half"]

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


def _config(cfg: Any, path: Path) -> ModelConfig:
    """The ModelConfig of a LlamaForCausalLM config.json; variants fastlm would compute differently raise."""
    def fail(problem: str):
        raise ModelFormatError(f"{path}: {problem}")

    if not isinstance(cfg, dict):
        fail("not a JSON object")
    if cfg.get("model_type") != "llama":
        fail(f"unsupported architecture: model_type {cfg.get('model_type')!r} "
             f"({cfg.get('architectures')}); fastlm runs llama (LlamaForCausalLM)")
    scaling = cfg.get("rope_scaling") or {}
    rope = cfg.get("rope_parameters") or {}      # newer transformers keep rope_theta and rope_type here
    if not isinstance(scaling, dict) or not isinstance(rope, dict):
        fail("rope_scaling and rope_parameters must be JSON objects")
    if {scaling.get("rope_type", "default"), scaling.get("type", "default"), rope.get("rope_type", "default")} \
            != {"default"}:
        fail(f"RoPE scaling ({scaling or rope}) is not supported")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        fail("attention or MLP biases are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        fail(f"activation {cfg['hidden_act']!r} is not supported (SwiGLU uses silu)")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if key not in cfg:
            fail(f"missing key {key!r}")
    try:
        config = ModelConfig(
            vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            d_ff=cfg["intermediate_size"], max_seq_len=cfg.get("max_position_embeddings", 2048),
            tie_weights=bool(cfg.get("tie_word_embeddings", False)),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        )
    except (FastLMValueError, TypeError, ValueError) as e:
        fail(f"invalid model shape: {e}")
    if cfg.get("head_dim", config.head_dim) != config.head_dim:
        fail(f"head_dim {cfg['head_dim']} differs from hidden_size / num_attention_heads = {config.head_dim}")
    return config


def _hf_names(config: ModelConfig) -> dict[str, str]:
    """Hugging Face tensor name -> fastlm name, for every tensor the model needs."""
    names = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm"}
    if not config.tie_weights:
        names["lm_head.weight"] = "output"
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}.", f"blk.{i}."
        names.update({
            hf + "input_layernorm.weight": ours + "attn_norm", hf + "self_attn.q_proj.weight": ours + "attn_q",
            hf + "self_attn.k_proj.weight": ours + "attn_k", hf + "self_attn.v_proj.weight": ours + "attn_v",
            hf + "self_attn.o_proj.weight": ours + "attn_output",
            hf + "post_attention_layernorm.weight": ours + "ffn_norm",
            hf + "mlp.gate_proj.weight": ours + "ffn_gate", hf + "mlp.up_proj.weight": ours + "ffn_up",
            hf + "mlp.down_proj.weight": ours + "ffn_down",
        })
    return names


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


def load_safetensors(path, dtype=np.float32) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
    """Load a Hugging Face LlamaForCausalLM checkpoint directory: ``(config, params, metadata)``.

    The directory holds ``config.json`` and ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``; tensors may be float32, float16 or bfloat16. ``params`` uses
    fastlm's names and shapes, decoded to ``dtype``, with Q/K rows permuted to interleaved-pair RoPE;
    ``metadata`` is the parsed config.json. Any problem raises :class:`~fastlm.errors.ModelFormatError`.
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
    names = _hf_names(config)
    tied_head = {"lm_head.weight"} if config.tie_weights else set()   # a tied copy some checkpoints keep
    unexpected = sorted(n for n in set(where) - set(names) - tied_head if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ModelFormatError(f"{root}: unexpected tensors for a {config.num_layers}-layer llama model: "
                               f"{unexpected[:8]}")
    shapes = parameter_shapes(config)
    for hf_name, name in names.items():
        if hf_name not in where:
            raise ModelFormatError(f"{root}: missing tensor {hf_name!r} (expected shape {shapes[name]})")
        shape = where[hf_name].tensors[hf_name][1]
        if shape != shapes[name]:
            raise ModelFormatError(f"{where[hf_name].path}: tensor {hf_name!r} has shape {shape}, "
                                   f"expected {shapes[name]}")

    params = {}
    for hf_name, name in names.items():
        w = where[hf_name].tensor(hf_name, dtype)
        if name.endswith(("attn_q", "attn_k")):
            w = permute_rotate_half(w, config.num_heads if name.endswith("attn_q") else config.num_kv_heads)
        params[name] = w
    return config, params, cfg

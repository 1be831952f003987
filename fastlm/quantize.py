"""Quantizing tensors and whole GGUF files like llama.cpp's ``llama-quantize``, byte for byte.

:func:`quantize` encodes a float array in one ggml block format (:data:`QUANT_TYPES`: F32, F16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) with the compiled kernel
:func:`fastlm._quantize.quantize`, whose bytes equal ggml's quantizers without an importance matrix bit for bit.

:func:`quantize_file` re-encodes a GGUF file as one of llama-quantize's file types (:data:`FILE_TYPES`; ``Q3_K``,
``Q4_K`` and ``Q5_K`` name the ``_M`` mixes, as there), choosing each tensor's type as llama.cpp does
(``llama_tensor_get_type`` in src/llama-quant.cpp), see :func:`tensor_types`:

* only matrices named ``*weight`` are quantized, norms and a few small special tensors never; every other
  tensor, and every tensor already of its target type, is copied as it is;
* the output projection (``output``, or ``token_embd`` when the model ties them) is stored as Q6_K in every
  quantized file type but Q8_0 (Q8_0 where its rows are not whole blocks of the file's type);
* the ``*_S / *_M / *_L`` mixes, Q2_K and the IQ4 types give some ``attn_v``, ``ffn_down`` and ``attn_output``
  matrices more bits, by layer (:data:`MIXES`); ``pure=True`` (llama-quantize ``--pure``) skips both rules;
* a matrix whose rows are not whole blocks of its type falls back to a 32-element type (Q2_K, Q3_K -> Q4_0,
  Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, IQ4_XS -> IQ4_NL), and to F16 where those do not fit either;
* every metadata key is copied with its exact GGUF type (tokenizer arrays included); ``general.file_type`` is
  set to llama.cpp's ``LLAMA_FTYPE`` (:data:`FILE_TYPES`) and ``general.quantization_version`` to 2.

Unlike llama-quantize, an already quantized source is accepted (llama-quantize wants ``--allow-requantize``): each
tensor is decoded to float32 first, so the new rounding adds to the old. The file's tensors keep the source's
order (llama.cpp sorts them by layer and name); the tensors' bytes are llama.cpp's.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from . import _quantize
from .errors import FastLMTypeError, FastLMValueError, ModelFormatError
from .weights.gguf import GGUFFile
from .weights.gguf_writer import GGUFValue, TensorSpec, ValueType, write_gguf
from .weights.quant import BLOCK_SIZES, GGMLType, tensor_nbytes

__all__ = ["QUANT_TYPES", "FILE_TYPES", "FILE_TYPE_ALIASES", "MIXES", "ModelFacts", "quantize", "tensor_types",
           "quantize_file", "QuantizeSummary"]

# The tensor types fastlm writes, by name: the compiled formats' table's rows with a quantizer.
QUANT_TYPES: dict[str, GGMLType] = {name: GGMLType[name] for name in _quantize.NAMES.values()}
# llama-quantize's file types that fastlm writes: name -> llama.cpp's LLAMA_FTYPE (general.file_type).
FILE_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
    "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17,
    "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30,
}
# llama-quantize's other names for some of them.
FILE_TYPE_ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

Q3_K, Q4_K, Q5_K, Q6_K, Q8_0 = GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q8_0


def _qtype(qtype) -> GGMLType:
    if isinstance(qtype, str):
        found = QUANT_TYPES.get(qtype.upper())
    else:
        try:
            found = GGMLType(qtype)
        except (ValueError, TypeError):
            found = None
        found = found if found in QUANT_TYPES.values() else None
    if found is None:
        raise FastLMValueError(f"unknown quantization type {qtype!r}; choose one of {', '.join(QUANT_TYPES)}")
    return found


def _file_type(name) -> str:
    key = name.upper() if isinstance(name, str) else None
    key = FILE_TYPE_ALIASES.get(key, key)
    if key not in FILE_TYPES:
        raise FastLMValueError(f"unknown quantization type {name!r}; choose one of "
                               f"{', '.join([*FILE_TYPES, *FILE_TYPE_ALIASES])}")
    return key


def _default_type(file_type: str) -> GGMLType:
    """The tensor type of most matrices of a file type: the mix's name without its size letter."""
    return GGMLType[re.sub(r"_[SML]$", "", file_type)]


def quantize(x, qtype) -> np.ndarray:
    """``x`` (a float array; its last axis, the row, made of whole blocks) encoded as ``qtype`` (a name in
    :data:`QUANT_TYPES` or the GGMLType): a new uint8 array of the tensor's bytes, in ggml's layout."""
    qtype = _qtype(qtype)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise FastLMTypeError(f"x must be a float array, got {x.dtype}")
    if x.ndim == 0:
        raise FastLMValueError("x must have at least one axis")
    try:
        nbytes = tensor_nbytes(qtype, x.shape)
    except ModelFormatError as e:
        raise FastLMValueError(str(e)) from None
    out = np.empty(nbytes, np.uint8)
    _quantize.quantize(np.ascontiguousarray(x, dtype=np.float32).reshape(-1), int(qtype), out)
    return out


# ------------------------------------------------------------------------------ choosing each tensor's type

@dataclass(frozen=True)
class ModelFacts:
    """What llama.cpp's mixes read from a model's metadata besides its tensors' names and shapes."""

    arch: str = "llama"
    layers: int = 0                 # {arch}.block_count
    heads: int = 1                  # query heads per KV head = heads // kv_heads (llama.cpp's n_gqa)
    kv_heads: int = 1
    experts: int = 0

    @classmethod
    def of(cls, metadata: Mapping) -> "ModelFacts":
        """The facts of a GGUF file's plain metadata (a per-layer array counts by its first layer, as llama.cpp
        does)."""
        arch = str(metadata.get("general.architecture", "llama"))

        def number(key, default):
            value = metadata.get(f"{arch}.{key}", default)
            if isinstance(value, list):
                value = value[0] if value else default
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelFormatError(f"metadata {arch}.{key} must be a non-negative integer, got {value!r}")
            return value
        heads = number("attention.head_count", 1)
        return cls(arch, number("block_count", 0), heads, number("attention.head_count_kv", heads),
                   number("expert_count", 0))

    @property
    def gqa(self) -> int:
        return self.heads // self.kv_heads if self.kv_heads else 0

    @property
    def falcon(self) -> bool:
        return self.arch == "falcon"

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B (80 layers of llama with grouped KV heads, qwen2, deci, olmo; 68 of jais2),
        whose attn_v gets Q5_K over Q3_K / Q4_K."""
        return ((self.layers == 80 and (self.arch in ("qwen2", "deci", "olmo") or
                                        (self.arch == "llama" and self.heads != self.kv_heads)))
                or (self.layers == 68 and self.arch == "jais2"))


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: layer i of n is in the first or last eighth, or every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


Rule = Callable[[int, int, ModelFacts], "GGMLType | None"]
_K4_TO_Q5K_WITH_8_EXPERTS: Rule = lambda i, n, m: Q5_K if m.experts == 8 and not m.falcon else None  # noqa: E731

# llama.cpp's mixes: role -> file type -> rule(i, n, model) giving the type of the role's i-th tensor of n, or
# None for the file type's default. attn_v covers the value-like projections (attn_v, attn_qkv, attn_kv_b; i
# counts them, n = how many), ffn_down counts layers (n = the model's block count). A file type missing from a
# role keeps its default there.
MIXES: dict[str, dict[str, Rule]] = {
    "attn_v": {
        "Q2_K": lambda i, n, m: Q4_K if m.gqa >= 4 else Q3_K,
        "Q3_K_M": lambda i, n, m: Q5_K if i < 2 else Q4_K,
        "Q3_K_L": lambda i, n, m: Q5_K,
        "Q4_K_S": lambda i, n, m: Q5_K if i < 4 else None,
        "Q4_K_M": lambda i, n, m: Q6_K if _more_bits(i, n) else None,
        "Q5_K_M": lambda i, n, m: Q6_K if _more_bits(i, n) else None,
        "IQ4_NL": lambda i, n, m: Q5_K if m.gqa >= 4 else None,
        "IQ4_XS": lambda i, n, m: Q5_K if m.gqa >= 4 else None,
    },
    "ffn_down": {
        "Q2_K": lambda i, n, m: Q3_K,
        "Q3_K_M": lambda i, n, m: Q5_K if i < n // 16 else Q4_K if not m.falcon or _more_bits(i, n) else None,
        "Q3_K_L": lambda i, n, m: Q4_K if m.falcon else Q5_K,
        "Q4_K_S": lambda i, n, m: Q5_K if i < n // 8 and not m.falcon else None,
        "Q4_K_M": lambda i, n, m: (Q6_K if i < n // 16 else Q5_K if _more_bits(i, n) else None) if m.falcon
                                  else Q6_K if _more_bits(i, n) else None,
        "Q5_K_M": lambda i, n, m: Q6_K if _more_bits(i, n) else None,
        "IQ4_NL": lambda i, n, m: Q5_K if i < n // 8 else None,
        "IQ4_XS": lambda i, n, m: Q5_K if i < n // 8 else None,
    },
    "attn_output": {
        "Q2_K": lambda i, n, m: None if m.falcon else Q5_K if m.experts == 8 else Q3_K,
        "Q3_K_S": _K4_TO_Q5K_WITH_8_EXPERTS,
        "Q3_K_M": lambda i, n, m: None if m.falcon else Q5_K if m.experts == 8 else Q4_K,
        "Q3_K_L": lambda i, n, m: Q4_K if m.falcon else None if m.experts == 8 else Q5_K,
        "Q4_K_S": _K4_TO_Q5K_WITH_8_EXPERTS,
        "Q4_K_M": _K4_TO_Q5K_WITH_8_EXPERTS,
        "IQ4_NL": _K4_TO_Q5K_WITH_8_EXPERTS,
        "IQ4_XS": _K4_TO_Q5K_WITH_8_EXPERTS,
    },
}

# A type whose blocks do not fit a tensor's rows -> the 32-element type llama.cpp takes instead (F16 after it).
_NARROWER = {GGMLType.Q2_K: GGMLType.Q4_0, GGMLType.Q3_K: GGMLType.Q4_0, GGMLType.Q4_K: GGMLType.Q5_0,
             GGMLType.Q5_K: GGMLType.Q5_1, GGMLType.Q6_K: GGMLType.Q8_0, GGMLType.IQ4_XS: GGMLType.IQ4_NL}
# Parts of names llama.cpp never quantizes (norms, expert routers, small or positional tensors).
_KEPT_AS_IS = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
               "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "time_mix_", "attn_rel_b.weight",
               "position_embd", "token_types.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
               "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
               "a.rvq.codebook", "mm.a.code_embd")


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp's tensor_allows_quantization: a matrix (more than one row) named *weight, none of the above."""
    rows_beyond_one = any(s > 1 for s in shape[:-1])
    return rows_beyond_one and name.endswith("weight") and not any(part in name for part in _KEPT_AS_IS)


def _role(name: str) -> str:
    """llama.cpp's tensor category: output, token_embd, attn_v (value-like), attn_k, attn_q, attn_output,
    ffn_up, ffn_gate, ffn_down or other."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, role in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                       ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                       ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                       ("ffn_down", "ffn_down")):
        if part in name:
            return role
    return "other"


def _layer(name: str) -> int:
    m = re.match(r"blk\.(-?\d+)\.", name)
    return int(m.group(1)) if m else -1


def _fits(qtype: GGMLType, cols: int) -> bool:
    return cols % BLOCK_SIZES[qtype][0] == 0


def tensor_types(tensors: Mapping[str, tuple[int, ...]], file_type: str, model: ModelFacts = ModelFacts(),
                 pure: bool = False) -> dict[str, GGMLType | None]:
    """The type llama-quantize gives each tensor (name -> numpy shape, the row last) of a model in
    ``file_type`` (a name in :data:`FILE_TYPES` or an alias): None for a tensor it copies as it is."""
    file_type = _file_type(file_type)
    default = _default_type(file_type)
    quantized = default not in (GGMLType.F32, GGMLType.F16)
    tied = "output.weight" not in tensors
    # llama.cpp counts the tensors of each role in its own order: by layer, then by name
    order = sorted(tensors, key=lambda name: (_layer(name), name))
    n_value = sum(_role(name) == "attn_v" for name in order)
    n_layers = model.layers or sum(_role(name) == "ffn_down" for name in order)
    seen = {"attn_v": 0, "ffn_down": 0}
    out: dict[str, GGMLType | None] = {}
    for name in order:
        shape = tensors[name]
        if not _quantizable(name, shape):
            out[name] = None
            continue
        if not quantized:
            out[name] = default
            continue
        cols, role, t = shape[-1], _role(name), default
        if not pure:
            if role == "output" or (role == "token_embd" and tied):
                t = Q8_0 if model.falcon or not _fits(default, cols) else default if default == Q8_0 else Q6_K
            elif role in MIXES:
                i = _layer(name) if role == "ffn_down" and model.experts > 1 else seen[role] if role in seen else 0
                n = n_value if role == "attn_v" else n_layers
                rule = MIXES[role].get(file_type)
                t = (rule(i, n, model) if rule else None) or default
                if role == "attn_v":
                    t = Q5_K if model.is_70b and t in (Q3_K, Q4_K) else t
                    t = Q8_0 if model.experts == 8 else t
                if role in seen:
                    seen[role] += 1
            elif role == "attn_k" and model.experts == 8:
                t = Q8_0
        if not _fits(t, cols):
            t = _NARROWER.get(t, t)
            t = t if _fits(t, cols) else GGMLType.F16
        out[name] = t
    return {name: out[name] for name in tensors}


# ---------------------------------------------------------------------------------------------- whole files

@dataclass
class QuantizeSummary:
    """What :func:`quantize_file` did: the file type, how many tensors of each type it wrote, the file sizes in
    bytes and the time taken in seconds."""

    src: Path
    dst: Path
    qtype: str
    n_tensors: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.tensor_types.items()))
        return (f"{self.src.name} ({self.bytes_in / 2**20:.2f} MiB) -> {self.dst.name} "
                f"({self.bytes_out / 2**20:.2f} MiB, {self.qtype}): {self.n_tensors} tensors ({types}) "
                f"in {self.seconds:.2f} s")


def quantize_file(src, dst, qtype, progress: Callable[[int, int, str, str, str], None] | None = None,
                  pure: bool = False) -> QuantizeSummary:
    """Write the GGUF file ``src`` re-encoded as file type ``qtype`` (a name in :data:`FILE_TYPES` or
    :data:`FILE_TYPE_ALIASES`; see the module doc) to ``dst``; ``pure``: every matrix in the file type's own
    tensor type (where its rows allow).

    ``progress(index, total, name, from_type, to_type)`` is called as each tensor is written. ``dst`` appears
    only once complete (an existing file there is replaced). Raises :class:`~fastlm.errors.ModelFormatError`
    for an unreadable source and :class:`~fastlm.errors.FastLMValueError` for a bad type or destination.
    """
    start = time.perf_counter()
    file_type = _file_type(qtype)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ModelFormatError(f"{src}: {'is a directory, not a GGUF file' if src.is_dir() else 'no such file'}")
    if dst.is_dir():
        raise FastLMValueError(f"output {dst} is a directory; give a file name")
    if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise FastLMValueError(f"output {dst} is the input file; write to another path")
    if not dst.resolve().parent.is_dir():
        raise FastLMValueError(f"output directory {dst.parent} does not exist")

    gguf = GGUFFile(src)
    for info in gguf.tensors.values():
        if info.nbytes is None:
            gguf._fail(info.unsupported())
    metadata = dict(gguf.typed_metadata)
    metadata["general.quantization_version"] = GGUFValue(ValueType.UINT32, 2)
    metadata["general.file_type"] = GGUFValue(ValueType.UINT32, FILE_TYPES[file_type])
    chosen = tensor_types({n: i.shape for n, i in gguf.tensors.items()}, file_type, ModelFacts.of(gguf.metadata),
                          pure)

    summary = QuantizeSummary(src, dst, file_type, len(gguf.tensors), bytes_in=src.stat().st_size)
    specs = []
    for info in gguf.tensors.values():
        to = chosen[info.name]
        if to is None or to == info.qtype:                 # copied as it is
            to = GGMLType(info.qtype)

            def encode(info=info):
                return gguf._raw(info)
        else:
            def encode(name=info.name, to=to):
                return quantize(gguf.tensor(name), to)
        summary.tensor_types[to.name] = summary.tensor_types.get(to.name, 0) + 1
        specs.append(TensorSpec(info.name, info.shape, to, encode))

    report = None
    if progress is not None:
        def report(i, n, spec):
            progress(i, n, spec.name, gguf.tensors[spec.name].type_name, GGMLType(spec.qtype).name)

    summary.bytes_out = write_gguf(dst, metadata, specs, progress=report)
    summary.seconds = time.perf_counter() - start
    return summary

"""GGUF files: a bounds-checked reader and the loader of every architecture fastlm runs.

The format (versions 2 and 3, little-endian)::

    magic b"GGUF" | uint32 version | uint64 tensor_count | uint64 kv_count
    kv_count x      (string key, uint32 value type, value)
    tensor_count x  (string name, uint32 n_dims, uint64 ne[n_dims], uint32 ggml type, uint64 offset)
    padding to general.alignment (default 32) | data section (tensor offsets are relative to its start)

A string is a uint64 length and UTF-8 bytes; an array is a uint32 item type, a uint64 count and the items.
``ne[0]`` is the fastest axis, so a tensor with ne = [in, out] is a row-major (out, in) array.

The file is memory-mapped, never read whole. The header is parsed here rather than by the ``gguf`` package
because every count, length and offset in it must be checked against the bytes actually in the file before
anything is allocated or read: a corrupt header raises :class:`~fastlm.errors.ModelFormatError` instead of
allocating without bound. Tensors are decoded one at a time straight from the map into their output arrays.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MAX_SEQ_LEN, ModelConfig, parameter_shapes
from ..errors import FastLMTypeError, FastLMValueError, ModelFormatError
from .quant import BLOCK_SIZES, KERNEL_TYPES, GGMLType, QuantizedTensor, dequantize

__all__ = ["GGUFFile", "GGUFValue", "ValueType", "TensorInfo", "load_gguf", "read_config", "ARCHITECTURES"]

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 4       # arrays of arrays are legal; deeper nesting is only ever an attack or corruption

# What each general.architecture fixes that its keys do not say, as llama.cpp reads these files. RoPE:
# llama's converter permuted Q/K rows for interleaved pairs (Mistral, TinyLlama, SmolLM and Llama 1-3 files all
# say "llama"); the others rotate halves. "local": which layers the sliding window applies to, by index and
# layer count. Keys that a file may also carry (biases, q/k norms) are read from its tensors.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": dict(rope_style="interleaved"),
    "qwen2": dict(rope_style="neox"),
    "qwen3": dict(rope_style="neox"),
    "phi3": dict(rope_style="neox"),
    "gemma2": dict(rope_style="neox", activation="gelu_tanh", scale_embeddings=True, post_norms=True,
                   local=lambda i: i % 2 == 0),
    "gemma3": dict(rope_style="neox", activation="gelu_tanh", scale_embeddings=True, post_norms=True,
                   local=lambda i: i % 6 != 5),
}
# Tensors that hold two or three of fastlm's matrices, rows one after another (Phi-3's fused projections).
_FUSED = {"attn_qkv": ("attn_q", "attn_k", "attn_v"), "ffn_up": ("ffn_gate", "ffn_up")}

# ggml type names, by id, for messages about types fastlm does not decode.
_GGML_TYPE_NAMES = ("F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
                    "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
                    "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16")


class ValueType(IntEnum):
    """GGUF metadata value types, by their ids in the file."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


@dataclass(frozen=True)
class GGUFValue:
    """A metadata value with its GGUF type. For an ARRAY, ``value`` is a list and ``item_type`` the type of
    its items; items of an array of arrays are GGUFValues (or, for the writer, lists it types itself)."""

    type: ValueType
    value: Any
    item_type: ValueType | None = None

    def __post_init__(self):
        object.__setattr__(self, "type", ValueType(self.type))
        if self.type == ValueType.ARRAY:
            if self.item_type is None:
                raise FastLMValueError("an ARRAY GGUFValue needs an item_type")
            object.__setattr__(self, "item_type", ValueType(self.item_type))
        elif self.item_type is not None:
            raise FastLMValueError(f"item_type is only for arrays, not {self.type.name}")

    def plain(self) -> Any:
        """The value as plain Python: a float32 scalar as the shortest decimal that rounds back to it."""
        if self.type == ValueType.FLOAT32:
            return float(str(np.float32(self.value)))
        if self.type == ValueType.ARRAY and self.item_type == ValueType.ARRAY:
            return [v.plain() for v in self.value]
        return self.value


# Little-endian struct formats of the scalar types.
SCALAR_FORMATS = {ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
                  ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
                  ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d"}
# The fewest bytes one item of each type can take: bounds a claimed count before reading any item.
_MIN_ITEM_BYTES = {**{t: struct.calcsize(f) for t, f in SCALAR_FORMATS.items()}, ValueType.STRING: 8,
                   ValueType.ARRAY: 12}
_MIN_KV_BYTES = 8 + 4 + 1            # empty key, type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset


def _type_name(qtype: int) -> str:
    return _GGML_TYPE_NAMES[qtype] if qtype < len(_GGML_TYPE_NAMES) else f"type id {qtype}"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file. ``shape`` is in numpy order (reversed ne: the row, ne[0], last);
    ``offset`` is absolute in the file; ``nbytes`` is None for a type fastlm cannot decode."""

    name: str
    shape: tuple[int, ...]
    qtype: int
    offset: int
    nbytes: int | None

    @property
    def type_name(self) -> str:
        return _type_name(self.qtype)

    def unsupported(self) -> str:
        return (f"tensor {self.name!r} has unsupported type {self.type_name}; fastlm reads "
                f"{', '.join(t.name for t in GGMLType)}")


class GGUFFile:
    """A parsed GGUF header over a read-only memory map of the file.

    ``metadata`` holds every key-value pair as plain Python values (str, int, float, bool and lists of
    them; strings that are not valid UTF-8 keep their bytes as surrogate escapes; float32 scalars are the
    shortest decimal that rounds to the same float32, e.g. 1e-05); ``typed_metadata`` holds them as
    :class:`GGUFValue` objects with their exact GGUF types, which a copy of the file keeps. ``tensors`` maps
    names to :class:`TensorInfo`. :meth:`tensor` decodes one tensor.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._map = _map_file(self.path, "GGUF")
        self._pos = 0
        self._parse()

    def _fail(self, problem: str):
        raise ModelFormatError(f"{self.path}: {problem}")

    # -- bounds-checked reading ---------------------------------------------------------------------------

    def _take(self, n: int, what: str) -> int:
        """Claim the next ``n`` bytes; returns their offset."""
        left = len(self._map) - self._pos
        if n > left:
            self._fail(f"truncated file: {what} needs {n} bytes at offset {self._pos}, only {left} left")
        start = self._pos
        self._pos += n
        return start

    def _scalar(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self._map, self._take(struct.calcsize(fmt), what))[0]

    def _string(self, what: str) -> str:
        n = self._scalar("<Q", f"the length of {what}")
        start = self._take(n, f"{what} ({n} bytes)")
        return self._map[start:start + n].decode("utf-8", "surrogateescape")

    def _value(self, vtype: int, what: str, depth: int = 0) -> GGUFValue:
        if vtype in SCALAR_FORMATS:
            return GGUFValue(vtype, self._scalar(SCALAR_FORMATS[vtype], what))
        if vtype == ValueType.STRING:
            return GGUFValue(vtype, self._string(what))
        if vtype != ValueType.ARRAY:
            self._fail(f"{what} has unknown value type {vtype}")
        if depth == MAX_ARRAY_NESTING:
            self._fail(f"{what} nests arrays deeper than {MAX_ARRAY_NESTING} levels")
        item_type = self._scalar("<I", f"the item type of {what}")
        count = self._scalar("<Q", f"the length of {what}")
        if item_type not in _MIN_ITEM_BYTES:
            self._fail(f"{what} is an array of unknown value type {item_type}")
        if count * _MIN_ITEM_BYTES[item_type] > len(self._map) - self._pos:
            self._fail(f"truncated or corrupt array: {what} claims {count} items, more than the "
                       f"{len(self._map) - self._pos} bytes left in the file can hold")
        if item_type in SCALAR_FORMATS:
            dtype = np.dtype(SCALAR_FORMATS[item_type])
            start = self._take(count * dtype.itemsize, what)
            items = np.frombuffer(self._map, dtype, count, start).tolist() if count else []
        elif item_type == ValueType.STRING:
            items = self._strings(count, what)
        else:
            items = [self._value(item_type, f"{what}[{i}]", depth + 1) for i in range(count)]
        return GGUFValue(vtype, items, item_type)

    def _strings(self, count: int, what: str) -> list[str]:
        """``count`` strings: :meth:`_string` unrolled, as vocabularies hold ~10^5 of them."""
        m, pos, end, out = self._map, self._pos, len(self._map), []
        for i in range(count):
            n = struct.unpack_from("<Q", m, pos)[0] if end - pos >= 8 else None
            if n is None or n > end - pos - 8:
                self._pos = pos
                self._fail(f"truncated file: {what}[{i}] runs past the end of the file at offset {pos}")
            out.append(m[pos + 8:pos + 8 + n].decode("utf-8", "surrogateescape"))
            pos += 8 + n
        self._pos = pos
        return out

    # -- the header -----------------------------------------------------------------------------------------

    def _parse(self) -> None:
        magic = self._map[:4]
        if not MAGIC.startswith(magic):
            self._fail(f"not a GGUF file (starts with {magic!r}, expected {MAGIC!r})")
        self._take(4, "the magic")
        self.version = self._scalar("<I", "the version")
        if self.version not in VERSIONS:
            if self.version.to_bytes(4, "little")[::-1] in (v.to_bytes(4, "little") for v in VERSIONS):
                self._fail("big-endian GGUF files are not supported")
            self._fail(f"unsupported GGUF version {self.version} (fastlm reads versions {VERSIONS})")
        tensor_count = self._scalar("<Q", "the tensor count")
        kv_count = self._scalar("<Q", "the key-value count")
        left = len(self._map) - self._pos
        if tensor_count * _MIN_TENSOR_INFO_BYTES + kv_count * _MIN_KV_BYTES > left:
            self._fail(f"truncated or corrupt header: it claims {tensor_count} tensors and {kv_count} key-value "
                       f"pairs, more than the remaining {left} bytes of the file can hold")

        self.typed_metadata: dict[str, GGUFValue] = {}
        for i in range(kv_count):
            key = self._string(f"key #{i}")
            if key in self.typed_metadata:
                self._fail(f"duplicate metadata key {key!r}")
            vtype = self._scalar("<I", f"the type of {key!r}")
            self.typed_metadata[key] = self._value(vtype, repr(key))
        self.metadata: dict[str, Any] = {key: value.plain() for key, value in self.typed_metadata.items()}

        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (isinstance(self.alignment, bool) or not isinstance(self.alignment, int) or self.alignment < 1
                or self.alignment & (self.alignment - 1)):
            self._fail(f"general.alignment must be a power of two, got {self.alignment!r}")

        infos = [self._tensor_info(i) for i in range(tensor_count)]
        self.data_offset = -(-self._pos // self.alignment) * self.alignment
        data_size = len(self._map) - self.data_offset
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, qtype, offset in infos:
            if name in self.tensors:
                self._fail(f"duplicate tensor {name!r}")
            if offset % self.alignment:
                self._fail(f"tensor {name!r} starts at data offset {offset}, not a multiple of the alignment "
                           f"{self.alignment}")
            nbytes = None
            if qtype in BLOCK_SIZES:
                block_elements, block_bytes = BLOCK_SIZES[GGMLType(qtype)]
                if shape[-1] % block_elements:
                    self._fail(f"tensor {name!r} of type {_type_name(qtype)} has rows of {shape[-1]} elements, "
                               f"not whole {block_elements}-element blocks")
                nbytes = prod(shape) // block_elements * block_bytes
                if offset + nbytes > data_size:
                    self._fail(f"tensor {name!r} ({nbytes} bytes at data offset {offset}) lies outside the "
                               f"file: the data section holds {max(data_size, 0)} bytes")
            self.tensors[name] = TensorInfo(name, shape, qtype, self.data_offset + offset, nbytes)
        _check_disjoint([(t.offset, t.offset + t.nbytes) for t in self.tensors.values() if t.nbytes is not None],
                        self._fail)

    def _tensor_info(self, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string(f"the name of tensor #{i}")
        n_dims = self._scalar("<I", f"the rank of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            self._fail(f"tensor {name!r} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}")
        ne = [self._scalar("<Q", f"the shape of tensor {name!r}") for _ in range(n_dims)]
        if 0 in ne:
            self._fail(f"tensor {name!r} has an empty dimension: ne = {ne}")
        qtype = self._scalar("<I", f"the type of tensor {name!r}")
        offset = self._scalar("<Q", f"the offset of tensor {name!r}")
        return name, tuple(reversed(ne)), qtype, offset

    # -- tensors ----------------------------------------------------------------------------------------

    def tensor(self, name: str, dtype=np.float32) -> np.ndarray:
        """Tensor ``name`` decoded to ``dtype`` (float32 F32 data: a read-only view of the map)."""
        info = self.tensors.get(name)
        if info is None:
            self._fail(f"no tensor {name!r}")
        if info.nbytes is None:
            self._fail(info.unsupported())
        return dequantize(self._raw(info), info.qtype, info.shape, dtype)

    def quantized(self, name: str) -> QuantizedTensor:
        """Matrix ``name`` as stored, without decoding: its blocks are a read-only view of the map."""
        info = self.tensors.get(name)
        if info is None:
            self._fail(f"no tensor {name!r}")
        if info.nbytes is None or len(info.shape) != 2:
            self._fail(info.unsupported() if info.nbytes is None else f"tensor {name!r} is not a matrix")
        return QuantizedTensor(self._raw(info), info.qtype, info.shape)

    def _raw(self, info: TensorInfo) -> np.ndarray:
        return np.frombuffer(self._map, np.uint8, info.nbytes, info.offset)


def _check_disjoint(spans: list[tuple[int, int]], fail) -> None:
    """Tensors' byte ranges [begin, end) may not overlap: one region read as two tensors lets a small file
    pose as a large model."""
    spans = sorted(spans)
    for (_, end), (begin, _) in zip(spans, spans[1:]):
        if begin < end:
            fail(f"tensors overlap in the data section (bytes {begin} to {end} of the file)")


def _map_file(path: Path, kind: str) -> mmap.mmap:
    """A read-only map of ``path``; every way of failing becomes a ModelFormatError naming the file."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ModelFormatError(f"{path}: empty file, not a {kind} file")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a directory, not a {kind} file") from None
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------ the model

_REQUIRED = object()


def _config(gguf: GGUFFile) -> ModelConfig:
    """The ModelConfig that a file describes; anything fastlm cannot run raises, naming it."""
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        gguf._fail(f"unsupported architecture {arch!r} (general.architecture); fastlm runs "
                   f"{', '.join(ARCHITECTURES)}")
    fixed = dict(ARCHITECTURES[arch])
    local = fixed.pop("local", lambda i: True)

    def get(key: str, kind: type, default=_REQUIRED):
        full = f"{arch}.{key}"
        value = meta.get(full, default)
        if value is _REQUIRED:
            gguf._fail(f"missing metadata key {full!r} (required for {arch})")
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if value is not default and (isinstance(value, bool) or not ok):
            gguf._fail(f"metadata key {full!r} must be a{'n integer' if kind is int else ' number'}, "
                       f"got {value!r}")
        return value

    token_embd = gguf.tensors.get("token_embd.weight")
    if token_embd is None or len(token_embd.shape) != 2:
        gguf._fail("missing tensor 'token_embd.weight' (the (vocab, d_model) token embedding)")
    # Variants with these names but other arithmetic: refuse them rather than compute something else.
    if get("expert_count", int, 0):
        gguf._fail("mixture-of-experts models are not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        gguf._fail(f"RoPE scaling {scaling!r} ({arch}.rope.scaling.type) is not supported; fastlm reads "
                   f"linear scaling and llama3's rope_freqs")
    head_dim = get("attention.key_length", int, None)
    if get("attention.value_length", int, head_dim) != head_dim:
        gguf._fail(f"{arch}.attention.value_length differs from key_length {head_dim}; fastlm needs them equal")
    layers, heads = get("block_count", int), get("attention.head_count", int)
    context = get("context_length", int)
    if not 1 <= context <= MAX_SEQ_LEN:
        gguf._fail(f"{arch}.context_length = {context} is outside [1, {MAX_SEQ_LEN}] (fastlm.config.MAX_SEQ_LEN)")
    window = get("attention.sliding_window", int, 0)
    divisors = None
    if "rope_freqs.weight" in gguf.tensors:          # llama3 scaling: per-pair divisors of the frequencies
        divisors = tuple(gguf.tensor("rope_freqs.weight", np.float64).reshape(-1).tolist())
    attn_scale = None
    if arch in ("gemma2", "gemma3") and layers in (46, 62):   # the 27B models, as llama.cpp knows them
        attn_scale = (get("embedding_length", int) / heads) ** -0.5
    try:
        return ModelConfig(
            vocab_size=token_embd.shape[0],
            d_model=get("embedding_length", int),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=get("attention.head_count_kv", int, heads),
            d_ff=get("feed_forward_length", int),
            max_seq_len=context,
            tie_weights="output.weight" not in gguf.tensors,
            rope_theta=float(get("rope.freq_base", float, 10000.0)),
            norm_eps=float(get("attention.layer_norm_rms_epsilon", float)),
            arch=arch,
            head_dim=head_dim,
            rope_dim=get("rope.dimension_count", int, None),
            rope_freq_divisors=divisors,
            rope_scaling=float(get("rope.scaling.factor", float, 1.0)) if scaling == "linear" else 1.0,
            rope_local_theta=float(get("rope.freq_base_swa", float)) if f"{arch}.rope.freq_base_swa" in meta
            else None,
            qkv_bias="blk.0.attn_q.bias" in gguf.tensors,
            qk_norm="blk.0.attn_q_norm.weight" in gguf.tensors,
            attn_softcap=float(get("attn_logit_softcapping", float, 0.0)),
            final_softcap=float(get("final_logit_softcapping", float, 0.0)),
            attn_scale=attn_scale,
            sliding_window=window,
            local_layers=tuple(i for i in range(layers) if local(i)) if window else (),
            **fixed,
        )
    except FastLMValueError as e:
        gguf._fail(f"inconsistent model shape: {e}")


def _file_tensors(config: ModelConfig, gguf: GGUFFile) -> dict[str, tuple[str, int, int]]:
    """fastlm name -> (file tensor, first row, end row) for every parameter: most are whole tensors of the
    same name (plus ``.weight``); fused ones are row ranges of one file tensor."""
    shapes = parameter_shapes(config)
    where = {}
    for name, shape in shapes.items():
        file_name = name if name.endswith(".bias") else f"{name}.weight"
        where[name] = (file_name, 0, shape[0])
    for i in range(config.num_layers):
        for fused, parts in _FUSED.items():
            file_name = f"blk.{i}.{fused}.weight"
            if file_name in gguf.tensors and (fused != "ffn_up" or f"blk.{i}.ffn_gate.weight" not in gguf.tensors):
                row = 0
                for part in parts:
                    rows = shapes[f"blk.{i}.{part}"][0]
                    where[f"blk.{i}.{part}"] = (file_name, row, row + rows)
                    row += rows
    return where


def _rows(w, start: int, stop: int):
    """Rows start..stop-1 of a float or block matrix, as a view."""
    if start == 0 and stop == w.shape[0]:
        return w
    if isinstance(w, QuantizedTensor):
        return QuantizedTensor(w.data[start:stop], w.qtype, (stop - start, w.shape[1]))
    return w[start:stop]


def read_config(path) -> tuple[ModelConfig, GGUFFile]:
    """The ModelConfig a GGUF file describes, from its header alone (nothing is decoded)."""
    gguf = GGUFFile(path)
    return _config(gguf), gguf


def load_gguf(path, dtype=np.float32, quantized: bool = False
              ) -> tuple[ModelConfig, dict[str, np.ndarray | QuantizedTensor], dict[str, Any]]:
    """Load a GGUF file of any architecture in :data:`ARCHITECTURES`: ``(config, params, metadata)``.

    ``params`` uses fastlm's names (GGUF's without ``.weight``) and shapes (:func:`fastlm.config.
    parameter_shapes`), decoded to ``dtype``; F32 tensors loaded as float32 are read-only views of the
    memory-mapped file, and fused tensors (Phi-3's ``attn_qkv``, ``ffn_up`` = [gate; up]) are split into views
    of their rows. With ``quantized``, matrices of the types fastlm computes on (:data:`KERNEL_TYPES`) stay as
    stored, :class:`QuantizedTensor` views of the map. Q/K rows stay as stored: llama.cpp's converter already
    laid them out for the arch's RoPE pairing, and Gemma's norm weights already hold the ``+1``. ``metadata``
    holds every key-value pair of the file (see :class:`GGUFFile`), tokenizer keys included. Any problem
    raises :class:`~fastlm.errors.ModelFormatError`.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise FastLMTypeError(f"dtype must be float32 or float64, got {dtype}")
    config, gguf = read_config(path)
    if config.num_layers > len(gguf.tensors):     # before listing the shapes of that many layers
        gguf._fail(f"{config.arch}.block_count = {config.num_layers}, more layers than the file has tensors")
    shapes = parameter_shapes(config)
    where = _file_tensors(config, gguf)
    used = {file_name for file_name, _, _ in where.values()} | ({"rope_freqs.weight"} if
                                                                config.rope_freq_divisors else set())
    unexpected = sorted(set(gguf.tensors) - used)
    if unexpected:
        gguf._fail(f"unexpected tensors for a {config.num_layers}-layer {config.arch} model: {unexpected[:8]}")
    # Check every tensor before decoding any, so a bad file fails fast.
    rows: dict[str, int] = {}                          # file tensor -> rows its parameters cover
    for name, (file_name, start, stop) in where.items():
        info = gguf.tensors.get(file_name)
        if info is None:
            block, _, part = name.rpartition(".")
            fused = [f"{block}.{f}.weight" for f, parts in _FUSED.items() if part in parts]
            gguf._fail(f"missing tensor {file_name!r} (expected shape {shapes[name]}) for {config.arch}"
                       + (f", nor is it part of a fused {fused[0]!r}" if fused else ""))
        rows[file_name] = max(rows.get(file_name, 0), stop)
        if info.shape[1:] != shapes[name][1:] or len(info.shape) != len(shapes[name]):
            gguf._fail(f"tensor {file_name!r} has shape {info.shape}, expected {shapes[name]}")
        if info.nbytes is None:
            gguf._fail(info.unsupported())
    for file_name, n in rows.items():
        shape = gguf.tensors[file_name].shape
        if shape[0] != n:
            gguf._fail(f"tensor {file_name!r} has shape {shape}, expected {(n, *shape[1:])}")
    loaded = {}
    for file_name in sorted({file_name for file_name, _, _ in where.values()}):
        info = gguf.tensors[file_name]
        keep = quantized and len(info.shape) == 2 and info.qtype in KERNEL_TYPES
        loaded[file_name] = gguf.quantized(file_name) if keep else gguf.tensor(file_name, dtype)
    params = {name: _rows(loaded[file_name], start, stop) for name, (file_name, start, stop) in where.items()}
    return config, params, gguf.metadata

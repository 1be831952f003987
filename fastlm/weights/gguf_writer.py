"""Writing GGUF files (version 3, little-endian): metadata, tensor infos and the aligned data section.

The layout is the one :mod:`fastlm.weights.gguf` reads::

    magic b"GGUF" | uint32 3 | uint64 tensor_count | uint64 kv_count
    kv_count x      (string key, uint32 value type, value)
    tensor_count x  (string name, uint32 n_dims, uint64 ne[n_dims], uint32 ggml type, uint64 offset)
    padding to general.alignment (default 32) | data section, each tensor at an aligned offset

Metadata values carry a GGUF value type. A plain Python value gets one by :func:`infer_value`; a
:class:`GGUFValue` states it (``GGUFValue(ValueType.UINT32, 7)``) and is what :func:`read_metadata` returns for
every key of an existing file, so a copied file keeps each key's exact type (uint32 stays uint32, float32 stays
float32, bit for bit).

:func:`write_gguf` writes into a temporary file beside the target and renames it over the target only when
everything was written: an error never leaves a half-written file behind. Tensor data may be given lazily
(a callable returning the array), so a large model is written one tensor at a time.
"""
from __future__ import annotations

import operator
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from ..errors import FastLMTypeError, FastLMValueError, ModelFormatError
from .gguf import DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, SCALAR_FORMATS, GGUFFile, GGUFValue, ValueType
from .quant import GGMLType, tensor_nbytes

__all__ = ["ValueType", "GGUFValue", "TensorSpec", "infer_value", "read_metadata", "write_gguf"]

VERSION = 3


# The range of each integer type.
_INT_RANGES = {t: (0, 2 ** (8 * struct.calcsize(f)) - 1) if f[1].isupper()
               else (-2 ** (8 * struct.calcsize(f) - 1), 2 ** (8 * struct.calcsize(f) - 1) - 1)
               for t, f in SCALAR_FORMATS.items() if f[1] in "BbHhIiQq"}
_FLOATS = (ValueType.FLOAT32, ValueType.FLOAT64)
_MAX_NESTING = 4


MetadataValue = Union[GGUFValue, bool, int, float, str, list]


def infer_value(value: Any) -> GGUFValue:
    """The GGUF type of a plain Python value: bool -> BOOL, int -> INT32 (INT64 / UINT64 when it does not fit),
    float -> FLOAT32, str -> STRING, a list -> ARRAY of its items' type (all items must agree; integers widen
    to the smallest of INT32, INT64, UINT64 holding them all). A GGUFValue is returned as it is."""
    if isinstance(value, GGUFValue):
        return value
    if isinstance(value, (bool, np.bool_)):
        return GGUFValue(ValueType.BOOL, bool(value))
    if isinstance(value, (int, np.integer)):
        return GGUFValue(_int_type([int(value)]), int(value))
    if isinstance(value, (float, np.floating)):
        return GGUFValue(ValueType.FLOAT32, float(value))
    if isinstance(value, str):
        return GGUFValue(ValueType.STRING, value)
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value.tolist() if isinstance(value, np.ndarray) else value)
        if not items:
            return GGUFValue(ValueType.ARRAY, [], ValueType.INT32)
        kinds = {infer_value(v).type for v in items}
        if kinds <= {ValueType.INT32, ValueType.INT64, ValueType.UINT64}:
            return GGUFValue(ValueType.ARRAY, [int(v) for v in items], _int_type([int(v) for v in items]))
        if len(kinds) != 1:
            raise FastLMTypeError(f"a GGUF array holds items of one type, got {sorted(k.name for k in kinds)}")
        return GGUFValue(ValueType.ARRAY, items, kinds.pop())
    raise FastLMTypeError(f"no GGUF value type for {type(value).__name__} value {value!r}")


def _int_type(values: list[int]) -> ValueType:
    lo, hi = min(values), max(values)
    for t in (ValueType.INT32, ValueType.INT64, ValueType.UINT64):
        if _INT_RANGES[t][0] <= lo and hi <= _INT_RANGES[t][1]:
            return t
    raise FastLMValueError(f"integer {lo if lo < _INT_RANGES[ValueType.INT64][0] else hi} does not fit in 64 bits")


# ------------------------------------------------------------------------------------------------- encoding

def _string(s: str, what: str) -> bytes:
    if not isinstance(s, str):
        raise FastLMTypeError(f"{what} must be a str, got {type(s).__name__}")
    data = s.encode("utf-8", "surrogateescape")      # the reader's surrogate escapes become the original bytes
    return struct.pack("<Q", len(data)) + data


def _scalar(vtype: ValueType, value: Any, what: str) -> bytes:
    if vtype == ValueType.BOOL:
        if not isinstance(value, (bool, np.bool_)):
            raise FastLMTypeError(f"{what} is BOOL but its value is {type(value).__name__} {value!r}")
        return struct.pack("<?", bool(value))
    if vtype in _FLOATS:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise FastLMTypeError(f"{what} is {vtype.name} but its value is {type(value).__name__} {value!r}")
        exact = float(np.float32(value)) if vtype == ValueType.FLOAT32 else float(value)
        return struct.pack(SCALAR_FORMATS[vtype], exact)
    if isinstance(value, (bool, np.bool_)):
        raise FastLMTypeError(f"{what} is {vtype.name} but its value is the bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise FastLMTypeError(f"{what} is {vtype.name} but its value is {type(value).__name__} {value!r}") from None
    lo, hi = _INT_RANGES[vtype]
    if not lo <= value <= hi:
        raise FastLMValueError(f"{what} = {value} is outside the range of {vtype.name} [{lo}, {hi}]")
    return struct.pack(SCALAR_FORMATS[vtype], value)


def _encode(value: GGUFValue, what: str, depth: int = 0) -> bytes:
    """The bytes of ``value`` after its uint32 type (not included)."""
    vtype = value.type
    if vtype == ValueType.STRING:
        return _string(value.value, what)
    if vtype != ValueType.ARRAY:
        return _scalar(vtype, value.value, what)
    if depth == _MAX_NESTING:
        raise FastLMValueError(f"{what} nests arrays deeper than {_MAX_NESTING} levels")
    items = value.value
    if isinstance(items, np.ndarray):
        items = items.tolist()
    if not isinstance(items, (list, tuple)):
        raise FastLMTypeError(f"{what} is an ARRAY but its value is {type(items).__name__}")
    item_type = value.item_type
    head = struct.pack("<IQ", int(item_type), len(items))
    if item_type == ValueType.STRING:
        return head + b"".join(_string(s, f"{what}[{i}]") for i, s in enumerate(items))
    if item_type == ValueType.ARRAY:
        parts = []
        for i, item in enumerate(items):
            item = infer_value(item)
            if item.type != ValueType.ARRAY:
                raise FastLMTypeError(f"{what}[{i}] must be an array, got {item.type.name}")
            parts.append(_encode(item, f"{what}[{i}]", depth + 1))   # items carry no type of their own
        return head + b"".join(parts)
    if items and item_type not in _FLOATS and item_type != ValueType.BOOL:
        # Integers in bulk: one range check, then numpy packs them.
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in items):
            bad = next(v for v in items if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)))
            raise FastLMTypeError(f"{what} is an array of {item_type.name} but holds {type(bad).__name__} {bad!r}")
        lo, hi = _INT_RANGES[item_type]
        if not (lo <= min(items) and max(items) <= hi):
            raise FastLMValueError(f"{what}: items outside the range of {item_type.name} [{lo}, {hi}]")
        return head + np.array(items, dtype=np.dtype(SCALAR_FORMATS[item_type])).tobytes()
    return head + b"".join(_scalar(item_type, v, f"{what}[{i}]") for i, v in enumerate(items))


# -------------------------------------------------------------------------------------------------- tensors

@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: ``shape`` in numpy order (the row, ggml's ne[0], last), ``qtype`` a ggml type
    (a :class:`~fastlm.weights.quant.GGMLType`, its id or name) and ``data`` the encoded tensor, or a callable
    returning it when the tensor is written. ``data`` is uint8 bytes of exactly the tensor's size, or for F32
    and F16 tensors a float32 / float16 array of ``shape``."""

    name: str
    shape: tuple[int, ...]
    qtype: Any
    data: np.ndarray | Callable[[], np.ndarray]


def _tensor_bytes(spec: TensorSpec, qtype: GGMLType, nbytes: int) -> np.ndarray:
    data = spec.data() if callable(spec.data) else spec.data
    if not isinstance(data, np.ndarray):
        raise FastLMTypeError(f"tensor {spec.name!r}: data must be a numpy array, got {type(data).__name__}")
    native = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.BF16: None}.get(qtype)
    if native is not None and data.dtype == native:
        if data.shape != spec.shape:
            raise FastLMValueError(f"tensor {spec.name!r}: data has shape {data.shape}, expected {spec.shape}")
        data = np.ascontiguousarray(data, dtype=np.dtype(native).newbyteorder("<")).view(np.uint8)
    elif data.dtype != np.uint8:
        raise FastLMTypeError(f"tensor {spec.name!r} of type {qtype.name}: data must be uint8 bytes"
                              f"{' or ' + np.dtype(native).name + ' values' if native else ''}, got {data.dtype}")
    data = np.ascontiguousarray(data).reshape(-1)
    if data.size != nbytes:
        raise FastLMValueError(f"tensor {spec.name!r}: a {qtype.name} tensor of shape {spec.shape} takes "
                               f"{nbytes} bytes, got {data.size}")
    return data


def _check_tensors(tensors: Sequence[TensorSpec]) -> list[tuple[TensorSpec, GGMLType, int]]:
    out, names = [], set()
    for spec in tensors:
        if not isinstance(spec, TensorSpec):
            raise FastLMTypeError(f"tensors must be TensorSpec, got {type(spec).__name__}")
        if spec.name in names:
            raise FastLMValueError(f"duplicate tensor name {spec.name!r}")
        names.add(spec.name)
        shape = tuple(spec.shape)
        if not 1 <= len(shape) <= MAX_DIMS or any(not isinstance(n, (int, np.integer)) or n < 1 for n in shape):
            raise FastLMValueError(f"tensor {spec.name!r}: shape must be 1 to {MAX_DIMS} positive integers, "
                                   f"got {shape}")
        try:
            qtype = GGMLType[spec.qtype] if isinstance(spec.qtype, str) else GGMLType(spec.qtype)
        except (KeyError, ValueError):
            raise FastLMValueError(f"tensor {spec.name!r}: unsupported type {spec.qtype!r}; supported: "
                                   f"{', '.join(t.name for t in GGMLType)}") from None
        try:
            nbytes = tensor_nbytes(qtype, shape)
        except ModelFormatError as e:
            raise FastLMValueError(f"tensor {spec.name!r}: {e}") from None
        out.append((TensorSpec(spec.name, tuple(int(n) for n in shape), qtype, spec.data), qtype, nbytes))
    return out


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


# ---------------------------------------------------------------------------------------------------- write

def write_gguf(path, metadata: Mapping[str, MetadataValue], tensors: Iterable[TensorSpec] = (),
               progress: Callable[[int, int, TensorSpec], None] | None = None) -> int:
    """Write a GGUF v3 file at ``path``: ``metadata`` (key -> plain value or :class:`GGUFValue`, in order) and
    ``tensors`` (:class:`TensorSpec`, in order). The data section is aligned to ``general.alignment`` when
    the metadata sets it (a power of two), else to 32 bytes. ``progress(i, n, spec)`` is called before each
    tensor is written. The file appears at ``path`` only once complete. Returns its size in bytes."""
    path = Path(path)
    typed = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise FastLMTypeError(f"metadata keys must be str, got {type(key).__name__} {key!r}")
        typed[key] = infer_value(value)
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in typed:
        a = typed["general.alignment"]
        if a.type in (ValueType.ARRAY, ValueType.STRING, ValueType.BOOL, *_FLOATS):
            raise FastLMValueError(f"general.alignment must be an integer, got {a.type.name}")
        alignment = a.value
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise FastLMValueError(f"general.alignment must be a power of two, got {alignment!r}")
    checked = _check_tensors(list(tensors))

    header = [MAGIC, struct.pack("<IQQ", VERSION, len(checked), len(typed))]
    for key, value in typed.items():
        header += [_string(key, "a metadata key"), struct.pack("<I", int(value.type)), _encode(value, repr(key))]
    offset = 0
    for spec, qtype, nbytes in checked:
        ne = spec.shape[::-1]
        header += [_string(spec.name, "a tensor name"),
                   struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, int(qtype), offset)]
        offset = _align(offset + nbytes, alignment)
    header = b"".join(header)

    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(bytes(_align(len(header), alignment) - len(header)))
            for i, (spec, qtype, nbytes) in enumerate(checked):
                if progress is not None:
                    progress(i, len(checked), spec)
                data = _tensor_bytes(spec, qtype, nbytes)
                f.write(data.data)
                f.write(bytes(_align(nbytes, alignment) - nbytes))
                del data
            size = f.tell()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return size


# ----------------------------------------------------------------------------------------------------- read

def read_metadata(path) -> dict[str, GGUFValue]:
    """Every metadata key of the GGUF file ``path`` with its exact type, in file order (float32 values are the
    exact float32, so writing them back reproduces the bits). Any problem with the file raises
    :class:`~fastlm.errors.ModelFormatError`."""
    return dict(GGUFFile(path).typed_metadata)

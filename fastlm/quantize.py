"""Quantizing tensors and whole GGUF files to F32, F16, Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1, like llama.cpp's
``llama-quantize``.

:func:`quantize` encodes a float array in a ggml block format with the compiled kernel
:func:`fastlm._quantize.quantize`, whose bytes equal ggml's reference quantizers (and the ``gguf`` package's
``gguf.quants.quantize``) bit for bit. :func:`quantize_file` re-encodes every weight matrix of a GGUF file:

* each tensor is decoded to float32 (whatever its type), then 2-D tensors whose rows are whole blocks of the
  target type are encoded in it; every other tensor (the 1-D norm weights) is stored as F32;
* the output projection (``output``, or ``token_embd`` when the model ties them) keeps 8 bits (Q8_0) in the
  4- and 5-bit types, as llama.cpp keeps it above them (Q6_K there): every logit goes through it, and at 4 bits it
  alone raises SmolLM2-135M's perplexity by several percent;
* every metadata key is copied with its exact GGUF type (tokenizer arrays included), and
  ``general.file_type`` is set to llama.cpp's ``LLAMA_FTYPE`` for the target (:data:`FILE_TYPES`).

Re-quantizing an already-quantized file adds the new rounding to the old: Q4_1 -> Q8_0 gives a Q8_0 file whose
values are those of the Q4_1 weights, not of the original float weights.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import _quantize
from .errors import FastLMTypeError, FastLMValueError, ModelFormatError
from .weights.gguf import GGUFFile
from .weights.gguf_writer import GGUFValue, TensorSpec, ValueType, write_gguf
from .weights.quant import BLOCK_SIZES, GGMLType, tensor_nbytes

__all__ = ["QUANT_TYPES", "FILE_TYPES", "quantize", "quantize_file", "QuantizeSummary"]

# The types fastlm writes, by name: the compiled formats' table's rows with a quantizer.
QUANT_TYPES: dict[str, GGMLType] = {name: GGMLType[name] for name in _quantize.NAMES.values()}
# llama.cpp's LLAMA_FTYPE (general.file_type) of a file whose weight matrices are of each type.
FILE_TYPES: dict[str, int] = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}


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


@dataclass
class QuantizeSummary:
    """What :func:`quantize_file` did: the target type, how many tensors of each type it wrote, the file sizes
    in bytes and the time taken in seconds."""

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


# Types whose output projection is stored as Q8_0 instead.
_OUTPUT_AT_8_BITS = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1)


def target_type(shape: tuple[int, ...], qtype, output_projection: bool = False) -> GGMLType:
    """The type :func:`quantize_file` stores a tensor of numpy ``shape`` in: ``qtype`` for a matrix whose rows
    are whole blocks of it (Q8_0 for the ``output_projection`` of a 4-bit type), F32 for everything else
    (norm weights)."""
    qtype = _qtype(qtype)
    if output_projection and qtype in _OUTPUT_AT_8_BITS:
        qtype = GGMLType.Q8_0
    if len(shape) == 2 and shape[-1] % BLOCK_SIZES[qtype][0] == 0:
        return qtype
    return GGMLType.F32


def quantize_file(src, dst, qtype, progress: Callable[[int, int, str, str, str], None] | None = None
                  ) -> QuantizeSummary:
    """Write the GGUF file ``src`` re-encoded as ``qtype`` (see the module doc) to ``dst``.

    ``progress(index, total, name, from_type, to_type)`` is called as each tensor is written. ``dst`` appears
    only once complete (an existing file there is replaced). Raises :class:`~fastlm.errors.ModelFormatError`
    for an unreadable source and :class:`~fastlm.errors.FastLMValueError` for a bad type or destination.
    """
    start = time.perf_counter()
    qtype = _qtype(qtype)
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
    metadata["general.file_type"] = GGUFValue(ValueType.UINT32, FILE_TYPES[qtype.name])

    summary = QuantizeSummary(src, dst, qtype.name, len(gguf.tensors), bytes_in=src.stat().st_size)
    specs = []
    output = "output.weight" if "output.weight" in gguf.tensors else "token_embd.weight"
    for info in gguf.tensors.values():
        to = target_type(info.shape, qtype, output_projection=info.name == output)
        summary.tensor_types[to.name] = summary.tensor_types.get(to.name, 0) + 1

        def encode(name=info.name, to=to):
            return quantize(gguf.tensor(name), to)

        specs.append(TensorSpec(info.name, info.shape, to, encode))

    report = None
    if progress is not None:
        def report(i, n, spec):
            progress(i, n, spec.name, gguf.tensors[spec.name].type_name, GGMLType(spec.qtype).name)

    summary.bytes_out = write_gguf(dst, metadata, specs, progress=report)
    summary.seconds = time.perf_counter() - start
    return summary

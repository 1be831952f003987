"""Malformed safetensors files, made from a valid one: every way the format's few fields can lie.

:func:`malformed_safetensors` returns ``{case name: file bytes}``; fastlm must reject each with a
:class:`~fastlm.errors.ModelFormatError` (``tests/test_fuzz_regressions.py``), and the safetensors fuzzer
starts from them.
"""
from __future__ import annotations

import json
import struct

_HUGE = [0, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63, 2 ** 64 - 1]


def split(valid: bytes) -> tuple[dict, bytes]:
    """(header as a dict, data section) of a safetensors file."""
    n = struct.unpack_from("<Q", valid)[0]
    return json.loads(valid[8:8 + n]), valid[8 + n:]


def join(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    """A file of ``header`` (a dict, or raw header bytes) and ``data``; ``length`` overrides the header length."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _edited(header: dict, name: str, **fields) -> dict:
    out = json.loads(json.dumps(header))
    out[name].update(fields)
    return out


def malformed_safetensors(valid: bytes) -> dict[str, bytes]:
    header, data = split(valid)
    names = [n for n in header if n != "__metadata__"]
    first, second, last = names[0], names[1], names[-1]
    text = json.dumps(header).encode()
    b0, e0 = header[first]["data_offsets"]
    b1, e1 = header[second]["data_offsets"]
    cases: dict[str, bytes] = {
        # truncation and the header length
        "empty": b"",
        "length-only-partly": valid[:5],
        "length-only": valid[:8],
        "header-cut": valid[:8 + len(text) // 2],
        "data-cut": valid[:-1],
        "header-length-zero": join(b"", data, 0),
        **{f"header-length-{n}": join(text, data, n) for n in _HUGE[1:]},
        "header-length-past-json": join(text, data, len(text) + 8),
        # the header's JSON
        "header-not-utf8": join(b'{"\xff\xfe": 1}', data),
        "header-not-json": join(b"{" + text[1:-1], data),
        "header-a-list": join(b"[" + text + b"]", data),
        "header-a-number": join(b"12345678", data),
        "header-deeply-nested": join(b"[" * 100_000 + b"]" * 100_000, data),
        "header-huge-integer": join(text.replace(b"[0,", b"[" + b"9" * 5000 + b",", 1), data),
        "entry-not-an-object": join(json.dumps({**header, first: [1, 2]}).encode(), data),
        "entry-missing-dtype": join(json.dumps({**header, first: {"shape": [1], "data_offsets": [0, 4]}}).encode(),
                                    data),
        # lying offsets
        "offsets-reversed": join(_edited(header, first, data_offsets=[e0, b0]), data),
        "offsets-negative": join(_edited(header, first, data_offsets=[-4, e0]), data),
        "offsets-past-the-end": join(_edited(header, last, data_offsets=[len(data), len(data) + 4]), data),
        **{f"offsets-end-{n}": join(_edited(header, last, data_offsets=[0, n]), data) for n in _HUGE[1:]},
        "offsets-floats": join(_edited(header, first, data_offsets=[0.0, float(e0)]), data),
        "offsets-strings": join(_edited(header, first, data_offsets=["0", str(e0)]), data),
        "offsets-three": join(_edited(header, first, data_offsets=[b0, e0, e0]), data),
        "offsets-span-too-short": join(_edited(header, first, data_offsets=[b0, e0 - 4]), data),
        # overlapping tensors: one region read as two tensors (a small file posing as a big model)
        "overlap-same-bytes": join(_edited(header, second, data_offsets=[b0, b0 + (e1 - b1)]), data),
        "overlap-partly": join(_edited(header, second, data_offsets=[b1 - 4, e1 - 4]), data),
        # absurd shapes
        "shape-huge": join(_edited(header, first, shape=[2 ** 62, 2 ** 62]), data),
        "shape-negative": join(_edited(header, first, shape=[-1, 4]), data),
        "shape-float": join(_edited(header, first, shape=[2.0, 4]), data),
        "shape-bool": join(_edited(header, first, shape=[True]), data),
        "shape-not-a-list": join(_edited(header, first, shape=7), data),
        "shape-long": join(_edited(header, first, shape=[1] * 10_000), data),
        "shape-zero": join(_edited(header, first, shape=[0, 32]), data),
        # wrong dtypes
        **{f"dtype-{d}": join(_edited(header, first, dtype=d), data)
           for d in ("F64", "I8", "U8", "BOOL", "F8_E4M3", "f32", "")},
        "dtype-not-a-string": join(_edited(header, first, dtype=4), data),
        "dtype-null": join(_edited(header, first, dtype=None), data),
    }
    return cases

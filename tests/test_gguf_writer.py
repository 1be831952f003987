"""The GGUF writer: every value type and tensor layout round-trips through fastlm's reader and the gguf
package's; files appear atomically; bad input raises before anything is written."""
import os

import numpy as np
import pytest

from fastlm.errors import FastLMTypeError, FastLMValueError, ModelFormatError
from fastlm.quantize import quantize
from fastlm.weights import GGUFFile
from fastlm.weights.gguf_writer import GGUFValue, TensorSpec, ValueType, infer_value, read_metadata, write_gguf

gguf = pytest.importorskip("gguf")

V = ValueType

# One key per value type, with values at the edges of each range, and arrays of each kind.
METADATA = {
    "general.architecture": "llama",
    "u8": GGUFValue(V.UINT8, 255), "i8": GGUFValue(V.INT8, -128),
    "u16": GGUFValue(V.UINT16, 65535), "i16": GGUFValue(V.INT16, -32768),
    "u32": GGUFValue(V.UINT32, 2 ** 32 - 1), "i32": GGUFValue(V.INT32, -2 ** 31),
    "u64": GGUFValue(V.UINT64, 2 ** 64 - 1), "i64": GGUFValue(V.INT64, -2 ** 63),
    "f32": GGUFValue(V.FLOAT32, 1e-5), "f64": GGUFValue(V.FLOAT64, 0.1),
    "f32.tiny": GGUFValue(V.FLOAT32, float(np.float32(1.4e-45))),
    "true": True, "false": GGUFValue(V.BOOL, False),
    "str": "héllo, wörld ✓ 🦙", "str.empty": "", "str.bad_utf8": b"\xff\xfeok".decode("utf-8", "surrogateescape"),
    "arr.str": ["a", "", "Ġthe", "<|im_end|>", "\n"],
    "arr.i32": [1, -2, 3], "arr.u8": GGUFValue(V.ARRAY, [0, 1, 255], V.UINT8),
    "arr.i64": GGUFValue(V.ARRAY, [-2 ** 63, 2 ** 63 - 1], V.INT64),
    "arr.f32": GGUFValue(V.ARRAY, [0.5, -1e-5, 3.0e38], V.FLOAT32),
    "arr.f64": GGUFValue(V.ARRAY, [0.1, -2.5], V.FLOAT64),
    "arr.bool": [True, False, True], "arr.empty": GGUFValue(V.ARRAY, [], V.STRING),
    "arr.nested": GGUFValue(V.ARRAY, [GGUFValue(V.ARRAY, [1, 2], V.INT16), GGUFValue(V.ARRAY, ["x"], V.STRING)],
                            V.ARRAY),
}

# What GGUFFile.metadata holds for each: plain values (float32 as the shortest decimal of the float32).
PLAIN = {k: (v.value if isinstance(v, GGUFValue) else v) for k, v in METADATA.items()}
PLAIN["arr.nested"] = [[1, 2], ["x"]]
PLAIN["f32.tiny"] = 1e-45
PLAIN["arr.f32"] = [0.5, float(np.float32(-1e-5)), float(np.float32(3.0e38))]


def tensors(rng):
    return [
        TensorSpec("f32.1d", (7,), "F32", rng.standard_normal(7).astype(np.float32)),
        TensorSpec("f32.3d", (2, 3, 5), 0, rng.standard_normal((2, 3, 5)).astype(np.float32)),
        TensorSpec("f16", (3, 4), "F16", rng.standard_normal((3, 4)).astype(np.float16)),
        TensorSpec("q8_0", (4, 64), "Q8_0", quantize(rng.standard_normal((4, 64)), "Q8_0")),
        TensorSpec("q4_0.lazy", (2, 32), "Q4_0", lambda: quantize(np.arange(64.0).reshape(2, 32), "Q4_0")),
        TensorSpec("q4_1.4d", (1, 2, 1, 32), "Q4_1", quantize(rng.standard_normal((1, 2, 1, 32)), "Q4_1")),
    ]


@pytest.mark.parametrize("alignment", [None, 64, 1])
def test_round_trip_through_fastlm_and_gguf_readers(tmp_path, rng, alignment):
    path = tmp_path / "all.gguf"
    metadata = dict(METADATA)
    if alignment:
        metadata["general.alignment"] = GGUFValue(V.UINT32, alignment)
    specs = tensors(rng)
    size = write_gguf(path, metadata, specs)
    assert size == path.stat().st_size and oct(path.stat().st_mode & 0o777) != "0o600"

    ours = GGUFFile(path)
    expected = dict(PLAIN, **({"general.alignment": alignment} if alignment else {}))
    assert ours.metadata == expected and list(ours.metadata) == list(expected)
    assert ours.alignment == (alignment or 32) and ours.data_offset % ours.alignment == 0
    typed = read_metadata(path)
    assert {k: (v.type, v.item_type) for k, v in typed.items()} == \
           {k: (infer_value(v).type, infer_value(v).item_type) for k, v in metadata.items()}
    # read back and written again, the file is the same byte for byte (float32 values exact)
    write_gguf(tmp_path / "copy.gguf", typed, specs)
    assert (tmp_path / "copy.gguf").read_bytes() == path.read_bytes()
    for spec in specs:
        info = ours.tensors[spec.name]
        ids = {"F32": 0, "F16": 1, "Q8_0": 8, "Q4_0": 2, "Q4_1": 3}
        assert info.shape == spec.shape and info.qtype == ids.get(spec.qtype, spec.qtype)
        data = spec.data() if callable(spec.data) else spec.data
        raw = np.frombuffer(ours._map, np.uint8, info.nbytes, info.offset)
        np.testing.assert_array_equal(raw, data.view(np.uint8).reshape(-1))

    theirs = gguf.GGUFReader(path)
    for key, value in metadata.items():
        field = theirs.fields[key]
        typed = infer_value(value)
        assert field.types[0] == typed.type
        if typed.type == V.ARRAY and typed.value:         # (the gguf package lists no item type when empty)
            assert field.types[1] == typed.item_type
        if key not in ("str.bad_utf8", "arr.nested"):
            got = field.contents()
            assert (got == pytest.approx(expected[key]) if "f32" in key else got == expected[key]), key
    for spec, t in zip(specs, theirs.tensors):
        data = spec.data() if callable(spec.data) else spec.data
        assert t.name == spec.name and list(t.shape) == list(spec.shape[::-1])
        assert int(t.tensor_type) == ours.tensors[spec.name].qtype
        assert t.data_offset == ours.tensors[spec.name].offset
        np.testing.assert_array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), data.view(np.uint8).reshape(-1))


def test_infer_value():
    assert infer_value(True) == GGUFValue(V.BOOL, True)
    assert infer_value(7) == GGUFValue(V.INT32, 7)
    assert infer_value(2 ** 40) == GGUFValue(V.INT64, 2 ** 40)
    assert infer_value(2 ** 64 - 1) == GGUFValue(V.UINT64, 2 ** 64 - 1)
    assert infer_value(0.25) == GGUFValue(V.FLOAT32, 0.25)
    assert infer_value("s") == GGUFValue(V.STRING, "s")
    assert infer_value([1, 2 ** 40]) == GGUFValue(V.ARRAY, [1, 2 ** 40], V.INT64)
    assert infer_value(np.array([1.5, 2.5])) == GGUFValue(V.ARRAY, [1.5, 2.5], V.FLOAT32)
    assert infer_value([[1], [2]]).item_type == V.ARRAY
    with pytest.raises(FastLMTypeError, match="one type"):
        infer_value([1, "a"])
    with pytest.raises(FastLMTypeError, match="no GGUF value type"):
        infer_value({"a": 1})
    with pytest.raises(FastLMValueError, match="64 bits"):
        infer_value(2 ** 64)
    with pytest.raises(FastLMValueError, match="item_type"):
        GGUFValue(V.ARRAY, [])


@pytest.mark.parametrize("metadata, tensor_list, error, match", [
    ({"k": GGUFValue(V.UINT8, 256)}, [], FastLMValueError, "outside the range of UINT8"),
    ({"k": GGUFValue(V.INT32, True)}, [], FastLMTypeError, "bool"),
    ({"k": GGUFValue(V.UINT32, "7")}, [], FastLMTypeError, "UINT32"),
    ({"k": GGUFValue(V.BOOL, 1)}, [], FastLMTypeError, "BOOL"),
    ({"k": GGUFValue(V.ARRAY, [1, -1], V.UINT16)}, [], FastLMValueError, "outside the range of UINT16"),
    ({"k": GGUFValue(V.ARRAY, [1, 2.5], V.INT32)}, [], FastLMTypeError, "float"),
    ({"k": GGUFValue(V.ARRAY, [1], V.STRING)}, [], FastLMTypeError, "must be a str"),
    ({"general.alignment": GGUFValue(V.UINT32, 24)}, [], FastLMValueError, "power of two"),
    ({1: "a"}, [], FastLMTypeError, "keys must be str"),
    ({}, [TensorSpec("a", (4,), "F32", np.zeros(4, np.float32))] * 2, FastLMValueError, "duplicate tensor"),
    ({}, [TensorSpec("a", (0, 4), "F32", np.zeros(0, np.float32))], FastLMValueError, "positive"),
    ({}, [TensorSpec("a", (1, 1, 1, 1, 1), "F32", np.zeros(1, np.float32))], FastLMValueError, "1 to 4"),
    ({}, [TensorSpec("a", (2, 48), "Q8_0", np.zeros(102, np.uint8))], FastLMValueError, "32-element blocks"),
    ({}, [TensorSpec("a", (32,), "Q8_K", np.zeros(22, np.uint8))], FastLMValueError, "unsupported type"),
    ({}, [TensorSpec("a", (32,), "Q8_0", np.zeros(33, np.uint8))], FastLMValueError, "takes 34 bytes, got 33"),
    ({}, [TensorSpec("a", (4,), "F32", np.zeros(4, np.float64))], FastLMTypeError, "float32"),
    ({}, [TensorSpec("a", (4,), "F32", np.zeros(5, np.float32))], FastLMValueError, "shape"),
    ({}, [TensorSpec("a", (4,), "F32", [0.0] * 4)], FastLMTypeError, "numpy array"),
])
def test_bad_input_raises_and_writes_nothing(tmp_path, metadata, tensor_list, error, match):
    path = tmp_path / "out.gguf"
    path.write_bytes(b"previous")
    with pytest.raises(error, match=match):
        write_gguf(path, metadata, tensor_list)
    assert os.listdir(tmp_path) == ["out.gguf"] and path.read_bytes() == b"previous"


def test_a_failing_lazy_tensor_leaves_no_file(tmp_path):
    def boom():
        raise RuntimeError("disk on fire")
    specs = [TensorSpec("ok", (32,), "Q8_0", np.zeros(34, np.uint8)), TensorSpec("bad", (4,), "F32", boom)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_gguf(tmp_path / "out.gguf", {"a": 1}, specs)
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_gguf(tmp_path / "nope" / "out.gguf", {"a": 1})


def test_empty_file_and_progress(tmp_path):
    path = tmp_path / "empty.gguf"
    write_gguf(path, {})
    f = GGUFFile(path)
    assert f.metadata == {} and f.tensors == {} and f.version == 3
    seen = []
    write_gguf(path, {}, [TensorSpec(f"t{i}", (2,), "F32", np.ones(2, np.float32)) for i in range(3)],
               progress=lambda i, n, spec: seen.append((i, n, spec.name)))
    assert seen == [(0, 3, "t0"), (1, 3, "t1"), (2, 3, "t2")]
    np.testing.assert_array_equal(GGUFFile(path).tensor("t2"), [1, 1])


def test_read_metadata_checks_the_file(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        read_metadata(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + (1).to_bytes(8, "little") * 2 + b"\x05")
    with pytest.raises(ModelFormatError, match="bad.gguf"):
        read_metadata(bad)

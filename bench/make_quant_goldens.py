"""Record llama.cpp's quantization of the golden inputs (tests/quant_goldens.py) as the test vectors of
tests/test_quantize.py, which then checks fastlm's bytes against them without llama.cpp:

    python bench/make_quant_goldens.py [--check]

Needs llama-cpp-python (0.3.36 was used: its vendored llama.cpp, ggml 0.25.3; built by bench/install_peers.sh's
flags), whose ``llama_model_quantize`` is llama-quantize's library call. Writes

* ``tests/data/quant_goldens.npz``: for each tensor type fastlm writes, llama.cpp's bytes of the small matrix
  (quant_goldens.small_matrix(): the tricky rows and four plain ones) and the SHA-256 of its bytes of the large
  one (256 x 1024), each quantized with ``pure`` (every matrix in the one type);
* ``tests/data/quant_mixes.json``: for each golden model and each file type fastlm writes (and a few ``pure``
  ones), llama.cpp's type of every tensor and the SHA-256 of all the tensors' bytes, in the model's order.

``--check`` compares fastlm with llama.cpp directly on the same inputs instead (no files written) and prints
the differences; ``--real Q4_K_M,Q6_K,...`` does so on the real model (SmolLM2-135M's shipped Q4_1 file, which
llama.cpp re-quantizes with ``allow_requantize``), tensor by tensor.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import quant_goldens as qg  # noqa: E402

from fastlm.quantize import FILE_TYPES, QUANT_TYPES  # noqa: E402
from fastlm.weights import GGUFFile  # noqa: E402

# The file type whose pure form is all matrices in each tensor type.
PURE_FILE_TYPE = {"F16": "F16", "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
                  "Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K",
                  "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS"}
PURE_MIXES = ["Q4_K_M", "Q3_K_S", "Q6_K"]          # mixes also recorded with pure=True


def llama_quantize(src: Path, dst: Path, file_type: str, pure: bool, requantize: bool = False) -> None:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type]
    params.pure = pure
    params.allow_requantize = requantize
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed on {src} -> {file_type}")


def tensor_bytes(path: Path) -> dict[str, tuple[str, bytes]]:
    f = GGUFFile(path)
    return {name: (info.type_name, bytes(f._raw(info))) for name, info in f.tensors.items()}


def check_real(file_types: list[str]) -> int:
    """fastlm's and llama.cpp's quantization of the real model, tensor by tensor: the number of differences."""
    import time

    from fastlm.quantize import quantize_file
    from fastlm.weights import fetch_default_model
    src, bad = fetch_default_model(), 0
    with tempfile.TemporaryDirectory() as tmp:
        for file_type in file_types:
            start = time.perf_counter()
            llama_quantize(src, Path(tmp) / "theirs.gguf", file_type, pure=False, requantize=True)
            middle = time.perf_counter()
            quantize_file(src, Path(tmp) / "ours.gguf", file_type)
            end = time.perf_counter()
            theirs, ours = tensor_bytes(Path(tmp) / "theirs.gguf"), tensor_bytes(Path(tmp) / "ours.gguf")
            differ = [n for n in theirs if theirs[n] != ours.get(n)]
            bad += len(differ)
            types = sorted({t for t, _ in ours.values()})
            print(f"{file_type:7} {len(ours)} tensors ({', '.join(types)}): {len(differ)} differ {differ[:3]}; "
                  f"llama.cpp {middle - start:.0f} s, fastlm {end - middle:.0f} s", flush=True)
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with fastlm now, write nothing")
    parser.add_argument("--real", default=None, metavar="TYPES", help="compare on the real model, these file types")
    args = parser.parse_args(argv)
    import llama_cpp
    llama_cpp.llama_backend_init()
    if args.real:
        bad = check_real([t.strip().upper() for t in args.real.split(",") if t.strip()])
        print(f"{bad} differences")
        return 1 if bad else 0
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. every tensor type on the small and the large matrix
        src = tmp / "pure.gguf"
        inputs = {"blk.0.ffn_up.weight": qg.small_matrix(), "blk.0.ffn_gate.weight": qg.large_matrix()}
        qg.write_model(src, dict(qg.MODELS["deep"], layers=1), inputs)
        vectors: dict[str, np.ndarray] = {}
        for qtype, file_type in PURE_FILE_TYPE.items():
            llama_quantize(src, tmp / "out.gguf", file_type, pure=True)
            got = tensor_bytes(tmp / "out.gguf")
            assert all(t == qtype for t, _ in got.values()), (qtype, got.keys())
            small, large = got["blk.0.ffn_up.weight"][1], got["blk.0.ffn_gate.weight"][1]
            vectors[f"{qtype}.small"] = np.frombuffer(small, np.uint8)
            vectors[f"{qtype}.large_sha256"] = np.frombuffer(hashlib.sha256(large).digest(), np.uint8)
            if args.check:
                from fastlm.quantize import quantize
                for name, x in inputs.items():
                    ours = quantize(x, qtype).tobytes()
                    same = ours == got[name][1]
                    bad += not same
                    print(f"{qtype:7} {name:24} {'same' if same else 'DIFFERENT'}")
        # 2. the mixes' choices on the golden models
        mixes: dict[str, dict] = {}
        for model, spec in qg.MODELS.items():
            src = tmp / f"{model}.gguf"
            qg.write_model(src, spec)
            order = list(qg.model_tensors(spec))
            mixes[model] = {}
            for file_type, pure in [(f, False) for f in FILE_TYPES] + [(f, True) for f in PURE_MIXES]:
                llama_quantize(src, tmp / "out.gguf", file_type, pure)
                got = tensor_bytes(tmp / "out.gguf")
                meta = GGUFFile(tmp / "out.gguf").metadata
                digest = hashlib.sha256(b"".join(got[n][1] for n in order)).hexdigest()
                key = file_type + (" pure" if pure else "")
                mixes[model][key] = {"file_type": meta["general.file_type"],
                                     "types": " ".join(got[n][0] for n in order), "sha256": digest}
                if args.check:
                    from fastlm.quantize import quantize_file
                    summary = quantize_file(src, tmp / "ours.gguf", file_type, pure=pure)
                    ours = tensor_bytes(summary.dst)
                    for n in order:
                        if ours[n] != got[n]:
                            bad += 1
                            print(f"{model} {key}: {n} fastlm {ours[n][0]}, llama.cpp {got[n][0]}"
                                  f"{'' if ours[n][0] != got[n][0] else ' (bytes differ)'}")
                    print(f"{model:5} {key:12} checked")
    if args.check:
        print(f"{bad} differences")
        return 1 if bad else 0
    assert set(PURE_FILE_TYPE) == set(QUANT_TYPES) - {"F32"}
    data = ROOT / "tests" / "data"
    np.savez_compressed(data / "quant_goldens.npz", **vectors)
    header = {"llama_cpp_python": llama_cpp.__version__, "models": qg.MODELS,
              "tensor order": "quant_goldens.model_tensors()"}
    (data / "quant_mixes.json").write_text(json.dumps({"about": header, "mixes": mixes}, indent=1) + "\n")
    print(f"wrote {data / 'quant_goldens.npz'} and {data / 'quant_mixes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

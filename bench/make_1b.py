"""Write the Llama-3.2-1B-shaped test files of the speed benchmarks: random weights, every type.

    python bench/make_1b.py OUTDIR [--types F16,Q8_0,Q4_0,Q4_K,...] [--layers 16]

The shape is Llama-3.2-1B's with SmolLM2's vocabulary (d_model 2048, 16 layers, 32 heads, 8 KV heads, d_ff 8192,
vocab 49152, tied output), so the tokenizer is copied from the SmolLM2 file fastlm fetches and llama.cpp can load
the files too. Speed does not depend on the values:

* ``1b.F16.gguf``: matrices N(0, 1 / k) in F16, norms 1 (F32), written by fastlm's GGUF writer;
* every other type: ``fastlm quantize`` of the F16 file, which writes llama-quantize's file types tensor for
  tensor (its mixes, and the tied embedding / output projection at Q6_K).
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from fastlm.quantize import FILE_TYPES, quantize_file
from fastlm.weights import GGUFFile
from fastlm.weights.gguf_writer import GGUFValue, TensorSpec, ValueType, write_gguf
from fastlm.weights.hub import fetch_default_model
from fastlm.weights.quant import GGMLType

SHAPE = dict(d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, d_ff=8192, vocab_size=49152)
# The file types written (llama-quantize's names; Q4_K_M etc. are its mixes), each quantized from 1b.F16.gguf.
TYPES = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL",
         "IQ4_XS"]


def shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """GGUF tensor names -> numpy shapes (rows, columns) of the 1B-shaped model."""
    d, ff, hd = SHAPE["d_model"], SHAPE["d_ff"], SHAPE["d_model"] // SHAPE["num_heads"]
    kv = SHAPE["num_kv_heads"] * hd
    out = {"token_embd.weight": (SHAPE["vocab_size"], d)}
    for i in range(layers):
        out.update({f"blk.{i}.attn_norm.weight": (d,), f"blk.{i}.attn_q.weight": (d, d),
                    f"blk.{i}.attn_k.weight": (kv, d), f"blk.{i}.attn_v.weight": (kv, d),
                    f"blk.{i}.attn_output.weight": (d, d), f"blk.{i}.ffn_norm.weight": (d,),
                    f"blk.{i}.ffn_gate.weight": (ff, d), f"blk.{i}.ffn_up.weight": (ff, d),
                    f"blk.{i}.ffn_down.weight": (d, ff)})
    out["output_norm.weight"] = (d,)
    return out


def metadata(layers: int, file_type: int) -> dict:
    """llama-architecture keys of the shape, SmolLM2's tokenizer keys (same vocabulary)."""
    u32 = lambda v: GGUFValue(ValueType.UINT32, v)                                   # noqa: E731
    meta = {"general.architecture": "llama", "general.name": "fastlm-1b-shaped-random",
            "general.file_type": u32(file_type),
            "llama.context_length": u32(4096), "llama.embedding_length": u32(SHAPE["d_model"]),
            "llama.block_count": u32(layers), "llama.feed_forward_length": u32(SHAPE["d_ff"]),
            "llama.attention.head_count": u32(SHAPE["num_heads"]),
            "llama.attention.head_count_kv": u32(SHAPE["num_kv_heads"]),
            "llama.rope.dimension_count": u32(SHAPE["d_model"] // SHAPE["num_heads"]),
            "llama.rope.freq_base": GGUFValue(ValueType.FLOAT32, 500000.0),
            "llama.attention.layer_norm_rms_epsilon": GGUFValue(ValueType.FLOAT32, 1e-5),
            "general.quantization_version": u32(2)}
    smollm2 = GGUFFile(fetch_default_model())
    meta.update({k: v for k, v in smollm2.typed_metadata.items() if k.startswith("tokenizer.")})
    return meta


def write_f16(path: Path, layers: int, seed: int = 0) -> None:
    def tensor(name, shape):
        def make():
            if len(shape) == 1:
                return np.ones(shape, np.float32)
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            return (rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(shape[1]))).astype(np.float16)
        return TensorSpec(name, shape, GGMLType.F32 if len(shape) == 1 else GGMLType.F16, make)
    write_gguf(path, metadata(layers, FILE_TYPES["F16"]), [tensor(n, s) for n, s in shapes(layers).items()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--types", default=",".join(TYPES), help=f"comma-separated, of {','.join(TYPES)}")
    parser.add_argument("--layers", type=int, default=SHAPE["num_layers"], help="fewer for a quick look")
    args = parser.parse_args(argv)
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        parser.error(f"unknown types {unknown}; choose from {TYPES}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    f16 = args.outdir / "1b.F16.gguf"
    for qtype in types:
        path = args.outdir / f"1b.{qtype}.gguf"
        start = time.perf_counter()
        if not f16.is_file():
            write_f16(f16, args.layers)
        if qtype != "F16":
            quantize_file(f16, path, qtype)
        print(f"{path}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

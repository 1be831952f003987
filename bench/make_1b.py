"""Write the Llama-3.2-1B-shaped test files of the speed benchmarks: random weights, every type.

    python bench/make_1b.py OUTDIR [--types F16,Q8_0,Q4_0,Q4_K,...] [--layers 16]

The shape is Llama-3.2-1B's with SmolLM2's vocabulary (d_model 2048, 16 layers, 32 heads, 8 KV heads, d_ff 8192,
vocab 49152, tied output), so the tokenizer is copied from the SmolLM2 file fastlm fetches and llama.cpp can load
the files too. Speed does not depend on the values:

* ``1b.F16.gguf``: matrices N(0, 1 / k) in F16, norms 1 (F32), written by fastlm's GGUF writer;
* the types fastlm's quantizer writes (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): ``fastlm quantize`` of the F16 file
  (output projection = the tied embedding at Q8_0 in the 4/5-bit types, as `fastlm quantize` does);
* the others (Q2_K ... Q6_K, IQ4_NL, IQ4_XS): random blocks with small fp16 scales (fastlm does not quantize
  to them yet), the embedding / output projection in Q6_K as llama.cpp's K-quant mixes keep it.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from fastlm.quantize import FILE_TYPES, QUANT_TYPES, quantize_file
from fastlm.weights import GGUFFile
from fastlm.weights.gguf_writer import GGUFValue, TensorSpec, ValueType, write_gguf
from fastlm.weights.hub import fetch_default_model
from fastlm.weights.quant import BLOCK_SIZES, GGMLType

SHAPE = dict(d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, d_ff=8192, vocab_size=49152)
# fp16 scales of the random-block types: (byte offsets, magnitude), |x| about 0.02 like the F16 weights.
RANDOM_SCALES = {"Q2_K": ([80, 82], 2e-3), "Q3_K": ([108], 1e-3), "Q4_K": ([0, 2], 5e-4), "Q5_K": ([0, 2], 2e-4),
                 "Q6_K": ([208], 1e-4), "IQ4_NL": ([0], 2e-4), "IQ4_XS": ([0], 1e-5)}
# llama.cpp's LLAMA_FTYPE of a file mostly of each random-block type (its *_M mixes where there are some).
RANDOM_FILE_TYPES = {"Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30}
TYPES = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", *RANDOM_SCALES]


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


def write_random_blocks(path: Path, qtype: str, layers: int, seed: int = 0) -> None:
    offsets, scale = RANDOM_SCALES[qtype]

    def tensor(name, shape):
        t = GGMLType.F32 if len(shape) == 1 else GGMLType.Q6_K if name == "token_embd.weight" else GGMLType[qtype]

        def make():
            if t == GGMLType.F32:
                return np.ones(shape, np.float32)
            elements, nbytes = BLOCK_SIZES[t]
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            blocks = rng.integers(0, 256, size=(shape[0] * shape[1] // elements, nbytes), dtype=np.uint8)
            offs, sc = RANDOM_SCALES[t.name]
            for off in offs:
                d = (rng.uniform(0.5, 1.0, len(blocks)) * sc).astype(np.float16)
                blocks[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
            return blocks.reshape(-1)
        return TensorSpec(name, shape, t, make)
    write_gguf(path, metadata(layers, RANDOM_FILE_TYPES[qtype]), [tensor(n, s) for n, s in shapes(layers).items()])


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
        if qtype == "F16" or (qtype in QUANT_TYPES and not f16.is_file()):
            if not f16.is_file():
                write_f16(f16, args.layers)
        if qtype in QUANT_TYPES and qtype != "F16":
            quantize_file(f16, path, qtype)
        elif qtype in RANDOM_SCALES:
            write_random_blocks(path, qtype, args.layers)
        print(f"{path}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

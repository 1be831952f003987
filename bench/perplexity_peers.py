"""fastlm's perplexity beside llama.cpp's on the same files in the same run, with fastlm's teacher-forced top-1
agreement against each file's own float32 path (issue 11's accuracy acceptance).

    python bench/perplexity_peers.py [-m SOURCE.gguf] [-f TEXT] [-c 512] [--chunks 4] [-t 2]
                                     [--types F16,Q4_K_M,...] [--out-dir DIR]

The source (default: the shipped SmolLM2-135M-Instruct Q4_1, fetched as ``fastlm.load()`` does) is written in
each file type by fastlm's quantizer (``fastlm quantize``, byte-identical to llama-quantize); a quantized source
is decoded to float32 tensor by tensor first, as the tests' ``smollm2_formats`` do. Each file is then scored
three times on the same token ids, the same chunks and the same positions, all through
:func:`fastlm.perplexity.perplexity` (llama-perplexity's chunking: chunks of ``n_ctx`` tokens from position 0,
the second half scored, BOS in place of each chunk's first token when the vocabulary adds one):

* fastlm on the file as stored (its quantized kernels),
* fastlm on the file loaded with ``dequantize=True`` (the float32 path the top-1 agreement is measured against),
* llama.cpp through llama-cpp-python (the optional ``peers`` extra), one chunk per decode from an empty cache,
  with llama-perplexity's CPU defaults (flash attention on: its ``auto``; F16 KV cache).

At n_ctx >= 96 fastlm's quantized projections run the integer GEMM on activations rounded to 16 bits (15 for
the 256-element formats), as its decode kernels do (see csrc/qlinear.pyx), so on these chunks the stored-file path differs from the float32 path
by that rounding (tests/test_quantized_model.py holds the decode kernels' teacher-forced top-1); llama.cpp
rounds the activations to 8 bits. A type is marked, and the exit status is 1, where fastlm's perplexity is above
llama.cpp's by more than ``--max-worse`` percent or the top-1 agreement is under ``--min-top1`` percent.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

import fastlm
from fastlm.perplexity import perplexity
from fastlm.quantize import FILE_TYPE_ALIASES, FILE_TYPES, quantize_file
from fastlm.weights import fetch_default_model

TYPES = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
         "Q3_K_M", "Q4_K_M", "Q5_K_M")
# Q3_K, Q4_K and Q5_K are llama-quantize's names of the _M mixes: the same file, measured once, its row repeated.
# Long, plain English prose that is on any Debian-based machine (package base-files); the repo's own text
# (~1.1k tokens) is the fallback.
DEFAULT_TEXTS = (Path("/usr/share/common-licenses/GPL-3"), Path(__file__).parents[1] / "tests/data/english.txt")

Forward = Callable[[np.ndarray], np.ndarray]


class Scored:
    """A model for :func:`perplexity` around ``forward`` that keeps the argmax of the logits at the scored
    positions (``n_ctx // 2 .. n_ctx - 2`` of each chunk), for the top-1 agreement."""

    def __init__(self, forward: Forward, vocab_size: int, max_seq_len: int, n_ctx: int):
        self._forward, self.vocab_size, self.max_seq_len = forward, vocab_size, max_seq_len
        self.first, self.n_ctx = n_ctx // 2, n_ctx
        self.top1: list[np.ndarray] = []

    def forward(self, ids: np.ndarray) -> np.ndarray:
        logits = np.asarray(self._forward(ids))
        self.top1.append(logits[0, self.first:self.n_ctx - 1].argmax(-1))
        return logits

    def run(self, ids: np.ndarray, n_ctx: int, bos: int | None) -> tuple[float, np.ndarray]:
        ppl = perplexity(self, ids, n_ctx, bos_token_id=bos).ppl
        return ppl, np.concatenate(self.top1)


def fastlm_scored(path: Path, n_ctx: int, dequantize: bool) -> Scored:
    model = fastlm.load(path, dequantize=dequantize).model
    return Scored(model.forward, model.vocab_size, model.max_seq_len, n_ctx)


def llama_cpp_scored(path: Path, n_ctx: int, threads: int):
    """llama.cpp as a forward over one chunk: logits of every position, the cache emptied first (as
    llama-perplexity clears its memory per chunk). Returns (Scored, close) or None without llama-cpp-python."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    # One chunk per batch and ubatch: each chunk is one decode, as llama-perplexity's default n_ubatch (512)
    # makes it at n_ctx <= 512. flash_attn=True is what llama-perplexity's "auto" picks on the CPU.
    llm = Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads, n_threads_batch=threads,
                logits_all=True, flash_attn=True, verbose=False)

    def forward(ids: np.ndarray) -> np.ndarray:
        llm.reset()                 # eval() then drops every cached position from 0 on
        llm.eval(ids[0].tolist())
        return llm.scores[None, :ids.shape[1]]
    return Scored(forward, llm.n_vocab(), n_ctx, n_ctx), llm.close


def tokens_of(source: Path, text: str) -> tuple[np.ndarray, int | None]:
    """The text's ids and the BOS id to put at each chunk's start, exactly as ``fastlm perplexity`` takes them."""
    lm = fastlm.load(source)
    bos = lm.tokenizer.bos_token_id
    adds_bos = bos is not None and lm.encode("x", True)[:1] == [bos] and lm.encode("x", False)[:1] != [bos]
    return np.asarray(lm.encode(text, add_special_tokens=False), np.int64), bos if adds_bos else None


def llama_cpp_agrees(path: Path, text: str, ids: np.ndarray, bos: int | None) -> str:
    """Whether llama.cpp's own tokenizer and BOS rule (as llama-perplexity applies them) give the same input."""
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        return "llama.cpp: not installed"
    llm = Llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    same_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == ids.tolist()
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    l_bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
    llm.close()
    return f"llama.cpp's tokenizer gives {'the same' if same_ids else 'OTHER'} ids; its BOS rule: {l_bos} " \
           f"({'same' if l_bos == bos else 'DIFFERENT'})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", type=Path, default=None, help="source GGUF (default: the shipped model)")
    parser.add_argument("-f", "--file", type=Path, default=None, help="UTF-8 text (default: GPL-3 or "
                        "tests/data/english.txt)")
    parser.add_argument("-c", "--ctx", type=int, default=512, help="tokens per chunk (default %(default)s)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks scored, 0 for all (default %(default)s)")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated file types")
    parser.add_argument("--out-dir", type=Path, default=None, help="keep the files here (default: a temp dir, "
                        "each file removed once scored)")
    parser.add_argument("--max-worse", type=float, default=0.3, help="percent (default %(default)s)")
    parser.add_argument("--min-top1", type=float, default=99.0, help="percent (default %(default)s)")
    args = parser.parse_args(argv)
    requested = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in requested if FILE_TYPE_ALIASES.get(t, t) not in FILE_TYPES]
    if unknown or not requested:
        parser.error(f"unknown file types {unknown}; choose from {', '.join(FILE_TYPES)}")
    if args.ctx < 4 or args.chunks < 0 or args.threads < 1:
        parser.error("-c must be at least 4, --chunks at least 0 and -t at least 1")
    fastlm.set_num_threads(args.threads)
    source = args.model or fetch_default_model()
    text_path = args.file or next(p for p in DEFAULT_TEXTS if p.is_file())
    text = text_path.read_text(encoding="utf-8")
    ids, bos = tokens_of(source, text)
    agrees = llama_cpp_agrees(source, text, ids, bos)
    n_chunks = len(ids) // args.ctx if args.chunks == 0 else min(args.chunks, len(ids) // args.ctx)
    n_text = len(ids)
    if n_chunks < 1:
        parser.error(f"{text_path} has {len(ids)} tokens, fewer than one chunk of {args.ctx}")
    ids = ids[:n_chunks * args.ctx]         # perplexity() drops the rest: cut here to score fewer chunks
    print(f"source {source.name}; text {text_path} ({len(text)} chars); {n_chunks} chunks of {args.ctx} tokens, "
          f"{n_chunks * (args.ctx - 1 - args.ctx // 2)} scored; BOS per chunk: {bos}; {args.threads} threads; "
          f"fastlm SIMD level {fastlm._qlinear.isa()}", flush=True)
    print(f"{n_text} tokens in the text; {agrees}", flush=True)

    start = time.perf_counter()
    done: dict[str, tuple[str, bool]] = {}          # file type -> (its row after the name, marked)
    with tempfile.TemporaryDirectory(prefix="fastlm-ppl-") as tmp:
        out = args.out_dir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for qtype in requested:
            file_type = FILE_TYPE_ALIASES.get(qtype, qtype)
            if file_type in done:
                continue
            t0 = time.perf_counter()
            path = quantize_file(source, out / f"{source.stem}.{file_type}.gguf", file_type).dst
            size = path.stat().st_size
            ppl, top1 = fastlm_scored(path, args.ctx, False).run(ids, args.ctx, bos)
            ppl32, top1_32 = fastlm_scored(path, args.ctx, True).run(ids, args.ctx, bos)
            agree = 100.0 * float(np.mean(top1 == top1_32))
            peer = llama_cpp_scored(path, args.ctx, args.threads)
            if peer is None:
                lppl = diff = float("nan")
            else:
                scored, close = peer
                lppl = scored.run(ids, args.ctx, bos)[0]
                close()
                diff = 100.0 * (ppl - lppl) / lppl
            bad = diff > args.max_worse or agree < args.min_top1     # NaN (no peer) only fails on top-1
            done[file_type] = (f"{size / 1e6:.1f} | {ppl:.4f} | {lppl:.4f} | {diff:+.3f} | {agree:.2f} | "
                               f"{ppl32:.4f} | {'**FAIL**' if bad else 'ok'} |", bad)
            print(f"{file_type}: fastlm {ppl:.4f}, llama.cpp {lppl:.4f}, top-1 {agree:.2f} % "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            if args.out_dir is None:
                path.unlink()
    failed = [t for t in requested if done[FILE_TYPE_ALIASES.get(t, t)][1]]
    print("| type | file MB | fastlm ppl | llama.cpp ppl | fastlm vs llama.cpp % | top-1 vs own f32 % | "
          "fastlm f32-path ppl | |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(f"| {t} | {done[FILE_TYPE_ALIASES.get(t, t)][0]}" for t in requested))
    print(f"{time.perf_counter() - start:.0f} s; " + (f"FAILED: {', '.join(failed)}" if failed else
          f"every type within {args.max_worse} % of llama.cpp and top-1 >= {args.min_top1} %"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

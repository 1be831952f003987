"""The ``fastlm`` command: generate, chat, info, tokenize, bench, quantize, perplexity."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .api import DEFAULT_MODEL, TEXT_DEFAULTS, LanguageModel, load, resolve
from .errors import FastLMError


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("-n", "--max-new-tokens", type=int, default=256, help="tokens to generate at most (default 256)")
    g.add_argument("--temperature", type=float, default=TEXT_DEFAULTS["temperature"], help="0 means greedy")
    g.add_argument("--top-k", type=int, default=TEXT_DEFAULTS["top_k"], help="0 turns it off")
    g.add_argument("--top-p", type=float, default=TEXT_DEFAULTS["top_p"], help="1 turns it off")
    g.add_argument("--min-p", type=float, default=TEXT_DEFAULTS["min_p"], help="0 turns it off")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (1 turns it off)")
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--repeat-last-n", type=int, default=64, help="penalty window in tokens (-1: all)")
    g.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")


def _options(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repeat_penalty, frequency_penalty=args.frequency_penalty,
                presence_penalty=args.presence_penalty, penalty_last_n=args.repeat_last_n, seed=args.seed)


def _load(name: str, threads: int | None, dequantize: bool = False) -> LanguageModel:
    if threads is not None:
        from .runtime import set_num_threads
        set_num_threads(threads)
    return load(name, dequantize=dequantize, verbose=True)


def cmd_generate(args) -> int:
    lm = _load(args.model, args.threads, args.dequantize)
    for piece in lm.stream(args.prompt, args.max_new_tokens, **_options(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    lm = _load(args.model, args.threads, args.dequantize)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print("fastlm chat: /reset clears the conversation, /exit (or Ctrl-D) quits.", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.strip()
        if text == "/reset":
            history = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        reply = []
        for piece in lm.chat_stream(history, args.max_new_tokens, **_options(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})


def cmd_info(args) -> int:
    from .accounting import count_model_parameters
    from .weights import GGUFFile
    path = resolve(args.model)
    start = time.perf_counter()
    lm = load(path)
    elapsed = time.perf_counter() - start
    c = lm.config
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    params = count_model_parameters(c.vocab_size, c.d_model, c.num_layers, c.num_heads, c.num_kv_heads, c.d_ff,
                                    c.tie_weights)["total"]
    rows = [("file", str(path)), ("file size", f"{size / 2**20:.1f} MiB"),
            ("architecture", lm.metadata.get("general.architecture", "llama")),
            ("parameters", f"{params:,}"), ("layers", c.num_layers), ("d_model", c.d_model),
            ("heads / kv heads", f"{c.num_heads} / {c.num_kv_heads} (head_dim {c.head_dim})"), ("d_ff", c.d_ff),
            ("vocab", c.vocab_size), ("context", c.max_seq_len), ("rope theta", c.rope_theta),
            ("rms eps", c.norm_eps), ("tied embeddings", c.tie_weights)]
    if not path.is_dir():
        types: dict[str, int] = {}
        for tensor in GGUFFile(path).tensors.values():
            types[tensor.type_name] = types.get(tensor.type_name, 0) + 1
        rows.append(("tensor types", ", ".join(f"{n} {t}" for t, n in sorted(types.items()))))
    rows.append(("weights in memory", ", ".join(f"{n} {t}" for t, n in lm.model.weight_types.items())))
    rows.append(("load time", f"{elapsed:.2f} s"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_tokenize(args) -> int:
    lm = load(resolve(args.model))
    ids = lm.encode(args.text, add_special_tokens=args.add_special_tokens)
    for i in ids:
        print(f"{i:>8}  {lm.decode([i])!r}")
    print(f"{len(ids)} tokens", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    """Prompt processing (pp) and text generation (tg) in tokens/s, like llama-bench; with ``--types``, for the
    model re-encoded in each of those formats (written once into the cache by ``fastlm quantize``)."""
    from .runtime import get_num_threads, set_num_threads
    if args.threads is not None:
        set_num_threads(args.threads)
    path = resolve(args.model)
    files = [path] if not args.types else [_format_file(path, t) for t in args.types]
    print("| model | weights | size | threads | test | tokens/s |\n|---|---|---|---|---|---|")
    for file in files:
        model = load(file, dequantize=args.dequantize).model
        weights = ", ".join(f"{n} {t}" for t, n in model.weight_types.items())
        pp, tg = _bench(model, args.p, args.n, args.repetitions)
        for test, values in ((f"pp{args.p}", pp), (f"tg{args.n}", tg)):
            print(f"| {file.name} | {weights} | {file.stat().st_size / 2**20:.1f} MiB | {get_num_threads()} | "
                  f"{test} | {np.mean(values):.1f} ± {np.std(values):.1f} |", flush=True)
    return 0


def _format_file(path: Path, qtype: str) -> Path:
    """``path`` re-encoded as ``qtype`` in the cache directory, written on first use (and again whenever the
    source is newer)."""
    from .quantize import quantize_file
    from .weights.hub import default_cache_dir
    target = default_cache_dir() / f"{path.stem}.{qtype}.gguf"
    if not target.is_file() or target.stat().st_mtime < path.stat().st_mtime:
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"fastlm: writing {target}", file=sys.stderr)
        quantize_file(path, target, qtype)
    return target


def _bench(model, p: int, n: int, repetitions: int) -> tuple[list[float], list[float]]:
    """Tokens/s of prefilling p random tokens and of decoding n more greedily, ``repetitions`` times each,
    after one untimed round (page faults of the mapped weights, first-touch of the buffers)."""
    rng = np.random.default_rng(0)
    cache = model.new_cache(1, p + n)
    ws = model.new_workspace(max(p, 1))
    out = np.empty((1, model.vocab_size), model.dtype)
    pp, tg = [], []
    for _ in range(repetitions + 1):
        prompt = rng.integers(0, model.vocab_size, size=(1, p))
        cache.reset()
        start = time.perf_counter()
        model.prefill(prompt, cache, 0, ws, out)
        pp.append(p / (time.perf_counter() - start))
        token = np.array([int(np.argmax(out[0]))])
        start = time.perf_counter()
        for _ in range(n):
            model.decode(token, cache, 0, ws, out)
            token[0] = np.argmax(out[0])
        tg.append(n / (time.perf_counter() - start))
    return pp[1:], tg[1:]


def _types(value: str) -> list[str]:
    from .quantize import QUANT_TYPES
    types = [t.strip().upper() for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in QUANT_TYPES]
    if unknown or not types:
        raise argparse.ArgumentTypeError(f"unknown type(s) {', '.join(unknown) or value!r}; choose from "
                                         f"{','.join(QUANT_TYPES)}")
    return types


def cmd_quantize(args) -> int:
    """Re-encode a GGUF file's weight matrices as another type, like llama-quantize."""
    from .quantize import quantize_file

    def progress(i, n, name, from_type, to_type):
        # One line, redrawn in place: a bar, the count, the tensor being written; a newline after the last one.
        done = (i + 1) * 30 // n
        print(f"\r[{'#' * done}{'.' * (30 - done)}] {i + 1:>{len(str(n))}}/{n} {name:<32} {from_type:>6} -> "
              f"{to_type:<6}", end="\n" if i + 1 == n else "", file=sys.stderr, flush=True)

    summary = quantize_file(args.input, args.output, args.type, progress=None if args.quiet else progress)
    types = ", ".join(f"{n} {t}" for t, n in sorted(summary.tensor_types.items()))
    print(f"quantized {summary.src} ({summary.bytes_in / 1e6:.1f} MB) -> {summary.dst} "
          f"({summary.bytes_out / 1e6:.1f} MB, {summary.qtype}): {summary.n_tensors} tensors ({types}) "
          f"in {summary.seconds:.2f} s")
    return 0


def cmd_perplexity(args) -> int:
    """Perplexity over a text file, chunked like llama-perplexity."""
    from .errors import FastLMValueError
    from .perplexity import perplexity
    try:
        text = Path(args.textfile).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FastLMValueError(f"{args.textfile}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lm = _load(args.model, args.threads, args.dequantize)
    tok = lm.tokenizer
    # Like llama.cpp: when the vocabulary adds a BOS token, each chunk starts with BOS in place of its first token.
    bos = tok.bos_token_id
    adds_bos = bos is not None and lm.encode("x", True)[:1] == [bos] and lm.encode("x", False)[:1] != [bos]
    ids = lm.encode(text, add_special_tokens=False)
    start = time.perf_counter()

    def progress(chunk, n_chunks, ppl):
        print(f"[{chunk}/{n_chunks}] {ppl:.4f}", file=sys.stderr, flush=True)

    result = perplexity(lm.model, ids, args.ctx, bos_token_id=bos if adds_bos else None, progress=progress)
    elapsed = time.perf_counter() - start
    print(f"perplexity: {result.ppl:.4f} over {result.n_scored} tokens ({result.n_chunks} chunks of "
          f"{result.n_ctx}; {len(ids)} tokens in the text; {elapsed:.2f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastlm", description="Run Llama-family language models on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="continue a prompt, streaming to stdout")
    p.add_argument("prompt")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"GGUF file, HF directory or {DEFAULT_MODEL}")
    p.add_argument("--threads", "-t", type=int, default=None)
    p.add_argument("--dequantize", action="store_true", help="decode every weight to float32 at load")
    _sampling_options(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("chat", help="talk with the model (keeps history; /reset, /exit)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"GGUF file, HF directory or {DEFAULT_MODEL}")
    p.add_argument("--system", default=None, help="a system message to start the conversation with")
    p.add_argument("--threads", "-t", type=int, default=None)
    p.add_argument("--dequantize", action="store_true", help="decode every weight to float32 at load")
    _sampling_options(p)
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("info", help="config, parameter count, tensor types and file size")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("tokenize", help="print the token ids of a text")
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("--add-special-tokens", action="store_true", help="add BOS/EOS as the model asks")
    p.set_defaults(run=cmd_tokenize)

    p = sub.add_parser("bench", help="prompt (pp) and generation (tg) tokens/s, like llama-bench")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    p.add_argument("-p", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("-n", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-r", "--repetitions", type=int, default=3)
    p.add_argument("--types", type=_types, default=None, metavar="F32,F16,Q8_0,Q4_0,Q4_1",
                   help="bench the model re-encoded as each of these types (cached after the first run)")
    p.add_argument("--dequantize", action="store_true", help="decode every weight to float32 at load")
    p.set_defaults(run=cmd_bench)

    from .quantize import QUANT_TYPES
    p = sub.add_parser("quantize", help=f"re-encode a GGUF file's weights as {', '.join(QUANT_TYPES)}")
    p.add_argument("input", help="GGUF file to read")
    p.add_argument("output", help="GGUF file to write (replaced if it exists)")
    p.add_argument("--type", required=True, type=str.upper, choices=list(QUANT_TYPES),
                   help="type of the weight matrices (norms stay F32)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_quantize)

    p = sub.add_parser("perplexity", help="perplexity over a text file, like llama-perplexity")
    p.add_argument("model", help=f"GGUF file, HF directory or {DEFAULT_MODEL}")
    p.add_argument("textfile", help="UTF-8 text file")
    p.add_argument("-c", "--ctx", type=int, default=512, help="tokens per chunk (default 512); the second "
                   "half of each chunk is scored")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--dequantize", action="store_true", help="decode every weight to float32 at load")
    p.set_defaults(run=cmd_perplexity)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (FastLMError, OSError) as error:
        print(f"fastlm: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

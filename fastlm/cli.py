"""The ``fastlm`` command: generate, chat, serve, batch, info, tokenize, bench, quantize, perplexity."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import __version__
from .api import DEFAULT_MODEL, TEXT_DEFAULTS, LanguageModel, load, resolve
from .errors import FastLMError
from .structured import grammar_text
from .text import check_stop


def _at_least(low: int, kind=int):
    """An argparse type: a number >= low (argparse names the option in its message)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, got {text!r}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL,
                        help=f"GGUF file, Hugging Face directory or {DEFAULT_MODEL}")


def _run_options(parser: argparse.ArgumentParser) -> None:
    _model_option(parser)
    parser.add_argument("-t", "--threads", type=_at_least(1), default=None, help="threads (default: the cores)")
    parser.add_argument("--dequantize", action="store_true", help="decode every weight to float32 at load")


# Each sampling flag and the Sampler option it sets: errors from the sampler are reported in the flag's name.
_SAMPLING_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                   "repetition_penalty": "--repeat-penalty", "frequency_penalty": "--frequency-penalty",
                   "presence_penalty": "--presence-penalty", "penalty_last_n": "--repeat-last-n"}


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("-n", "--max-new-tokens", type=_at_least(0), default=256, help="tokens to generate at most (default %(default)s)")
    g.add_argument("--temperature", type=float, default=TEXT_DEFAULTS["temperature"], help="0 means greedy (default %(default)s)")
    g.add_argument("--top-k", type=int, default=TEXT_DEFAULTS["top_k"], help="0 turns it off (default %(default)s)")
    g.add_argument("--top-p", type=float, default=TEXT_DEFAULTS["top_p"], help="1 turns it off (default %(default)s)")
    g.add_argument("--min-p", type=float, default=TEXT_DEFAULTS["min_p"], help="0 turns it off (default %(default)s)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty, 1 turns it off (default %(default)s)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="per occurrence in the window (default %(default)s)")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="once per token in the window (default %(default)s)")
    g.add_argument("--repeat-last-n", type=int, default=64, help="penalty window in tokens, -1: all (default %(default)s)")
    g.add_argument("--seed", type=_at_least(0), default=None, help="makes sampling reproducible")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end the text before this string (repeatable)")
    g = parser.add_argument_group("structured output (pip install 'fastlm[structured]')")
    g.add_argument("--json-schema", type=Path, default=None, metavar="FILE", help="a JSON schema the output follows")
    g.add_argument("--grammar", type=Path, default=None, metavar="FILE", help="a Lark or GBNF grammar")
    g.add_argument("--regex", default=None, help="a regular expression the output matches")


def _options(args, parser: argparse.ArgumentParser) -> dict:
    """The text options of the sampling flags, checked before any model loads."""
    from .validation import SamplerSettings
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    repetition_penalty=args.repeat_penalty, frequency_penalty=args.frequency_penalty,
                    presence_penalty=args.presence_penalty, penalty_last_n=args.repeat_last_n)
    try:
        SamplerSettings(**sampling)
        options = dict(sampling, seed=args.seed, stop=check_stop(args.stop) or None, regex=args.regex)
        if args.json_schema is not None:
            options["json_schema"] = json.loads(args.json_schema.read_text(encoding="utf-8"))
        if args.grammar is not None:
            options["grammar"] = args.grammar.read_text(encoding="utf-8")
        grammar_text(options.get("json_schema"), options["regex"], options.get("grammar"))
    except FastLMError as e:
        message = str(e)
        for name, flag in _SAMPLING_FLAGS.items():
            message = message.replace(name, flag)
        parser.error(message)
    except (OSError, ValueError) as e:               # a missing or unreadable schema / grammar file
        parser.error(str(e))
    return options


def _load(args) -> LanguageModel:
    if args.threads is not None:
        from .runtime import set_num_threads
        set_num_threads(args.threads)
    return load(args.model, dequantize=args.dequantize, verbose=True)


def _prompt(text: str) -> str:
    """The prompt argument; ``-`` reads it from standard input."""
    return sys.stdin.read() if text == "-" else text


def _print_timings(result) -> None:
    t, u = result.timings, result.usage
    print(f"fastlm: prompt {u.prompt_tokens} tokens, {t.prompt_tps:.1f} tok/s; generated {u.completion_tokens} "
          f"tokens, {t.generation_tps:.1f} tok/s; first token after {t.time_to_first_token * 1000:.0f} ms; "
          f"finish: {result.finish_reason}", file=sys.stderr)


def cmd_generate(args) -> int:
    options = _options(args, args.parser)
    prompt = _prompt(args.prompt)
    lm = _load(args)
    for piece in lm.stream(prompt, args.max_new_tokens, **options):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.verbose:
        _print_timings(piece)
    return 0


def cmd_chat(args) -> int:
    options = _options(args, args.parser)
    lm = _load(args)
    session = lm.chat_session(system=args.system)
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print("fastlm chat: /reset clears the conversation, /exit (or Ctrl-D) quits; Ctrl-C stops an answer.",
              file=sys.stderr)
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            return 0
        except KeyboardInterrupt:                 # at the prompt: a fresh line, the session goes on
            print(file=sys.stderr)
            continue
        if (not interactive and not line) or line.strip() == "/exit":
            return 0
        text = line.strip()
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text:
            continue
        try:
            for piece in session.stream(text, args.max_new_tokens, **options):
                sys.stdout.write(piece.text)
                sys.stdout.flush()
        except KeyboardInterrupt:                 # stops this answer; it is not kept in the history
            sys.stdout.write(" (stopped)")
        sys.stdout.write("\n")
        sys.stdout.flush()


def cmd_serve(args) -> int:
    try:
        from .server import serve
    except ImportError as e:
        raise FastLMError(f"fastlm serve needs the server extra: pip install 'fastlm[server]' ({e})") from None
    lm = _load(args)
    name = Path(str(args.model)).name
    print(f"fastlm: serving {name} on http://{args.host}:{args.port} ({args.parallel} rows of {args.ctx})",
          file=sys.stderr)
    serve(lm, args.host, args.port, model_name=name, parallel=args.parallel, ctx=args.ctx,
          queue_size=args.queue, api_key=args.api_key, max_tokens_limit=args.max_tokens,
          cache_bytes=args.cache_mb << 20)
    return 0


def cmd_batch(args) -> int:
    from .batch import run_file
    if not args.input.is_file():
        raise FastLMError(f"{args.input}: no such input file")
    if args.ray is None and args.threads is not None:
        from .runtime import set_num_threads
        set_num_threads(args.threads)
    model = resolve(args.model)
    counts = run_file(model, args.input, args.output, ray_address=args.ray, actors=args.actors,
                      threads_per_actor=args.threads_per_actor, batch_size=args.batch_size,
                      progress=not args.quiet)
    print(f"fastlm batch: {counts['done']} lines done, {counts['skipped']} already there, {counts['failed']} "
          f"failed -> {args.output}", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    """Describe a model from its header alone (GGUF header or config.json): nothing is decoded, so it also
    describes files fastlm cannot run, and says why."""
    from math import prod

    from .config import parameter_shapes
    from .weights import GGUFFile, gguf, safetensors
    path = resolve(args.model)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    rows = [("file", str(path)), ("file size", f"{size / 2**20:.1f} MiB")]
    problem = None
    try:
        c = safetensors.read_config(path) if path.is_dir() else gguf.read_config(path)[0]
    except FastLMError as e:
        c, problem = None, str(e)
    if not path.is_dir():
        header = GGUFFile(path)
        rows.append(("architecture", header.metadata.get("general.architecture", "?")))
        types: dict[str, int] = {}
        for tensor in header.tensors.values():
            types[tensor.type_name] = types.get(tensor.type_name, 0) + 1
        rows.append(("tensor types", ", ".join(f"{n} {t}" for t, n in sorted(types.items()))))
    elif c is not None:
        rows.append(("architecture", c.arch))
    if c is not None:
        params = sum(prod(shape) for shape in parameter_shapes(c).values())
        rows += [("parameters", f"{params:,}"), ("layers", c.num_layers), ("d_model", c.d_model),
                 ("heads / kv heads", f"{c.num_heads} / {c.num_kv_heads} (head_dim {c.head_dim})"),
                 ("d_ff", c.d_ff), ("vocab", c.vocab_size), ("context", c.max_seq_len),
                 ("rope theta", c.rope_theta), ("rms eps", c.norm_eps), ("tied embeddings", c.tie_weights)]
        rows += [(f"  {name}", value) for name, value in c.choices().items()
                 if name not in ("arch", "tie_weights")]
    else:
        rows.append(("fastlm cannot run it", problem))
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


def _bench_rounds(model, p: int, n: int) -> Iterator[tuple[float, float]]:
    """Endless rounds of prefilling p random tokens and decoding n more greedily: (pp, tg) tokens/s of each.
    The first round pays the page faults of the mapped weights and the first touch of the buffers."""
    rng = np.random.default_rng(0)
    cache = model.new_cache(1, p + n)
    ws = model.new_workspace(max(p, 1))
    out = np.empty((1, model.vocab_size), model.dtype)
    while True:
        prompt = rng.integers(0, model.vocab_size, size=(1, p))
        cache.reset()
        start = time.perf_counter()
        model.prefill(prompt, cache, 0, ws, out)
        pp = p / (time.perf_counter() - start)
        token = np.array([int(np.argmax(out[0]))])
        start = time.perf_counter()
        for _ in range(n):
            model.decode(token, cache, 0, ws, out)
            token[0] = np.argmax(out[0])
        yield pp, n / (time.perf_counter() - start)


def _bench(model, p: int, n: int, repetitions: int) -> tuple[list[float], list[float]]:
    """pp and tg tokens/s of ``repetitions`` rounds of _bench_rounds, after one untimed round."""
    rounds = _bench_rounds(model, p, n)
    next(rounds)
    timed = [next(rounds) for _ in range(repetitions)]
    return [pp for pp, _ in timed], [tg for _, tg in timed]


def _types(value: str) -> list[str]:
    from .quantize import FILE_TYPE_ALIASES, FILE_TYPES
    names = [*FILE_TYPES, *FILE_TYPE_ALIASES]
    types = [t.strip().upper() for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in names]
    if unknown or not types:
        raise argparse.ArgumentTypeError(f"unknown type(s) {', '.join(unknown) or value!r}; choose from "
                                         f"{','.join(names)}")
    return types


def cmd_quantize(args) -> int:
    """Re-encode a GGUF file as one of llama-quantize's file types, like llama-quantize."""
    from .quantize import quantize_file
    start = time.perf_counter()

    def progress(i, n, name, from_type, to_type):
        # One line on stderr, redrawn in place: a bar, the count, the tensor being written and the time so far;
        # a newline after the last one.
        done = (i + 1) * 30 // n
        print(f"\r[{'#' * done}{'.' * (30 - done)}] {i + 1:>{len(str(n))}}/{n} {name:<32} {from_type:>6} -> "
              f"{to_type:<6} {time.perf_counter() - start:6.1f} s", end="\n" if i + 1 == n else "", file=sys.stderr,
              flush=True)

    summary = quantize_file(args.input, args.output, args.type, progress=None if args.quiet else progress,
                            pure=args.pure)
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
    lm = _load(args)
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
    parser = argparse.ArgumentParser(prog="fastlm", description="Run decoder-only language models (Llama, Mistral, "
                                     "Qwen, Phi, Gemma) on the CPU.")
    parser.add_argument("--version", action="version", version=f"fastlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="continue a prompt, streaming to stdout")
    p.add_argument("prompt", help="the text to continue; - reads it from standard input")
    _run_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="print the timings to stderr")
    _sampling_options(p)
    p.set_defaults(run=cmd_generate, parser=p)

    p = sub.add_parser("chat", help="talk with the model (keeps history and its cache; /reset, /exit)")
    _run_options(p)
    p.add_argument("--system", default=None, help="a system message to start the conversation with")
    _sampling_options(p)
    p.set_defaults(run=cmd_chat, parser=p)

    p = sub.add_parser("info", help="architecture, component choices, parameter count, tensor types and file "
                                    "size, from the header alone")
    _model_option(p)
    p.add_argument("path", nargs="?", default=None, help="the model, as -m gives it")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("tokenize", help="print the token ids of a text")
    _model_option(p)
    p.add_argument("text")
    p.add_argument("--add-special-tokens", action="store_true", help="add BOS/EOS as the model asks")
    p.set_defaults(run=cmd_tokenize)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching "
                                     "(pip install 'fastlm[server]')")
    _run_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_at_least(1), default=8080, help="(default %(default)s)")
    p.add_argument("--parallel", type=_at_least(1), default=4, help="rows decoded together (default %(default)s)")
    p.add_argument("--ctx", type=_at_least(16), default=2048, help="positions per row (default %(default)s)")
    p.add_argument("--queue", type=_at_least(0), default=64, help="requests that may wait for a row; more get "
                   "503 (default %(default)s)")
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--cache-mb", type=_at_least(0), default=256, help="prompt cache across requests, MiB "
                   "(default %(default)s)")
    p.add_argument("--max-tokens", type=_at_least(1), default=4096, help="largest max_tokens a request may ask "
                   "(default %(default)s)")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("batch", help="generate for every line of a JSONL file into another (resumable; Ray "
                                     "with --ray)")
    _model_option(p)
    p.add_argument("input", type=Path, help="JSON lines: id, prompt or messages, per-line options")
    p.add_argument("-o", "--output", type=Path, required=True, help="JSON lines out (resumed if it exists)")
    p.add_argument("-t", "--threads", type=_at_least(1), default=None, help="threads, in this process")
    p.add_argument("--batch-size", type=_at_least(1), default=16, help="rows per batch (default %(default)s)")
    p.add_argument("--ray", default=None, metavar="local|auto|ADDRESS",
                   help="run on Ray: start a local cluster, or join one (pip install 'fastlm[ray]')")
    p.add_argument("--actors", type=_at_least(1), default=1, help="Ray actors (default %(default)s)")
    p.add_argument("--threads-per-actor", type=_at_least(1), default=1, help="(default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_batch)

    p = sub.add_parser("bench", help="prompt (pp) and generation (tg) tokens/s, like llama-bench")
    _model_option(p)
    p.add_argument("path", nargs="?", default=None, help="the model, as -m gives it")
    p.add_argument("-p", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("-n", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-r", "--repetitions", type=int, default=3)
    p.add_argument("--types", type=_types, default=None, metavar="F32,F16,Q8_0,Q4_0,Q4_1",
                   help="bench the model re-encoded as each of these types (cached after the first run)")
    p.add_argument("--dequantize", action="store_true", help="decode every weight to float32 at load")
    p.set_defaults(run=cmd_bench)

    from .quantize import FILE_TYPE_ALIASES, FILE_TYPES
    p = sub.add_parser("quantize", help="re-encode a GGUF file as one of llama-quantize's file types (Q4_K_M, "
                       "Q8_0, ...), tensor for tensor the bytes llama-quantize writes")
    p.add_argument("input", help="GGUF file to read")
    p.add_argument("output", help="GGUF file to write (replaced if it exists)")
    p.add_argument("--type", required=True, type=str.upper, choices=[*FILE_TYPES, *FILE_TYPE_ALIASES],
                   help="file type: its tensor type for most matrices, with llama.cpp's mix for the rest "
                        "(Q3_K, Q4_K, Q5_K = the _M mixes); norms are copied")
    p.add_argument("--pure", action="store_true", help="every matrix in the type itself (llama-quantize --pure): "
                   "no Q6_K output, no mix")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_quantize)

    p = sub.add_parser("perplexity", help="perplexity over a text file, like llama-perplexity")
    _model_option(p)
    p.add_argument("files", nargs="+", metavar="[MODEL] TEXTFILE", help="UTF-8 text file (after the model, "
                   "if -m does not give it)")
    p.add_argument("-c", "--ctx", type=int, default=512, help="tokens per chunk (default 512); the second "
                   "half of each chunk is scored")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--dequantize", action="store_true", help="decode every weight to float32 at load")
    p.set_defaults(run=cmd_perplexity)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "path", None) is not None:          # the model may also come positionally
        args.model = args.path
    if args.command == "perplexity":
        if len(args.files) > 2:
            parser.error("perplexity takes [MODEL] TEXTFILE")
        *model, args.textfile = args.files
        args.model = model[0] if model else args.model
    try:
        return args.run(args)
    except BrokenPipeError:                # the reader went away (| head): stop quietly
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except (FastLMError, OSError) as error:
        print(f"fastlm: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``fastlm`` command: generate, chat, info, tokenize, bench."""
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


def _load(name: str, threads: int | None) -> LanguageModel:
    if threads is not None:
        from .runtime import set_num_threads
        set_num_threads(threads)
    return load(name, verbose=True)


def cmd_generate(args) -> int:
    lm = _load(args.model, args.threads)
    for piece in lm.stream(args.prompt, args.max_new_tokens, **_options(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    lm = _load(args.model, args.threads)
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
    rows.append(("load time (float32)", f"{elapsed:.2f} s"))
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
    """Prompt processing (pp) and text generation (tg) in tokens/s, like llama-bench."""
    lm = _load(args.model, args.threads)
    model = lm.model
    rng = np.random.default_rng(0)
    cache = model.new_cache(1, args.p + args.n)
    ws = model.new_workspace(max(args.p, 1))
    out = np.empty((1, model.vocab_size), model.dtype)
    pp, tg = [], []
    for _ in range(args.repetitions):
        prompt = rng.integers(0, model.vocab_size, size=(1, args.p))
        cache.reset()
        start = time.perf_counter()
        model.prefill(prompt, cache, 0, ws, out)
        pp.append(args.p / (time.perf_counter() - start))
        token = np.array([int(np.argmax(out[0]))])
        start = time.perf_counter()
        for _ in range(args.n):
            model.decode(token, cache, 0, ws, out)
            token[0] = np.argmax(out[0])
        tg.append(args.n / (time.perf_counter() - start))
    from .runtime import get_num_threads
    name = lm.source.name
    print(f"| model | threads | test | tokens/s |\n|---|---|---|---|")
    for test, values in ((f"pp{args.p}", pp), (f"tg{args.n}", tg)):
        print(f"| {name} | {get_num_threads()} | {test} | {np.mean(values):.1f} ± {np.std(values):.1f} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastlm", description="Run Llama-family language models on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="continue a prompt, streaming to stdout")
    p.add_argument("prompt")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"GGUF file, HF directory or {DEFAULT_MODEL}")
    p.add_argument("--threads", "-t", type=int, default=None)
    _sampling_options(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("chat", help="talk with the model (keeps history; /reset, /exit)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"GGUF file, HF directory or {DEFAULT_MODEL}")
    p.add_argument("--system", default=None, help="a system message to start the conversation with")
    p.add_argument("--threads", "-t", type=int, default=None)
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
    p.set_defaults(run=cmd_bench)
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

"""``python -m fastlm``: generate tokens from a random-weight model and report the speed.

Real checkpoints and a tokenizer are not loaded yet; this exercises the whole pipeline (embedding gather,
transformer blocks, sampling, the generation loop) on a model of a published shape.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import PRESETS, CausalLM, ModelConfig, count_model_parameters
from .errors import FastLMError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastlm", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", *sorted(PRESETS)],
                        help="model shape (default: tiny, a 4-layer toy; smollm2-135m is the real shape)")
    parser.add_argument("--prompt-len", type=int, default=16, help="random prompt length (default 16)")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="seeds both the weights and the sampler")
    args = parser.parse_args(argv)
    try:
        if args.preset == "tiny":
            config = ModelConfig(vocab_size=512, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, d_ff=384,
                                 max_seq_len=512, tie_weights=True)
        else:
            config = ModelConfig.from_name(args.preset)
        n_params = count_model_parameters(config.vocab_size, config.d_model, config.num_layers, config.num_heads,
                                          config.num_kv_heads, config.d_ff, config.tie_weights)["total"]
        print(f"building random {args.preset} model ({n_params / 1e6:.1f}M parameters)...", file=sys.stderr)
        model = CausalLM.from_config(config, seed=args.seed)
        prompt = np.random.default_rng(args.seed).integers(0, config.vocab_size, size=args.prompt_len)
        start = time.perf_counter()
        tokens = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed)
        elapsed = time.perf_counter() - start
    except FastLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    new = tokens[0, args.prompt_len:]
    print("prompt ids:   ", " ".join(map(str, prompt)))
    print("generated ids:", " ".join(map(str, new)))
    print(f"{len(new)} tokens in {elapsed:.2f} s ({len(new) / elapsed:.1f} tok/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

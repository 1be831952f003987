"""Structured output on the real model (SmolLM2-135M, its 49152-token vocabulary): the cost of one grammar
step (compute the mask, apply it to the logits, consume the token) beside one decode step. The target is a
mask step at most 10 % of a decode step; the ratio is printed and kept in the benchmark's extra_info."""
import numpy as np
import pytest

import fastlm
from fastlm import structured

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "tags": {"type": "array", "items": {"type": "string"}}}}
# A JSON text the grammar accepts, fed one token at a time: each round masks at a fresh point of it.
TEXT = '{"name": "Ada Lovelace", "age": 36, "tags": ["mathematician", "writer", "analyst"]}'


@pytest.fixture(scope="module")
def lm():
    return fastlm.load()


@pytest.fixture(scope="module")
def decode_seconds(lm):
    return {}


@pytest.mark.benchmark(group="structured output: one step on SmolLM2")
def test_decode_step(benchmark, lm, decode_seconds):
    model = lm.model
    ids = lm.encode("Describe a person as JSON:")
    cache, ws = model.new_cache(1, 256), model.new_workspace(64, 256)
    out = np.empty((1, model.vocab_size), np.float32)
    model.prefill([ids], cache, 0, ws, out)

    def step():
        cache.lengths[:] = len(ids)
        model.decode(np.array([ids[-1]]), cache, 0, ws, out)
    benchmark.pedantic(step, rounds=50, iterations=1, warmup_rounds=3)
    decode_seconds["mean"] = benchmark.stats.stats.mean


@pytest.mark.benchmark(group="structured output: one step on SmolLM2")
def test_fastlm_grammar_step(benchmark, lm, decode_seconds):
    grammar = structured.grammar_text(json_schema=SCHEMA)
    tokens = lm.encode(TEXT, add_special_tokens=False)
    logits = np.zeros(lm.model.vocab_size, np.float32)
    state = {}

    def setup():
        if not state.get("left"):
            state["row"], state["left"] = structured.GrammarRow(lm.tokenizer, lm.model.vocab_size, grammar), list(tokens)
        return (), {}

    def step():
        row = state["row"]
        row.mask(None, logits)
        row.stop(state["left"].pop(0))
    benchmark.pedantic(step, setup=setup, rounds=len(tokens) * 3, iterations=1)
    if "mean" in decode_seconds:
        share = benchmark.stats.stats.mean / decode_seconds["mean"]
        benchmark.extra_info["share_of_decode_step_pct"] = 100 * share
        print(f"\ngrammar step = {100 * share:.1f} % of a decode step (target <= 10 %)")

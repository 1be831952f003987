"""The text API: results, streams, stop strings, logits processors, structured output."""
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import fastlm
from fastlm.text import GenerationResult, StreamPiece

ARCHS = Path(__file__).parent / "data" / "archs"


@pytest.fixture(scope="module")
def lm() -> fastlm.LanguageModel:
    """A tiny random model with a real byte-level BPE tokenizer: its text is noise, which suits stop
    strings (every character shows up)."""
    return fastlm.load(ARCHS / "qwen2" / "model.gguf")


def streamed(lm, prompt, n, **options) -> tuple[str, list[StreamPiece]]:
    pieces = list(lm.stream(prompt, n, **options))
    return "".join(p.text for p in pieces), pieces


@pytest.mark.parametrize("seed", range(4))
def test_result_fields(lm, seed):
    r = lm.generate("Once upon a time", 12, seed=seed, logprobs=True, top_logprobs=3)
    assert isinstance(r, GenerationResult) and str(r) == r.text
    assert r.finish_reason in ("length", "eos")
    assert r.usage.prompt_tokens == len(lm.encode("Once upon a time"))
    assert r.usage.completion_tokens == len(r.token_ids) and r.usage.total_tokens == r.usage.prompt_tokens + len(r.token_ids)
    assert r.timings.time_to_first_token > 0 and r.timings.prompt_tps > 0 and r.timings.total >= r.timings.time_to_first_token
    assert [t.id for t in r.logprobs] == r.token_ids
    for t in r.logprobs:
        assert t.logprob <= 0 and len(t.top) == 3 and t.top[0][2] >= t.top[1][2] >= t.top[2][2]
        assert t.text == lm.decode([t.id])
    assert r.text == lm.decode(r.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("stop", [None, ["e"], ["th", "a "], ["  "]])
def test_streamed_text_equals_returned_text(lm, seed, stop):
    """Every finish reason, with and without stop strings: streamed == returned, and the text is the
    decoded tokens up to the stop; the stop string is not in the text."""
    r = lm.generate("The", 40, seed=seed, stop=stop, temperature=1.0)
    text, pieces = streamed(lm, "The", 40, seed=seed, stop=stop, temperature=1.0)
    assert text == r.text
    assert pieces[-1].finish_reason == r.finish_reason and pieces[-1].usage == r.usage
    assert sum(len(p.token_ids) for p in pieces) == len(r.token_ids)
    decoded = lm.decode(r.token_ids, skip_special_tokens=True)
    assert decoded.startswith(r.text)
    if r.finish_reason == "stop":
        assert any(decoded[len(r.text):].startswith(s) for s in stop)
        assert not any(s in r.text for s in stop)
    else:
        assert decoded == r.text


@pytest.mark.parametrize("seed", range(5))
def test_stop_string_across_tokens_is_never_streamed(lm, seed):
    """A stop string made of pieces of several tokens: the stream holds back its beginning until it is
    sure, so no piece ever shows any of it."""
    full = lm.generate("In the", 40, seed=seed, temperature=1.0, stop=None)
    ends = np.cumsum([len(lm.decode([t])) for t in full.token_ids])
    cut = int(ends[len(ends) // 2])                        # a token boundary in the middle
    stop = full.text[cut - 2:cut + 3]                      # spans it
    if len(stop) < 5:
        pytest.skip("continuation too short")
    first = full.text.find(stop)
    text, pieces = streamed(lm, "In the", 40, seed=seed, temperature=1.0, stop=[stop])
    assert text == full.text[:first]
    shown = ""
    for p in pieces:
        shown += p.text
        assert shown == full.text[:len(shown)] and len(shown) <= first


def test_token_stop_sequences_leave_the_text(lm):
    full = lm.generate("Hello", 20, seed=1)
    seq = full.token_ids[5:7]
    r = lm.generate("Hello", 20, seed=1, stop_sequences=[seq])
    assert r.finish_reason == "stop" and r.token_ids == full.token_ids[:7]
    assert r.text == lm.decode(full.token_ids[:5], skip_special_tokens=True)
    assert streamed(lm, "Hello", 20, seed=1, stop_sequences=[seq])[0] == r.text


def test_generate_batch_rows_equal_single_calls(lm):
    prompts = ["One", "Two words here", "x"]
    rows = lm.generate_batch(prompts, 10, seed=[4, 5, 6], stop=["e"])
    for prompt, seed, row in zip(prompts, [4, 5, 6], rows):
        alone = lm.generate(prompt, 10, seed=seed, stop=["e"])
        assert (row.text, row.token_ids, row.finish_reason) == (alone.text, alone.token_ids, alone.finish_reason)


def test_bad_options(lm):
    with pytest.raises(TypeError, match="unexpected keyword argument 'stop_strings'"):
        lm.generate("a", 2, stop_strings=["x"])
    with pytest.raises(ValueError, match="must not be empty"):
        lm.generate("a", 2, stop=["x", ""])
    with pytest.raises(ValueError, match="string or a list of strings"):
        lm.generate("a", 2, stop=[3])
    with pytest.raises(TypeError, match="prompt must be a str"):
        lm.generate(["a"], 2)


# ----------------------------------------------------------------------------------------- logits processors

def test_logits_processors_run_in_order_before_sampling(lm):
    prompt = lm.encode("Once")
    seen = []

    def ban_top(token_ids, logits):
        seen.append(list(token_ids))
        out = logits.copy()
        out[np.argmax(out)] = -np.inf
        return out

    def record(token_ids, logits):
        assert np.isinf(logits).sum() == 1          # runs after ban_top
        return logits

    plain = lm.generate_ids(prompt, 6, greedy=True)
    banned = lm.generate_ids(prompt, 6, greedy=True, logits_processors=[ban_top, record])
    first = lm.model.forward([prompt])[0, -1]
    assert banned.token_ids[0] == int(np.argsort(first)[-2]) != plain.token_ids[0]
    assert seen[0] == prompt and seen[1] == prompt + banned.token_ids[:1]     # the row's tokens so far


def test_a_processor_returning_the_wrong_shape_fails_before_sampling(lm):
    with pytest.raises(ValueError, match="returned .* shape \\(3,\\)"):
        lm.generate("a", 2, logits_processors=[lambda ids, logits: logits[:3]])
    with pytest.raises(TypeError, match="list of callables"):
        lm.generate("a", 2, logits_processors=lambda ids, logits: logits)


# ------------------------------------------------------------------------------------------ structured output

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}}}


@pytest.mark.parametrize("seed", range(3))
def test_json_schema_output_validates(lm, seed):
    """Even a random model's output parses and validates: masked tokens can never be drawn."""
    for options in (dict(seed=seed, temperature=1.0), dict(greedy=True)):
        r = lm.generate("Person:", 200, json_schema=PERSON, **options)
        assert r.finish_reason in ("stop", "eos"), r.text
        jsonschema.validate(json.loads(r.text), PERSON)


def test_regex_and_lark_grammar(lm):
    r = lm.generate("Phone:", 30, regex=r"[0-9]{3}-[0-9]{4}", seed=0)
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", r.text) and r.finish_reason == "stop"
    grammar = 'start: "yes" | "no" | "maybe"'
    for seed in range(3):
        assert lm.generate("Answer:", 10, grammar=grammar, seed=seed).text in ("yes", "no", "maybe")
    assert streamed(lm, "Phone:", 30, regex=r"[0-9]{3}-[0-9]{4}", seed=0)[0] == r.text


def test_invalid_schema_or_grammar(lm):
    with pytest.raises(ValueError, match="invalid json_schema"):
        lm.generate("a", 2, json_schema={"type": "nonsense"})
    with pytest.raises(ValueError, match="(?s)invalid regex.*unclosed group"):
        lm.generate("a", 2, regex="(")
    with pytest.raises(ValueError, match="invalid grammar"):
        lm.generate("a", 2, grammar="start: undefined_rule")
    with pytest.raises(ValueError, match="at most one of"):
        lm.generate("a", 2, regex="a", grammar='start: "a"')


def test_real_model_answers_in_json(smollm2_quantized):
    r = smollm2_quantized.chat([{"role": "user", "content": "Describe a person as JSON."}], 120,
                               json_schema=PERSON, seed=0)
    jsonschema.validate(json.loads(r.text), PERSON)


# ------------------------------------------------------------------------------------------- the seed's names

def test_w_out_is_the_textbook_output_projection():
    config = fastlm.ModelConfig(50, 16, 1, 2, 2, 24, 16, tie_weights=True)
    model = fastlm.CausalLM.from_config(config, seed=0)
    assert model.W_out.shape == (16, 50) and np.shares_memory(model.W_out, model.embedding)
    ref = fastlm.reference.CausalLM.from_config(config, seed=0)
    np.testing.assert_allclose(model.W_out, ref.W_out, rtol=1e-6)


# -------------------------------------------------------------------------------------------- chat sessions

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_session_reuses_its_cache_and_equals_fresh_calls(dtype):
    lm = fastlm.load(ARCHS / "llama" / "model.gguf", dtype=dtype)
    session = lm.chat_session(system="Be brief.")
    history = [{"role": "system", "content": "Be brief."}]
    for turn, question in enumerate(["Hello there", "What is two plus two?", "And three?"]):
        reply = session.send(question, 16, seed=turn)
        history.append({"role": "user", "content": question})
        fresh = lm.chat(history, 16, seed=turn)
        assert (reply.text, reply.token_ids) == (fresh.text, fresh.token_ids)
        assert (reply.cached_tokens > 0) == (turn > 0)              # later turns prefill only their new tokens
        history.append({"role": "assistant", "content": reply.text})
        assert session.messages == history
    streamed = "".join(p.text for p in session.stream("Bye", 8, seed=9))
    assert session.messages[-1] == {"role": "assistant", "content": streamed}


def test_a_session_saves_and_loads(tmp_path):
    lm = fastlm.load(ARCHS / "qwen3" / "model.gguf")
    session = lm.chat_session()
    session.send("Hello", 12, seed=1)
    session.save(tmp_path / "s.npz")
    restored = fastlm.api.ChatSession.load(lm, tmp_path / "s.npz")
    assert restored.messages == session.messages
    a, b = session.send("More", 10, seed=2), restored.send("More", 10, seed=2)
    assert a.token_ids == b.token_ids and a.cached_tokens == b.cached_tokens > 0
    other = fastlm.load(ARCHS / "qwen2" / "model.gguf")
    with pytest.raises(ValueError, match="another model"):
        fastlm.api.ChatSession.load(other, tmp_path / "s.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a session")
    with pytest.raises(ValueError, match="not a saved chat session"):
        fastlm.api.ChatSession.load(lm, tmp_path / "bad.npz")
    session.reset()
    assert session.messages == [] and session.send("Hello", 12, seed=1).cached_tokens == 0

"""Structured output: JSON schemas, regular expressions and Lark grammars, enforced token by token.

``llguidance`` (the Rust constraint engine llama.cpp and vLLM use) compiles a grammar against the model's
vocabulary; before each sampling step it computes which tokens may come next as a bitmask, and fastlm sets
every other logit to -inf, so no sampler setting, greedy included, can draw a masked token. A row ends
(finish reason ``"stop"``) when the grammar has accepted and allows nothing more.

Install it with ``pip install 'fastlm[structured]'``; fastlm imports it only when a grammar is asked for.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from .errors import FastLMTypeError, FastLMValueError
from .generation import RowHook
from .tokenizer import Tokenizer


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise FastLMValueError("structured output needs llguidance: pip install 'fastlm[structured]'") from None
    return llguidance


class _Vocabulary:
    """The tokenizer as llguidance's TokenizerWrapper reads it: every id's bytes, the specials, encode."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self.tokens = list(tokenizer.token_bytes) + [b""] * (vocab_size - tokenizer.vocab_size)
        self.eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(
            tokenizer.eos_token_ids, default=0)
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = sorted(tokenizer.special_ids)
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)


def compiled_tokenizer(tokenizer: Tokenizer, vocab_size: int):
    """llguidance's view of ``tokenizer`` (built once per tokenizer: it indexes the whole vocabulary)."""
    cached = getattr(tokenizer, "_llguidance", None)
    if cached is None or cached[0] != vocab_size:
        llg = _llguidance()
        cached = (vocab_size, llg.LLTokenizer(llg.TokenizerWrapper(_Vocabulary(tokenizer, vocab_size)),
                                              n_vocab=vocab_size))
        tokenizer._llguidance = cached
    return cached[1]


def grammar_text(json_schema: Any = None, regex: str | None = None, grammar: str | None = None) -> str | None:
    """The llguidance grammar for at most one of a JSON schema (a dict or its JSON text; ``True`` or
    ``"json"`` for any JSON object), a regular expression or a Lark grammar; None when none is given. An
    invalid one raises ValueError with llguidance's message."""
    given = [name for name, value in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar))
             if value is not None]
    if not given:
        return None
    if len(given) > 1:
        raise FastLMValueError(f"give at most one of json_schema, regex and grammar, got {', '.join(given)}")
    llg = _llguidance()
    try:
        if json_schema is not None:
            if json_schema is True or json_schema == "json":
                json_schema = {"type": "object"}
            if isinstance(json_schema, str):
                json_schema = json.loads(json_schema)
            if not isinstance(json_schema, dict):
                raise FastLMTypeError(f"json_schema must be a dict or its JSON text, got {type(json_schema).__name__}")
            text = llg.LLMatcher.grammar_from_json_schema(json.dumps(json_schema))
        elif regex is not None:
            if not isinstance(regex, str):
                raise FastLMTypeError(f"regex must be a str, got {type(regex).__name__}")
            text = llg.LLMatcher.grammar_from_regex(regex)
        else:
            if not isinstance(grammar, str):
                raise FastLMTypeError(f"grammar must be a str (Lark or GBNF), got {type(grammar).__name__}")
            text = llg.grammar_from("grammar", grammar)
    except (ValueError, RuntimeError) as e:           # json.JSONDecodeError is a ValueError
        raise FastLMValueError(f"invalid {given[0]}: {e}") from None
    error = llg.LLMatcher.validate_grammar(text)
    if error and not error.startswith("WARNING"):
        raise FastLMValueError(f"invalid {given[0]}: {error}")
    return text


class GrammarRow(RowHook):
    """One row's grammar state: masks the logits before each step and consumes each token taken."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, text: str):
        llg = _llguidance()
        self._matcher = llg.LLMatcher(compiled_tokenizer(tokenizer, vocab_size), text, log_level=0)
        if self._matcher.is_error():
            raise FastLMValueError(f"invalid grammar: {self._matcher.get_error()}")
        self._bitmask = np.zeros((vocab_size + 31) // 32, np.int32)
        self._allowed = np.empty(self._bitmask.size * 32, bool)

    def mask(self, tokens: np.ndarray, logits: np.ndarray) -> None:
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        np.not_equal(bits, 0, out=self._allowed)
        logits[~self._allowed[:logits.shape[0]]] = -np.inf

    def stop(self, token: int) -> bool:
        """Consume ``token``; True once the grammar is complete and allows nothing more."""
        if not self._matcher.consume_token(int(token)):
            raise FastLMValueError(f"the grammar refused token {token}: {self._matcher.get_error()}")
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._matcher.is_accepting()

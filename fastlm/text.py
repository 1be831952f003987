"""Text generation results: what :class:`fastlm.LanguageModel` returns and streams.

A call runs the engine (:func:`fastlm.generation.generate_steps`) with one :class:`TextRow` per prompt. The
row detokenizes its tokens as they come, ends the row when the text reaches a stop string (or the tokens a
stop sequence, or a grammar completes), and releases text only once no stop can begin in it any more: a
stream never shows text that later turns out to be part of a stop. The text returned, the text streamed and
the decoded tokens agree: ``text`` is ``decode(token_ids)`` up to the stop string.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import FastLMValueError
from .generation import RowHook
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds and rates of one call (shared by the rows of a batch)."""
    time_to_first_token: float     # from the call to the first sampled token: the prefill, mostly
    prompt_tps: float              # prompt tokens (all rows) / time_to_first_token
    generation_tps: float          # tokens after each row's first / the time after the first token
    total: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token with its log-probability under the raw logits and, if asked, the n most probable
    alternatives as (token id, text, logprob)."""
    id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass
class GenerationResult:
    """One prompt's continuation. ``str(result)`` is its text."""
    text: str
    token_ids: list[int]
    finish_reason: str             # "stop" (stop string, stop sequence, grammar complete), "eos" or "length"
    usage: Usage
    timings: Timings | None = None
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0         # prompt tokens reused from a prompt cache (chat sessions)

    def __str__(self) -> str:
        return self.text


@dataclass
class StreamPiece:
    """A piece of a streamed continuation: new text (possibly empty while a stop string may be forming),
    the tokens it came with and their logprobs; the last piece has ``finish_reason``, ``usage`` and
    ``timings``. ``str(piece)`` is its text."""
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None

    def __str__(self) -> str:
        return self.text


def check_stop(stop) -> list[str]:
    """None, one string or a list of non-empty strings."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise FastLMValueError(f"stop must be a string or a list of strings, got {stop!r}")
    if any(s == "" for s in stops):
        raise FastLMValueError("stop strings must not be empty")
    return list(stops)


class TextRow(RowHook):
    """The text side of one row: detokenizing, stop strings, token stop sequences, an optional grammar."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids, stops: list[str], stop_sequences: list[list[int]],
                 grammar: RowHook | None = None):
        self._tokenizer = tokenizer
        self._decoder = tokenizer.decoder(prompt_ids, skip_special_tokens=True)
        self._stops, self._sequences, self._grammar = stops, stop_sequences, grammar
        self._longest = max(map(len, stops), default=0)
        self.tokens: list[int] = []
        self.text = ""
        self._ends: list[int] = []      # len(text) after each token
        self._shown = 0                 # characters released so far
        self.stopped = False

    def mask(self, tokens: np.ndarray, logits: np.ndarray) -> None:
        if self._grammar is not None:
            self._grammar.mask(tokens, logits)

    def stop(self, token: int) -> bool:
        self.tokens.append(token)
        before = len(self.text)
        self.text += self._decoder.push(token)
        self._ends.append(len(self.text))
        for seq in self._sequences:
            if self.tokens[-len(seq):] == seq:
                self._end_at(self._ends[-len(seq) - 1] if len(self.tokens) > len(seq) else 0)
                return True
        if self._stops:
            start = max(0, before - self._longest + 1)          # a new match must use a new character
            hits = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
            if hits:
                self._end_at(min(hits))
                return True
        if self._grammar is not None and self._grammar.stop(token):
            self.finish()
            return True
        return False

    def _end_at(self, end: int) -> None:
        self.text = (self.text + self._decoder.flush())[:end]
        self.stopped = True

    def finish(self) -> None:
        """The row ended without a stop of its own (eos, length): the decoder's tail belongs to the text."""
        if not self.stopped:
            self.text += self._decoder.flush()
            self.stopped = True

    def release(self) -> str:
        """Text that no stop can begin in any more, not released before."""
        end = len(self.text) if self.stopped else self._safe_end()
        piece, self._shown = self.text[self._shown:end], max(self._shown, end)
        return piece

    def _safe_end(self) -> int:
        end = len(self.text)
        for s in self._stops:               # the longest tail of the text that begins a stop string
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    end = min(end, len(self.text) - k)
                    break
        for seq in self._sequences:         # ... or whose tokens begin a stop sequence
            for k in range(min(len(seq) - 1, len(self.tokens)), 0, -1):
                if self.tokens[-k:] == seq[:k]:
                    end = min(end, self._ends[-k - 1] if len(self.tokens) > k else 0)
                    break
        return end

    def logprob(self, token: int, logprob: float | None, top) -> TokenLogprob | None:
        if logprob is None:
            return None
        decode = lambda i: self._tokenizer.decode([i])  # noqa: E731
        return TokenLogprob(token, decode(token), logprob, tuple((i, decode(i), lp) for i, lp in top or ()))


class Clock:
    """Timings of one call: started at construction, first token marked, rates at the end."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first: float | None = None

    def mark(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def timings(self, prompt_tokens: int, completion_tokens: int, rows: int) -> Timings:
        end = time.perf_counter()
        first = self.first if self.first is not None else end
        ttft = first - self.start
        after = max(0, completion_tokens - rows)
        return Timings(ttft, prompt_tokens / ttft if ttft > 0 else 0.0,
                       after / (end - first) if end > first else 0.0, end - self.start)

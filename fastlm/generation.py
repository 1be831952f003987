"""Autoregressive generation over a model, as free functions (gpt-fast's shape): the engine
(:func:`generate_steps`: KV cache, ragged batches, streaming) and the loops users call, :func:`generate`,
:func:`generate_batch` and :func:`stream` (:class:`fastlm.CausalLM` keeps them as thin methods).

Randomness: every row draws its uniforms (one per new token) from its own generator, seeded by that row's
seed, so a row's tokens depend only on its prompt, its options and its seed, never on the other rows of
the batch or on whether the cache is used. ``seed`` may be one integer (every row uses it), one per row,
or None (fresh entropy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .config import ModelConfig
from .errors import FastLMTypeError, FastLMValueError
from .sampling import Sampler
from .validation import check_eos, check_int, check_token_ids, row_uniforms

if TYPE_CHECKING:
    from .model import CausalLM


# ------------------------------------------------------------------------------------------------ engine

@dataclass
class TokenEvent:
    """One new token of one row, as :meth:`CausalLM.stream` yields it."""
    row: int                       # index of the prompt in the batch
    token: int
    logprob: float | None          # log-probability under the model's raw distribution, if requested
    finish_reason: str | None      # None while the row goes on; "eos", "stop" or "length" on its last token
    top_logprobs: list[tuple[int, float]] | None = None   # the n most probable raw tokens, if requested


class RowHook:
    """Per-row control of the engine (structured output, text stop strings): ``mask`` may change the row's
    next-token logits in place before sampling (a grammar sets -inf where it forbids); ``stop`` is told each
    token the row takes and returns True to end the row with finish reason "stop"."""

    def mask(self, tokens: np.ndarray, logits: np.ndarray) -> None:
        pass

    def stop(self, token: int) -> bool:
        return False


def shared_prefix(cached: np.ndarray, prompt: np.ndarray) -> int:
    """How many leading tokens ``cached`` and ``prompt`` share, leaving at least the prompt's last token
    (its logits must be computed)."""
    n = min(len(cached), len(prompt) - 1)
    differ = np.flatnonzero(cached[:n] != prompt[:n])
    return int(differ[0]) if differ.size else n


class PromptCache:
    """The KV cache of one conversation kept between calls: ``tokens`` are the positions it holds. A call
    given it reuses the longest common prefix of those tokens and its prompt and prefills only the rest
    (:class:`fastlm.api.ChatSession`).

    It holds up to ``max_len`` positions (default the model's max_seq_len), but its storage ``kv`` is
    allocated as the conversation needs it: :meth:`reserve` grows it, at least doubling."""

    def __init__(self, model: "CausalLM", max_len: int | None = None):
        self.max_len = model.max_seq_len if max_len is None else check_int("max_len", max_len, 1)
        if self.max_len > model.max_seq_len:
            raise FastLMValueError(f"max_len {self.max_len} exceeds the model's max_seq_len {model.max_seq_len}")
        self.model = model
        self.kv = model.new_cache(1, min(self.max_len, model.prefill_chunk))
        self.tokens = np.empty(0, np.int64)
        self.reused = 0                          # positions the last call took from the cache

    def reserve(self, positions: int) -> None:
        """Storage for ``positions`` (at most max_len) positions, the cached ones kept."""
        if positions <= self.kv.max_len:
            return
        if positions > self.max_len:
            raise FastLMValueError(f"{positions} positions exceed the prompt cache's max_len {self.max_len}")
        kv = self.model.new_cache(1, min(self.max_len, max(positions, 2 * self.kv.max_len)))
        n = kv.lengths[0] = self.kv.lengths[0]
        kv.k[:, :, :, :n], kv.v[:, :, :, :n] = self.kv.k[:, :, :, :n], self.kv.v[:, :, :, :n]
        self.kv = kv

    def reuse(self, prompt: np.ndarray) -> int:
        """Keep the positions shared with ``prompt`` (at least its last token is left to compute, for its
        logits) and return how many."""
        common = shared_prefix(self.tokens, prompt)
        self.kv.lengths[0] = common
        self.tokens = self.tokens[:common]
        self.reused = common
        return common


def check_logits_processors(processors) -> list:
    """None or a sequence of callables ``(token_ids, logits) -> logits``."""
    if processors is None:
        return []
    if callable(processors) or not all(callable(p) for p in processors):
        raise FastLMTypeError("logits_processors must be a list of callables (token_ids, logits) -> logits")
    return list(processors)


def _apply_processors(processors: list, tokens: np.ndarray, logits: np.ndarray) -> None:
    """logits (V,) <- each processor's result in turn, checked before it reaches the sampler."""
    for proc in processors:
        result = np.asarray(proc(tokens, logits))
        if result.shape != logits.shape or not np.issubdtype(result.dtype, np.floating):
            raise FastLMValueError(f"logits processor {getattr(proc, '__name__', proc)!r} returned "
                                   f"{result.dtype} of shape {result.shape}; expected floats of shape "
                                   f"{logits.shape}")
        logits[...] = result


@dataclass
class Generation:
    """One row's result: its new tokens (the stopping eos or stop sequence included) and why it stopped."""
    prompt: np.ndarray
    tokens: np.ndarray
    finish_reason: str             # "eos", "stop" (a stop sequence) or "length" (max_new_tokens or max_seq_len)
    logprobs: np.ndarray | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = field(default=None, repr=False)


def check_prompts(prompts, config: ModelConfig, sliding_window: bool) -> list[np.ndarray]:
    """A list of 1-D int64 prompts, each non-empty, in the vocabulary and (unless the window slides) no
    longer than max_seq_len. A (L,) array is one prompt, a (B, L) array B prompts."""
    if isinstance(prompts, np.ndarray) or (isinstance(prompts, Sequence) and prompts
                                           and np.ndim(prompts[0]) == 0):
        arr = np.asarray(prompts)
        prompts = [arr] if arr.ndim == 1 else list(arr)
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise FastLMValueError("prompts must be a non-empty list of token-id sequences")
    limit = np.iinfo(np.int64).max if sliding_window else config.max_seq_len
    return [check_token_ids(p, config.vocab_size, limit)[0] for p in prompts]


def check_stop_sequences(stop_sequences, vocab_size: int) -> list[np.ndarray]:
    if stop_sequences is None:
        return []
    out = []
    for seq in stop_sequences:
        arr = np.asarray(seq)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise FastLMValueError(f"each stop sequence must be a non-empty sequence of token ids, got {seq!r}")
        if arr.min() < 0 or arr.max() >= vocab_size:
            raise FastLMValueError(f"stop sequence {seq!r} holds ids outside the vocabulary [0, {vocab_size})")
        out.append(arr.astype(np.int64))
    return out


class _Rows:
    """Per-slot state of the live rows. Slots 0..active-1 hold the rows still generating; a finished row's
    slot is refilled with the last live one, so every batched call runs over one contiguous block."""

    def __init__(self, prompts: list[np.ndarray], requests: list[int], max_new_tokens: int):
        B = len(prompts)
        self.request = np.array(requests, np.int64)                   # slot -> index of the prompt
        self.history = np.zeros((B, max(map(len, prompts)) + max_new_tokens), np.int64)  # prompt + new tokens
        self.lengths = np.array([len(p) for p in prompts], np.int64)
        for b, p in enumerate(prompts):
            self.history[b, :len(p)] = p
        self.active = B

    def swap(self, a: int, b: int) -> None:
        for arr in (self.request, self.lengths):
            arr[[a, b]] = arr[[b, a]]
        self.history[[a, b]] = self.history[[b, a]]


def generate_steps(model: "CausalLM", prompts, max_new_tokens: int, sampler, *, eos_token_id=None,
                   stop_sequences=None, seed=None, use_cache: bool = True,
                   sliding_window: bool = False, logits_processors=None,
                   hooks: Sequence[RowHook | None] | None = None, prompt_cache: PromptCache | None = None
                   ) -> Iterator[list[TokenEvent] | list[Generation]]:
    """The engine. Yields, after every step, the list of TokenEvents of the rows that took a token; when
    every row has finished it returns (StopIteration.value) the list of :class:`Generation` in prompt order.

    Before each step's sampling, ``logits_processors`` (callables ``(token_ids, logits) -> logits``: the
    row's prompt and tokens so far, its (V,) logits; mlx-lm's and Hugging Face's convention) run in order on
    every row, then the row's :class:`RowHook` (``hooks``: one or None per prompt) masks them; the compiled
    sampler chain follows. Without either, a step runs no Python per row. ``prompt_cache`` (one prompt):
    keep the KV cache between calls, prefilling only what the prompt does not share with it.

    With the cache: every prompt is prefilled into its own cache row, then each step decodes one token for
    every live row in one batched call; finished rows leave the batch at once. Without it, each step re-runs
    each live row's whole sequence (the naive loop). With ``sliding_window``, a row that reaches max_seq_len
    goes on: its next logits are those of the textbook's truncated loop, forward(last max_seq_len tokens),
    i.e. the window is re-encoded from position 0 each step, so the dropped token's influence is gone.
    """
    c = model.config
    prompts = check_prompts(prompts, c, sliding_window)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
    eos = check_eos(eos_token_id, c.vocab_size)
    stops = check_stop_sequences(stop_sequences, c.vocab_size)
    processors = check_logits_processors(logits_processors)
    B, W = len(prompts), c.max_seq_len
    hooks = list(hooks) if hooks is not None else [None] * B
    if len(hooks) != B:
        raise FastLMValueError(f"hooks holds {len(hooks)} entries for {B} prompts")
    per_row = bool(processors) or any(h is not None for h in hooks)      # Python per row and step, or none
    uniforms = row_uniforms(seed, B, max_new_tokens)
    new_tokens: list[list[int]] = [[] for _ in range(B)]
    logprobs: list[list[float]] = [[] for _ in range(B)]
    top: list[list] = [[] for _ in range(B)]
    # A row with nothing to generate (no budget, or a full context that may not slide) is done already.
    results: list[Generation | None] = [
        Generation(p, np.empty(0, np.int64), "length")
        if max_new_tokens == 0 or (len(p) >= W and not sliding_window) else None for p in prompts]
    live = [b for b in range(B) if results[b] is None]
    if not live:
        return results
    rows = _Rows([prompts[b] for b in live], live, max_new_tokens)
    if prompt_cache is not None:
        if not isinstance(prompt_cache, PromptCache) or B != 1 or not use_cache or sliding_window:
            raise FastLMValueError("a prompt_cache serves one prompt, with the cache and no sliding window")
        W = min(W, prompt_cache.max_len)
        if len(prompts[0]) + max_new_tokens > W:
            raise FastLMValueError(f"the prompt ({len(prompts[0])} tokens) and {max_new_tokens} new tokens exceed "
                                   f"the prompt cache's {W} positions")
        prompt_cache.reserve(len(prompts[0]) + max_new_tokens)
    source = (_CachedLogits if use_cache else _NaiveLogits)(model, rows, W, sliding_window, prompt_cache)
    logits = source.start()
    for step in range(max_new_tokens):
        n = rows.active
        for slot in range(n) if per_row else ():
            row_tokens, hook = rows.history[slot, :rows.lengths[slot]], hooks[rows.request[slot]]
            _apply_processors(processors, row_tokens, logits[slot])
            if hook is not None:
                hook.mask(row_tokens, logits[slot])
        out = sampler(logits[:n], uniforms[rows.request[:n], step], rows.history[:n], rows.lengths[:n])
        events, finished = [], []
        for slot in range(n):
            b, token = int(rows.request[slot]), int(out.tokens[slot])
            rows.history[slot, rows.lengths[slot]] = token
            rows.lengths[slot] += 1
            new_tokens[b].append(token)
            if out.logprobs is not None:
                logprobs[b].append(float(out.logprobs[slot]))
            if out.top_ids is not None:
                top[b].append(list(zip(out.top_ids[slot].tolist(), out.top_logprobs[slot].tolist())))
            reason = _finish_reason(new_tokens[b], eos, stops, max_new_tokens,
                                    int(rows.lengths[slot]) >= W and not sliding_window, hooks[b])
            events.append(TokenEvent(b, token, logprobs[b][-1] if logprobs[b] else None, reason,
                                     top[b][-1] if top[b] else None))
            if reason:
                results[b] = Generation(prompts[b], np.array(new_tokens[b], np.int64), reason,
                                        np.array(logprobs[b]) if out.logprobs is not None else None,
                                        top[b] if out.top_ids is not None else None)
                finished.append(slot)
        yield events
        for slot in reversed(finished):          # highest first, so each refill comes from a live slot
            last = rows.active - 1
            if slot != last:
                rows.swap(slot, last)
                source.move(last, slot)
            rows.active -= 1
        if rows.active == 0:
            break
        logits = source.step()
    if prompt_cache is not None:                 # the positions it now holds: all fed tokens
        prompt_cache.tokens = rows.history[0, :int(prompt_cache.kv.lengths[0])].copy()
    return results


def _finish_reason(tokens: list[int], eos: frozenset[int], stops: list[np.ndarray], max_new_tokens: int,
                   at_max_len: bool, hook: RowHook | None) -> str | None:
    if tokens[-1] in eos:
        return "eos"
    for seq in stops:
        if len(tokens) >= len(seq) and tokens[-len(seq):] == seq.tolist():
            return "stop"
    if hook is not None and hook.stop(tokens[-1]):
        return "stop"
    if len(tokens) >= max_new_tokens or at_max_len:
        return "length"
    return None


class _CachedLogits:
    """Next-token logits from a KV cache: prompts prefilled once, then one batched decode per step."""

    def __init__(self, model: "CausalLM", rows: _Rows, window: int, sliding: bool,
                 prompt_cache: PromptCache | None = None):
        self.model, self.rows, self.window, self.sliding = model, rows, window, sliding
        self.prompt_cache = prompt_cache
        B = len(rows.request)
        self.cache = prompt_cache.kv if prompt_cache else model.new_cache(B, min(window, rows.history.shape[1]))
        self.workspace = model.new_workspace(max(B, model.prefill_chunk), self.cache.max_len)
        self.logits = np.empty((B, model.vocab_size), model.dtype)

    def _encode(self, slot: int, tokens: np.ndarray, start: int = 0) -> None:
        """Encode a row's tokens from position ``start`` on (0: the prompt, or a slid window; a prompt
        cache's common prefix already holds the positions before it)."""
        self.cache.lengths[slot] = start
        if len(tokens) > start:
            self.model.prefill(tokens[None, start:], self.cache, slot, self.workspace,
                               self.logits[slot:slot + 1])

    def start(self) -> np.ndarray:
        for slot in range(self.rows.active):
            n = int(self.rows.lengths[slot])
            tokens = self.rows.history[slot, max(0, n - self.window):n]
            self._encode(slot, tokens, self.prompt_cache.reuse(tokens) if self.prompt_cache else 0)
        return self.logits

    def step(self) -> np.ndarray:
        n, rows = self.rows.active, self.rows
        if self.sliding:
            # A full row re-encodes its last window - 1 tokens; the decode below then adds the newest one
            # at position window - 1, which is exactly forward(last window tokens)[-1].
            for slot in np.flatnonzero(self.cache.lengths[:n] >= self.cache.max_len):
                end = int(rows.lengths[slot]) - 1
                self._encode(slot, rows.history[slot, end - (self.cache.max_len - 1):end])
        last = rows.history[np.arange(n), rows.lengths[:n] - 1]
        return self.model.decode(last, self.cache, 0, self.workspace, self.logits[:n])

    def move(self, src: int, dst: int) -> None:
        self.cache.move_row(src, dst)


class _NaiveLogits:
    """Next-token logits by re-running each live row's whole sequence (or its last window) every step."""

    def __init__(self, model: "CausalLM", rows: _Rows, window: int, sliding: bool, prompt_cache=None):
        self.model, self.rows, self.window = model, rows, window
        self.logits = np.empty((len(rows.request), model.vocab_size), model.dtype)

    def step(self) -> np.ndarray:
        for slot in range(self.rows.active):
            n = int(self.rows.lengths[slot])
            self.logits[slot] = self.model.forward(self.rows.history[slot, max(0, n - self.window):n])[0, -1]
        return self.logits

    start = step

    def move(self, src: int, dst: int) -> None:
        pass                                   # nothing is kept between steps


# ------------------------------------------------------------------------------------ the public loops

def generate(model: "CausalLM", prompt_tokens, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, greedy: bool = False, eos_token_id=None, seed=None, *,
             use_cache: bool = True, sliding_window: bool = False, **sampling) -> np.ndarray:
    """Sample up to ``max_new_tokens`` tokens after each prompt row; returns (B, L + n) int64, prompts
    included.

    Stops at ``max_seq_len`` (unless ``sliding_window``), or once every row has produced an eos id
    (``eos_token_id``: one id or several; a finished row is padded with its eos). Each row's tokens
    depend only on its prompt, the options and ``seed`` (see :mod:`fastlm.generation`), and are the
    same with or without the cache. ``sampling`` takes the rest of :class:`fastlm.Sampler`'s options
    (min_p, penalties, logit_bias). For ragged prompts, stop sequences, log-probabilities and finish
    reasons use :func:`generate_batch`; for token-by-token output, :func:`stream`.
    """
    limit = np.iinfo(np.int64).max if sliding_window else model.max_seq_len
    ids = check_token_ids(prompt_tokens, model.vocab_size, limit)
    results = generate_batch(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             greedy=greedy, eos_token_id=eos_token_id, seed=seed, use_cache=use_cache,
                             sliding_window=sliding_window, **sampling)
    width = max(len(r.tokens) for r in results)
    out = np.empty((ids.shape[0], ids.shape[1] + width), np.int64)
    out[:, : ids.shape[1]] = ids
    for row, r in zip(out, results):
        row[ids.shape[1]:] = np.pad(r.tokens, (0, width - len(r.tokens)), mode="edge") if width else r.tokens
    return out


def generate_batch(model: "CausalLM", prompts, max_new_tokens: int, **options) -> list[Generation]:
    """Generate for a batch of prompts of any lengths (a list of id sequences, or a (B, L) array).

    Returns one :class:`Generation` per prompt: its new tokens, why it stopped (``"eos"``, ``"stop"`` for a
    stop sequence of token ids or a hook, ``"length"``) and, when requested with ``logprobs=True`` /
    ``top_logprobs=n``, log-probabilities. Takes the options of :func:`stream_steps`.
    """
    return run_to_end(stream_steps(model, prompts, max_new_tokens, **options))


def run_to_end(steps):
    """Drive a step generator to its end and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def stream(model: "CausalLM", prompts, max_new_tokens: int, **options) -> Iterator[TokenEvent]:
    """Like :func:`generate_batch`, but yields each new token as a :class:`TokenEvent` as soon as it is
    sampled (rows of one step in slot order; ``finish_reason`` set on a row's last token)."""
    for events in stream_steps(model, prompts, max_new_tokens, **options):
        yield from events


def stream_steps(model: "CausalLM", prompts, max_new_tokens: int, *, eos_token_id=None, stop_sequences=None,
                 seed=None, use_cache: bool = True, sliding_window: bool = False, sampler: Sampler | None = None,
                 logits_processors=None, hooks=None, prompt_cache: PromptCache | None = None, **sampling):
    """:func:`generate_steps` with its sampler made from options: ``sampler`` is a configured
    :class:`fastlm.Sampler`; otherwise ``sampling`` holds its options (temperature, top_k, ...). ``seed``:
    one integer for every row, one per row, or None."""
    if sampler is None:
        sampler = Sampler(**sampling)
    elif sampling:
        raise FastLMValueError(f"pass either a sampler or sampling options, not both: {sorted(sampling)}")
    return generate_steps(model, prompts, max_new_tokens, sampler, eos_token_id=eos_token_id,
                          stop_sequences=stop_sequences, seed=seed, use_cache=use_cache,
                          sliding_window=sliding_window, logits_processors=logits_processors, hooks=hooks,
                          prompt_cache=prompt_cache)


# ------------------------------------------------------------------------------------ continuous batching

@dataclass
class Request:
    """One row of a :class:`ContinuousBatch`: its prompt, budget, own sampler and seed, stop tokens and
    hook. ``cancelled`` may be set from another thread: the row leaves at the next step."""
    prompt: np.ndarray
    max_new_tokens: int
    sampler: Sampler
    seed: int | None = None
    eos: frozenset[int] = frozenset()
    hook: RowHook | None = None
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cached_tokens: int = 0                   # prompt positions taken from the prefix store

    def __post_init__(self):
        self._uniforms = row_uniforms(self.seed, 1, self.max_new_tokens)[0]


class PrefixStore:
    """KV of finished requests kept for later ones (a server's prompt cache): bounded to ``max_bytes``,
    least recently used out first. ``lookup`` finds the entry sharing the longest token prefix with a
    prompt."""

    def __init__(self, max_bytes: int):
        self.max_bytes = check_int("max_bytes", max_bytes, 0)
        self.entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # (tokens, k, v), most recent last
        self.bytes = 0

    def put(self, tokens: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Keep positions ``tokens`` with their keys and values (layers, hkv, n, dk), copied."""
        size = k.nbytes + v.nbytes
        if size > self.max_bytes or len(tokens) == 0:
            return
        self.entries = [e for e in self.entries if not (len(e[0]) <= len(tokens)
                                                        and np.array_equal(e[0], tokens[:len(e[0])]))]
        self.entries.append((tokens.copy(), k.copy(), v.copy()))
        self.bytes = sum(e[1].nbytes + e[2].nbytes for e in self.entries)
        while self.bytes > self.max_bytes:
            _, k0, v0 = self.entries.pop(0)
            self.bytes -= k0.nbytes + v0.nbytes

    def lookup(self, prompt: np.ndarray) -> tuple[int, np.ndarray | None, np.ndarray | None]:
        """(n, k, v): the longest prefix of ``prompt`` held, leaving at least its last token to compute."""
        best, found = 0, None
        for i, (tokens, k, v) in enumerate(self.entries):
            common = shared_prefix(tokens, prompt)
            if common > best:
                best, found = common, i
        if found is None:
            return 0, None, None
        entry = self.entries.pop(found)
        self.entries.append(entry)                   # most recently used
        return best, entry[1], entry[2]


class ContinuousBatch:
    """Rows that join and leave between decode steps (a server's continuous batching): ``add`` prefills a
    request into a free cache row, ``step`` samples one token for every row (each with its own sampler and
    seed, so a row's tokens are the same as alone), lets finished rows go, and decodes the rest in one
    batched call. With ``prefix_bytes``, the KV of finished rows is kept (a :class:`PrefixStore`) and a
    new request copies the longest prefix it shares, prefilling only the rest. Not thread-safe: one thread
    owns it (and the model)."""

    def __init__(self, model: "CausalLM", slots: int, max_len: int | None = None, prefix_bytes: int = 0):
        self.model, self.slots = model, check_int("slots", slots, 1)
        self.store = PrefixStore(prefix_bytes)        # 0: no prompt cache
        self.cache = model.new_cache(slots, max_len)
        self.workspace = model.new_workspace(max(slots, model.prefill_chunk), self.cache.max_len)
        self.logits = np.empty((slots, model.vocab_size), model.dtype)
        self.rows: list[Request] = []                 # row i lives in cache row i
        self._history = np.zeros((slots, self.cache.max_len), np.int64)

    @property
    def free(self) -> int:
        return self.slots - len(self.rows)

    def add(self, request: Request) -> None:
        """Prefill ``request`` into the next free row; it samples its first token at the next step."""
        if not self.free:
            raise FastLMValueError("no free row: wait for a step to finish one")
        n = len(request.prompt)
        if n == 0 or n + request.max_new_tokens > self.cache.max_len:
            raise FastLMValueError(f"a prompt of {n} tokens and {request.max_new_tokens} new tokens do not fit "
                                   f"the {self.cache.max_len} positions of a row")
        slot = len(self.rows)
        self._history[slot, :n] = request.prompt
        reused, k, v = self.store.lookup(request.prompt)
        if reused:                                   # a prompt cache hit: copy its positions, compute the rest
            self.cache.k[:, slot, :, :reused] = k[:, :, :reused]
            self.cache.v[:, slot, :, :reused] = v[:, :, :reused]
        self.cache.lengths[slot] = reused
        request.cached_tokens = reused
        self.model.prefill(request.prompt[None, reused:], self.cache, slot, self.workspace,
                           self.logits[slot:slot + 1])
        self.rows.append(request)

    def step(self) -> list[tuple[Request, TokenEvent]]:
        """One token for every row; returns the (request, event) pairs, a finished row's last."""
        events, done = [], []
        for slot, req in enumerate(self.rows):
            if req.cancelled:
                req.finish_reason = "cancelled"
                done.append(slot)
                continue
            length = len(req.prompt) + len(req.tokens)
            history = self._history[slot:slot + 1]
            if req.hook is not None:
                req.hook.mask(history[0, :length], self.logits[slot])
            step = len(req.tokens)
            out = req.sampler(self.logits[slot:slot + 1], req._uniforms[step:step + 1], history,
                              np.array([length]))
            token = int(out.tokens[0])
            req.tokens.append(token)
            self._history[slot, length] = token
            reason = _finish_reason(req.tokens, req.eos, [], req.max_new_tokens, False, req.hook)
            req.finish_reason = reason
            top = (list(zip(out.top_ids[0].tolist(), out.top_logprobs[0].tolist()))
                   if out.top_ids is not None else None)
            events.append((req, TokenEvent(slot, token, None if out.logprobs is None else float(out.logprobs[0]),
                                           reason, top)))
            if reason:
                done.append(slot)
        for slot in reversed(done):               # keep what it computed, then refill its row with the last one
            if self.store.max_bytes:
                n = int(self.cache.lengths[slot])
                self.store.put(self._history[slot, :n], self.cache.k[:, slot, :, :n], self.cache.v[:, slot, :, :n])
            last = len(self.rows) - 1
            if slot != last:
                self.cache.move_row(last, slot)
                self._history[slot] = self._history[last]
                self.logits[slot] = self.logits[last]
                self.rows[slot] = self.rows[last]
            self.rows.pop()
        n = len(self.rows)
        if n:
            last_tokens = np.array([r.tokens[-1] for r in self.rows])
            self.model.decode(last_tokens, self.cache, 0, self.workspace, self.logits[:n])
        return events

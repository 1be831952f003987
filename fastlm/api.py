"""``fastlm.load``: a real model and its tokenizer behind text-in, text-out calls."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import generation, structured
from .config import ModelConfig
from .errors import FastLMError, FastLMTypeError, FastLMValueError, ModelFormatError
from .generation import PromptCache, check_stop_sequences
from .model import CausalLM
from .runtime import StepThreads, apply_to_this_thread, get_num_threads
from .text import Clock, GenerationResult, StreamPiece, TextRow, Usage, check_stop
from .tokenizer import Tokenizer
from .sampling import Sampler
from .validation import SamplerSettings, check_int
from .weights import fetch_default_model, load_gguf, load_safetensors

DEFAULT_MODEL = "smollm2-135m-instruct"

# Sampling defaults for text (llama.cpp's): the engine's own default is plain temperature-1 sampling.
TEXT_DEFAULTS: dict[str, Any] = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


# Keywords the text calls take besides the sampler's own (see fastlm.Sampler).
_TEXT_KEYWORDS = frozenset({"stop", "stop_sequences", "eos_token_id", "seed", "logits_processors", "json_schema",
                            "regex", "grammar", "sampler"})
_SAMPLER_KEYWORDS = frozenset(f.name for f in dataclasses.fields(SamplerSettings))


class LanguageModel:
    """A loaded model: ``model`` (a :class:`CausalLM`), ``tokenizer`` and text-level generation.

    ``generate``, ``stream``, ``generate_batch`` and ``chat`` take the sampler's options (temperature,
    top_k, top_p, min_p, penalties, logit_bias, logprobs, top_logprobs; unset ones default to
    :data:`TEXT_DEFAULTS`, or pass a configured ``sampler``) and:

    - ``seed``: one integer (every row), one per prompt, or None;
    - ``stop``: a string or a list of strings; the text ends before the first one (finish reason "stop");
      ``stop_sequences``: lists of token ids, likewise; ``eos_token_id`` (default: the tokenizer's end of
      text and end of turn);
    - ``logits_processors``: callables ``(token_ids, logits) -> logits`` applied in order before sampling;
    - ``json_schema`` (a dict or its JSON text), ``regex`` or ``grammar`` (Lark or GBNF): structured output
      (:mod:`fastlm.structured`).

    They return :class:`~fastlm.text.GenerationResult` (``str()`` of it is the text) or stream
    :class:`~fastlm.text.StreamPiece` s.

    **Threads.** One LanguageModel may serve any number of Python threads at once, with no lock: every call
    keeps its own state (KV cache, activation workspace, sampler and its scratch, random generator, stream
    decoder, chat-template budget) and shares only what nothing writes after loading (weights, RoPE tables,
    the tokenizer). A call's tokens depend on its prompt, options and ``seed`` alone, never on what other
    threads run meanwhile. Each call runs its kernels on up to :func:`fastlm.set_num_threads` OpenMP threads of
    its own (:class:`fastlm.runtime.StepThreads` drops to one when the cores are taken), so calls in parallel
    share the cores; a :class:`fastlm.Sampler` passed in (``sampler=``) is the caller's and must not be used by
    two calls at once; a :class:`ChatSession` belongs to one thread.
    """

    def __init__(self, model: CausalLM, tokenizer: Tokenizer, source: Path, metadata: dict[str, Any]):
        if tokenizer.vocab_size > model.vocab_size:
            raise FastLMValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                                   f"{model.vocab_size}")
        self.model, self.tokenizer, self.source, self.metadata = model, tokenizer, source, metadata

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------------------------------- text calls

    def generate(self, prompt: str, max_new_tokens: int = 256, **options) -> GenerationResult:
        """The continuation of ``prompt`` (without the prompt)."""
        return self.generate_ids(self.encode(_check_text(prompt)), max_new_tokens, **options)

    def stream(self, prompt: str, max_new_tokens: int = 256, **options) -> Iterator[StreamPiece]:
        """The continuation of ``prompt``, streamed as :class:`StreamPiece` s."""
        return self.stream_ids(self.encode(_check_text(prompt)), max_new_tokens, **options)

    def generate_batch(self, prompts: list[str], max_new_tokens: int = 256, **options) -> list[GenerationResult]:
        """Continuations of several prompts at once (ragged rows of one batch; ``seed`` may give one per
        prompt): each result equals that prompt's own :meth:`generate` with its seed."""
        if isinstance(prompts, str) or not prompts:
            raise FastLMTypeError("prompts must be a non-empty list of strings")
        return self._run([self.encode(_check_text(p)) for p in prompts], max_new_tokens, options, "generate_batch")

    def generate_batch_ids(self, prompts: list[list[int]], max_new_tokens: int = 256,
                           **options) -> list[GenerationResult]:
        """:meth:`generate_batch` for prompts given as token ids."""
        if not prompts:
            raise FastLMTypeError("prompts must be a non-empty list of token-id lists")
        return self._run([list(p) for p in prompts], max_new_tokens, options, "generate_batch")

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = 256, **options) -> GenerationResult:
        """The continuation of a prompt given as token ids."""
        return self._run([prompt_ids], max_new_tokens, options, "generate")[0]

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int = 256, **options) -> Iterator[StreamPiece]:
        """The continuation of a prompt given as token ids, streamed: pieces as soon as their text is
        complete UTF-8 and cannot be part of a stop string."""
        steps = self._steps([prompt_ids], max_new_tokens, options, "stream")
        while True:
            try:
                yield from next(steps)
            except StopIteration:
                return

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template, ready for the assistant's turn."""
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def chat(self, messages: list[dict], max_new_tokens: int = 256, **options) -> GenerationResult:
        """The assistant's reply to ``messages`` (``[{"role": "user", "content": "..."}, ...]``); it ends at
        the template's end-of-turn token."""
        return self.generate_ids(self.chat_prompt(messages), max_new_tokens, **options)

    def chat_stream(self, messages: list[dict], max_new_tokens: int = 256, **options) -> Iterator[StreamPiece]:
        """The assistant's reply to ``messages``, streamed."""
        return self.stream_ids(self.chat_prompt(messages), max_new_tokens, **options)

    # ------------------------------------------------------------------------------------------ the driver

    def _run(self, prompts: list[list[int]], max_new_tokens: int, options: dict, caller: str):
        return generation.run_to_end(self._steps(prompts, max_new_tokens, options, caller))

    def chat_session(self, system: str | None = None, max_len: int | None = None) -> "ChatSession":
        """A conversation that keeps its KV cache between turns (see :class:`ChatSession`)."""
        return ChatSession(self, system, max_len)

    def _steps(self, prompts: list[list[int]], max_new_tokens: int, options: dict, caller: str,
               prompt_cache: PromptCache | None = None):
        """Yields each step's pieces (those of a one-prompt call: that row's); returns the results."""
        options, text_row = self._text_rows(options, caller)
        rows = [text_row(p) for p in prompts]
        clock = Clock()
        engine = generation.stream_steps(self.model, prompts, max_new_tokens, hooks=rows,
                                         prompt_cache=prompt_cache, **options)
        threads = StepThreads.shared(get_num_threads())   # steps on all threads or one: the faster
        count = threads.best
        try:
            for step in itertools.count():
                apply_to_this_thread(count)
                start = time.perf_counter()
                try:
                    events = next(engine)
                except StopIteration as done:
                    generations = done.value
                    break
                if step:                                  # the first step includes the prefill
                    threads.record(count, time.perf_counter() - start)
                count = threads.next_step()
                clock.mark()
                yield [_piece(rows[event.row], event) for event in events]
        finally:
            apply_to_this_thread()
        timings = clock.timings(sum(map(len, prompts)), sum(len(g.tokens) for g in generations), len(prompts))
        results = [_result(prompt, row, gen.tokens.tolist(), gen.finish_reason, gen.logprobs, gen.top_logprobs,
                           timings, prompt_cache.reused if prompt_cache else 0)
                   for prompt, row, gen in zip(prompts, rows, generations)]
        if len(prompts) == 1:             # the stream's last piece carries the totals
            yield [_last_piece(rows[0], results[0])]
        return results

    def text_request(self, prompt_ids: list[int], max_new_tokens: int = 256, **options) -> "TextRequest":
        """One prompt as a row for a :class:`~fastlm.generation.ContinuousBatch` (a server's engine):
        ``generate``'s options but logits processors and prompt caches."""
        if "logits_processors" in options:
            raise FastLMTypeError("text_request() takes no logits_processors")
        options, text_row = self._text_rows(options, "text_request")
        seed, eos, sampler = options.pop("seed", None), options.pop("eos_token_id"), options.pop("sampler", None)
        sampler = sampler if sampler is not None else Sampler(**options)
        if isinstance(seed, (list, tuple)):
            raise FastLMTypeError("text_request() takes one seed")
        row = text_row(prompt_ids)
        request = generation.Request(np.asarray(prompt_ids, np.int64), check_int("max_new_tokens", max_new_tokens, 1),
                                     sampler, seed, generation.check_eos(eos, self.model.vocab_size), row)
        return TextRequest(request, row)

    def continuous_batch(self, slots: int, max_len: int | None = None,
                         prefix_bytes: int = 0) -> generation.ContinuousBatch:
        """Rows that join and leave between steps, for :meth:`text_request` s (one thread owns it); with
        ``prefix_bytes``, a prompt cache of that size across requests."""
        return generation.ContinuousBatch(self.model, slots, max_len, prefix_bytes)

    def _text_rows(self, options: dict, caller: str):
        """The engine's options, and a maker of each prompt's :class:`TextRow` (stop strings and sequences,
        grammar) from the text-level ones."""
        options = self._check_options(options, caller)
        V = self.model.vocab_size
        stops = check_stop(options.pop("stop", None))
        sequences = [s.tolist() for s in check_stop_sequences(options.pop("stop_sequences", None), V)]
        grammar = structured.grammar_text(options.pop("json_schema", None), options.pop("regex", None),
                                          options.pop("grammar", None))

        def text_row(prompt: list[int]) -> TextRow:
            return TextRow(self.tokenizer, prompt, stops, sequences,
                           structured.GrammarRow(self.tokenizer, V, grammar) if grammar else None)
        return options, text_row

    def _check_options(self, options: dict, caller: str) -> dict:
        unknown = sorted(set(options) - _TEXT_KEYWORDS - _SAMPLER_KEYWORDS)
        if unknown:
            raise FastLMTypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}; it takes the "
                                  f"sampler's options ({', '.join(sorted(_SAMPLER_KEYWORDS))}) and "
                                  f"{', '.join(sorted(_TEXT_KEYWORDS))}")
        defaults = {} if "sampler" in options else TEXT_DEFAULTS      # a configured Sampler brings its own
        return {**defaults, "eos_token_id": sorted(self.tokenizer.eos_token_ids) or None, **options}


def _piece(row: TextRow, event) -> StreamPiece:
    """The text a token releases (a row that ended by itself gives up the text it held back)."""
    if event.finish_reason not in (None, "stop"):
        row.finish()
    lp = row.logprob(event.token, event.logprob, event.top_logprobs)
    return StreamPiece(row.release(), [event.token], None if lp is None else [lp], event.finish_reason)


def _result(prompt, row: TextRow, tokens: list[int], finish_reason: str, logprobs, top, timings,
            cached: int) -> GenerationResult:
    row.finish()
    entries = None
    if logprobs is not None:
        tops = top or [None] * len(tokens)
        entries = [row.logprob(int(t), float(lp), tp) for t, lp, tp in zip(tokens, logprobs, tops)]
    return GenerationResult(row.text, list(tokens), finish_reason, Usage(len(prompt), len(tokens)), timings,
                            entries, cached)


def _last_piece(row: TextRow, result: GenerationResult) -> StreamPiece:
    return StreamPiece(row.release(), [], None, result.finish_reason, result.usage, result.timings)


class TextRequest:
    """A prompt as a row of a continuous batch (:meth:`LanguageModel.text_request`): ``request`` goes to
    :meth:`ContinuousBatch.add`; each event of it becomes a :class:`StreamPiece` by :meth:`piece`; once
    it has finished, :meth:`result` is its :class:`GenerationResult`."""

    def __init__(self, request: generation.Request, row: TextRow):
        self.request, self.row = request, row
        self.clock = Clock()
        self._logprobs: list[float] = []
        self._top: list = []

    def cancel(self) -> None:
        self.request.cancelled = True

    def piece(self, event) -> StreamPiece:
        self.clock.mark()
        if event.logprob is not None:
            self._logprobs.append(event.logprob)
            self._top.append(event.top_logprobs)
        return _piece(self.row, event)

    def result(self) -> GenerationResult:
        r = self.request
        timings = self.clock.timings(len(r.prompt), len(r.tokens), 1)
        return _result(r.prompt, self.row, r.tokens, r.finish_reason, self._logprobs or None,
                       self._top if any(t is not None for t in self._top) else None, timings, r.cached_tokens)

    def last_piece(self) -> StreamPiece:
        return _last_piece(self.row, self.result())


class ChatSession:
    """A conversation with a prompt cache: each turn renders the whole history with the chat template,
    reuses the KV of the longest token prefix it shares with what the cache holds, and prefills only the
    rest, so a turn costs its new tokens, not the history. The replies equal those of fresh
    :meth:`LanguageModel.chat` calls on the same history (with the same options and seeds).

    ``send`` / ``stream`` take :meth:`LanguageModel.chat`'s options; ``messages`` is the history; ``save``
    and :meth:`load` keep a session (messages and cache) in a file.
    """

    def __init__(self, lm: LanguageModel, system: str | None = None, max_len: int | None = None):
        self.lm = lm
        self.system = system
        self.cache = PromptCache(lm.model, max_len)
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the cache's storage is kept)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.cache.tokens = self.cache.tokens[:0]

    def send(self, text: str, max_new_tokens: int = 256, **options) -> GenerationResult:
        """The assistant's reply to the user's ``text``; both join the history."""
        for _ in self._turn(text, max_new_tokens, options, "send"):
            pass
        return self._result

    def stream(self, text: str, max_new_tokens: int = 256, **options) -> Iterator[StreamPiece]:
        """``send``, streamed; the reply joins the history once the stream is done."""
        for pieces in self._turn(text, max_new_tokens, options, "stream"):
            yield from pieces

    def _turn(self, text: str, max_new_tokens: int, options: dict, caller: str):
        history = [*self.messages, {"role": "user", "content": _check_text(text)}]
        steps = self.lm._steps([self.lm.chat_prompt(history)], max_new_tokens, options, caller, self.cache)
        while True:
            try:
                yield next(steps)
            except StopIteration as done:
                self._result = done.value[0]
                break
        self.messages = [*history, {"role": "assistant", "content": self._result.text}]

    def save(self, path) -> None:
        """Write the messages and the cached positions to ``path`` (NumPy .npz)."""
        n = len(self.cache.tokens)
        with open(path, "wb") as f:
            np.savez(f, tokens=self.cache.tokens, k=self.cache.kv.k[:, :, :, :n], v=self.cache.kv.v[:, :, :, :n],
                     messages=json.dumps(self.messages), system=json.dumps(self.system),
                     model=repr(self.lm.config))

    @classmethod
    def load(cls, lm: LanguageModel, path, max_len: int | None = None) -> "ChatSession":
        """A session saved by :meth:`save`, for the same model."""
        try:
            with np.load(path, allow_pickle=False) as f:
                saved = {name: f[name] for name in ("tokens", "k", "v", "messages", "system", "model")}
        except (OSError, ValueError, KeyError) as e:
            raise FastLMValueError(f"{path}: not a saved chat session: {e}") from None
        if str(saved["model"]) != repr(lm.config):
            raise FastLMValueError(f"{path}: the session was saved with another model")
        session = cls(lm, json.loads(str(saved["system"])), max_len)
        n = len(saved["tokens"])
        if n <= session.cache.max_len:
            session.cache.reserve(n)
        if n > session.cache.max_len or saved["k"].shape != session.cache.kv.k[:, :, :, :n].shape:
            raise FastLMValueError(f"{path}: its {n} cached positions do not fit this session")
        session.cache.kv.k[:, :, :, :n], session.cache.kv.v[:, :, :, :n] = saved["k"], saved["v"]
        session.cache.kv.lengths[0] = n
        session.cache.tokens = saved["tokens"].astype(np.int64)
        session.messages = json.loads(str(saved["messages"]))
        return session


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise FastLMTypeError(f"a prompt must be a str, got {type(text).__name__}")
    return text


def resolve(path_or_name: str | os.PathLike) -> Path:
    """The file or directory behind a model name or path: the default model is fetched on first use."""
    if str(path_or_name) == DEFAULT_MODEL:
        return fetch_default_model()
    path = Path(path_or_name).expanduser()
    if not path.exists():
        raise FastLMError(f"no model at {str(path)!r}: give a .gguf file, a Hugging Face checkpoint directory "
                          f"or the name {DEFAULT_MODEL!r}")
    return path


def load(path_or_name: str | os.PathLike = DEFAULT_MODEL, dtype=np.float32, dequantize: bool = False,
         verbose: bool = False) -> LanguageModel:
    """Load a model and its tokenizer.

    ``path_or_name``: a GGUF file, a Hugging Face directory (``config.json``, ``model.safetensors`` or a
    sharded index, ``tokenizer.json``), or ``"smollm2-135m-instruct"`` (downloaded once into
    ``$FASTLM_CACHE``, default ``~/.cache/fastlm``). A GGUF file's F16 and block-quantized matrices stay as
    stored (memory-mapped) and the kernels compute on them, unless ``dequantize`` (or a float64 ``dtype``)
    asks for every weight decoded to ``dtype``; activations are ``dtype``.
    """
    path = resolve(path_or_name)
    start = time.perf_counter()
    if path.is_dir():
        config, params, metadata = load_safetensors(path, dtype)
        tokenizer = Tokenizer.from_pretrained_dir(path)
    else:
        config, params, metadata = load_gguf(path, dtype, quantized=not dequantize)
        tokenizer = Tokenizer.from_gguf_metadata(metadata)
    if tokenizer.vocab_size > config.vocab_size:     # ids the embedding has no row for
        raise ModelFormatError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, more than the "
                               f"{config.vocab_size} rows of the token embedding")
    model = CausalLM.from_params(config, params, dtype)
    if verbose:
        print(f"fastlm: loaded {path.name} ({config.num_layers} layers, d_model {config.d_model}, vocab "
              f"{config.vocab_size}) in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return LanguageModel(model, tokenizer, path, metadata)

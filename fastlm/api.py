"""``fastlm.load``: a real model and its tokenizer behind text-in, text-out calls."""
from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .config import ModelConfig
from .errors import FastLMError, FastLMValueError
from .model import CausalLM
from .runtime import StepThreads, apply_to_this_thread, get_num_threads
from .tokenizer import Tokenizer
from .weights import fetch_default_model, load_gguf, load_safetensors

DEFAULT_MODEL = "smollm2-135m-instruct"

# Sampling defaults for text (llama.cpp's): the engine's own default is plain temperature-1 sampling.
TEXT_DEFAULTS: dict[str, Any] = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


class LanguageModel:
    """A loaded model: ``model`` (a :class:`CausalLM`), ``tokenizer`` and text-level generation.

    ``generate``, ``stream`` and ``chat`` take every option of :meth:`CausalLM.generate_batch` (temperature,
    top_k, top_p, min_p, penalties, logit_bias, seed, stop_sequences, ...); unset sampling options default
    to :data:`TEXT_DEFAULTS`, and generation stops at the tokenizer's end-of-text / end-of-turn tokens.

    **Threads.** One LanguageModel may serve any number of Python threads at once, with no lock: every call
    keeps its own state (KV cache, activation workspace, sampler and its scratch, random generator, stream
    decoder, chat-template budget) and shares only what nothing writes after loading (weights, RoPE tables,
    the tokenizer). A call's tokens depend on its prompt, options and ``seed`` alone, never on what other
    threads run meanwhile. Each call runs its kernels on up to :func:`fastlm.set_num_threads` OpenMP threads of
    its own (:class:`fastlm.runtime.StepThreads` drops to one when the cores are taken), so calls in parallel
    share the cores; a :class:`fastlm.Sampler` passed in (``sampler=``) is the
    caller's and must not be used by two calls at once.
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

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int = 256, **options) -> Iterator[str]:
        """Text pieces of the continuation of ``prompt_ids``, each as soon as it is complete UTF-8."""
        apply_to_this_thread()
        defaults = {} if "sampler" in options else TEXT_DEFAULTS     # a configured Sampler brings its own
        options = {**defaults, "eos_token_id": sorted(self.tokenizer.eos_token_ids) or None, **options}
        decoder = self.tokenizer.decoder(prompt_ids, skip_special_tokens=True)
        events = self.model.stream([prompt_ids], max_new_tokens, **options)
        threads = StepThreads.shared(get_num_threads())   # steps on all threads or one: the faster
        count = threads.best
        try:
            for step in itertools.count():
                apply_to_this_thread(count)
                start = time.perf_counter()
                event = next(events, None)
                if event is None:
                    break
                if step:                                  # the first event includes the prefill
                    threads.record(count, time.perf_counter() - start)
                count = threads.next_step()
                piece = decoder.push(event.token)
                if piece:
                    yield piece
        finally:
            apply_to_this_thread()
        tail = decoder.flush()
        if tail:
            yield tail

    def stream(self, prompt: str, max_new_tokens: int = 256, **options) -> Iterator[str]:
        """The continuation of ``prompt``, streamed as text pieces."""
        return self.stream_ids(self.encode(prompt), max_new_tokens, **options)

    def generate(self, prompt: str, max_new_tokens: int = 256, **options) -> str:
        """The continuation of ``prompt`` (without the prompt)."""
        return "".join(self.stream(prompt, max_new_tokens, **options))

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template, ready for the assistant's turn."""
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def chat_stream(self, messages: list[dict], max_new_tokens: int = 256, **options) -> Iterator[str]:
        """The assistant's reply to ``messages``, streamed; it ends at the template's end-of-turn token."""
        return self.stream_ids(self.chat_prompt(messages), max_new_tokens, **options)

    def chat(self, messages: list[dict], max_new_tokens: int = 256, **options) -> str:
        """The assistant's reply to ``messages`` (``[{"role": "user", "content": "..."}, ...]``)."""
        return "".join(self.chat_stream(messages, max_new_tokens, **options))


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
    model = CausalLM.from_params(config, params, dtype)
    if verbose:
        print(f"fastlm: loaded {path.name} ({config.num_layers} layers, d_model {config.d_model}, vocab "
              f"{config.vocab_size}) in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return LanguageModel(model, tokenizer, path, metadata)

"""Fuzz chat templates: an input is a template's source and the contents of the messages rendered with it,
NUL-separated (:func:`split`). ``python -m fuzz.templates --seconds 300``."""
from __future__ import annotations

import functools

from fastlm.errors import FastLMValueError, ModelFormatError
from fastlm.tokenizer import Tokenizer

from . import harness, seeds

ROLES = ("system", "user", "assistant")


def split(data: bytes) -> tuple[str, list[dict]]:
    template, *contents = data.decode("utf-8", "replace").split("\0")
    return template, [{"role": ROLES[i % 3], "content": c} for i, c in enumerate(contents)]


@functools.lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf_metadata(seeds._tokenizer_metadata("gpt2"))


def check(data: bytes) -> None:
    template, messages = split(data)
    tok = tokenizer()
    tok.chat_template = template
    try:
        tok.apply_chat_template(messages, tools=[{"name": "f", "parameters": {"x": 1}}])
    except (FastLMValueError, ModelFormatError):   # the template rejected the messages, or is bad
        pass


if __name__ == "__main__":
    harness.main("templates", check, seeds.template_seeds)

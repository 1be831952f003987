"""Fuzz the tokenizer_config.json of a Hugging Face tokenizer directory (BOS/EOS, chat templates), beside a
fixed tokenizer.json: ``python -m fuzz.tokenizer --seconds 300``."""
from __future__ import annotations

from fastlm.errors import ModelFormatError
from fastlm.tokenizer import Tokenizer

from . import harness, seeds
from .gguf import check_tokenizer

TOKENIZER_JSON = seeds.tokenizer_json().encode()


def check(data: bytes) -> None:
    folder = harness.scratch_dir({"tokenizer.json": TOKENIZER_JSON, "tokenizer_config.json": data})
    try:
        check_tokenizer(Tokenizer.from_pretrained_dir(folder))
    except ModelFormatError:
        pass


if __name__ == "__main__":
    harness.main("tokenizer", check, seeds.tokenizer_config_seeds)

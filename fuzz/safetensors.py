"""Fuzz the model.safetensors file of a Hugging Face checkpoint (its config.json fixed, valid):
``python -m fuzz.safetensors --seconds 300``."""
from __future__ import annotations

import json

from fastlm.errors import ModelFormatError
from fastlm.weights import load_safetensors

from . import harness, seeds

CONFIG_JSON = json.dumps(seeds.HF_CONFIG).encode()


def check(data: bytes) -> None:
    folder = harness.scratch_dir({"config.json": CONFIG_JSON, "model.safetensors": data})
    try:
        load_safetensors(folder)
    except ModelFormatError:
        pass


if __name__ == "__main__":
    harness.main("safetensors", check, seeds.safetensors_seeds)

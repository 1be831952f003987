"""Fuzz the model.safetensors file of a Hugging Face checkpoint (its config.json fixed, valid), through the
model it builds and one forward pass: ``python -m fuzz.safetensors --seconds 300``."""
from __future__ import annotations

import json

from fastlm.errors import ModelFormatError
from fastlm.model import CausalLM
from fastlm.weights import load_safetensors

from . import harness, seeds

CONFIG_JSON = json.dumps(seeds.HF_CONFIG).encode()


def check(data: bytes) -> None:
    folder = harness.scratch_dir({"config.json": CONFIG_JSON, "model.safetensors": data})
    try:
        config, params, _ = load_safetensors(folder)
    except ModelFormatError:
        return
    CausalLM.from_params(config, params).forward([0])


if __name__ == "__main__":
    harness.main("safetensors", check, seeds.safetensors_seeds)

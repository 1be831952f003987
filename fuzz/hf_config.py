"""Fuzz the config.json of a Hugging Face checkpoint (its model.safetensors fixed, valid), through the model it
builds and one forward pass: ``python -m fuzz.hf_config --seconds 300``."""
from __future__ import annotations

from fastlm.errors import ModelFormatError
from fastlm.model import CausalLM
from fastlm.weights import load_safetensors

from . import harness, seeds

WEIGHTS = seeds.model_safetensors()


def check(data: bytes) -> None:
    folder = harness.scratch_dir({"config.json": data, "model.safetensors": WEIGHTS})
    try:
        config, params, _ = load_safetensors(folder)
    except ModelFormatError:
        return
    CausalLM.from_params(config, params).forward([0])


if __name__ == "__main__":
    harness.main("hf_config", check, seeds.hf_config_seeds)

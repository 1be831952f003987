"""Fuzz the config.json of a Hugging Face checkpoint (its model.safetensors fixed, valid), through the model it
builds and one forward pass: ``python -m fuzz.hf_config --seconds 300``."""
from __future__ import annotations

from . import harness, seeds

WEIGHTS = seeds.model_safetensors()


def check(data: bytes) -> None:
    harness.run_checkpoint({"config.json": data, "model.safetensors": WEIGHTS})


if __name__ == "__main__":
    harness.main("hf_config", check, seeds.hf_config_seeds)

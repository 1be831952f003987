"""Fuzz the model.safetensors file of a Hugging Face checkpoint (its config.json fixed, valid), through the
model it builds and one forward pass: ``python -m fuzz.safetensors --seconds 300``."""
from __future__ import annotations

import json

from . import harness, seeds

CONFIG_JSON = json.dumps(seeds.HF_CONFIG).encode()


def check(data: bytes) -> None:
    harness.run_checkpoint({"config.json": CONFIG_JSON, "model.safetensors": data})


if __name__ == "__main__":
    harness.main("safetensors", check, seeds.safetensors_seeds)

"""Real weights: GGUF files (llama.cpp) and Hugging Face safetensors checkpoints, loaded into fastlm's
names, shapes and RoPE layout.

Both loaders return ``(config, params, metadata)``; ``fastlm.CausalLM.from_params(config, params)`` builds the
model; ``load_gguf(..., quantized=True)`` keeps block-format matrices as :class:`QuantizedTensor`s. Every
problem with a file raises :class:`fastlm.errors.ModelFormatError`, naming the file.
"""
from .gguf import GGUFFile, load_gguf
from .hub import fetch_default_model
from .quant import GGMLType, QuantizedTensor, dequantize
from .safetensors import load_safetensors, permute_rotate_half

__all__ = ["load_gguf", "load_safetensors", "GGUFFile", "GGMLType", "QuantizedTensor", "dequantize",
           "fetch_default_model", "permute_rotate_half"]

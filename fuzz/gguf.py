"""Fuzz a GGUF file end to end: the header, every tensor's decoding, the model loader, the tokenizer and the
chat template that the file's metadata describes, and the model it builds (a forward pass and two generated
tokens, whose buffers must stay within the oracle's bound whatever context length the file declares).
``python -m fuzz.gguf --seconds 300``."""
from __future__ import annotations

import fastlm
from fastlm.errors import FastLMValueError, ModelFormatError
from fastlm.tokenizer import Tokenizer
from fastlm.weights import GGUFFile, load_gguf

from . import harness, seeds

MESSAGES = [{"role": "user", "content": "Hello, world! 12"}, {"role": "assistant", "content": "ab"}]


def check_tokenizer(tokenizer: Tokenizer) -> None:
    """Encode, decode and render the chat template: a file's template may reject the messages, nothing else."""
    tokenizer.decode(tokenizer.encode("Hello, world! 12 ab\n<|im_end|>", add_special_tokens=True))
    if tokenizer.chat_template is not None:
        try:
            tokenizer.apply_chat_template(MESSAGES)
        except (FastLMValueError, ModelFormatError):   # the template rejected the messages, or is bad
            pass


def check(data: bytes) -> None:
    path = harness.scratch_dir({"model.gguf": data}) / "model.gguf"
    try:
        gguf = GGUFFile(path)
    except ModelFormatError:
        return
    for name, info in gguf.tensors.items():
        try:
            gguf.tensor(name)
            if len(info.shape) == 2:
                gguf.quantized(name)
        except ModelFormatError:
            pass
    try:
        check_tokenizer(Tokenizer.from_gguf_metadata(gguf.metadata))
    except ModelFormatError:
        pass
    for quantized in (True, False):
        try:
            load_gguf(path, quantized=quantized)
        except ModelFormatError:
            pass
    try:
        lm = fastlm.load(path)
    except ModelFormatError:
        return
    lm.model.forward([0])
    try:
        lm.model.generate_batch([[0]], 2, greedy=True)
    except FastLMValueError as e:    # NaN or inf weights make logits that sampling refuses, naming them
        if "logits" not in str(e):
            raise


if __name__ == "__main__":
    harness.main("gguf", check, seeds.gguf_seeds)

"""Text ↔ token ids: the model's own tokenizer, an incremental detokenizer for streaming, and chat templates.

Two vocabulary kinds, read from GGUF metadata or a Hugging Face ``tokenizer.json``:

- byte-level BPE (GGUF ``tokenizer.ggml.model = gpt2``): text is split by the model's pre-tokenizer rules, each
  byte is mapped to a printable character (GPT-2's alphabet) and merges apply by rank;
- SentencePiece-style BPE (GGUF ``llama``): spaces become ``▁`` (plus one in front), pieces merge by score, and
  characters outside the vocabulary fall back to ``<0xXX>`` byte tokens.

Encoding runs in Hugging Face's ``tokenizers`` (Rust), assembled here from the model's vocabulary and rules.
Decoding goes through one byte string per token id: ``decode`` and :class:`StreamDecoder` share that path, so a
stream always adds up to ``decode`` of the same ids, and a character split across tokens waits for its last byte.
"""
from __future__ import annotations

import codecs
import contextvars
import functools
import json
import operator
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Regex, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _RustTokenizer

from .errors import FastLMTypeError, FastLMValueError, ModelFormatError

__all__ = ["Tokenizer", "StreamDecoder"]

# GGUF token types (llama.cpp's llama_token_type) that matter here; 5 is unused, 6 a <0xXX> byte token.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4

# The text splits llama.cpp applies per `tokenizer.ggml.pre` (src/llama-vocab.cpp), in order: each regex cuts every
# piece so far into its matches and the text between them. The last step maps bytes to GPT-2's alphabet.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# llama.cpp also turns on add_bos and ignore_merges (whole words found in the vocabulary skip merging) for these.
_LLAMA3_NAMES = ("llama3", "llama-v3", "llama-bpe", "falcon3")
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]"),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe"), (_GPT2_SPLIT,)),
    # Every digit on its own before the GPT-2 split, as SmolLM2's tokenizer.json does with its Digits step;
    # Hugging Face's GGUF conversion drops that step and so splits whitespace before digits differently.
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
                    (r"\p{N}", _GPT2_SPLIT)),
    **dict.fromkeys((*_LLAMA3_NAMES, "dbrx", "smaug-bpe"), (_LLAMA3_SPLIT,)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), (_QWEN2_SPLIT,)),
}

# Tokens that end a turn, as llama.cpp recognises them by text (its end-of-generation set).
_END_OF_TURN = frozenset({
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "<end_of_utterance>", "<｜end▁of▁sentence｜>",
})

_SPM_SPACE = "\u2581"  # ▁, SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _gpt2_alphabet() -> dict[str, bytes]:
    """GPT-2's byte-level alphabet, inverted: printable Latin-1 bytes stand for themselves, the other 68 bytes
    take the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): bytes([b]) for b in printable}
    table.update({chr(0x100 + n): bytes([b]) for n, b in enumerate(others)})
    return table


_GPT2_BYTES = _gpt2_alphabet()


def _byte_level_bytes(text: str) -> bytes:
    # A character outside the alphabet stands for itself, as in Hugging Face's ByteLevel decoder.
    return b"".join(_GPT2_BYTES.get(c) or c.encode() for c in text)


def _sentencepiece_bytes(text: str) -> bytes:
    byte = _BYTE_TOKEN.fullmatch(text)
    return bytes([int(byte[1], 16)]) if byte else text.replace(_SPM_SPACE, " ").encode()


class StreamDecoder:
    """Turns token ids into text one at a time, as they are generated.

    ``push`` returns the text that is complete after that token: the bytes of a character split across tokens
    are held back until its last byte arrives, and spaces are never dropped. The pushed results followed by
    ``flush()`` add up to ``Tokenizer.decode`` of the same ids. Invalid UTF-8 (which a model can generate)
    becomes U+FFFD, as in ``decode``.
    """

    def __init__(self, pieces: Sequence[bytes], skip_ids: frozenset[int], strip_leading_space: bool):
        self._pieces = pieces
        self._skip_ids = skip_ids
        self._strip_leading_space = strip_leading_space
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often ``""`` inside a multi-byte character)."""
        try:
            i = operator.index(token_id)
        except TypeError:
            raise FastLMTypeError(f"token_id must be an integer, got {token_id!r}") from None
        if not 0 <= i < len(self._pieces):
            raise FastLMValueError(f"token id {i} is outside the vocabulary [0, {len(self._pieces)})")
        if i in self._skip_ids:
            return ""
        piece = self._pieces[i]
        if self._strip_leading_space and piece:
            # SentencePiece put one space in front of the text when encoding; take it off the very first piece only.
            self._strip_leading_space = False
            piece = piece.removeprefix(b" ")
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """End the stream: return what is held back (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """A model's tokenizer: ``encode``/``decode``, a streaming decoder and its chat template.

    Build one with :meth:`from_gguf_metadata` or :meth:`from_pretrained_dir`.
    """

    def __init__(self, rust: _RustTokenizer, pieces: list[bytes], special_ids: Iterable[int], *,
                 bos_token_id: int | None, eos_token_id: int | None, end_of_turn_ids: Iterable[int] = (),
                 bos_token: str = "", eos_token: str = "", prefix_ids: Sequence[int] = (),
                 suffix_ids: Sequence[int] = (), strip_leading_space: bool = False, chat_template: str | None = None):
        self._rust = rust
        self._pieces = pieces
        self._special_ids = frozenset(special_ids)
        self._prefix_ids = list(prefix_ids)
        self._suffix_ids = list(suffix_ids)
        self._strip_leading_space = strip_leading_space
        self._bos_token = bos_token
        self._eos_token = eos_token
        self.vocab_size = len(pieces)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.eos_token_ids = frozenset({*end_of_turn_ids, *(() if eos_token_id is None else (eos_token_id,))})
        self.chat_template = chat_template

    @property
    def token_bytes(self) -> Sequence[bytes]:
        """The bytes each token id stands for (a special token: its text)."""
        return self._pieces

    @property
    def special_ids(self) -> frozenset[int]:
        """Control tokens (BOS, end-of-turn, ...), which decode to nothing with skip_special_tokens."""
        return self._special_ids

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer a GGUF file describes, from its metadata as plain Python values."""
        if not isinstance(metadata, Mapping):
            raise FastLMTypeError(f"metadata must be a mapping of GGUF keys to values, got {type(metadata).__name__}")
        kind = _get(metadata, "tokenizer.ggml.model", str)
        tokens = _get_list(metadata, "tokenizer.ggml.tokens", str)
        n = len(tokens)
        if n == 0:
            raise ModelFormatError("tokenizer.ggml.tokens is empty")
        types = _get_list(metadata, "tokenizer.ggml.token_type", int, n, required=False) or [_NORMAL] * n
        bos = _get_token_id(metadata, "tokenizer.ggml.bos_token_id", n)
        eos = _get_token_id(metadata, "tokenizer.ggml.eos_token_id", n)

        if kind == "gpt2":
            merges = _get_list(metadata, "tokenizer.ggml.merges", str)
            pre = _get(metadata, "tokenizer.ggml.pre", str, required=False)
            if pre is None:
                warnings.warn("GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer, "
                              "which may split text differently from the model's own tokenizer", stacklevel=2)
                pre = "default"
            rust = _byte_level_bpe(tokens, merges, pre)
            to_bytes, add_bos_default, strip = _byte_level_bytes, pre in _LLAMA3_NAMES, False
        elif kind == "llama":
            scores = _get_list(metadata, "tokenizer.ggml.scores", (int, float), n)
            # SentencePiece puts a space in front of the text unless told not to; decoding takes it off again.
            add_space_prefix = _get(metadata, "tokenizer.ggml.add_space_prefix", bool, required=False) is not False
            unk = _get_token_id(metadata, "tokenizer.ggml.unknown_token_id", n)
            rust = _sentencepiece_bpe(tokens, scores, types, add_space_prefix, unk)
            to_bytes, add_bos_default, strip = _sentencepiece_bytes, True, add_space_prefix
        else:
            raise ModelFormatError(f"tokenizer.ggml.model {kind!r} is not supported: fastlm reads 'gpt2' "
                                   "(byte-level BPE) and 'llama' (SentencePiece BPE)")

        # Control and user-defined tokens match as whole tokens wherever they appear in the text.
        special = [i for i, t in enumerate(types) if t in (_CONTROL, _UNKNOWN) and tokens[i]]
        user = [i for i, t in enumerate(types) if t == _USER_DEFINED and tokens[i]]
        rust.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
        rust.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])
        verbatim = {*special, *user}  # stored as plain text, not in the model's byte encoding
        pieces = [tok.encode() if i in verbatim else to_bytes(tok) for i, tok in enumerate(tokens)]

        add_bos = _get(metadata, "tokenizer.ggml.add_bos_token", bool, required=False)
        add_bos = add_bos_default if add_bos is None else add_bos
        add_eos = bool(_get(metadata, "tokenizer.ggml.add_eos_token", bool, required=False))
        for flag, key, token_id in ((add_bos, "bos", bos), (add_eos, "eos", eos)):
            if flag and token_id is None:
                raise ModelFormatError(f"tokenizer.ggml.add_{key}_token is set but tokenizer.ggml.{key}_token_id "
                                       "is missing")
        end_of_turn = {i for i, tok in enumerate(tokens) if tok in _END_OF_TURN}
        end_of_turn.update(i for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
                           if (i := _get_token_id(metadata, key, n)) is not None)
        return cls(rust, pieces, special, bos_token_id=bos, eos_token_id=eos, end_of_turn_ids=end_of_turn,
                   bos_token="" if bos is None else tokens[bos], eos_token="" if eos is None else tokens[eos],
                   prefix_ids=[bos] if add_bos else [], suffix_ids=[eos] if add_eos else [],
                   strip_leading_space=strip,
                   chat_template=_get(metadata, "tokenizer.chat_template", str, required=False))

    @classmethod
    def from_pretrained_dir(cls, path: str | Path) -> Tokenizer:
        """Load a Hugging Face tokenizer directory: ``tokenizer.json``, and ``tokenizer_config.json`` (chat
        template, BOS/EOS), ``chat_template.jinja`` and ``generation_config.json`` where present."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise ModelFormatError(f"{path} has no tokenizer.json")
        spec = _read_json(file)
        try:
            rust = _RustTokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception for a malformed file
            raise ModelFormatError(f"{file} is not a valid tokenizer: {err}") from err
        byte_level, strip = _decoder_style(spec.get("decoder"), file)
        config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}

        added = rust.get_added_tokens_decoder()
        n = max(rust.get_vocab_size(with_added_tokens=True), *(i + 1 for i in added), 0)
        to_bytes = _byte_level_bytes if byte_level else _sentencepiece_bytes
        pieces = [added[i].content.encode() if i in added else to_bytes(rust.id_to_token(i) or "") for i in range(n)]

        bos_token, eos_token = (_token_content(config.get(k)) for k in ("bos_token", "eos_token"))
        bos = None if bos_token is None else rust.token_to_id(bos_token)
        eos = None if eos_token is None else rust.token_to_id(eos_token)
        end_of_turn = {i for i, tok in added.items() if tok.content in _END_OF_TURN}
        if (path / "generation_config.json").is_file():
            ids = _read_json(path / "generation_config.json").get("eos_token_id")
            end_of_turn.update(i for i in (ids if isinstance(ids, list) else [ids]) if isinstance(i, int))

        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            template = next((t.get("template") for t in template if isinstance(t, Mapping)
                             and t.get("name") == "default"), None)
        if template is not None and not isinstance(template, str):
            raise ModelFormatError(f"{path / 'tokenizer_config.json'}: chat_template must be a string or a list of "
                                   f"named templates, got {template!r:.80}")
        return cls(rust, pieces, (i for i, tok in added.items() if tok.special), bos_token_id=bos, eos_token_id=eos,
                   end_of_turn_ids=end_of_turn, bos_token=bos_token or "", eos_token=eos_token or "",
                   strip_leading_space=strip, chat_template=template)

    # ------------------------------------------------------------------------------------------- text ↔ ids
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds BOS (and EOS) where the model asks for them.
        Special tokens written in the text (e.g. ``<|im_start|>``) always become their single ids."""
        if not isinstance(text, str):
            raise FastLMTypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._rust.encode(text, add_special_tokens=add_special_tokens).ids
        return [*self._prefix_ids, *ids, *self._suffix_ids] if add_special_tokens else ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; ``skip_special_tokens`` leaves out control tokens (BOS, ``<|im_end|>``, …)."""
        stream = self.decoder(skip_special_tokens=skip_special_tokens)
        return "".join(stream.push(i) for i in ids) + stream.flush()

    def decoder(self, prefix_ids: Iterable[int] = (), *, skip_special_tokens: bool = False) -> StreamDecoder:
        """An incremental detokenizer. ``prefix_ids`` are tokens already shown (the prompt): the stream
        continues after them, so a SentencePiece model's first generated word keeps its leading space."""
        stream = StreamDecoder(self._pieces, self._special_ids if skip_special_tokens else frozenset(),
                               self._strip_leading_space)
        for i in prefix_ids:
            stream.push(i)
        return stream

    # ------------------------------------------------------------------------------------------ chat template
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **variables: Any) -> str:
        """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with the model's chat template.

        ``add_generation_prompt`` ends the text with the opening of an assistant turn. Further keyword
        arguments (``tools``, ``date_string``, …) become template variables.
        """
        if self.chat_template is None:
            raise ModelFormatError("the model has no chat template (tokenizer.chat_template / "
                                   "tokenizer_config.json chat_template)")
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not all(
                isinstance(m, Mapping) for m in messages):
            raise FastLMTypeError("messages must be a list of dicts such as {'role': 'user', 'content': 'hi'}")
        template = _compile_chat_template(self.chat_template)
        variables = dict(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self._bos_token,
                         eos_token=self._eos_token, **variables)
        return _render(template, variables)


# --------------------------------------------------------------------------------------------- model assembly
def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str) -> _RustTokenizer:
    splits = _PRE_SPLITS.get(pre)
    if splits is None:
        raise ModelFormatError(f"tokenizer.ggml.pre {pre!r} is not a known pre-tokenizer (fastlm knows "
                               f"{', '.join(sorted(_PRE_SPLITS))}); refusing to guess how to split the text")
    pairs = []
    for merge in merges:
        cut = merge.find(" ", 1)  # as llama.cpp: a merge may start with a space character
        if cut < 0 or cut == len(merge) - 1:
            raise ModelFormatError(f"tokenizer.ggml.merges entry {merge!r} is not 'left right'")
        pairs.append((merge[:cut], merge[cut + 1:]))
    rust = _RustTokenizer(_bpe({tok: i for i, tok in enumerate(tokens)}, pairs, ignore_merges=pre in _LLAMA3_NAMES))
    rust.pre_tokenizer = pre_tokenizers.Sequence(
        [*(pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return rust


def _sentencepiece_bpe(tokens: list[str], scores: list[float], types: list[int], add_space_prefix: bool,
                       unk: int | None) -> _RustTokenizer:
    # SentencePiece merges the adjacent pair whose joined text is the highest-scoring token; as BPE merge ranks
    # that is every split of each token into two vocabulary pieces, ordered by the token's score.
    vocab = {tok: i for i, tok in enumerate(tokens)}
    lengths = sorted({len(tok) for tok in tokens} - {0})    # a left piece is a token: only its lengths can cut
    ranked = []
    for i, tok in enumerate(tokens):
        if types[i] in (_NORMAL, _USER_DEFINED):
            for cut in lengths:
                if cut >= len(tok):
                    break
                left, right = tok[:cut], tok[cut:]
                if left in vocab and right in vocab:
                    ranked.append((-scores[i], i, vocab[left], vocab[right], left, right))
    ranked.sort()
    rust = _RustTokenizer(_bpe(vocab, [(left, right) for *_, left, right in ranked], byte_fallback=True,
                               fuse_unk=True, unk_token=None if unk is None else tokens[unk]))
    space = normalizers.Replace(" ", _SPM_SPACE)
    rust.normalizer = normalizers.Sequence([normalizers.Prepend(_SPM_SPACE), space]) if add_space_prefix else space
    return rust


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]], **options: Any) -> models.BPE:
    try:
        return models.BPE(vocab, merges, **options)
    except Exception as err:  # tokenizers raises a bare Exception, e.g. for a merge of an unknown token
        raise ModelFormatError(f"the tokenizer vocabulary and merges do not fit together: {err}") from err


def _decoder_style(decoder: Mapping | None, file: Path) -> tuple[bool, bool]:
    """(byte_level, strip_leading_space) from a tokenizer.json decoder."""
    steps = (decoder.get("decoders") or [decoder]) if decoder else []
    types = {step.get("type") for step in steps}
    if "ByteLevel" in types:
        return True, False
    if types & {"ByteFallback", "Metaspace"} or any(
            step.get("type") == "Replace" and step.get("content") == " " for step in steps):
        strip = any(step.get("type") == "Strip" and step.get("start", 0) > 0 for step in steps) or any(
            step.get("type") == "Metaspace" and step.get("prepend_scheme", "always") != "never"
            and step.get("add_prefix_space", True) for step in steps)
        return False, strip
    raise ModelFormatError(f"{file}: decoder {sorted(t for t in types if t)} is neither byte-level nor "
                           "SentencePiece-style; fastlm cannot detokenize it")


# -------------------------------------------------------------------------------------------- chat templates
# A chat template is code from the model file. It runs in jinja2's immutable sandbox (no attribute that starts
# with "_", no mutating methods, no file system: include / import / extends are refused when it compiles), and
# under two bounds per render, checked as it runs: CPU time, and the characters it builds.
CHAT_TEMPLATE_SECONDS = 1.0          # CPU time of the rendering thread (other threads' load does not count)
CHAT_TEMPLATE_MAX_CHARS = 1 << 20    # plus 8 x the size of the messages and variables themselves


class _TemplateLimit(Exception):
    """A chat template hit a bound while rendering."""


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters, which chat templates must not do.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _size(value: Any, limit: int, ints: bool = False) -> int:
    """Characters and items in ``value``, nested strings and containers included; with ``ints``, an integer
    counts as its value (as an argument it is a width or a count to the functions that amplify). Counting
    stops past ``limit``."""
    if ints and isinstance(value, int) and not isinstance(value, bool):
        return min(abs(value), limit + 1)
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, tuple, dict, set, frozenset)):
            total += len(v)
            stack.extend(v.values() if isinstance(v, dict) else v)
            if isinstance(v, dict):
                stack.extend(v)
    return total


class _Budget:
    """One render's bounds: a CPU-time deadline, and ``max_chars`` for any value and for all output."""

    def __init__(self, max_chars: int):
        self.deadline = time.thread_time() + CHAT_TEMPLATE_SECONDS
        self.max_chars, self.emitted = max_chars, 0

    def tick(self) -> None:
        if time.thread_time() > self.deadline:
            raise _TemplateLimit(f"ran for more than {CHAT_TEMPLATE_SECONDS} s of CPU time")

    def check(self, value: Any, what: str = "a value") -> Any:
        if _size(value, self.max_chars) > self.max_chars:
            raise _TemplateLimit(f"built {what} of more than {self.max_chars} characters")
        return value

    def before_call(self, args: Sequence, kwargs: Mapping) -> list:
        """Tick, materialise iterator arguments (so their size is known) and refuse a call whose result may
        exceed the bound: sizes add up, and any two can multiply (join: items x separator; replace: matches x
        replacement; center / ljust / range: a width)."""
        self.tick()
        args = [list(a) if isinstance(a, Iterator) else a for a in args]
        sizes = sorted(_size(a, self.max_chars, ints=True) for a in [*args, *kwargs.values()])
        if sum(sizes) > self.max_chars or (len(sizes) > 1 and sizes[-1] * sizes[-2] > self.max_chars):
            raise _TemplateLimit(f"called a function on arguments that could build more than {self.max_chars} "
                                 "characters")
        return args

    def emit(self, value: Any) -> Any:
        """Count what an output statement writes, wherever it goes (the result, a macro, a set block)."""
        self.tick()
        self.emitted += _size(value, self.max_chars) if isinstance(value, (str, list, tuple, dict)) else \
            len(str(value))
        if self.emitted > self.max_chars:
            raise _TemplateLimit(f"wrote more than {self.max_chars} characters")
        return value


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("fastlm_chat_template_budget")


def _iterate(iterable: Any) -> Iterator:
    """What a template's for loop iterates: the deadline is checked at every item."""
    budget = _budget.get()
    for item in iterable:
        budget.tick()
        yield item


def _bounded(function: Callable) -> Callable:
    """A filter under the budget; it keeps the function's jinja2 markers (pass_context, ...)."""
    @functools.wraps(function)
    def bounded(*args, **kwargs):
        budget = _budget.get()
        return budget.check(function(*budget.before_call(args, kwargs), **kwargs))
    return bounded


class _BoundedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every call and arithmetic operator under the render's budget."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805  (jinja2's own signature)
        budget = _budget.get()
        args = budget.before_call(args, kwargs)
        return budget.check(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget.get()
        budget.tick()
        if isinstance(left, int) and isinstance(right, int):
            # Only huge integers cost: bound the result's bits before computing it.
            if ((operator == "**" and right > 0 and abs(left) > 1 and right * abs(left).bit_length() > 1 << 16)
                    or (operator == "*" and left.bit_length() + right.bit_length() > 1 << 16)):
                raise _TemplateLimit(f"computed an integer of more than {1 << 16} bits")
        elif operator == "*":          # repetition: "a" * n, [x] * n
            budget.before_call((left, right), {})
        return budget.check(super().call_binop(context, operator, left, right))


def _bound_tree(tree: jinja2.nodes.Template) -> jinja2.nodes.Template:
    """Refuse other templates; route every loop's items and every output through the budget."""
    nodes = jinja2.nodes
    if any(True for _ in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport))):
        raise ModelFormatError("the model's chat template uses extends, include or import: a chat template must "
                               "stand alone")
    wrap = lambda node, name: nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)  # noqa: E731
    for loop in tree.find_all(nodes.For):
        loop.iter = wrap(loop.iter, "_fastlm_iterate")
    for output in tree.find_all(nodes.Output):
        output.nodes = [wrap(node, "_fastlm_emit") for node in output.nodes]
    for concat in list(tree.find_all(nodes.Concat)):
        concat.nodes = [wrap(node, "_fastlm_check") for node in concat.nodes]
    return tree


@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str) -> jinja2.Template:
    """Compile a template in the bounded sandbox, with the helpers Hugging Face transformers gives chat
    templates."""
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded(f) for name, f in env.filters.items()}
    env.filters.update(_fastlm_iterate=_iterate, _fastlm_emit=lambda v: _budget.get().emit(v),
                       _fastlm_check=lambda v: _budget.get().check(v))
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(_bound_tree(env.parse(source)))
    except jinja2.TemplateSyntaxError as err:
        raise ModelFormatError(f"the model's chat template does not compile: {err}") from err
    except (RecursionError, MemoryError) as err:
        raise ModelFormatError(f"the model's chat template is too deeply nested to compile ({err!r})") from err


def _render(template: jinja2.Template, variables: dict[str, Any]) -> str:
    """``template`` rendered under a fresh budget (per call, so threads never share one)."""
    budget = _Budget(CHAT_TEMPLATE_MAX_CHARS + 8 * _size(variables, 1 << 40))
    token = _budget.set(budget)
    try:
        return "".join(template.generate(**variables))
    except _TemplateLimit as err:
        raise ModelFormatError(f"the model's chat template {err}: stopped") from None
    except jinja2.sandbox.SecurityError as err:
        raise ModelFormatError(f"the model's chat template broke the sandbox's rules: {err}") from None
    except jinja2.TemplateError as err:
        raise FastLMValueError(f"the chat template rejected these messages: {err}") from err
    except RecursionError:
        raise ModelFormatError("the model's chat template recursed too deeply: stopped") from None
    except MemoryError:
        raise ModelFormatError("the model's chat template ran out of memory: stopped") from None
    except Exception as err:     # the template's own bug: 1 / 0, "a" + 1, ...
        raise ModelFormatError(f"the model's chat template failed: {type(err).__name__}: {err}") from err
    finally:
        _budget.reset(token)


# -------------------------------------------------------------------------------------------- metadata access
_MISSING = object()


def _get(metadata: Mapping[str, Any], key: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    value = metadata.get(key, _MISSING)
    if value is _MISSING:
        if required:
            raise ModelFormatError(f"GGUF metadata has no {key}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelFormatError(f"GGUF metadata {key} has type {type(value).__name__}, expected {_type_name(kind)}")
    return value


def _get_list(metadata: Mapping[str, Any], key: str, kind: type | tuple[type, ...], length: int | None = None,
              required: bool = True) -> list | None:
    values = _get(metadata, key, (list, tuple), required)
    if values is None:
        return None
    if length is not None and len(values) != length:
        raise ModelFormatError(f"GGUF metadata {key} has {len(values)} entries, expected {length} (one per token)")
    bad = next((v for v in values if not isinstance(v, kind) or isinstance(v, bool)), _MISSING)
    if bad is not _MISSING:
        raise ModelFormatError(f"GGUF metadata {key} holds {bad!r}, expected only {_type_name(kind)} values")
    return list(values)


def _get_token_id(metadata: Mapping[str, Any], key: str, vocab_size: int) -> int | None:
    value = _get(metadata, key, int, required=False)
    if value is not None and not 0 <= value < vocab_size:
        raise ModelFormatError(f"GGUF metadata {key} = {value} is outside the vocabulary [0, {vocab_size})")
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ModelFormatError(f"cannot read {file}: {err}") from err
    if not isinstance(data, dict):
        raise ModelFormatError(f"{file} does not hold a JSON object")
    return data


def _token_content(token: Any) -> str | None:
    """tokenizer_config.json names a token as a string or as an AddedToken dict."""
    content = token.get("content") if isinstance(token, Mapping) else token
    return content if isinstance(content, str) else None

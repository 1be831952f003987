"""Tokenizer tests: golden ids and chat renderings of the real SmolLM2 GGUF, streaming detokenization, and tiny
synthetic vocabularies (byte-level BPE, SentencePiece with byte fallback, tokenizer.json directories) that need
no download."""
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as RustTokenizer

from fastlm.errors import FastLMError, FastLMTypeError, FastLMValueError, ModelFormatError
from fastlm.tokenizer import Tokenizer

from conftest import GOLDEN

# Strings whose tokens split multi-byte characters, or that stress whitespace and digits.
EXTRA_TEXTS = [
    "emoji 🙂🚀👩‍👩‍👧 done", "日本語のテキストと中文字符", "Ünïcödé àçcéñts — “ok”", "   three leading", "trailing   ",
    "a  b   c    d", "\n\n  1.", "x 123 4567 89", "tab\t\tend\r\n", "Ωμέγα Привет مرحبا नमस्ते",
]


# ------------------------------------------------------------------------------------------------ real model
def stream(tokenizer, ids, **kwargs) -> list[str]:
    decoder = tokenizer.decoder(**kwargs)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def assert_round_trip_and_stream(tokenizer, text):
    """Decoding the ids gives the text back, and so does streaming them, never with a broken character."""
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    chunks = stream(tokenizer, ids)
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)


@pytest.mark.parametrize("case", GOLDEN["tokenizer"], ids=lambda c: repr(c["text"])[:24])
def test_golden_encode_decode(smollm2_tokenizer, case):
    assert smollm2_tokenizer.encode(case["text"]) == case["ids"]
    assert smollm2_tokenizer.decode(case["ids"]) == case["decoded"]


@pytest.mark.parametrize("case", GOLDEN["tokenizer"], ids=lambda c: repr(c["text"])[:24])
def test_golden_stream(smollm2_tokenizer, case):
    chunks = stream(smollm2_tokenizer, case["ids"])
    assert "".join(chunks) == case["decoded"]
    assert not any("\ufffd" in c for c in chunks)


@pytest.mark.parametrize("chat", GOLDEN["chats"], ids=lambda c: c["messages"][-1]["content"][:24])
def test_golden_chat(smollm2_tokenizer, chat):
    rendered = smollm2_tokenizer.apply_chat_template(chat["messages"], add_generation_prompt=True)
    assert rendered == chat["rendered"]
    assert smollm2_tokenizer.encode(rendered) == chat["ids"]
    assert smollm2_tokenizer.encode(rendered, add_special_tokens=True) == chat["ids"]  # SmolLM2 adds no BOS
    assert "".join(stream(smollm2_tokenizer, chat["ids"])) == rendered


def test_smollm2_special_tokens(smollm2_tokenizer):
    assert smollm2_tokenizer.vocab_size == 49152
    assert (smollm2_tokenizer.bos_token_id, smollm2_tokenizer.eos_token_id) == (1, 2)
    assert smollm2_tokenizer.eos_token_ids == {0, 2}  # <|im_end|> and <|endoftext|>
    ids = smollm2_tokenizer.encode("<|im_start|>assistant\nHi.<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert smollm2_tokenizer.decode(ids, skip_special_tokens=True) == "assistant\nHi."
    assert "".join(stream(smollm2_tokenizer, ids, skip_special_tokens=True)) == "assistant\nHi."


@pytest.mark.parametrize("text", EXTRA_TEXTS)
def test_smollm2_round_trip_and_stream(smollm2_tokenizer, text):
    assert_round_trip_and_stream(smollm2_tokenizer, text)


def test_smollm2_stream_holds_back_split_characters(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("🙂")
    assert len(ids) > 1  # one character, several byte-level tokens
    assert stream(smollm2_tokenizer, ids)[:-1] == [""] * (len(ids) - 1) + ["🙂"]


def test_smollm_pre_tokenizer_matches_the_model_tokenizer_json(smollm2_tokenizer, smollm2_metadata):
    """SmolLM2's tokenizer.json splits with Digits(individual_digits) then the GPT-2 byte-level regex."""
    md = smollm2_metadata
    vocab = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]
    own = RustTokenizer(models.BPE(vocab, merges))
    own.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    texts = [*EXTRA_TEXTS, *(c["text"] for c in GOLDEN["tokenizer"] if "<|" not in c["text"]),
             "1.\n\n  2. 3\t4  56 \u0663\u0664 x\u00b2 ½"]
    for text in texts:
        assert smollm2_tokenizer.encode(text) == own.encode(text).ids, text
    # Hugging Face's GGUF conversion drops the Digits step, which changes whitespace before digits.
    own.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert smollm2_tokenizer.encode("\n\n  1.") != own.encode("\n\n  1.").ids


# ------------------------------------------------------------------------------- synthetic byte-level GGUF
# GPT-2's byte-level alphabet: printable bytes stand for themselves, the others (space is "Ġ") from U+0100 on.
_PRINTABLE = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
CHAR_OF_BYTE = {b: chr(b) for b in _PRINTABLE}
CHAR_OF_BYTE.update({b: chr(0x100 + n) for n, b in enumerate(b for b in range(256) if b not in _PRINTABLE)})
BYTE_CHARS = list(CHAR_OF_BYTE.values())


def byte_level_metadata(pre="gpt-2", **overrides):
    """A GGUF-style byte-level vocabulary: the 256 byte characters, a few merges and ChatML control tokens."""
    merges = ["Ġ 1", "1 2", "12 3", "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    tokens = BYTE_CHARS + ["Ġ1", "12", "123", "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld"]
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool call>"]
    md = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": [1] * (len(tokens) - 4) + [3, 3, 3, 4],
        "tokenizer.ggml.bos_token_id": len(tokens) - 3, "tokenizer.ggml.eos_token_id": len(tokens) - 2,
        "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    }
    md.update(overrides)
    return md


@pytest.fixture(scope="module")
def tiny_bpe():
    return Tokenizer.from_gguf_metadata(byte_level_metadata())


def test_byte_level_encode_decode(tiny_bpe):
    tok = tiny_bpe
    ids = tok.encode("hello world")
    assert [tok.decode([i]) for i in ids] == ["hello", " world"]
    assert tok.decode(ids) == "hello world"
    text = "héllo <tool call> wörld 🙂\n\n  \t"
    assert tok.decode(tok.encode(text)) == text
    assert "".join(stream(tok, tok.encode(text))) == text


def test_byte_level_special_and_user_defined_tokens_match_whole(tiny_bpe):
    tok = tiny_bpe
    n = tok.vocab_size
    assert tok.encode("<|im_start|>hello<|im_end|>") == [n - 3, tok.encode("hello")[0], n - 2]
    assert tok.encode("a<tool call>b") == [tok.encode("a")[0], n - 1, tok.encode("b")[0]]
    # user-defined tokens are text, control tokens are not
    assert tok.decode(tok.encode("<|im_start|>a<tool call>"), skip_special_tokens=True) == "a<tool call>"
    assert tok.eos_token_ids == {n - 2, n - 4}
    assert tok.encode("hello", add_special_tokens=True) == tok.encode("hello")  # gpt-2 adds no BOS by default


def test_byte_level_stream_holds_back_partial_utf8(tiny_bpe):
    ids = tiny_bpe.encode("é🙂")  # 2 + 4 byte tokens
    assert len(ids) == 6
    assert stream(tiny_bpe, ids) == ["", "é", "", "", "", "🙂", ""]


def test_stream_of_invalid_bytes_matches_decode(tiny_bpe):
    lone = [BYTE_CHARS.index(CHAR_OF_BYTE[0x80])]  # a continuation byte with no lead byte
    ids = tiny_bpe.encode("é")[:1] + tiny_bpe.encode("a") + lone
    assert "".join(stream(tiny_bpe, ids)) == tiny_bpe.decode(ids)
    assert tiny_bpe.decode(tiny_bpe.encode("é")[:1]) == "\ufffd"  # an unfinished character at the end


@pytest.mark.parametrize("pre, expected", [
    ("gpt-2", ["x", "Ġ1", "2", "3"]),         # " 123" is one piece
    ("smollm", ["x", "Ġ", "1", "2", "3"]),    # every digit on its own
    ("llama-bpe", ["x", "Ġ", "123"]),         # digits in runs of up to three, space apart
    ("default", ["x", "Ġ", "123"]),
])
def test_pre_tokenizer_by_name(pre, expected):
    tok = Tokenizer.from_gguf_metadata(byte_level_metadata(pre=pre, **{"tokenizer.ggml.add_bos_token": False}))
    tokens = byte_level_metadata()["tokenizer.ggml.tokens"]
    ids = tok.encode("x 123")
    assert [tokens[i] for i in ids] == expected
    assert tok.decode(ids) == "x 123"


def test_llama3_pre_tokenizer_adds_bos_by_default():
    md = byte_level_metadata(pre="llama-bpe")
    tok = Tokenizer.from_gguf_metadata(md)
    assert tok.encode("hello", add_special_tokens=True)[0] == md["tokenizer.ggml.bos_token_id"]


def test_chat_template(tiny_bpe):
    messages = [{"role": "user", "content": "hi"}]
    assert tiny_bpe.apply_chat_template(messages) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_bpe.apply_chat_template(messages, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.parametrize("template, expected", [
    ("{{ bos_token }}|{{ eos_token }}", "<|im_start|>|<|im_end|>"),
    ("{{ messages | tojson }}", '[{"role": "user", "content": "<b>é</b>"}]'),  # no HTML escaping, no \\u
    ("{{ strftime_now('%Y') | length }}", "4"),
    ("{{ extra }}", "42"),
])
def test_chat_template_helpers(template, expected):
    tok = Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.chat_template": template}))
    assert tok.apply_chat_template([{"role": "user", "content": "<b>é</b>"}], extra=42) == expected


def test_chat_template_errors(tiny_bpe):
    raising = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    tok = Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.chat_template": raising}))
    with pytest.raises(FastLMValueError, match="system first"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    tok = Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.chat_template": "{% for %}"}))
    with pytest.raises(ModelFormatError, match="does not compile"):
        tok.apply_chat_template([])
    md = byte_level_metadata()
    del md["tokenizer.chat_template"]
    with pytest.raises(ModelFormatError, match="no chat template"):
        Tokenizer.from_gguf_metadata(md).apply_chat_template([])
    with pytest.raises(FastLMTypeError, match="messages"):
        tiny_bpe.apply_chat_template("hi")
    sandbox_escape = "{{ messages.__class__.__mro__ }}"
    tok = Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.chat_template": sandbox_escape}))
    with pytest.raises(ModelFormatError, match="sandbox"):
        tok.apply_chat_template([])


def test_bad_arguments(tiny_bpe):
    with pytest.raises(FastLMTypeError, match="text"):
        tiny_bpe.encode(b"bytes")
    with pytest.raises(FastLMValueError, match="outside the vocabulary"):
        tiny_bpe.decode([tiny_bpe.vocab_size])
    with pytest.raises(FastLMValueError, match="outside the vocabulary"):
        tiny_bpe.decoder().push(-1)
    with pytest.raises(FastLMTypeError, match="integer"):
        tiny_bpe.decode([1.0])
    assert tiny_bpe.decode(np.array(tiny_bpe.encode("hello world"), dtype=np.int64)) == "hello world"


def _without(md, key):
    return {k: v for k, v in md.items() if k != key}


@pytest.mark.parametrize("metadata, message", [
    (_without(byte_level_metadata(), "tokenizer.ggml.tokens"), "tokenizer.ggml.tokens"),
    (_without(byte_level_metadata(), "tokenizer.ggml.merges"), "tokenizer.ggml.merges"),
    (_without(byte_level_metadata(), "tokenizer.ggml.model"), "tokenizer.ggml.model"),
    (byte_level_metadata(**{"tokenizer.ggml.model": "bert"}), "'bert' is not supported"),
    (byte_level_metadata(pre="made-up"), "'made-up' is not a known pre-tokenizer"),
    (byte_level_metadata(**{"tokenizer.ggml.tokens": []}), "tokenizer.ggml.tokens is empty"),
    (byte_level_metadata(**{"tokenizer.ggml.tokens": "abc"}), "tokenizer.ggml.tokens has type str"),
    (byte_level_metadata(**{"tokenizer.ggml.token_type": [1, 1]}), "tokenizer.ggml.token_type has 2 entries"),
    (byte_level_metadata(**{"tokenizer.ggml.merges": ["ab"]}), "'ab' is not 'left right'"),
    (byte_level_metadata(**{"tokenizer.ggml.merges": ["q zz"]}), "merges do not fit"),
    (byte_level_metadata(**{"tokenizer.ggml.eos_token_id": 10**6}), "eos_token_id = 1000000 is outside"),
    (byte_level_metadata(**{"tokenizer.ggml.bos_token_id": "1"}), "bos_token_id has type str"),
    (_without(byte_level_metadata(pre="llama-bpe"), "tokenizer.ggml.bos_token_id"), "bos_token_id is missing"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}, "tokenizer.ggml.scores"),
])
def test_bad_metadata_raises_model_format_error(metadata, message):
    with pytest.raises(ModelFormatError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Tokenizer.from_gguf_metadata(metadata)


def test_missing_pre_tokenizer_warns_and_uses_default():
    with pytest.warns(UserWarning, match="tokenizer.ggml.pre"):
        tok = Tokenizer.from_gguf_metadata(_without(byte_level_metadata(), "tokenizer.ggml.pre"))
    assert tok.decode(tok.encode("x 123")) == "x 123"


def test_metadata_must_be_a_mapping():
    with pytest.raises(FastLMTypeError, match="mapping"):
        Tokenizer.from_gguf_metadata([("tokenizer.ggml.model", "gpt2")])


# ------------------------------------------------------------------------------- synthetic SentencePiece GGUF
# Pieces and scores: SentencePiece merges the adjacent pair whose joined piece scores highest.
SPM_PIECES = {**dict.fromkeys("▁helowrd", -100.0), "ll": -1.0, "▁h": -2.0, "▁he": -3.0, "llo": -4.0, "▁hello": -5.0,
              "or": -6.0, "▁w": -7.0, "▁wor": -8.0, "ld": -9.0, "▁world": -10.0}


def spm_metadata(**overrides):
    """A GGUF-style SentencePiece vocabulary: <unk>, <s>, </s>, 256 byte-fallback tokens, then the pieces."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *SPM_PIECES]
    md = {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + list(SPM_PIECES.values()),
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES),
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    }
    md.update(overrides)
    return md


SPM_ID = {t: i for i, t in enumerate(spm_metadata()["tokenizer.ggml.tokens"])}


@pytest.fixture(scope="module")
def tiny_spm():
    return Tokenizer.from_gguf_metadata(spm_metadata())


def test_sentencepiece_encode(tiny_spm):
    hello, world = SPM_ID["▁hello"], SPM_ID["▁world"]
    assert tiny_spm.encode("hello world") == [hello, world]
    assert tiny_spm.encode("hello world", add_special_tokens=True) == [1, hello, world]  # llama adds BOS
    assert tiny_spm.encode("<s>hello</s>") == [1, hello, 2]  # control tokens match whole; a space follows them
    assert tiny_spm.encode("hé") == [SPM_ID["▁h"], SPM_ID["<0xC3>"], SPM_ID["<0xA9>"]]  # byte fallback
    assert tiny_spm.encode("") == []
    assert (tiny_spm.bos_token_id, tiny_spm.eos_token_id, tiny_spm.eos_token_ids) == (1, 2, {2})


@pytest.mark.parametrize("text", ["hello world", "  hello  world ", "hé wörld 🙂", "\n", "日本", "hello\tworld\n"])
def test_sentencepiece_round_trip_and_stream(tiny_spm, text):
    assert_round_trip_and_stream(tiny_spm, text)


def test_sentencepiece_stream_keeps_spaces_between_pieces(tiny_spm):
    hello, world = SPM_ID["▁hello"], SPM_ID["▁world"]
    assert stream(tiny_spm, [hello, world, world]) == ["hello", " world", " world", ""]
    # Only the space SentencePiece put in front of the whole text is removed; a continuation keeps its own.
    assert tiny_spm.decoder(prefix_ids=[hello]).push(world) == " world"
    assert tiny_spm.decoder().push(world) == "world"
    assert stream(tiny_spm, tiny_spm.encode("hé")) == ["h", "", "é", ""]


def test_sentencepiece_special_tokens_in_decode(tiny_spm):
    ids = [1, SPM_ID["▁hello"], 2]
    assert tiny_spm.decode(ids) == "<s> hello</s>"  # as Hugging Face decodes Llama: the text keeps its space
    assert tiny_spm.decode(ids, skip_special_tokens=True) == "hello"


def test_sentencepiece_without_space_prefix():
    tok = Tokenizer.from_gguf_metadata(spm_metadata(**{"tokenizer.ggml.add_space_prefix": False}))
    assert tok.encode("hello") == [SPM_ID[c] for c in "hello"][:2] + [SPM_ID["llo"]]
    assert tok.decode(tok.encode(" hello")) == " hello"


# ------------------------------------------------------------------------------------ tokenizer.json folders
def save_pretrained(path: Path, rust: RustTokenizer, config: dict, **files: str) -> Path:
    rust.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    for name, text in files.items():
        (path / name.replace("__", ".")).write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def byte_level_dir(tmp_path):
    md = byte_level_metadata()
    tokens = md["tokenizer.ggml.tokens"]
    rust = RustTokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                                    [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    rust.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tokens.index("<|endoftext|>"))])
    rust.add_special_tokens([AddedToken(t, special=True, normalized=False)
                             for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    config = {"bos_token": {"content": "<|endoftext|>", "special": True}, "eos_token": "<|im_end|>",
              "chat_template": md["tokenizer.chat_template"]}
    return save_pretrained(tmp_path, rust, config)


def test_pretrained_dir_byte_level(byte_level_dir):
    tok = Tokenizer.from_pretrained_dir(byte_level_dir)
    rust = RustTokenizer.from_file(str(byte_level_dir / "tokenizer.json"))
    gguf_tok = Tokenizer.from_gguf_metadata(byte_level_metadata())
    n = len(byte_level_metadata()["tokenizer.ggml.tokens"])
    assert tok.vocab_size == n
    assert (tok.bos_token_id, tok.eos_token_id, tok.eos_token_ids) == (n - 4, n - 2, {n - 2, n - 4})
    for text in ["hello world", *EXTRA_TEXTS, "<|im_start|>user\nhi<|im_end|>"]:
        ids = tok.encode(text)
        assert ids == gguf_tok.encode(text) == rust.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == rust.decode(ids, skip_special_tokens=False) == text
        assert tok.decode(ids, skip_special_tokens=True) == rust.decode(ids, skip_special_tokens=True)
        assert "".join(stream(tok, ids)) == text
    assert tok.encode("hi", add_special_tokens=True) == [n - 4, *tok.encode("hi")]  # the post-processor's BOS
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) == \
        "<|im_start|>user\nhi<|im_end|>\n"


def test_pretrained_dir_optional_files(byte_level_dir):
    (byte_level_dir / "chat_template.jinja").write_text("{{ eos_token }}", encoding="utf-8")
    (byte_level_dir / "generation_config.json").write_text('{"eos_token_id": [5, 7]}', encoding="utf-8")
    tok = Tokenizer.from_pretrained_dir(byte_level_dir)
    assert tok.apply_chat_template([]) == "<|im_end|>"
    assert {5, 7} <= tok.eos_token_ids


def test_pretrained_dir_sentencepiece(tmp_path):
    """A Llama-2 style tokenizer.json (byte fallback, Strip decoder) decodes as Hugging Face does."""
    md = spm_metadata()
    tokens, scores = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.scores"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = sorted(((t[:k], t[k:]) for t in SPM_PIECES for k in range(1, len(t))
                     if t[:k] in vocab and t[k:] in vocab), key=lambda pair: -scores[vocab["".join(pair)]])
    rust = RustTokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    rust.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    rust.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    rust.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    rust.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok = Tokenizer.from_pretrained_dir(save_pretrained(tmp_path, rust, {"bos_token": "<s>", "eos_token": "</s>"}))
    gguf_tok = Tokenizer.from_gguf_metadata(md)
    for text in ["hello world", "  hello  world ", "hé wörld 🙂", "<s>hello</s>"]:
        ids = tok.encode(text, add_special_tokens=True)
        assert ids == gguf_tok.encode(text, add_special_tokens=True) == rust.encode(text).ids
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == rust.decode(ids, skip_special_tokens=skip)
            assert "".join(stream(tok, ids, skip_special_tokens=skip)) == rust.decode(ids, skip_special_tokens=skip)
    assert (tok.bos_token_id, tok.eos_token_ids, tok.chat_template) == (1, {2}, None)


def test_pretrained_dir_errors(tmp_path, byte_level_dir):
    with pytest.raises(ModelFormatError, match="no tokenizer.json"):
        Tokenizer.from_pretrained_dir(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFormatError, match="cannot read"):
        Tokenizer.from_pretrained_dir(bad)
    (bad / "tokenizer.json").write_text('{"model": {"type": "Nonsense"}}', encoding="utf-8")
    with pytest.raises(ModelFormatError, match="not a valid tokenizer"):
        Tokenizer.from_pretrained_dir(bad)
    spec = json.loads((byte_level_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
    (byte_level_dir / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ModelFormatError, match="neither byte-level nor SentencePiece"):
        Tokenizer.from_pretrained_dir(byte_level_dir)

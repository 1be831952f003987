"""Hostile files: every input that once broke a fuzz target (tests/data/fuzz/<target>/), the malformed
safetensors files of fuzz.malformed, and a few seconds of random mutations per target (the long, coverage-
guided runs are ``python -m fuzz.<target> --seconds 300``; see fuzz/__init__.py)."""
import json
import time

import pytest

import fastlm
from fastlm.errors import ModelFormatError
from fastlm.weights import load_gguf, load_safetensors
from fuzz import gguf, harness, hf_config, malformed, safetensors, seeds, templates, tokenizer

TARGETS = {"gguf": (gguf.check, seeds.gguf_seeds), "safetensors": (safetensors.check, seeds.safetensors_seeds),
           "tokenizer": (tokenizer.check, seeds.tokenizer_config_seeds),
           "templates": (templates.check, seeds.template_seeds),
           "hf_config": (hf_config.check, seeds.hf_config_seeds)}
REGRESSIONS = [(target, path) for target in TARGETS for path in harness.inputs_in([harness.REGRESSIONS / target])]


@pytest.mark.parametrize("target, path", REGRESSIONS, ids=[f"{t}/{p.name}" for t, p in REGRESSIONS])
def test_regression_input(target, path):
    with harness.memory_ceiling():
        harness.run_one(TARGETS[target][0], harness.read_input(path))


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_keeps_its_regressions(target):
    assert any(target == t for t, _ in REGRESSIONS)


CASES = malformed.malformed_safetensors(seeds.model_safetensors())


@pytest.mark.parametrize("case", CASES)
def test_malformed_safetensors_is_rejected(tmp_path, case):
    (tmp_path / "config.json").write_text(json.dumps(seeds.HF_CONFIG))
    (tmp_path / "model.safetensors").write_bytes(CASES[case])
    start = time.perf_counter()
    with harness.memory_ceiling(), pytest.raises(ModelFormatError, match=r"model\.safetensors: "):
        load_safetensors(tmp_path)
    assert time.perf_counter() - start < 2


def test_the_malformed_files_start_from_a_valid_one(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(seeds.HF_CONFIG))
    (tmp_path / "model.safetensors").write_bytes(seeds.model_safetensors())
    config, params, _ = load_safetensors(tmp_path)
    assert config.num_layers == seeds.CONFIG.num_layers and len(params) == 2 + 9 * config.num_layers


@pytest.mark.parametrize("target", TARGETS)
def test_a_few_seconds_of_random_mutations(target):
    check, make_seeds = TARGETS[target]
    with harness.memory_ceiling():
        assert harness.plain_fuzz(check, make_seeds(), seconds=1.5, seed=14) > 0


# ------------------------------------------------------------------ what the regressions were, said plainly

def test_tensors_sharing_bytes_are_refused(tmp_path):
    path = harness.REGRESSIONS / "gguf"
    (tmp_path / "m.gguf").write_bytes(harness.read_input(next(path.glob("tensors-overlap-*"))))
    with pytest.raises(ModelFormatError, match="tensors overlap"):
        load_gguf(tmp_path / "m.gguf")


def test_more_layers_than_tensors_is_refused_before_listing_them(tmp_path):
    (tmp_path / "m.gguf").write_bytes(harness.read_input(next((harness.REGRESSIONS / "gguf").glob("block-count-*"))))
    with pytest.raises(ModelFormatError, match="block_count = 1000000000, more layers than the file has tensors"):
        load_gguf(tmp_path / "m.gguf")
    (tmp_path / "model.safetensors").write_bytes(seeds.model_safetensors())
    (tmp_path / "config.json").write_text(json.dumps({**seeds.HF_CONFIG, "num_hidden_layers": 10 ** 9}))
    with pytest.raises(ModelFormatError, match=r"num_hidden_layers must be an integer in \[1, 4096\]"):
        load_safetensors(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**seeds.HF_CONFIG, "num_hidden_layers": 4096}))
    with pytest.raises(ModelFormatError, match="num_hidden_layers = 4096, more layers"):
        load_safetensors(tmp_path)


def test_deeply_nested_json_is_a_format_error(tmp_path):
    (tmp_path / "config.json").write_text("[" * 100_000)
    with pytest.raises(ModelFormatError, match=r"config\.json: cannot read as JSON"):
        load_safetensors(tmp_path)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    (tmp_path / "m.gguf").write_bytes(seeds.model_gguf("Q8_0", config=seeds.CONFIG.replace(vocab_size=12)))
    with pytest.raises(ModelFormatError, match="the tokenizer has 16 tokens, more than the 12 rows of the token "
                                               "embedding"):
        fastlm.load(tmp_path / "m.gguf")


@pytest.mark.parametrize("label, context, refused", [("0", 0, True), ("2e31", 2 ** 31, True),
                                                     ("2e63", 2 ** 63, True), ("2e24", 2 ** 24, False)])
def test_the_declared_context_is_bounded(tmp_path, label, context, refused):
    """A 9 KB file claiming 2^31 positions once made the model build 16 GB of RoPE tables; now the loader
    refuses contexts outside [1, MAX_SEQ_LEN], and those inside size nothing until calls use them."""
    data = harness.read_input(next((harness.REGRESSIONS / "gguf").glob(f"context-length-{label}-*")))
    (tmp_path / "m.gguf").write_bytes(data)
    if refused:
        with pytest.raises(ModelFormatError, match=rf"llama\.context_length = {context} is outside \[1, 16777216\]"):
            load_gguf(tmp_path / "m.gguf")
    else:
        assert load_gguf(tmp_path / "m.gguf")[0].max_seq_len == context

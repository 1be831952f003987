"""Long runs, short: repeated calls and load/unload cycles of a tiny model, and a few of the real one, keep
memory and memory maps flat (bench/soak.py runs the real model for 10,000 calls and 1,000 loads)."""
import gc

import pytest

import fastlm
from bench.soak import maps_of, rss_mb
from fuzz.seeds import model_gguf


@pytest.fixture
def tiny_model(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(model_gguf("Q8_0"))
    return path


def test_repeated_calls_do_not_grow_memory(tiny_model):
    lm = fastlm.load(tiny_model)
    calls = [lambda i: lm.generate("ab", 8, seed=i), lambda i: list(lm.stream("Hello", 8, seed=i)),
             lambda i: lm.chat([{"role": "user", "content": "ab"}], 8, seed=i)]
    for i in range(100):
        calls[i % 3](i)
    gc.collect()
    before = rss_mb()
    for i in range(900):
        calls[i % 3](i)
    gc.collect()
    assert rss_mb() - before < 4


def load_cycles_growth(path, prompt: str, warm: int, cycles: int) -> float:
    """MB of RSS gained over ``cycles`` loads of ``path`` (after ``warm`` untimed ones), each generating a token
    or two and dropped: each live model maps the file once, and dropping it unmaps the file."""
    kept = maps_of(path)                        # other tests' models (session fixtures) may hold the file
    for _ in range(warm):
        fastlm.load(path).generate(prompt, 1, seed=0)
    gc.collect()
    before = rss_mb()
    for _ in range(cycles):
        lm = fastlm.load(path)
        lm.generate(prompt, 2, seed=0)
        assert maps_of(path) == kept + 1
        del lm
        gc.collect()
        assert maps_of(path) == kept
    return rss_mb() - before


def test_load_unload_cycles_release_maps_and_memory(tiny_model):
    assert load_cycles_growth(tiny_model, "ab", 20, 300) < 4


@pytest.mark.soak
def test_the_real_model_releases_its_maps_when_dropped(smollm2_gguf_path):
    """The 98 MB file is mapped once per load and given back when the model is dropped (the heap's high-water
mark settles within ~8 cycles, about 1 MB a cycle until then; a model kept alive would hold ~100 MB a cycle)."""
    assert load_cycles_growth(smollm2_gguf_path, "Hi", 2, 5) < 16

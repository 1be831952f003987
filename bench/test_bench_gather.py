"""Embedding gather: the compiled kernel beside numpy.take on a SmolLM2-sized table."""
import numpy as np
import pytest

from fastlm import _gather

V, D = 49152, 576


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(V, D)).astype(np.float32)
    ids = rng.integers(0, V, size=(8, 512))
    return table, ids, np.empty(ids.shape + (D,), dtype=np.float32)


@pytest.mark.benchmark(group="gather B=8 L=512 d=576")
def test_numpy_take(benchmark, data):
    table, ids, out = data
    benchmark(np.take, table, ids, axis=0, out=out)


@pytest.mark.benchmark(group="gather B=8 L=512 d=576")
def test_fastlm_gather(benchmark, data):
    table, ids, out = data
    benchmark(_gather.embedding_gather, table, ids, out)
    np.testing.assert_array_equal(out, np.take(table, ids, axis=0))

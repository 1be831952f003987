"""The compiled embedding gather against numpy.take."""
import numpy as np
import pytest

from fastlm import _gather


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (4, 300)])
def test_gather_matches_take(dtype, shape, rng):
    table = rng.normal(size=(500, 96)).astype(dtype)
    ids = rng.integers(0, 500, size=shape)
    out = np.empty(shape + (96,), dtype=dtype)
    _gather.embedding_gather(table, ids, out)
    np.testing.assert_array_equal(out, np.take(table, ids, axis=0))


def test_gather_rejects_mismatched_buffers(rng):
    table = rng.normal(size=(10, 4))
    ids = np.zeros((1, 2), dtype=np.int64)
    with pytest.raises(ValueError):                      # Cython's fused-type dispatch: float32 vs float64
        _gather.embedding_gather(table, ids, np.empty((1, 2, 4), dtype=np.float32))
    with pytest.raises(ValueError):                      # non-contiguous ids are refused, never misread
        _gather.embedding_gather(table, np.zeros((2, 4), dtype=np.int64)[:, ::2], np.empty((2, 2, 4)))

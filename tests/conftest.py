import numpy as np
import pytest

import fastlm
from fastlm import reference

# A small model shape that still exercises grouped-query attention (4 query heads share 2 KV heads).
TINY = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=48, max_seq_len=24)


@pytest.fixture(params=[fastlm, reference], ids=["fastlm", "reference"])
def api(request):
    """Run a test against both the fast public API and the float64 reference: they share the contract."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

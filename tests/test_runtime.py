"""Process-wide settings: one thread count for the whole library, and the SIMD switch."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastlm

from conftest import TINY


@pytest.fixture
def restore_threads():
    before = fastlm.get_num_threads()
    yield
    fastlm.set_num_threads(before)


def test_default_is_positive_and_blas_is_capped():
    assert fastlm.get_num_threads() >= 1
    assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")


def test_thread_count_does_not_change_results(restore_threads, rng):
    config = fastlm.ModelConfig(**{**TINY, "d_model": 64, "d_ff": 256, "vocab_size": 3000})
    model = fastlm.CausalLM.from_config(config, seed=0, dtype=np.float64)
    ids = rng.integers(0, 3000, size=(2, 20))
    fastlm.set_num_threads(1)
    one = model.forward(ids)
    fastlm.set_num_threads(2)
    assert fastlm.get_num_threads() == 2
    np.testing.assert_allclose(model.forward(ids), one, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_bad_thread_counts_raise(restore_threads, bad, error):
    with pytest.raises(error):
        fastlm.set_num_threads(bad)


def test_environment_sets_the_default(monkeypatch):
    from fastlm.runtime import _default_threads
    monkeypatch.setenv("FASTLM_NUM_THREADS", "3")
    assert _default_threads() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("FASTLM_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="FASTLM_NUM_THREADS"):
            _default_threads()


def test_simd_switch_covers_every_simd_kernel():
    before = fastlm.simd_enabled()
    try:
        fastlm.set_simd(False)
        assert not fastlm.simd_enabled()
        for kernels in (fastlm._attention, fastlm._blocks, fastlm._linear, fastlm._qlinear, fastlm._sampling):
            assert not kernels.simd_enabled(), kernels.__name__
    finally:
        fastlm.set_simd(before)

"""Benchmarks: ``python -m pytest bench --benchmark-json=bench.json && python bench/report.py bench.json``.

Each group times fastlm (tests named ``test_fastlm*``) beside baselines measured in the same run, because
absolute times drift on shared machines; ``bench/report.py`` prints the ratios.
"""
import pytest
from threadpoolctl import threadpool_limits

import fastlm


@pytest.fixture
def baseline_blas():
    """Give a NumPy baseline BLAS's full thread count: fastlm caps BLAS at one thread for its own use."""
    with threadpool_limits(limits=fastlm.get_num_threads(), user_api="blas"):
        yield

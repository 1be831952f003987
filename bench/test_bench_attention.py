"""Causal GQA attention, float32: the compiled flash kernel beside NumPy's materialised softmax(QK^T + mask)V.

16 query heads share 4 KV heads, head_dim 64, batch 1. Prefill at L = 512 and 2048 (start_pos 0), and one
decode step (L = 1) against 512 and 2048 cached keys. The NumPy baseline is the reference model's formula in
float32, with K/V repeated per query head, on all of BLAS's threads; pytest-benchmark prints each time's
ratio to the fastest in its group. That the kernel's memory does not grow with L^2 is tested in
tests/test_attention.py.
"""
import numpy as np
import pytest

from fastlm import _attention
from fastlm.reference import softmax

H, HKV, DK = 16, 4, 64
SCALE = 1.0 / np.sqrt(DK)


def materialised(q, k, v, mask):
    """softmax(q k^T * scale + mask) v, every (L, T) score in memory; q (B, L, h, dk), k, v (B, hkv, T, dk)."""
    group = q.shape[2] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)               # (B, h, T, dk)
    scores = q.transpose(0, 2, 1, 3) @ k.transpose(0, 1, 3, 2) * np.float32(SCALE)  # (B, h, L, T)
    scores += mask
    return (softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3)                     # (B, L, h, dk)


def make_case(L, T):
    """Queries for positions T - L .. T - 1 over a full cache of T keys, and the matching additive mask."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(1, L, H, DK)).astype(np.float32)
    k = rng.normal(size=(1, HKV, T, DK)).astype(np.float32)
    v = rng.normal(size=(1, HKV, T, DK)).astype(np.float32)
    start_pos = np.array([T - L], dtype=np.int64)
    future = np.arange(T)[None, :] > (T - L + np.arange(L))[:, None]
    mask = np.where(future, -np.inf, 0).astype(np.float32)                         # (L, T)
    return q, k, v, start_pos, mask


CASES = {"prefill L=512": (512, 512), "prefill L=2048": (2048, 2048),
         "decode T=512": (1, 512), "decode T=2048": (1, 2048)}


@pytest.fixture(scope="module", params=CASES.values(), ids=CASES.keys())
def case(request):
    return make_case(*request.param)


def group_of(request):
    return f"attention {request.node.callspec.id} h={H} hkv={HKV} dk={DK} float32"


def test_numpy_materialised(benchmark, case, request, baseline_blas):
    q, k, v, start_pos, mask = case
    benchmark.group = group_of(request)
    out = benchmark(materialised, q, k, v, mask)
    assert out.dtype == np.float32


def test_fastlm_attention(benchmark, case, request):
    q, k, v, start_pos, mask = case
    benchmark.group = group_of(request)
    out = np.empty_like(q)
    benchmark(_attention.attention, q, k, v, start_pos, out, SCALE)
    np.testing.assert_allclose(out, materialised(q, k, v, mask), rtol=1e-4, atol=1e-5)

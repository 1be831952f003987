"""Projections on GGUF block-quantized weights, out = x @ dequant(W).T: fastlm's `_qlinear.linear` on the raw
blocks beside fastlm's float32 `_linear.linear` on the dequantized matrix, for F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, at
N = 1 (decode), 8 (batched decode) and 128 (prefill).

Shapes: 1536 x 576 (SmolLM2-135M's gate/up projection) and 49152 x 576 (its output projection, Q8_0 in the
GGUF files). As in test_bench_linear.py, the smaller matrix is cycled through enough copies to overflow the
last-level cache (a decode step reads every weight of the model once); each side cycles its own copies.
extra_info records the weight bytes read per call and GB/s.
"""
import itertools

import gguf
import numpy as np
import pytest

from fastlm import _linear, _qlinear, _quant

pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=10)

QTYPES = {"F16": 1, "Q8_0": 8, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7}
SHAPES = [(1536, 576), (49152, 576)]
NS = [1, 8, 128]
COLD_BYTES = 128 << 20          # total size of each side's copies: several times any L3


@pytest.fixture(scope="module", params=SHAPES, ids=[f"{m}x{k}" for m, k in SHAPES])
def shape(request):
    return request.param


@pytest.fixture(scope="module", params=list(QTYPES), ids=list(QTYPES))
def matrices(request, shape):
    """(qtype, quantized copies, float32 dequantized copies) of one random matrix."""
    m, k = shape
    qtype = QTYPES[request.param]
    w = (np.random.default_rng(0).normal(size=(m, k)) / np.sqrt(k)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType(qtype)).view(np.uint8).reshape(m, -1)
    deq = np.empty(m * k, np.float32)
    _quant.dequantize(raw.reshape(-1), qtype, deq)
    deq = deq.reshape(m, k)
    q_copies = [raw.copy() for _ in range(max(1, COLD_BYTES // raw.nbytes))]
    f_copies = [deq.copy() for _ in range(max(1, COLD_BYTES // deq.nbytes))]
    return request.param, qtype, q_copies, f_copies


@pytest.fixture(params=NS, ids=[f"N={n}" for n in NS])
def case(request, matrices, benchmark):
    n = request.param
    name, qtype, q_copies, f_copies = matrices
    m, k = f_copies[0].shape
    benchmark.group = f"qlinear {m}x{k} N={n} {name}"
    x = np.random.default_rng(1).normal(size=(n, k)).astype(np.float32)
    return n, qtype, x, q_copies, f_copies


def test_float32_linear(benchmark, case):
    n, qtype, x, q_copies, f_copies = case
    ws = itertools.cycle(f_copies)
    out = np.empty((n, f_copies[0].shape[0]), np.float32)
    benchmark(lambda: _linear.linear(x, next(ws), out))


def test_fastlm_qlinear(benchmark, case):
    n, qtype, x, q_copies, f_copies = case
    m, k = f_copies[0].shape
    ws = itertools.cycle(q_copies)
    out = np.empty((n, m), np.float32)
    scratch = np.empty(_qlinear.scratch_size(n, k, _qlinear.num_threads()), np.uint8)
    before = _qlinear.allocations()
    benchmark(lambda: _qlinear.linear(x, next(ws), qtype, out, 0.0, scratch))
    assert _qlinear.allocations() == before
    benchmark.extra_info["weight_MB"] = q_copies[0].nbytes / 1e6
    benchmark.extra_info["GB/s"] = q_copies[0].nbytes / benchmark.stats.stats.mean / 1e9
    # the result stays right: float accuracy on the float paths, int16-activation accuracy (2.1e-5 here;
    # int8 activations gave 5.8e-3) otherwise
    _qlinear.linear(x, q_copies[0], qtype, out, 0.0, scratch)
    ref = x.astype(np.float64) @ f_copies[0].T.astype(np.float64)
    assert np.linalg.norm(out - ref) <= 3e-4 * np.linalg.norm(ref)

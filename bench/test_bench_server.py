"""The server on SmolLM2-135M: aggregate generated tokens/s with 1, 4 and 8 concurrent streaming clients
(each asks for 64 tokens, 2 requests per client), and the time to first token under that load. Target:
8 clients >= 4x the single-client rate. Run: ``python -m pytest bench/test_bench_server.py -s``."""
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

import fastlm

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_server import Server  # noqa: E402

RATES: dict[int, float] = {}


@pytest.fixture(scope="module")
def server():
    s = Server(fastlm.load(), parallel=8, ctx=1024, queue_size=64)
    warm = openai.OpenAI(base_url=f"{s.url}/v1", api_key="-", max_retries=0, timeout=300)
    for clients in (1, 2, 8):       # the first requests pay one-time costs (the thread-count probe, the template)
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i: warm.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, seed=i), range(clients)))
    yield s
    s.stop()


@pytest.mark.parametrize("clients", [1, 4, 8])
def test_fastlm_concurrent_clients(benchmark, server, clients):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0, timeout=300)
    first_token = []

    def ask(i):
        start, first, tokens = time.perf_counter(), None, 0
        for chunk in client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"Tell me a story about the number {i}."}],
                max_tokens=64, seed=i, stream=True, stream_options={"include_usage": True},
                logit_bias={"2": -100}):                     # no early end of turn: 64 tokens each
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        first_token.append(first)
        return tokens

    def run():
        with ThreadPoolExecutor(clients) as pool:
            return sum(pool.map(ask, range(2 * clients)))
    benchmark.group = "server: aggregate tokens/s"
    tokens = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    RATES[clients] = tokens / benchmark.stats.stats.mean
    benchmark.extra_info.update(tokens_per_s=RATES[clients], ttft_ms=1000 * max(first_token))
    print(f"\n{clients} clients: {RATES[clients]:.1f} tok/s aggregate, worst time to first token "
          f"{1000 * max(first_token):.0f} ms" + (f", {RATES[clients] / RATES[1]:.2f}x one client" if 1 in RATES else ""))

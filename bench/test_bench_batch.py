"""Batch generation of 256 SmolLM2 prompts (32 new tokens each): in this process with 2 threads beside Ray
with 2 actors x 1 thread on a local cluster. The report's speed-up column is Ray's time over the in-process
time; the difference is Ray's overhead on one machine (cluster start, actors loading the model, records)."""
import json

import pytest

from fastlm.batch import run_file

N, NEW = 256, 32


@pytest.fixture(scope="module")
def input_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Write a sentence about the number {i}.",
                                        "max_tokens": NEW, "seed": i}) + "\n" for i in range(N)))
    return path


@pytest.mark.benchmark(group="batch 256 prompts x 32 tokens")
def test_fastlm_in_process(benchmark, input_file, tmp_path):
    import fastlm
    fastlm.set_num_threads(2)
    out = tmp_path / "out.jsonl"

    def run():
        out.unlink(missing_ok=True)
        return run_file("smollm2-135m-instruct", input_file, out, batch_size=16, progress=False)
    counts = benchmark.pedantic(run, rounds=1, iterations=1)
    assert counts["done"] == N
    benchmark.extra_info["tokens_per_s"] = N * NEW / benchmark.stats.stats.mean


@pytest.mark.benchmark(group="batch 256 prompts x 32 tokens")
def test_ray_2_actors_x_1_thread(benchmark, input_file, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray backend is the fastlm[ray] extra")
    from fastlm.weights import fetch_default_model
    model = fetch_default_model()
    out = tmp_path / "out.jsonl"

    def run():
        out.unlink(missing_ok=True)
        try:
            return run_file(model, input_file, out, ray_address="local", actors=2, threads_per_actor=1,
                            batch_size=16, progress=False)
        finally:
            ray.shutdown()
    counts = benchmark.pedantic(run, rounds=1, iterations=1)
    assert counts["done"] == N
    benchmark.extra_info["tokens_per_s"] = N * NEW / benchmark.stats.stats.mean

"""One model, many Python threads: every call gives the tokens it gives alone with the same seed."""
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import fastlm
from fastlm import _attention
from fastlm.runtime import StepThreads

PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,",
           "Roses are red,", "In 1969, the first", "The best way to learn", "Q: What is 2 + 2?\nA:"]


def calls(lm, n_tokens=12):
    """Eight calls of every text kind (generate, stream, chat, chat_stream), each with its own seed."""
    chat = lambda p: [{"role": "user", "content": p}]  # noqa: E731
    kinds = [lambda p, s: lm.generate(p, n_tokens, seed=s).text,
             lambda p, s: "".join(x.text for x in lm.stream(p, n_tokens, seed=s, temperature=1.2, top_k=0)),
             lambda p, s: lm.chat(chat(p), n_tokens, seed=s).text,
             lambda p, s: "".join(x.text for x in lm.chat_stream(chat(p), n_tokens, seed=s,
                                                                 repetition_penalty=1.3))]
    return [(lambda k=kinds[i % 4], p=p, s=i: k(p, s)) for i, p in enumerate(PROMPTS)]


@pytest.fixture
def restore_threads():
    before = fastlm.get_num_threads()
    yield
    fastlm.set_num_threads(before)


def test_eight_threads_give_each_call_its_own_tokens(smollm2_quantized):
    jobs = calls(smollm2_quantized)
    alone = [job() for job in jobs]
    assert len(set(alone)) == len(alone)                  # the calls differ, so a mix-up would show
    barrier = threading.Barrier(len(jobs))

    def together(job):
        barrier.wait()                                    # all eight start at once
        return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        for _ in range(3):
            assert list(pool.map(together, jobs)) == alone


def test_a_new_thread_takes_the_process_thread_count(smollm2_quantized, restore_threads):
    fastlm.set_num_threads(1)
    seen = []

    def run():
        seen.append(_attention.num_threads())             # OpenMP's own default for a fresh thread
        smollm2_quantized.generate("Hi", 2, seed=0)
        seen.append(_attention.num_threads())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen[1] == 1


def simulate(step_seconds, steps=600, chooser=None):
    """The counts a StepThreads picks when a step on n threads takes step_seconds[n]."""
    chooser, counts = chooser or StepThreads(2), []
    for _ in range(steps):
        counts.append(chooser.next_step())
        chooser.record(counts[-1], step_seconds[counts[-1]])
    return counts


def test_step_threads_keep_the_faster_count():
    assert simulate({2: 0.005, 1: 0.009}).count(1) <= 8    # idle: all threads, the occasional re-check
    chooser = StepThreads(2)
    assert simulate({2: 0.040, 1: 0.009}, chooser=chooser).count(2) <= 8     # a busy core: one thread
    back = simulate({2: 0.005, 1: 0.009}, steps=1200, chooser=chooser)           # the core came back:
    assert back[StepThreads.LAST_PERIOD + 2:].count(1) <= 8                       # followed within a period
    assert set(simulate({1: 0.01}, chooser=StepThreads(1))) == {1}


def test_generations_share_one_chooser(smollm2_quantized, monkeypatch):
    """Short calls continue one schedule: both counts are timed once, not once per call."""
    monkeypatch.setattr(StepThreads, "_shared", {})
    chooser, counts = StepThreads.shared(2), []
    monkeypatch.setattr(fastlm, "get_num_threads", lambda: 2)
    monkeypatch.setattr(fastlm.api, "get_num_threads", lambda: 2)
    record = chooser.record
    monkeypatch.setattr(chooser, "record", lambda n, seconds: (counts.append(n), record(n, seconds)))
    for seed in range(3):
        smollm2_quantized.generate("Hi", 4, seed=seed)
    assert len(counts) == 9 and min(counts.count(1), counts.count(2)) == 1


@pytest.mark.parametrize("fixture", ["smollm2_quantized", "smollm2"])
def test_decode_tokens_do_not_depend_on_the_thread_count_of_each_step(request, fixture, monkeypatch):
    lm = request.getfixturevalue(fixture)
    fixed = lm.generate("The capital of France is", 24, seed=3).text
    counts = itertools.cycle([2, 1, 1, 2, 2, 1, 2])
    monkeypatch.setattr(StepThreads, "next_step", lambda self: next(counts))
    assert lm.generate("The capital of France is", 24, seed=3).text == fixed

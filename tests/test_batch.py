"""``fastlm batch``: JSON lines through the engine in this process and on a real local Ray cluster."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastlm
from fastlm.batch import LineError, generate_records, parse_line, run_file

MODEL = Path(__file__).parent / "data" / "archs" / "qwen2" / "model.gguf"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}


def make_input(path: Path, n: int = 64) -> list[str]:
    """n lines: prompts, chat lines, a json_schema line, per-line options, one malformed line."""
    lines = []
    for i in range(n):
        if i == 7:
            lines.append("{not json")
            continue
        record = {"id": f"r{i}", "seed": i, "max_tokens": 6 + i % 5}
        if i % 4 == 1:
            record["messages"] = [{"role": "user", "content": f"Question {i}?"}]
        else:
            record["prompt"] = f"Prompt number {i}:"
        if i == 10:
            record.update(json_schema=SCHEMA, max_tokens=40)
        if i % 3 == 2:
            record.update(temperature=0.5, stop=["e"])
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return lines


def outputs(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "timings"} for line in path.read_text().splitlines()]


@pytest.mark.parametrize("text, message", [
    ("[1]", "expected a JSON object"), ('{"prompt": "x"}', 'needs an "id"'),
    ('{"id": 1}', 'exactly one of "prompt" and "messages"'), ('{"id": 1, "prompt": 3}', "must be a string"),
    ('{"id": 1, "messages": [{"role": "user"}]}', '"messages" must be a list'),
    ('{"id": 1, "prompt": "x", "temprature": 1}', "unknown field 'temprature'"), ("nope", "not JSON")])
def test_malformed_lines_say_what_is_wrong(text, message):
    with pytest.raises(LineError, match=f"line 3: .*{message}"):
        parse_line(text, 3)


def test_in_process_run_orders_resumes_and_reports_errors(tmp_path, capsys):
    make_input(tmp_path / "in.jsonl")
    counts = run_file(MODEL, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    out = outputs(tmp_path / "out.jsonl")
    assert counts == {"done": 63, "skipped": 0, "failed": 1}
    assert [r.get("id") for r in out] == [f"r{i}" if i != 7 else None for i in range(64)]
    assert out[7]["line"] == 8 and "not JSON" in out[7]["error"]
    assert all(r["usage"]["completion_tokens"] <= 6 + i % 5 for i, r in enumerate(out) if i not in (7, 10))
    assert json.loads(out[10]["text"]).keys() == {"a"}
    assert all("e" not in r["text"] for i, r in enumerate(out) if i % 3 == 2 and r["finish_reason"] == "stop")
    assert "64/64 lines" in capsys.readouterr().err                           # the progress bar
    # the same lines as their own calls would give
    lm = fastlm.load(MODEL)
    assert out[0]["text"] == lm.generate("Prompt number 0:", 6, seed=0).text
    assert out[1]["text"] == lm.chat([{"role": "user", "content": "Question 1?"}], 7, seed=1).text
    # a rerun finds everything done
    assert run_file(MODEL, tmp_path / "in.jsonl", tmp_path / "out.jsonl") == {"done": 0, "skipped": 64, "failed": 0}
    assert outputs(tmp_path / "out.jsonl") == out


def test_a_killed_run_resumes_without_duplicates(tmp_path):
    make_input(tmp_path / "in.jsonl")
    run_file(MODEL, tmp_path / "in.jsonl", tmp_path / "full.jsonl", batch_size=4, progress=False)
    command = [sys.executable, "-m", "fastlm", "batch", "-q", "-m", str(MODEL), str(tmp_path / "in.jsonl"),
               "-o", str(tmp_path / "out.jsonl"), "--batch-size", "4", "-t", "1"]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (tmp_path / "out.jsonl").exists() and len((tmp_path / "out.jsonl").read_text().splitlines()) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(tmp_path / "out.jsonl", "a") as f:
        f.write('{"id": "r40", "text": "cut sho')           # a line cut short by the kill
    partial = len((tmp_path / "out.jsonl").read_text().splitlines()) - 1
    assert 0 < partial < 64
    counts = run_file(MODEL, tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_size=4, progress=False)
    assert counts["skipped"] == partial
    assert outputs(tmp_path / "out.jsonl") == outputs(tmp_path / "full.jsonl")


def test_python_api_over_an_iterable():
    records = [{"id": 1, "prompt": "Hello", "max_tokens": 5, "seed": 1}, {"id": 2, "promt": "typo"},
               {"id": 3, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "seed": 3}]
    out = list(generate_records(MODEL, records))
    assert [r["id"] for r in out] == [1, 2, 3] and "unknown field 'promt'" in out[1]["error"]
    assert out[0]["text"] == fastlm.load(MODEL).generate("Hello", 5, seed=1).text


def test_ray_equals_in_process_line_by_line(tmp_path):
    """A real local Ray cluster (2 CPUs, 2 actors): the same output, line for line, as in this process."""
    ray = pytest.importorskip("ray", reason="the Ray backend is the fastlm[ray] extra")
    make_input(tmp_path / "in.jsonl")
    run_file(MODEL, tmp_path / "in.jsonl", tmp_path / "local.jsonl", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        run_file(MODEL, tmp_path / "in.jsonl", tmp_path / "ray.jsonl", ray_address="auto", actors=2,
                 threads_per_actor=1, batch_size=8, progress=False)
        dataset = ray.data.from_items([{"id": 1, "prompt": "Hello", "max_tokens": 5, "seed": 1}])
        (row,) = generate_records(str(MODEL), dataset).take_all()
    finally:
        ray.shutdown()
    assert outputs(tmp_path / "ray.jsonl") == outputs(tmp_path / "local.jsonl")
    assert json.loads(row["record"])["text"] == fastlm.load(MODEL).generate("Hello", 5, seed=1).text

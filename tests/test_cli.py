"""The ``fastlm`` command, run in-process on the real model."""
import io
import subprocess
import sys

import pytest

from fastlm.cli import main

from conftest import GOLDEN


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_the_greedy_continuation(capsys, smollm2_gguf_path, smollm2):
    prompt = GOLDEN["prompts"][0]
    code, out, err = run(capsys, "generate", "--model", smollm2_gguf_path, "--temperature", 0, "-n", 8,
                         prompt["prompt"])
    assert code == 0 and "loaded" in err
    expected = smollm2.decode(prompt["greedy_new_ids"][:8], skip_special_tokens=True)
    assert out == expected + "\n"


def test_generate_with_a_seed_is_reproducible(capsys, smollm2_gguf_path):
    outs = [run(capsys, "generate", "-m", smollm2_gguf_path, "--seed", 1, "-n", 10, "Hello")[1] for _ in range(2)]
    assert outs[0] == outs[1] and outs[0].strip()


def test_chat_keeps_history_and_resets(capsys, monkeypatch, smollm2_gguf_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n/reset\n\n/exit\nnever read\n"))
    code, out, _ = run(capsys, "chat", "-m", smollm2_gguf_path, "--temperature", 0, "-n", 16)
    assert code == 0
    assert out == "The capital of France is Paris.\n"


def test_info(capsys, smollm2_gguf_path):
    code, out, _ = run(capsys, "info", smollm2_gguf_path)
    assert code == 0
    assert "134,515,008" in out and "210 Q4_1" in out and "1 Q8_0" in out and "93.8 MiB" in out


def test_tokenize(capsys, smollm2_gguf_path):
    case = GOLDEN["tokenizer"][0]
    code, out, _ = run(capsys, "tokenize", smollm2_gguf_path, case["text"])
    assert code == 0
    assert [int(line.split()[0]) for line in out.splitlines()] == case["ids"]


def test_bench(capsys, smollm2_gguf_path):
    code, out, _ = run(capsys, "bench", smollm2_gguf_path, "-p", 16, "-n", 4, "-r", 1, "-t", 1)
    assert code == 0
    assert "| pp16 |" in out and "| tg4 |" in out


@pytest.mark.parametrize("argv", [
    ["generate", "-m", "/no/such/model.gguf", "hi"],
    ["info", "/no/such/dir"],
    ["bench", "/no/such/model.gguf"],
])
def test_user_mistakes_give_one_line_and_a_nonzero_exit(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith("fastlm: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_bad_option_values(capsys, smollm2_gguf_path):
    code, _, err = run(capsys, "generate", "-m", smollm2_gguf_path, "--top-p", 2, "hi")
    assert code == 1 and "top_p" in err
    code, _, err = run(capsys, "bench", smollm2_gguf_path, "-p", 0, "-n", 1)
    assert code == 1 and "error" in err


@pytest.mark.parametrize("command", ["", "generate", "chat", "info", "tokenize", "bench"])
def test_help(command):
    argv = [sys.executable, "-m", "fastlm", *([command] if command else []), "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: fastlm" in result.stdout

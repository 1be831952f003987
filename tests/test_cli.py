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


def test_generate_streams_the_greedy_continuation(capsys, smollm2_gguf_path, smollm2_quantized):
    prompt = GOLDEN["prompts"][0]["prompt"]
    code, out, err = run(capsys, "generate", "--model", smollm2_gguf_path, "--temperature", 0, "-n", 8, prompt)
    assert code == 0 and "loaded" in err
    assert out == smollm2_quantized.generate(prompt, 8, temperature=0).text + "\n"


def test_generate_dequantized_follows_the_golden_greedy_path(capsys, smollm2_gguf_path, smollm2):
    prompt = GOLDEN["prompts"][0]
    code, out, _ = run(capsys, "generate", "-m", smollm2_gguf_path, "--dequantize", "--temperature", 0, "-n", 8,
                       prompt["prompt"])
    assert code == 0
    assert out == smollm2.decode(prompt["greedy_new_ids"][:8], skip_special_tokens=True) + "\n"


def test_generate_with_a_seed_is_reproducible(capsys, smollm2_gguf_path):
    outs = [run(capsys, "generate", "-m", smollm2_gguf_path, "--seed", 1, "-n", 10, "Hello")[1] for _ in range(2)]
    assert outs[0] == outs[1] and outs[0].strip()


def test_chat_keeps_history_and_resets(capsys, monkeypatch, smollm2_gguf_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n/reset\n\n/exit\nnever read\n"))
    code, out, _ = run(capsys, "chat", "-m", smollm2_gguf_path, "--dequantize", "--temperature", 0, "-n", 16)
    assert code == 0
    assert out == "The capital of France is Paris.\n"


def test_info(capsys, smollm2_gguf_path):
    code, out, _ = run(capsys, "info", smollm2_gguf_path)
    assert code == 0
    assert "134,515,008" in out and "210 Q4_1" in out and "1 Q8_0" in out and "93.8 MiB" in out


def test_tokenize(capsys, smollm2_gguf_path):
    case = GOLDEN["tokenizer"][0]
    code, out, _ = run(capsys, "tokenize", "-m", smollm2_gguf_path, case["text"])
    assert code == 0
    assert [int(line.split()[0]) for line in out.splitlines()] == case["ids"]


def test_bench(capsys, smollm2_gguf_path):
    code, out, _ = run(capsys, "bench", smollm2_gguf_path, "-p", 16, "-n", 4, "-r", 1, "-t", 1)
    assert code == 0
    assert "| pp16 |" in out and "| tg4 |" in out and "| 210 Q4_1, 1 Q8_0 | 93.8 MiB | 1 |" in out


def test_bench_each_format(capsys, smollm2_gguf_path, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLM_CACHE", str(tmp_path))
    for _ in range(2):                                   # the second run reuses the files of the first
        code, out, err = run(capsys, "bench", smollm2_gguf_path, "--types", "f16,Q4_0", "-p", 8, "-n", 2,
                             "-r", 1, "-t", 1)
        assert code == 0
        rows = [line for line in out.splitlines() if line.startswith("| SmolLM2")]
        assert [row.split(" | ")[0:2] for row in rows] == [
            ["| SmolLM2-135M-Instruct.Q4_1.F16.gguf", "211 F16"]] * 2 + [
            ["| SmolLM2-135M-Instruct.Q4_1.Q4_0.gguf", "210 Q4_0, 1 Q8_0"]] * 2
    assert err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SmolLM2-135M-Instruct.Q4_1.F16.gguf",
                                                           "SmolLM2-135M-Instruct.Q4_1.Q4_0.gguf"]


@pytest.mark.parametrize("argv", [
    ["generate", "-m", "/no/such/model.gguf", "hi"],
    ["info", "/no/such/dir"],
    ["bench", "/no/such/model.gguf"],
])
def test_user_mistakes_give_one_line_and_a_nonzero_exit(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith("fastlm: error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--top-p", 2, "hi"], "--top-p must lie in"),
    (["generate", "-t", 0, "hi"], "argument -t/--threads: must be >= 1"),
    (["generate", "-n", -1, "hi"], "argument -n/--max-new-tokens: must be >= 0"),
    (["chat", "--temperature", -1], "--temperature must be"),
    (["generate", "--stop", "", "hi"], "stop strings must not be empty"),
    (["generate", "--regex", "(", "hi"], "invalid regex"),
    (["generate", "--json-schema", "/no/such/schema.json", "hi"], "No such file"),
])
def test_bad_option_values_are_refused_before_the_model_loads(capsys, argv, message):
    """In the command's own terms, and before loading: the model named here does not even exist."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in [*argv, "-m", "/no/such/model.gguf"]])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "loaded" not in err


def test_bench_bad_option(capsys, smollm2_gguf_path):
    code, _, err = run(capsys, "bench", smollm2_gguf_path, "-p", 0, "-n", 1)
    assert code == 1 and "error" in err


@pytest.mark.parametrize("command", ["", "generate", "chat", "info", "tokenize", "bench"])
def test_help(command):
    argv = [sys.executable, "-m", "fastlm", *([command] if command else []), "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: fastlm" in result.stdout


# ------------------------------------------------------------------------------- quantize and perplexity

TEXT_FILE = __import__("pathlib").Path(__file__).parent / "data" / "english.txt"


def test_quantize(capsys, smollm2_gguf_path, tmp_path):
    from fastlm.weights import GGUFFile
    out_path = tmp_path / "smollm2-q8_0.gguf"
    code, out, err = run(capsys, "quantize", smollm2_gguf_path, out_path, "--type", "q8_0")
    assert code == 0
    # A progress bar: one line redrawn 272 times (carriage returns), a newline at the end.
    assert err.count("\n") == 1 and err.endswith("\n") and err.count("\r") == 272
    first, last = err.split("\r")[1], err.split("\r")[-1]
    assert first.startswith("[" + "." * 30 + "]   1/272 token_embd.weight") and "Q8_0 -> Q8_0" in first
    assert last.startswith("[" + "#" * 30 + "] 272/272 ")
    assert "blk.0.attn_norm.weight" in err and "F32 -> F32" in err and "Q4_1 -> Q8_0" in err
    assert out.startswith("quantized ") and "(98.4 MB)" in out and "Q8_0): 272 tensors (61 F32, 211 Q8_0)" in out
    types = {t.type_name for t in GGUFFile(out_path).tensors.values()}
    assert types == {"F32", "Q8_0"}
    code, out, err = run(capsys, "quantize", "-q", smollm2_gguf_path, out_path, "--type", "Q4_0")
    assert code == 0 and err == "" and "Q4_0" in out
    # the tied embedding is the output projection: Q8_0, as llama-quantize stores it for rows of 576 (Q6_K
    # does not fit); --pure keeps it Q4_0
    assert GGUFFile(out_path).tensors["token_embd.weight"].type_name == "Q8_0"
    code, out, err = run(capsys, "quantize", "-q", "--pure", smollm2_gguf_path, out_path, "--type", "Q4_0")
    assert code == 0 and "211 Q4_0" in out
    out_path.unlink()


@pytest.mark.parametrize("make_argv, message", [
    (lambda src, tmp: ["quantize", "/no/such/model.gguf", tmp / "o.gguf", "--type", "Q4_0"], "no such file"),
    (lambda src, tmp: ["quantize", src, src, "--type", "Q4_0"], "is the input file"),
    (lambda src, tmp: ["quantize", src, tmp / "missing" / "o.gguf", "--type", "Q4_0"], "does not exist"),
    (lambda src, tmp: ["perplexity", src, tmp / "missing.txt"], "missing.txt"),
    (lambda src, tmp: ["perplexity", "/no/such/model.gguf", TEXT_FILE], "/no/such/model.gguf"),
])
def test_quantize_and_perplexity_mistakes(capsys, smollm2_gguf_path, tmp_path, make_argv, message):
    code, out, err = run(capsys, *make_argv(smollm2_gguf_path, tmp_path))
    assert code == 1 and out == ""
    assert err.startswith("fastlm: error: ") and err.count("\n") == 1 and message in err


def test_bench_rejects_an_unknown_type(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--types", "F16,Q7_K"])
    assert exit_info.value.code == 2 and "unknown type(s) 'Q7_K'" in capsys.readouterr().err


def test_quantize_rejects_an_unknown_type(capsys, smollm2_gguf_path, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(smollm2_gguf_path), str(tmp_path / "o.gguf"), "--type", "Q7_K"])
    assert exit_info.value.code == 2 and "invalid choice: 'Q7_K'" in capsys.readouterr().err


def test_perplexity(capsys, smollm2_gguf_path):
    code, out, err = run(capsys, "perplexity", smollm2_gguf_path, TEXT_FILE, "--ctx", 256, "-t", 2)
    assert code == 0
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert [p.split("]")[0] for p in progress] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert out.startswith("perplexity: ") and "over 508 tokens (4 chunks of 256" in out
    ppl = float(out.split()[1])
    assert 10 < ppl < 40 and float(progress[-1].split()[1]) == pytest.approx(ppl, abs=1e-4)


def test_perplexity_needs_enough_text(capsys, smollm2_gguf_path, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("A short sentence of plain English words.", encoding="utf-8")
    code, out, err = run(capsys, "perplexity", smollm2_gguf_path, short)
    assert code == 1 and out == "" and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("fastlm: error: the text has 8 tokens, fewer than one chunk of n_ctx = 512")
    assert "--ctx" in last
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00 not utf-8")
    code, _, err = run(capsys, "perplexity", smollm2_gguf_path, binary)
    assert code == 1 and "not UTF-8" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["quantize", "perplexity"])
def test_help_of_the_new_commands(command):
    result = subprocess.run([sys.executable, "-m", "fastlm", command, "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and f"usage: fastlm {command}" in result.stdout


# ------------------------------------------------------------------------------ the command line a person expects

TINY = str(__import__("pathlib").Path(__file__).parent / "data" / "archs" / "qwen2" / "model.gguf")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"fastlm {__import__('fastlm').__version__}"


def test_prompt_from_stdin_and_verbose_timings(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon a time"))
    code, out, err = run(capsys, "generate", "-m", TINY, "-", "-n", 6, "--temperature", 0, "-v")
    direct = run(capsys, "generate", "-m", TINY, "Once upon a time", "-n", 6, "--temperature", 0)[1]
    assert code == 0 and out == direct
    assert "tok/s" in err and "first token after" in err and "finish: length" in err


def test_structured_output_and_stop_flags(capsys, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], '
                      '"additionalProperties": false}')
    code, out, _ = run(capsys, "generate", "-m", TINY, "x", "-n", 60, "--json-schema", schema, "--seed", 1)
    assert code == 0 and isinstance(__import__("json").loads(out)["n"], int)
    grammar = tmp_path / "g.lark"
    grammar.write_text('start: "yes" | "no"')
    code, out, _ = run(capsys, "generate", "-m", TINY, "x", "-n", 5, "--grammar", grammar, "--seed", 1)
    assert code == 0 and out.strip() in ("yes", "no")
    code, out, _ = run(capsys, "generate", "-m", TINY, "x", "-n", 40, "--seed", 2, "--stop", "e", "--stop", "a")
    assert code == 0 and "e" not in out and "a" not in out


def test_a_closed_pipe_exits_quietly():
    """`fastlm generate ... | head -c 1`: no BrokenPipeError traceback, a clean exit."""
    command = f"{sys.executable} -m fastlm generate -m {TINY} Hello -n 200 --seed 0 | head -c 1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.returncode == 0, done.stderr


def test_chat_uses_a_session(capsys, monkeypatch):
    """The REPL keeps its cache between turns; its replies are those of fresh chat calls on the history."""
    import fastlm
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\nHow are you?\n/exit\n"))
    code, out, _ = run(capsys, "chat", "-m", TINY, "-n", 8, "--temperature", 0)
    lm = fastlm.load(TINY)
    first = lm.chat([{"role": "user", "content": "Hi"}], 8, temperature=0).text
    second = lm.chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first},
                      {"role": "user", "content": "How are you?"}], 8, temperature=0).text
    assert code == 0 and out == f"{first}\n{second}\n"


def test_info_and_tokenize_take_the_model_like_every_command(capsys):
    assert run(capsys, "info", "-m", TINY)[1] == run(capsys, "info", TINY)[1]
    code, out, _ = run(capsys, "tokenize", "-m", TINY, "Hello")
    assert code == 0 and out.split()[0].isdigit()

"""Every model family, from both of its files, against Hugging Face transformers' outputs.

``tests/data/archs/<arch>/`` (copied from ``shared/golden/archs``, whose README explains them) holds a tiny
random-weight model per family as a Hugging Face checkpoint (``hf/``) and as a GGUF written by llama.cpp's own
converter (``model.gguf``), with ``golden.json``: transformers' float64 and float32 outputs for six prompts
(1 to 100 tokens; the sliding windows are 16). Every test runs over whatever families that folder holds.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlm
from fastlm import cli, reference
from fastlm.errors import ModelFormatError
from fastlm.weights import GGUFFile, load_gguf, load_safetensors
from fastlm.weights.gguf_writer import TensorSpec, write_gguf

ARCHS = Path(__file__).parent / "data" / "archs"
FAMILIES = sorted(p.name for p in ARCHS.iterdir() if (p / "golden.json").is_file())
FILES = ["gguf", "hf"]


def golden(arch: str) -> dict:
    return json.loads((ARCHS / arch / "golden.json").read_text(encoding="utf-8"))


def load(arch: str, file: str, dtype=np.float64):
    if file == "gguf":
        return load_gguf(ARCHS / arch / "model.gguf", dtype)
    return load_safetensors(ARCHS / arch / "hf", dtype)


def expected(arch: str, file: str, prompt: dict, precision: str = "fp64") -> dict:
    """The golden outputs to hold a file to: llama's GGUF carries the llama3 divisors rounded to float32
    (``rope_freqs``), off HF's formula by ~5e-7, so its float64 goldens were recomputed with them."""
    if precision == "fp64" and file == "gguf" and "fp64_gguf_rope_freqs" in prompt:
        return prompt["fp64_gguf_rope_freqs"]
    return prompt[precision]


def check_logits(logits: np.ndarray, gold: dict, tol: float) -> None:
    """Last-position top-50 values and log-sum-exp to ``tol``; the argmax at every position exactly."""
    last = logits[-1].astype(np.float64)
    np.testing.assert_allclose(last[gold["last_top50_ids"]], gold["last_top50_values"], rtol=0, atol=tol)
    lse = np.log(np.sum(np.exp(last - last.max()))) + last.max()
    assert abs(lse - gold["last_logsumexp"]) < tol
    np.testing.assert_array_equal(logits.argmax(-1), gold["argmax_per_position"])


ENGINES = {  # name -> (build a model from (config, params), tolerance against the float64 goldens)
    "reference": (lambda c, p: reference.CausalLM.from_params(c, p), 1e-8),
    "float64": (lambda c, p: fastlm.CausalLM.from_params(c, p, np.float64), 1e-8),
    "float32": (lambda c, p: fastlm.CausalLM.from_params(c, p, np.float32), 3e-4),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("arch", FAMILIES)
def test_logits_match_transformers(arch, file, engine):
    build, tol = ENGINES[engine]
    config, params, _ = load(arch, file)
    model = build(config, params)
    for prompt in golden(arch)["prompts"]:
        check_logits(model.forward([prompt["ids"]])[0], expected(arch, file, prompt), tol)


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("arch", FAMILIES)
def test_blocks_as_loaded_match_transformers(arch, file):
    """The default load: a GGUF's F16 matrices stay blocks the kernels compute on."""
    lm = fastlm.load(ARCHS / arch / ("model.gguf" if file == "gguf" else "hf"))
    assert lm.config.arch == golden(arch)["gguf_arch"]
    for prompt in golden(arch)["prompts"]:
        check_logits(lm.model.forward([prompt["ids"]])[0], expected(arch, file, prompt, "fp32"), 3e-4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("arch", FAMILIES)
def test_greedy_continuations_with_the_cache(arch, file, dtype):
    """All six prompts as one ragged batch through the KV cache: each row's 24 greedy tokens are
    transformers' (its full-recompute loop), prompts longer than the sliding window included."""
    config, params, _ = load(arch, file, dtype)
    model = fastlm.CausalLM.from_params(config, params, dtype)
    prompts = golden(arch)["prompts"]
    results = model.generate_batch([p["ids"] for p in prompts], 24, greedy=True)
    for prompt, result in zip(prompts, results):
        np.testing.assert_array_equal(result.tokens, prompt["greedy_fp64"])


@pytest.mark.parametrize("arch", FAMILIES)
def test_cached_generation_equals_the_naive_loop(arch):
    """Sampled (seeded) continuations: cache or not, batched or alone, the textbook's naive loop agrees."""
    config, params, _ = load(arch, "gguf")
    model = fastlm.CausalLM.from_params(config, params, np.float64)
    ref = reference.CausalLM.from_params(config, params)
    prompts = [p["ids"] for p in golden(arch)["prompts"][2:5]]          # 17, 40, 70 tokens
    options = dict(temperature=0.9, top_k=50, top_p=0.95, seed=[3, 4, 5])
    cached = model.generate_batch(prompts, 20, **options)
    naive = model.generate_batch(prompts, 20, use_cache=False, **options)
    for b, prompt in enumerate(prompts):
        alone = model.generate_batch([prompt], 20, **{**options, "seed": options["seed"][b]})[0]
        textbook = ref.generate([prompt], 20, temperature=0.9, top_k=50, top_p=0.95, seed=options["seed"][b])
        np.testing.assert_array_equal(cached[b].tokens, naive[b].tokens)
        np.testing.assert_array_equal(cached[b].tokens, alone.tokens)
        np.testing.assert_array_equal(cached[b].tokens, textbook[0, len(prompt):])


@pytest.mark.parametrize("arch", FAMILIES)
def test_both_files_describe_the_same_model(arch):
    """The GGUF converter's transforms (Q/K permutation for llama, Gemma's folded +1, Phi-3's fused
    tensors) undone or matched by the loaders: the same choices, and the same effective weights."""
    (cg, pg, _), (ch, ph, _) = load(arch, "gguf"), load(arch, "hf")
    differences = {k for k, v in cg.choices().items() if ch.choices().get(k) != v}
    differences |= {k for k, v in ch.choices().items() if cg.choices().get(k) != v}
    # float32 divisors in the GGUF; +1 folded or not; values a file states that the other leaves to defaults
    assert differences <= {"rope_freq_divisors", "norm_offset", "attn_scale", "rope_local_theta"}
    assert cg.scores_scale == pytest.approx(ch.scores_scale, rel=1e-15)
    for layer in range(cg.num_layers):
        np.testing.assert_allclose(cg.rope_inv_freq(layer), ch.rope_inv_freq(layer), rtol=1e-6)
    assert sorted(pg) == sorted(ph)
    for name in pg:
        offset = ch.norm_offset if name.endswith("norm") else 0.0
        np.testing.assert_array_equal(pg[name], ph[name] + offset, err_msg=name)


def test_info_describes_each_family_from_the_header(capsys):
    for arch in FAMILIES:
        assert cli.main(["info", str(ARCHS / arch / "model.gguf")]) == 0
        out = capsys.readouterr().out
        assert ["architecture", golden(arch)["gguf_arch"]] in [line.split() for line in out.splitlines()]
        for choice, value in fastlm.weights.gguf.read_config(ARCHS / arch / "model.gguf")[0].choices().items():
            if choice not in ("arch", "tie_weights"):
                assert f"{choice} " in out and str(value) in out


# -------------------------------------------------------------------------------------------- bad files

def rewrite(src: Path, dst: Path, drop_tensors=(), drop_keys=(), set_keys=None) -> Path:
    """A copy of a GGUF file without some tensors or keys, or with keys changed."""
    f = GGUFFile(src)
    meta = {k: v for k, v in f.typed_metadata.items() if k not in drop_keys}
    meta.update(set_keys or {})
    tensors = [TensorSpec(info.name, info.shape, info.qtype, np.frombuffer(f._map, np.uint8, info.nbytes,
                                                                           info.offset).copy())
               for info in f.tensors.values() if info.name not in drop_tensors]
    write_gguf(dst, meta, tensors)
    return dst


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    path = rewrite(ARCHS / FAMILIES[0] / "model.gguf", tmp_path / "m.gguf",
                   set_keys={"general.architecture": "mamba"})
    with pytest.raises(ModelFormatError, match=r"unsupported architecture 'mamba'.*llama, qwen2, qwen3, phi3"):
        load_gguf(path)


@pytest.mark.parametrize("arch, tensor", [("qwen3", "blk.1.attn_k_norm.weight"), ("gemma2", "blk.0.post_ffw_norm.weight"),
                                          ("qwen2", "blk.1.attn_v.bias"), ("phi3", "blk.0.attn_qkv.weight")])
def test_missing_per_arch_tensor_is_named(tmp_path, arch, tensor):
    if arch not in FAMILIES:
        pytest.skip(f"no {arch} fixture in tests/data/archs")
    path = rewrite(ARCHS / arch / "model.gguf", tmp_path / "m.gguf", drop_tensors={tensor})
    with pytest.raises(ModelFormatError, match=f"missing tensor.*'{tensor}'"):
        load_gguf(path)


def test_missing_key_and_unsupported_scaling_are_named(tmp_path):
    src = ARCHS / "gemma3" / "model.gguf"
    with pytest.raises(ModelFormatError, match="missing metadata key 'gemma3.embedding_length'"):
        load_gguf(rewrite(src, tmp_path / "a.gguf", drop_keys={"gemma3.embedding_length"}))
    with pytest.raises(ModelFormatError, match="RoPE scaling 'yarn'"):
        load_gguf(rewrite(src, tmp_path / "b.gguf", set_keys={"gemma3.rope.scaling.type": "yarn"}))


def test_hugging_face_config_errors(tmp_path):
    import shutil
    hf = tmp_path / "hf"
    shutil.copytree(ARCHS / "qwen2" / "hf", hf)
    cfg = json.loads((hf / "config.json").read_text())
    for change, message in [({"model_type": "mamba"}, r"model_type 'mamba'.*fastlm runs llama, mistral"),
                            ({"hidden_act": "relu"}, "activation 'relu'"),
                            ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}}, "RoPE scaling 'yarn'"),
                            ({"attention_bias": False}, "unexpected tensors.*attn|unexpected tensors")]:
        (hf / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ModelFormatError, match=message):
            load_safetensors(hf)


# ------------------------------------------------------------------------------------------------ layering

def test_reference_imports_without_the_compiled_modules():
    """The textbook depends on NumPy, config, errors and validation only: it imports, builds a model and
    runs it with every compiled module (and the engine) unimportable."""
    package = Path(fastlm.__file__).parent
    code = f"""
import importlib.abc, sys, types
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith("fastlm._") or name in ("fastlm.model", "fastlm.generation", "fastlm.sampling",
                                                   "fastlm.api", "fastlm.runtime", "fastlm.weights"):
            raise ImportError("refused: " + name)
sys.meta_path.insert(0, Refuse())
pkg = types.ModuleType("fastlm"); pkg.__path__ = [{str(package)!r}]; sys.modules["fastlm"] = pkg
from fastlm import reference
config = reference.ModelConfig(50, 16, 2, 4, 2, 24, 32, rope_style="neox", qk_norm=True, post_norms=True)
model = reference.CausalLM.from_config(config, seed=0)
print(model.generate([[1, 2, 3]], 4, greedy=True).shape)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 7)"


@pytest.mark.parametrize("module", ["model", "generation", "api", "weights/gguf", "weights/safetensors"])
def test_the_fast_path_does_not_import_the_reference(module):
    import ast
    tree = ast.parse((Path(fastlm.__file__).parent / f"{module}.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not any("reference" in name for name in imported)

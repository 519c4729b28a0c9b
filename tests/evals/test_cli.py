"""End to end: ``python -m evals`` on the tiny random model, every task, two samples each, HF backend."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evals.data import default_data_dir

pytestmark = pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/benchmarks")
ROOT = Path(__file__).resolve().parents[2]


def _run(args, out):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "evals", "--model", "tiny-random", "--backend", "hf",
                           "--max-tokens", "8", "--output", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_every_task_end_to_end_and_resume(tmp_path):
    tasks = "math500,amc,amc23,aime24,minerva,olympiadbench,gsm8k,leetcode,humaneval,mbpp,ugphysics"
    r = _run(["--tasks", tasks, "--limit", "2"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| task | strategy |" in r.stdout
    for t in tasks.split(","):
        d = tmp_path / "tiny-random" / t / "sampling"
        lines = (d / "samples.jsonl").read_text().splitlines()
        assert len(lines) == 2
        rec = json.loads(lines[0])
        assert {"id", "output", "correct", "generated_tokens", "seconds"} <= rec.keys()
        s = json.loads((d / "summary.json").read_text())
        assert s["task"] == t and s["n"] == 2 and s["accuracy"] is not None and s["tokens"] > 0
    # resume: a second run with a larger limit only generates the new samples
    r2 = _run(["--tasks", "math500", "--limit", "3"], tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "2 done, 1 to run" in r2.stderr
    assert len((tmp_path / "tiny-random" / "math500" / "sampling" / "samples.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_scicode_and_self_consistency_end_to_end(tmp_path):
    # dev problems "1" and "3" have a single step each: one generation round
    r = _run(["--tasks", "scicode", "--scicode-split", "dev", "--ids", "1,3", "--max-tokens", "4"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "tiny-random" / "scicode" / "sampling" / "summary.json").read_text())
    assert s["n"] == 2 and s["n_graded"] == 2 and s["accuracy"] == 0.0
    r = _run(["--tasks", "gsm8k", "--limit", "2", "--strategy", "self_consistency", "--n", "2"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]


def test_missing_data_is_a_clear_error(tmp_path):
    r = _run(["--tasks", "math500", "--data-dir", str(tmp_path / "nowhere")], tmp_path)
    assert r.returncode == 2 and "--data-dir" in r.stderr and "Traceback" not in r.stderr


def test_unknown_task_is_a_clear_error(tmp_path):
    r = _run(["--tasks", "nope"], tmp_path)
    assert r.returncode == 2 and "unknown task" in r.stderr


def _math_verify_missing():
    from evals.mathverify import available

    return not available()


@pytest.mark.slow
@pytest.mark.skipif(_math_verify_missing(), reason="math-verify not installed (the `math-verify` extra)")
def test_grader_both_end_to_end(tmp_path):
    r = _run(["--tasks", "math500,humaneval", "--limit", "2", "--grader", "both"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    d = tmp_path / "tiny-random" / "math500" / "sampling"
    recs = [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]
    assert all(rec["grader"] == "both" and "math_verify_correct" in rec and "math_verify_extracted" in rec
               for rec in recs)
    s = json.loads((d / "summary.json").read_text())
    assert s["disagreements"] == sum(bool(x["correct"]) != bool(x["math_verify_correct"]) for x in recs)
    assert s["accuracy"] == sum(bool(x["correct"]) for x in recs) / 2  # accuracy stays ours
    assert f"{s['disagreements']} disagreements" in r.stdout
    # code is graded by running it, whatever --grader says
    rec = json.loads((tmp_path / "tiny-random" / "humaneval" / "sampling" / "samples.jsonl").read_text().split("\n")[0])
    assert "math_verify_correct" not in rec


def test_summary_counts_disagreements():
    from evals.cli import summarize

    recs = [{"correct": True, "math_verify_correct": True, "grader": "both"},
            {"correct": True, "math_verify_correct": False, "grader": "both"},
            {"correct": False, "math_verify_correct": True, "grader": "both"},
            {"correct": False, "math_verify_correct": False, "grader": "both"}]
    s = summarize("math500", "greedy", "m", recs, 0.0)
    assert s["accuracy"] == 0.5 and s["math_verify_accuracy"] == 0.5
    assert (s["disagreements"], s["ours_only"], s["math_verify_only"]) == (2, 1, 1)
    assert "disagreements" not in summarize("math500", "greedy", "m", [{"correct": True}], 0.0)


def test_grader_choice_is_checked(tmp_path):
    r = _run(["--tasks", "math500", "--grader", "sympy"], tmp_path)
    assert r.returncode == 2 and "--grader" in r.stderr and "ours" in r.stderr

"""bench.gpu_check (`make gpu-check`): the parts that run without a GPU, on this machine.

The steps themselves need CUDA; what is checked here is what decides whether a GPU session's few minutes produce
results: the CPU refusal, the step runner's budget (the whole process group dies with it), the pytest summary, the
HF decode comparison (on a tiny model on CPU) and the targets.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_without_a_gpu_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--output", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_budget_kills_the_whole_process_group(tmp_path):
    # The first H100 run lost every step after pytest: the timeout killed pytest's parent, and its xdist workers
    # kept the GPU busy. Here a child leaves a grandchild behind; both must be gone after the budget.
    pid_file = tmp_path / "grandchild.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    with open(tmp_path / "log", "w") as log:
        t0 = time.perf_counter()
        rc, timed_out = gpu_check.run_in_group([sys.executable, "-c", script], 2.0, log)
    assert timed_out and rc is None and time.perf_counter() - t0 < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the kill is delivered at once; reaping by init may lag a little
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {grandchild} outlived the budget")


def test_junit_summary_counts_and_names_failures(tmp_path):
    test_file = tmp_path / "test_sample.py"
    test_file.write_text("import pytest\n"
                         "def test_ok(): pass\n"
                         "def test_bad(): assert 1 == 2, 'one is not two'\n"
                         "@pytest.mark.skip(reason='x')\n"
                         "def test_skipped(): pass\n")
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", "-o", "addopts="], cwd=tmp_path, capture_output=True, timeout=120)
    summary = gpu_check._junit_summary(junit)
    assert (summary["passed"], summary["failed"], summary["skipped"], summary["errors"]) == (1, 1, 1, 0)
    assert summary["failures"][0]["test"].endswith("test_bad") and "one is not two" in summary["failures"][0]["message"]


def test_decode_comparison_runs_the_engine_hf_path():
    config = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=True)
    result = gpu_check.decode_throughput(torch.device("cpu"), config, (2, 3), 4, 5, dtype=torch.float32)
    assert [r["batch"] for r in result["rows"]] == [2, 3]
    for row in result["rows"]:
        assert set(row["tokens_per_s"]) == {"sampling", "em_inf"}
        # every row generates up to 4 tokens; EOS (the last id) may end one early
        assert all(row["batch"] <= n <= 4 * row["batch"] for n in row["tokens"].values())
        assert row["em_inf_over_sampling"] > 0 and row["op_ms_per_step"] > 0
    md = gpu_check.markdown({"environment": {"device": {}}, "decode": result})
    assert "| 3 |" in md


def test_targets_report_misses():
    results = {"decode": {"rows": [{"batch": 16, "em_inf_over_sampling": 0.5},
                                   {"batch": 64, "em_inf_over_sampling": 0.9}]},
               "resources": {"rows": [{}, {}], "spilling": [{"kernel": "k", "spill_bytes": 16}]}}
    got = {t["target"]: t for t in gpu_check.targets(results)}
    decode = got["HF decode EM-INF/sampling tokens/s [batch 64]"]
    assert decode["value"] == 0.9 and not decode["met"]
    assert got["Triton kernel variants with spills"]["value"] == 1 and not got["Triton kernel variants with spills"]["met"]


def test_markdown_shows_a_tune_step_cut_short():
    # the step writes its rows as it goes; one cut short at its budget has rows but no speed-ups yet
    tune = {"vocab": 151936, "em_inf_steps": 3, "step_rc": None, "timed_out": True, "seconds": 60.0, "rows": [
        {"op": "em_inf", "B": 64, "block": 2048, "num_warps": 8, "programs_per_row": 9, "default": True,
         "max_abs_diff": 0.0, "seconds": 5e-4},
        {"op": "em_inf", "B": 64, "block": 512, "num_warps": 4, "programs_per_row": 9, "default": False,
         "error": "CompilationError: out of resources"}]}
    md = gpu_check.markdown({"environment": {"device": {}}, "tune": tune})
    assert "| tune | timed out | 60.0 |" in md
    assert "| em_inf (default) | 64 | 2048 | 8 | 9 | 0.5000 | nan |" in md and "error: CompilationError" in md


def test_target_tests_count_their_cuda_cases(tmp_path, monkeypatch):
    test_file = tmp_path / "test_watch.py"
    test_file.write_text("import pytest\n"
                         "@pytest.mark.parametrize('backend, n', [('cuda', 1), ('cuda', 2), ('triton', 3)])\n"
                         "def test_count(backend, n): assert n != 2\n")
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", "-o", "addopts="], cwd=tmp_path, capture_output=True, timeout=120)
    monkeypatch.setattr(gpu_check, "TARGET_TESTS", {"counts stay in bound": ("test_watch", "test_count")})
    summary = gpu_check._junit_summary(junit)
    assert summary["target_tests"] == {"counts stay in bound": {"passed": 1, "ran": 2}}  # the triton case left out
    got = {t["target"]: t for t in gpu_check.targets({"pytest": summary})}["counts stay in bound"]
    assert (got["value"], got["goal"], got["met"]) == (1, 2, False)

"""`python -m bench --quick` end to end: every section runs and its results carry the issue's fields."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import source_commit
from engine.backends import HF_BATCH_SIZE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--model", "tiny-random", "--output", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def test_results_have_every_section_and_plot(quick_run):
    out, results, stdout = quick_run
    assert results["device"]["type"] == "cpu" and results["model"] == "tiny-random"
    for name in ("kernels", "decoding", "serving", "training", "compile"):
        assert name in results and (out / f"{name}.png").stat().st_size > 1000
    assert "| strategy |" in stdout and (out / "results.md").read_text().startswith("# Benchmark")


def test_results_name_the_commit_they_measured(quick_run, tmp_path):
    _, results, _ = quick_run
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert results["commit"].removesuffix("-dirty") == head.stdout.strip()
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    assert source_commit(tmp_path) is None
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert source_commit(tmp_path) == sha
    (tmp_path / "f.txt").write_text("b")
    assert source_commit(tmp_path) == sha + "-dirty"


def test_kernel_rows_are_relative_to_measured_bandwidth(quick_run):
    _, results, _ = quick_run
    k = results["kernels"]
    assert k["bandwidth"]["read_gbps"] > 0
    rows = [r for r in k["rows"] if "seconds" in r]
    assert {r["op"] for r in rows} >= {"entropy", "em_inf[steps=3]", "em_inf[steps=10]", "adaptive_temperature"}
    for r in rows:
        assert r["seconds"] > 0
        assert r["pct_read_bandwidth"] == pytest.approx(100 * r["gbps"] / k["bandwidth"]["read_gbps"])


def test_decoding_reports_every_strategy_and_the_claim_ratios(quick_run):
    _, results, _ = quick_run
    d = results["decoding"]
    strategies = d["strategies"]
    assert set(strategies) == {"sampling", "greedy", "em_inf", "adaptive_temperature", "self_consistency",
                               "iterative_refinement"}
    for s in strategies.values():
        assert s["n"] == 8 and s["tokens_per_answer"] > 0 and s["seconds_per_answer"] > 0
        assert s["flops_per_answer"] > 0 and 0.0 <= s["accuracy"] <= 1.0
    # self-consistency samples 4 completions per prompt: its tokens and FLOPs per answer must show it
    assert strategies["self_consistency"]["tokens_per_answer"] > 2 * strategies["sampling"]["tokens_per_answer"]
    ratios = d["ratios"]
    assert ratios["self_consistency/em_inf"]["flops"] == pytest.approx(
        strategies["self_consistency"]["flops_per_answer"] / strategies["em_inf"]["flops_per_answer"])
    b16, serving = d["throughput"]["batch_16"], d["throughput"]["serving"]
    # the serving run takes the engine's own cap, not the bench's: vLLM's scheduler default, or HF's rows per call
    assert b16["max_num_seqs"] == 16
    assert serving["max_num_seqs"] == (256 if d["backend"] == "vllm" else HF_BATCH_SIZE)
    for tp in (b16, serving):
        assert tp["em_inf"]["requests"] == 8 and tp["em_inf"]["generated_tokens"] > 0
    authors_tps = d["authors_em_inf"]["tokens_per_second"]
    assert ratios["em_inf/reference_em_inf_tokens_per_s"] == pytest.approx(
        serving["em_inf"]["tokens_per_second"] / authors_tps)
    assert ratios["em_inf_batch16/reference_em_inf_tokens_per_s"] == pytest.approx(
        b16["em_inf"]["tokens_per_second"] / authors_tps)
    assert ratios["em_inf/sampling_tokens_per_s"] == pytest.approx(
        b16["em_inf"]["tokens_per_second"] / b16["sampling"]["tokens_per_second"])
    assert d["authors_em_inf"]["generated_tokens"] > 0
    assert d["em_inf_op_ms_per_step_b16"] > 0
    if d["backend"] == "vllm":  # gather + op + scatter: about the op's time or more (half of it, for timing noise)
        assert d["processor_ms_per_step_b16"] > 0.5 * d["em_inf_op_ms_per_step_b16"]


def test_training_rows_compare_fused_with_unfused(quick_run):
    _, results, _ = quick_run
    row = results["training"]["rows"][0]
    assert row["fused"]["seconds"] > 0 and row["unfused"]["seconds"] > 0
    assert row["max_abs_grad_diff"]["hidden"] < 1e-3


def test_compare_shows_ratios(quick_run, tmp_path):
    out, results, _ = quick_run
    other = json.loads(json.dumps(results))
    for r in other["kernels"]["rows"]:
        if "seconds" in r:
            r["seconds"] *= 2
    (tmp_path / "b.json").write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, "-m", "bench", "compare", str(out / "results.json"), str(tmp_path / "b.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| 2.00 |" in proc.stdout and "| em_inf |" in proc.stdout


def test_compile_section_reports_every_configuration(quick_run):
    from kernels._triton.aot import configurations

    _, results, _ = quick_run
    c = results["compile"]
    assert c["archs"] == [90] and c["configurations"] == len(configurations((90,)))
    for row in c["rows"]:
        assert row["registers"] > 0 and row["spill_stores"] == 0 and 0 < row["occupancy"] <= 1
    assert {t["target"] for t in c["targets"]} == {"sm_90 compile errors", "sm_90 configurations with spills",
                                                     "sm_90 configurations without a ptxas report",
                                                     "sm_90 configurations over the shared-memory limit"}
    assert all(t["met"] for t in c["targets"])
    assert "| kernel | configuration | arch | regs |" in (results_md := (quick_run[0] / "results.md").read_text())
    assert "em_inf_pass_kernel" in results_md


def test_serving_reports_processor_bisection_and_latency(quick_run):
    _, results, _ = quick_run
    s = results["serving"]
    assert s["processor"]["seconds_1_setting"] > 0 and s["processor"]["seconds_16_settings"] > 0
    assert s["bisection"]["same_temperatures"] is True  # max_iter 10000 returns what 100 does on these rows
    lat = s["latency"]
    assert set(lat["scenarios"]) == {"plain alone", "beside plain", "beside worst em_inf",
                                     "beside worst adaptive_temperature"}
    assert all(0 < r["p50"] <= r["p99"] for r in lat["scenarios"].values())
    assert lat["scenarios"]["beside plain"]["p50_ratio"] == 1.0
    assert {t["target"] for t in s["targets"]} >= {"processor time, 16 settings / 1 setting",
                                                  "adaptive T time, max_iter 10000 / 100"}


def test_decoding_records_what_reproduces_it(quick_run):
    out, results, _ = quick_run
    d = results["decoding"]
    assert "-m bench" in d["command"] and "--quick" in d["command"]
    assert d["dtype"] in ("float32", "bfloat16") and len(d["model_checksum"]) == 64
    assert d["temperature"] == 0.1
    for name, s in d["strategies"].items():
        assert 0 <= s["answers_hit_budget"] <= s["n"] and set(s["per_task"]) == {"gsm8k", "math500"}
        if name != "greedy":
            assert 0 <= d["paired"][f"{name} vs greedy"]["p_value"] <= 1
    assert 0 < d["processor_share_of_step"] < 1 and d["processor_ms_per_step_b16_v151936"] > 0
    records = list((out / "decoding-records").rglob("*.jsonl"))
    assert len(records) == 2 * len(d["strategies"])
    assert "Reading." in (out / "results.md").read_text()


def test_kernel_rows_say_their_cache_state_and_time_alone(quick_run):
    _, results, _ = quick_run
    k = results["kernels"]
    assert k["cache_state"].startswith("warm")
    fast = [r for r in k["rows"] if "seconds" in r and r["backend"] != "reference"]
    assert fast and all(r["alone_seconds"] > 0 for r in fast)

"""bench.training_rollout's summary and table from metrics rows (the torchrun launches themselves run in the full
bench only)."""

from bench import training_rollout


def test_summary_and_markdown_from_metrics_rows():
    rows = {"hf": [{"step": 1, "rollout_s": 9.0, "step_s": 12.0, "tokens_per_s": 10.0, "response_len": 7.5},
                   {"step": 2, "rollout_s": 8.0, "step_s": 10.0, "tokens_per_s": 12.0, "response_len": 7.5}],
            "vllm": [{"step": 1, "rollout_s": 2.0, "step_s": 5.0, "tokens_per_s": 24.0, "response_len": 7.5,
                      "sync_s": 0.5},
                     {"step": 2, "rollout_s": 1.0, "step_s": 4.0, "tokens_per_s": 30.0, "response_len": 7.5,
                      "sync_s": 0.2}]}
    hf, vl = (training_rollout.summarise(rows[b]) for b in ("hf", "vllm"))
    assert hf["steps_used"] == [2] and hf["tokens"] == 120.0 and hf["rollout_tokens_per_s"] == 15.0
    assert vl["rollout_tokens_per_s"] == 120.0 and vl["sync_share_max"] == 0.05 and "sync_s" not in hf
    res = {"model": "m", "processes": 2, "algo": "em_rl_token", **training_rollout.DEFAULTS,
           "backends": {"hf": {**hf, "wall_s": 1.0}, "vllm": {**vl, "wall_s": 1.0}},
           "targets": [{"target": "t", "value": 8.0, "goal": ">= 1", "met": True}]}
    md = training_rollout.markdown(res)
    assert "| vllm | 120.0 |" in md and "5.0%" in md and "met" in md

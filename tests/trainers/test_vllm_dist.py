"""vLLM rollouts under torchrun: 2 processes (gloo, CPU), one colocated in-process engine per rank, FSDP2 shards
gathered into every engine after each update. One torchrun launch runs tests/trainers/vllm_dist_worker.py (two
trainings and two engine start-ups per rank, ~1.5-2 min on 2 cores); the assertions read what each rank wrote."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("vllm_dist_worker.py")


@pytest.fixture(scope="module")
def results(tiny_model, prompts_file, tmp_path_factory) -> list[dict]:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    out = tmp_path_factory.mktemp("vllm_dist")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.pop("WORLD_SIZE", None)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(WORKER), tiny_model, prompts_file, str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return [json.loads((out / f"result_rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.vllm
@pytest.mark.slow
def test_every_rank_engine_decodes_as_hf_on_the_gathered_weights(results):
    for r in results:
        assert r["world"] == 2 and r["backend"] == "vllm" and r["steps_a"] == [1, 2]
        assert r["moved"]  # the policy left the initial checkpoint, so the comparison below is not vacuous
        assert r["after_a"]["engine"] == r["after_a"]["hf"], r["rank"]
        assert all(s is not None and s > 0 for s in r["sync_s"])


@pytest.mark.vllm
@pytest.mark.slow
def test_resume_reloads_the_engines_and_is_bit_exact(results):
    for r in results:
        assert r["resumed_from"] == 1
        # a fresh engine, built on the initial checkpoint, decodes the checkpoint's (step-1) weights after resume
        assert r["at_resume"]["engine"] == r["at_resume"]["hf"], r["rank"]
        assert r["resume_differs_from_final"]
        assert r["weights_equal"] and r["metrics_equal"], r["rank"]


def test_rollout_engine_flags(tiny_model, prompts_file, tmp_path):
    from trainers.cli import build_parser
    from trainers.trainer import TrainConfig

    args = build_parser().parse_args(["em_rl_token", "--model", "m", "--data", "d", "--output", "o",
                                      "--rollout-backend", "vllm", "--rollout-gpu-memory", "0.25", "--rollout-sleep"])
    assert (args.rollout_gpu_memory, args.rollout_sleep) == (0.25, True)
    assert build_parser().parse_args(["em_ft", "--model", "m", "--data", "d", "--output", "o"]).rollout_sleep is False
    with pytest.raises(ValueError, match="--rollout-gpu-memory"):
        TrainConfig(algo="em_rl_token", model=tiny_model, data=prompts_file, output=str(tmp_path),
                    rollout_backend="vllm", rollout_gpu_memory=1.5).validate()

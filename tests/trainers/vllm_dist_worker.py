"""Run by tests/trainers/test_vllm_dist.py under ``torchrun --nproc-per-node 2`` (gloo, CPU): colocated vLLM
rollouts, one in-process engine per rank.

    torchrun --standalone --nproc-per-node 2 tests/trainers/vllm_dist_worker.py MODEL DATA OUT_DIR

1. Run A: em_rl_token, 2 steps, a checkpoint after step 1, one engine per rank synced after every update. After the
   run, every rank's engine decodes PROMPTS greedily; the tokens must equal HF ``generate`` of an HF model built
   from the gathered FSDP2 weights (and the policy must have moved off the initial checkpoint).
2. Run B: a copy of A's step-1 checkpoint, resumed to step 2 with a fresh engine per rank. Right after start-up
   the engine must decode as the checkpoint's weights do (the resume reloaded it); after the step, B's final
   weights and step-2 metrics must equal A's bit for bit.

Each rank writes OUT_DIR/result_rank{r}.json; the test reads them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

PROMPTS = ["What is 3 + 4?", "Name a prime number.", "Count: " + ", ".join(str(i) for i in range(40)) + ","]
MAX_TOKENS = 12
TIMING = ("rollout_s", "step_s", "tokens_per_s", "sync_s")


def _hf_greedy(lm, tokenizer, prompt_ids: list[int], eos: list[int]) -> list[int]:
    from transformers import GenerationConfig

    ids = torch.tensor([prompt_ids])
    config = GenerationConfig(do_sample=False, max_new_tokens=MAX_TOKENS, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    toks = out[0, ids.shape[1] :].tolist()
    for k, t in enumerate(toks):
        if t in eos:
            return toks[: k + 1]
    return toks


def _gathered_hf(trainer):
    """An HF model holding the policy's gathered weights (every rank gets the full tensors)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(trainer.model_path, dtype=torch.float32).eval()
    missing, unexpected = lm.load_state_dict(dict(trainer._full_weights()), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    return lm


def _engine_vs_hf(trainer) -> dict:
    lm = _gathered_hf(trainer)
    res = trainer.engine.generate(PROMPTS, "greedy", max_tokens=MAX_TOKENS, progress=False)
    eos = sorted(trainer.engine._eos_ids)
    engine_toks = [r.extra["token_ids"][0] for r in res]
    hf_toks = [_hf_greedy(lm, trainer.tokenizer, r.extra["prompt_token_ids"], eos) for r in res]
    return {"engine": engine_toks, "hf": hf_toks, "weights": {k: v.clone() for k, v in lm.state_dict().items()}}


def main(model: str, data: str, out: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import load_file

    from trainers import metrics
    from trainers.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    out_dir = Path(out)
    common = dict(algo="em_rl_token", model=model, data=data, steps=2, batch_prompts=2, n=2, micro_batch=4,
                  max_new_tokens=8, lr=1e-2, progress=False, rollout_backend="vllm")
    a, b = out_dir / "a", out_dir / "b"
    trainer = Trainer(TrainConfig(output=str(a), save_every=1, **common))
    rank = trainer.dist.rank
    initial = _gathered_hf(trainer).state_dict()
    rows_a = trainer.train()
    after_a = _engine_vs_hf(trainer)
    moved = any(not torch.equal(v, initial[k]) for k, v in after_a["weights"].items())
    backend = trainer.engine.backend
    sync_s = [r.get("sync_s") for r in rows_a]
    trainer.close()

    if rank == 0:  # B starts from a copy of A's step-1 checkpoint, as if A had stopped there
        (b / "checkpoints").mkdir(parents=True)
        shutil.copytree(a / "checkpoints" / "step_000001", b / "checkpoints" / "step_000001")
        (b / "checkpoints" / "LATEST").write_text("step_000001")
        rows = metrics.read(a / "metrics.jsonl")
        (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    dist.barrier()
    trainer = Trainer(TrainConfig(output=str(b), resume=True, **common))
    at_resume = _engine_vs_hf(trainer)
    resumed_from = trainer.start_step
    trainer.train()
    trainer.close()

    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    result = {
        "rank": rank, "world": dist.get_world_size(), "backend": backend, "steps_a": [r["step"] for r in rows_a],
        "sync_s": sync_s, "moved": moved,
        "after_a": {k: after_a[k] for k in ("engine", "hf")},
        "at_resume": {k: at_resume[k] for k in ("engine", "hf")}, "resumed_from": resumed_from,
        "resume_differs_from_final": at_resume["engine"] != after_a["engine"],
        "weights_equal": wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa),
        "metrics_equal": strip(metrics.read(a / "metrics.jsonl")) == strip(metrics.read(b / "metrics.jsonl")),
    }
    (out_dir / f"result_rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Command line: ``python -m trainers ALGO --model M --data PROMPTS.jsonl --output DIR [--steps N] [--resume] ...``

ALGO: em_ft | em_rl_token | em_rl_sequence | grpo | rloo | sc_rl. Multi-process: ``torchrun --nproc-per-node K -m
trainers ALGO ...`` (FSDP2; gloo on CPU, NCCL on GPUs). Outputs in DIR: metrics.jsonl, metrics.png,
checkpoints/step_*/ (atomic, newest --keep-checkpoints kept), final/ (a Hugging Face checkpoint of the policy).
"""

from __future__ import annotations

import argparse
import sys

from trainers.algorithms import ALGOS
from trainers.trainer import TrainConfig, Trainer

_HELP = {
    "em_ft": "EM-FT: minimise the token entropy of the model's own samples",
    "em_rl_token": "EM-RL, reward = -mean token entropy of the response",
    "em_rl_sequence": "EM-RL, reward = mean (or --seq-reward sum) log-probability of the response",
    "grpo": "GRPO with a verifiable reward (needs 'answer' in --data)",
    "rloo": "RLOO with a verifiable reward (needs 'answer' in --data)",
    "sc_rl": "SC-RL: reward = share of the group whose answer agrees",
}


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(algo="em_ft", model="", data="", output="")
    p = argparse.ArgumentParser(prog="python -m trainers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("algo", choices=ALGOS, help="; ".join(f"{k}: {v}" for k, v in _HELP.items()))
    p.add_argument("--model", required=True, help="HF id, local checkpoint or a built-in name (engine.models)")
    p.add_argument("--data", required=True, help="prompts JSONL: 'prompt'/'problem'/'question' (+ 'answer')")
    p.add_argument("--output", required=True, help="run directory (metrics, checkpoints, final model)")
    p.add_argument("--steps", type=int, default=None, help="RL/FT steps (default: one pass over --data)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("optimisation (defaults: the reference's EM-RL recipe)")
    g.add_argument("--lr", type=float, default=d.lr, help="constant after warm-up (reference 1e-6; small models "
                   "need 1e-5..1e-4)")
    g.add_argument("--betas", type=float, nargs=2, default=d.betas)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip)
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="optimizer steps of linear warm-up")
    g.add_argument("--batch-prompts", type=int, default=d.batch_prompts, help="prompts per step per process")
    # not "--n": torchrun's own parser would take it for an abbreviation of --nnodes/--nproc-per-node
    g.add_argument("--n-samples", dest="n", type=int, default=d.n, help="responses sampled per prompt (N)")
    g.add_argument("--mini-batches", type=int, default=d.mini_batches, help="optimizer steps per RL step")
    g.add_argument("--micro-batch", type=int, default=d.micro_batch,
                   help="sequences per forward; micro-batches accumulate gradients into one optimizer step")
    g.add_argument("--clip", type=float, default=d.clip, help="PPO clip ratio")
    g.add_argument("--kl-coef", type=float, default=d.kl_coef, help="k3 KL to the frozen initial model (0: none)")
    g.add_argument("--entropy-coeff", type=float, default=d.entropy_coeff,
                   help="entropy bonus (the reference kept 0.001 in every EM-RL run; default 0)")
    g.add_argument("--advantage", choices=["rloo", "grpo"], default=None,
                   help="default: grpo for grpo, rloo for the others (reference)")
    g.add_argument("--seq-reward", choices=["mean", "sum"], default=d.seq_reward,
                   help="em_rl_sequence: mean log-prob (reference code) or sum (paper formula)")
    g.add_argument("--em-ft-norm", choices=["sequence", "token"], default=d.em_ft_norm,
                   help="em_ft: mean over sequences of per-sequence token means (paper) or token mean")
    s = p.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=d.temperature)
    s.add_argument("--top-p", type=float, default=d.top_p)
    s.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="reference: 3072")
    s.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    s.add_argument("--system-prompt", default=d.system_prompt, help="'' for none")
    s.add_argument("--user-suffix", default=d.user_suffix)
    s.add_argument("--no-chat-template", dest="chat_template", action="store_false")
    s.add_argument("--rollout-backend", choices=["hf", "vllm"], default=d.rollout_backend,
                   help="hf: generate on the in-memory policy (default); vllm: one in-process vLLM engine per "
                   "process (also under torchrun), weights synced after every update (top_p 1)")
    s.add_argument("--rollout-gpu-memory", type=float, default=d.rollout_gpu_memory,
                   help="vllm on CUDA: the share of each GPU the engine may take (weights + KV cache); the rest "
                   "is the trainer's")
    s.add_argument("--rollout-sleep", action="store_true",
                   help="vllm on CUDA: release the engine's weights and KV cache during the training step "
                   "(vLLM sleep level 2; refilled by the weight sync)")
    o = p.add_argument_group("runtime")
    o.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every K steps (0: at the end)")
    o.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    o.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 forward on CUDA too")
    o.add_argument("--chunk-tokens", type=int, default=d.chunk_tokens, help="fused loss op token chunk")
    o.add_argument("--chunk-vocab", type=int, default=d.chunk_vocab, help="fused loss op vocabulary chunk")
    o.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = TrainConfig(**{k: (tuple(v) if k == "betas" else v) for k, v in vars(args).items()})
    try:
        trainer = Trainer(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rows = trainer.train()
    finally:
        trainer.close()
    if trainer.dist.main and rows:
        last = rows[-1]
        keys = [k for k in ("loss", "entropy", "reward", "kl", "tokens_per_s") if k in last]
        print(f"step {last['step']}: " + ", ".join(f"{k} {last[k]:.4g}" for k in keys), flush=True)
        print(f"outputs in {trainer.out}", flush=True)
    return 0

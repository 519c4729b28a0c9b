"""The training loop shared by every algorithm: rollout, rewards, advantages, PPO-clip / EM-FT updates, checkpoints.

One step = one batch of prompts from --data (per process), n sampled responses each, then --mini-batches optimizer
steps over those responses (the reference: 4 per step, 1 PPO epoch), each accumulating gradients over micro-batches
of --micro-batch sequences. Losses are exact mini-batch token means (or, for EM-FT by default, the paper's mean over
sequences of per-sequence token means), whatever the micro-batch split.

Distributed: under ``torchrun --nproc-per-node K`` every process holds an FSDP2 shard (``fully_shard`` per decoder
layer + root), rolls out its own slice of the prompts with its own seeds, and FSDP averages the gradients. On CUDA the
forward passes run under bf16 autocast (fp32 master weights and optimizer state).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trainers import algorithms, checkpoint, data, metrics, rollout
from trainers.policy import Batch, PolicyStats, autocast, load_lm, reshard, shard


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults follow the reference's EM-RL recipe where it has one (lr 1e-6 constant, AdamW
    (0.9, 0.999) wd 0.01, grad clip 1.0, n = 4, clip 0.2, k3 KL 0.001, T = 1, top_p = 1) and are scaled down where
    the reference's sizes assume 4 x 80 GB GPUs (512 prompts and 3072 new tokens per step become 8 and 256).
    For models under ~1B parameters lr 1e-6 barely moves them in a few hundred steps; 1e-5 to 1e-4 is the usual
    range there (the paper's EM-FT lr is not in the released code)."""

    algo: str
    model: str
    data: str
    output: str
    steps: int | None = None  # None: one pass over --data (drop_last), as the reference's total_epochs = 1
    resume: bool = False
    seed: int = 0
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_steps: int = 0
    n: int = 4
    batch_prompts: int = 8
    mini_batches: int = 1
    micro_batch: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_prompt_tokens: int = 1024
    clip: float = 0.2
    kl_coef: float = 0.001
    entropy_coeff: float = 0.0  # the reference's yaml kept a 0.001 entropy *bonus* in every EM-RL run (quirk 5)
    advantage: str | None = None  # rloo | grpo; None: rloo for EM-RL/RLOO/SC-RL, grpo for GRPO
    seq_reward: str = "mean"  # em_rl_sequence: mean log-prob (reference) or sum (the paper's log pi(y))
    em_ft_norm: str = "sequence"  # em_ft: "sequence" (paper: mean over sequences of token means) or "token"
    system_prompt: str = data.DEFAULT_SYSTEM_PROMPT
    user_suffix: str = data.DEFAULT_USER_SUFFIX
    chat_template: bool = True
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    bf16: bool = True  # autocast on CUDA only
    chunk_tokens: int = 1024
    chunk_vocab: int = 8192
    progress: bool = True
    rollout_backend: str = "hf"  # hf: generate on the in-memory policy; vllm: an engine Generator, weights synced
    rollout_gpu_memory: float = 0.3  # vllm on CUDA: each engine's share of its GPU (vLLM gpu_memory_utilization)
    rollout_sleep: bool = False  # vllm on CUDA: sleep (level 2) through the training step, woken by the sync

    def validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} {what}, got {getattr(self, name)!r}")

        need(self.algo in algorithms.ALGOS, "algo", f"must be one of {', '.join(algorithms.ALGOS)}")
        need(self.steps is None or self.steps >= 0, "steps", "must be >= 0")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "must be a finite number > 0")
        need(all(0 <= b < 1 for b in self.betas), "betas", "must lie in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.grad_clip > 0, "grad_clip", "must be > 0")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.n >= 1, "n", "(--n-samples) must be >= 1")
        need(self.batch_prompts >= 1, "batch_prompts", "must be >= 1")
        need(self.mini_batches >= 1 and (self.batch_prompts * self.n) % self.mini_batches == 0, "mini_batches",
             f"must divide batch_prompts x n = {self.batch_prompts * self.n}")
        need(self.micro_batch >= 1, "micro_batch", "must be >= 1")
        need(self.temperature > 0 and math.isfinite(self.temperature), "temperature", "must be > 0")
        need(0 < self.top_p <= 1, "top_p", "must lie in (0, 1]")
        need(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        need(self.max_prompt_tokens >= 1, "max_prompt_tokens", "must be >= 1")
        need(0 < self.clip < 1, "clip", "must lie in (0, 1)")
        need(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        need(self.entropy_coeff >= 0, "entropy_coeff", "must be >= 0")
        need(self.advantage in (None, "rloo", "grpo"), "advantage", "must be rloo or grpo")
        need(self.seq_reward in ("mean", "sum"), "seq_reward", "must be mean or sum")
        need(self.em_ft_norm in ("sequence", "token"), "em_ft_norm", "must be sequence or token")
        need(self.save_every >= 0, "save_every", "must be >= 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        need(self.rollout_backend in ("hf", "vllm"), "rollout_backend", "must be hf or vllm")
        if self.rollout_backend == "vllm":
            need(self.top_p == 1.0, "top_p", "must be 1 with --rollout-backend vllm (the engine samples the full "
                 "distribution)")
            need(self.temperature <= 2.0, "temperature", "must be <= 2 with --rollout-backend vllm")
            need(0 < self.rollout_gpu_memory < 1, "rollout_gpu_memory", "must lie in (0, 1)")
        if self.algo in ("grpo", "rloo", "sc_rl") and self.n < 2:
            raise ValueError(f"--n-samples must be >= 2 for {self.algo}: its advantages compare the responses "
                             "of one prompt")


# Fields a resumed run must share with the checkpoint, or it would not continue the same run.
_RESUME_KEYS = ("algo", "model", "data", "seed", "n", "batch_prompts", "mini_batches", "temperature", "top_p",
                "max_new_tokens", "max_prompt_tokens", "lr", "warmup_steps", "kl_coef", "clip", "entropy_coeff",
                "advantage", "seq_reward", "em_ft_norm", "rollout_backend")
_RESUME_MISSING = {"rollout_backend": "hf"}  # checkpoints written before the field existed


class _Dist:
    """Process-group facts; a single process is world 1, rank 0, no group."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.mesh = None
        if self.world > 1:
            import torch.distributed as dist
            from torch.distributed.device_mesh import init_device_mesh

            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.mesh = init_device_mesh(self.device.type, (self.world,))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1 or not values:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def total(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather_object(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def rollout_seed(seed: int, step: int, rank: int) -> int:
    """Seed of one rollout call; a function of the run seed, the step and the rank only (exact resume)."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) % (2**63 - 1)


def _micro_slices(start: int, stop: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, stop)) for i in range(start, stop, size)]


class Trainer:
    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.dist = _Dist()
        self.out = Path(cfg.output)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        self.examples = data.load_prompts(cfg.data, require_answer=cfg.algo in algorithms.LABELLED)
        self.total_steps = (
            cfg.steps if cfg.steps is not None
            else data.steps_per_epoch(len(self.examples), cfg.batch_prompts, self.dist.world)
        )
        data.batch_indices(len(self.examples), 0, cfg.batch_prompts, self.dist.world, 0, cfg.seed)  # size check

        from transformers import AutoTokenizer

        from engine.models import resolve

        self.model_path = resolve(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = self.dist.device
        chunks = dict(chunk_tokens=cfg.chunk_tokens, chunk_vocab=cfg.chunk_vocab)
        self.policy = PolicyStats(load_lm(self.model_path, device), cfg.temperature, **chunks)
        self.ref = None
        if cfg.algo != "em_ft" and cfg.kl_coef > 0:
            self.ref = PolicyStats(load_lm(self.model_path, device), cfg.temperature, **chunks)
            self.ref.requires_grad_(False).eval()
        if self.dist.mesh is not None:
            shard(self.policy, self.dist.mesh)
            if self.ref is not None:
                shard(self.ref, self.dist.mesh)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup else 1.0
        )
        self.autocast = autocast(device, cfg.bf16)
        self.start_step = 0
        self.metrics_path = self.out / "metrics.jsonl"
        if cfg.resume:
            self._resume()
        elif self.dist.main and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh run in an old directory starts a fresh log
        self.engine = self._start_engine() if cfg.rollout_backend == "vllm" else None

    # ---- rollout engine -----------------------------------------------------------------------------------------

    def _start_engine(self):
        """This process's vLLM engine on the initial checkpoint, then synced to the policy (which differs from the
        checkpoint after --resume). Under torchrun every rank builds its own (colocated, TRL's "colocate" mode):
        an in-process engine on the rank's device that joins the job's process group instead of starting one
        (vLLM's external_launcher executor, tensor parallel 1), samples the rank's own prompts, and is refilled
        from the gathered FSDP shards after every update (``_sync_engine``)."""
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ValueError("--rollout-backend vllm but vLLM is not installed")
        from transformers import AutoConfig

        from engine.strategies import Generator

        # In-process engine: the weight sync hands it the policy's tensors directly, no serialisation.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        cfg, dev = self.cfg, self.dist.device
        max_len = cfg.max_prompt_tokens + cfg.max_new_tokens
        limit = getattr(AutoConfig.from_pretrained(self.model_path), "max_position_embeddings", None)
        if limit:
            max_len = min(max_len, int(limit))
        cuda = dev.type == "cuda"
        devices = [dev] if cuda else []
        with torch.random.fork_rng(devices=devices):  # vLLM seeds the global RNGs at start-up; keep ours
            engine = Generator(self.model_path, backend="vllm", seed=cfg.seed, max_model_len=max_len,
                               device=dev.type, colocate=self.dist.world > 1,
                               gpu_memory_utilization=cfg.rollout_gpu_memory if cuda else None,
                               sleep_mode=cfg.rollout_sleep and cuda)
        self._sync_engine(engine)
        return engine

    def _full_weights(self):
        """The policy's weights under Hugging Face names, one full tensor at a time: under FSDP2 each DTensor shard
        is all-gathered only when the consumer asks for it (every rank walks the same names in the same order), so
        the gathered copy never exceeds one parameter (plus the ones the engine's layer buffers until that layer is
        complete). Every state-dict name is sent, tied ones included: vLLM's in-place reload wants both
        ``model.embed_tokens.weight`` and ``lm_head.weight`` of a tied model (without the second it decodes wrong)."""
        from torch.distributed.tensor import DTensor

        for name, t in self.policy.lm.state_dict().items():
            t = t.detach()
            yield name, (t.full_tensor() if isinstance(t, DTensor) else t)

    @torch.no_grad()
    def _sync_engine(self, engine=None) -> None:
        """Push the policy's current weights (Hugging Face names) into the rollout engine, streamed one gathered
        tensor at a time (the engine loads each as it arrives, then redoes its post-load processing and resets its
        prefix cache). A sleeping engine wakes its weights first and its KV cache after."""
        engine = engine or self.engine
        engine.wake_up(["weights"])
        engine.load_weights(self._full_weights())
        engine.wake_up()

    def close(self) -> None:
        """Release the rollout engine (vLLM's memory); the trainer can not roll out afterwards."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def _state_dicts(self) -> tuple[dict, dict]:
        if self.dist.world == 1:
            return self.policy.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.policy, options=opts),
                get_optimizer_state_dict(self.policy, self.optimizer, options=opts))

    def save(self, step: int) -> None:
        model_sd, optim_sd = self._state_dicts()
        rngs = self.dist.gather_object(checkpoint.rng_state())
        if self.dist.main:
            cfg = asdict(self.cfg)
            state = {"step": step, "world": self.dist.world, "config": cfg,
                     "data_position": {"step": step, "steps_per_epoch": data.steps_per_epoch(
                         len(self.examples), self.cfg.batch_prompts, self.dist.world)}}
            checkpoint.save(self.out, step, {"model": model_sd, "optimizer": optim_sd,
                                             "scheduler": self.scheduler.state_dict(), "rng": rngs},
                            state, keep=self.cfg.keep_checkpoints)
            metrics.plot(self.metrics_path, self.out / "metrics.png", f"{self.cfg.algo} on {self.cfg.model}")
        self.dist.barrier()

    def _resume(self) -> None:
        path = checkpoint.latest(self.out)
        if path is None:
            if self.dist.main:
                print(f"--resume: no checkpoint under {self.out}/checkpoints, starting from step 0", flush=True)
            return
        state = checkpoint.load_state(path)
        saved = state["config"]
        mine = asdict(self.cfg)
        diffs = [f"{k}: checkpoint {saved.get(k, _RESUME_MISSING.get(k))!r}, now {mine[k]!r}" for k in _RESUME_KEYS
                 if _norm(saved.get(k, _RESUME_MISSING.get(k))) != _norm(mine[k])]
        if state["world"] != self.dist.world:
            diffs.append(f"processes: checkpoint {state['world']}, now {self.dist.world}")
        if diffs:
            raise ValueError(f"--resume from {path}: the run's settings differ, so it would not continue the same "
                             "run:\n  " + "\n  ".join(diffs))
        model_sd = checkpoint.load(path, "model")
        optim_sd = checkpoint.load(path, "optimizer")
        if self.dist.world == 1:
            self.policy.load_state_dict(model_sd)
            self.optimizer.load_state_dict(optim_sd)
        else:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.policy, model_sd, options=opts)
            set_optimizer_state_dict(self.policy, self.optimizer, optim_state_dict=optim_sd, options=opts)
        self.scheduler.load_state_dict(checkpoint.load(path, "scheduler"))
        checkpoint.set_rng_state(checkpoint.load(path, "rng")[self.dist.rank])
        self.start_step = state["step"]
        if self.dist.main:
            metrics.truncate(self.metrics_path, self.start_step)
            print(f"resumed from {path} at step {self.start_step}", flush=True)

    # ---- one step ---------------------------------------------------------------------------------------------

    def _prompts(self, step: int) -> list[data.Example]:
        idx = data.batch_indices(len(self.examples), step, self.cfg.batch_prompts, self.dist.world,
                                 self.dist.rank, self.cfg.seed)
        return [self.examples[i] for i in idx]

    @torch.no_grad()
    def _stats_no_grad(self, module: PolicyStats, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        was = module.training
        module.eval()
        ents, lps = [], []
        with self.autocast:
            for rows in _micro_slices(0, batch.sequences.shape[0], self.cfg.micro_batch):
                e, lp = module.stats(batch.select(rows))
                ents.append(e)
                lps.append(lp)
        reshard(module)
        module.train(was)
        return torch.cat(ents), torch.cat(lps)

    def _rewards(self, batch: Batch, examples: list[data.Example], old_ent, old_lp, seq_ids) -> torch.Tensor:
        cfg, n_seqs = self.cfg, batch.sequences.shape[0]
        if cfg.algo == "em_rl_token":
            return algorithms.em_token_reward(old_ent, seq_ids, n_seqs)
        if cfg.algo == "em_rl_sequence":
            return algorithms.em_sequence_reward(old_lp, seq_ids, n_seqs, cfg.seq_reward)
        texts = rollout.decode_responses(self.tokenizer, batch)
        if cfg.algo == "sc_rl":
            return algorithms.self_consistency_reward(texts, cfg.n).to(old_ent.device)
        answers = [ex.answer for ex in examples for _ in range(cfg.n)]
        return algorithms.verifiable_reward(texts, answers).to(old_ent.device)

    def step(self, step: int) -> dict:
        cfg, dev = self.cfg, self.dist.device
        t_start = time.perf_counter()
        examples = self._prompts(step)
        prompts = [data.format_prompt(self.tokenizer, ex.prompt, cfg.system_prompt, cfg.user_suffix,
                                      cfg.chat_template) for ex in examples]
        seed = rollout_seed(cfg.seed, step, self.dist.rank)
        if self.engine is not None:
            batch = rollout.sample_engine(self.engine, self.tokenizer, prompts, cfg.n, seed,
                                          temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                          max_prompt_tokens=cfg.max_prompt_tokens,
                                          pad_id=self.tokenizer.pad_token_id, device=dev)
            if cfg.rollout_sleep:
                self.engine.sleep(level=2)  # the training step gets the engine's memory; the sync refills it
        else:
            batch = rollout.sample(self.policy, self.policy.lm, self.tokenizer, prompts, cfg.n, seed,
                                   temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                   max_prompt_tokens=cfg.max_prompt_tokens, device=dev, autocast=self.autocast)
        t_rollout = time.perf_counter() - t_start
        n_seqs = batch.sequences.shape[0]
        lengths = batch.response_mask.sum(dim=1)
        seq_ids = torch.arange(n_seqs, device=dev).repeat_interleave(lengths)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).tolist()

        rl = cfg.algo != "em_ft"
        row: dict = {}
        if rl:
            old_ent, old_lp = self._stats_no_grad(self.policy, batch)
            ref_lp = self._stats_no_grad(self.ref, batch)[1] if self.ref is not None else None
            rewards = self._rewards(batch, examples, old_ent, old_lp, seq_ids)
            adv_seq = algorithms.advantages(rewards, cfg.n, cfg.advantage or algorithms.DEFAULT_ADVANTAGE[cfg.algo])
            adv_tok = adv_seq.to(dev)[seq_ids]
            row.update(reward=float(rewards.mean()), reward_std=float(rewards.std()) if n_seqs > 1 else 0.0,
                       entropy=float(old_ent.mean()) if old_ent.numel() else 0.0)

        self.policy.train()
        sums = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clipfrac": 0.0, "train_entropy": 0.0, "grad_norm": 0.0}
        mini = n_seqs // cfg.mini_batches
        for m in range(cfg.mini_batches):
            r0, r1 = m * mini, (m + 1) * mini
            n_tok = max(offsets[r1] - offsets[r0], 1)
            micro = _micro_slices(r0, r1, cfg.micro_batch)
            self.optimizer.zero_grad(set_to_none=True)
            for k, rows in enumerate(micro):
                if hasattr(self.policy, "set_requires_gradient_sync"):  # FSDP: reduce-scatter once per mini-batch
                    self.policy.set_requires_gradient_sync(k == len(micro) - 1)
                t0, t1 = offsets[rows.start], offsets[rows.stop]
                with self.autocast:
                    ent, lp = self.policy.stats(batch.select(rows))
                if not rl:
                    if cfg.em_ft_norm == "sequence":
                        ids = seq_ids[t0:t1]
                        weight = 1.0 / (lengths[ids].clamp(min=1).float() * mini)
                    else:
                        weight = torch.full_like(ent, 1.0 / n_tok)
                    loss = (ent * weight).sum()
                    sums["train_entropy"] += float(ent.detach().sum()) / n_tok
                else:
                    pg, clipped = algorithms.ppo_token_losses(lp, old_lp[t0:t1], adv_tok[t0:t1], cfg.clip)
                    tok_loss = pg
                    if self.ref is not None:
                        kl = algorithms.k3_kl(lp, ref_lp[t0:t1])
                        tok_loss = tok_loss + cfg.kl_coef * kl
                        sums["kl"] += float(kl.detach().sum()) / n_tok
                    if cfg.entropy_coeff:
                        tok_loss = tok_loss - cfg.entropy_coeff * ent
                    loss = tok_loss.sum() / n_tok
                    sums["pg_loss"] += float(pg.detach().sum()) / n_tok
                    sums["clipfrac"] += float(clipped.sum()) / n_tok
                    sums["train_entropy"] += float(ent.detach().sum()) / n_tok
                loss.backward()
                sums["loss"] += float(loss.detach())
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            sums["grad_norm"] += float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            self.optimizer.step()
            self.scheduler.step()
        t_sync = None
        if self.engine is not None:
            t0 = time.perf_counter()
            self._sync_engine()  # the next rollout samples from the updated policy
            t_sync = time.perf_counter() - t0
        row.update({k: v / cfg.mini_batches for k, v in sums.items()})
        if not rl:
            row["entropy"] = row["train_entropy"]  # the first (or only) pass over the fresh samples
        if self.ref is None:
            row.pop("kl")
        if not rl:
            for k in ("pg_loss", "clipfrac", "kl"):
                row.pop(k, None)
        row["response_len"] = float(lengths.float().mean())
        row = self.dist.mean(row)
        gen_tokens = self.dist.total(float(lengths.sum()))
        seconds = time.perf_counter() - t_start
        row.update(step=step + 1, lr=self.scheduler.get_last_lr()[0], rollout_s=t_rollout, step_s=seconds,
                   tokens_per_s=gen_tokens / seconds)
        if t_sync is not None:
            row["sync_s"] = t_sync  # gather + engine reload + prefix-cache reset, inside step_s
        return row

    # ---- the loop -----------------------------------------------------------------------------------------------

    def train(self) -> list[dict]:
        from tqdm import tqdm

        rows = []
        bar = tqdm(range(self.start_step, self.total_steps), desc=self.cfg.algo, initial=self.start_step,
                   total=self.total_steps, disable=not (self.cfg.progress and self.dist.main))
        for step in bar:
            row = self.step(step)
            rows.append(row)
            if self.dist.main:
                metrics.append(self.metrics_path, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", H=f"{row['entropy']:.3f}",
                                r=f"{row.get('reward', float('nan')):.3f}")
            done = step + 1
            if self.cfg.save_every and done % self.cfg.save_every == 0 and done < self.total_steps:
                self.save(done)
        self.save(self.total_steps)
        self.export(self.out / "final")
        return rows

    def export(self, path: Path) -> None:
        """The trained policy as a Hugging Face checkpoint (config, weights, tokenizer), written atomically."""
        import shutil
        import tempfile

        model_sd, _ = self._state_dicts() if self.dist.world > 1 else (self.policy.state_dict(), None)
        if self.dist.main:
            sd = {k.removeprefix("lm."): v for k, v in model_sd.items()}
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
            os.chmod(tmp, 0o755)
            if self.dist.world == 1:
                self.policy.lm.save_pretrained(tmp, state_dict=sd)
            else:
                _save_full(self.model_path, sd, tmp)
            self.tokenizer.save_pretrained(tmp)
            old = path.parent / f".{path.name}.old"
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()


def _save_full(model_path: str, sd: dict, out: Path) -> None:
    # FSDP: rank 0 holds a full CPU state dict; save it through a weightless (meta) model of the same config.
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    # The gathered dict holds separate copies of tied parameters (e.g. lm_head = embed_tokens); keep the first name
    # of each shared parameter, as save_pretrained does for a live model.
    seen: dict[int, str] = {}
    for name, param in lm.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            sd.pop(name, None)
        else:
            seen[id(param)] = name
    lm.save_pretrained(out, state_dict=sd)


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


@torch.no_grad()
def mean_response_entropy(model_path_or_lm, tokenizer, prompts: list[str], n: int = 4, seed: int = 1234,
                          max_new_tokens: int = 64, temperature: float = 1.0) -> float:
    """Mean token entropy (nats) of a model's own sampled responses to ``prompts``: the quantity EM-FT lowers.
    Held-out evaluation helper; takes a checkpoint path or an in-memory causal LM."""
    lm = load_lm(model_path_or_lm, torch.device("cpu")) if isinstance(model_path_or_lm, str) else model_path_or_lm
    module = PolicyStats(lm, temperature)
    batch = rollout.sample(module, lm, tokenizer, prompts, n, seed, temperature=temperature,
                           max_new_tokens=max_new_tokens)
    module.eval()
    ent, _ = module.stats(batch)
    return float(ent.mean())


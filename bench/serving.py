"""Serving section: what the vLLM plugin costs per decode step, and what one request may cost the others.

1. ``processor``: ``EMLogitsProcessor.apply`` per decode step on [64, 151936] fp32 logits (Qwen's vocabulary, the
   paper's) through vLLM's own V1 interface, with every row opted in to EM-INF under 1 setting and under 16 distinct
   settings (lr and kl_weight varying; steps the same, so both do the same arithmetic). The plugin keeps per-slot
   parameter tensors and calls the op once for all rows, so the two should cost the same (goal: 16 settings within
   1.2x of 1 setting).
2. ``bisection``: adaptive temperature at ``at_max_iter`` 10000 against 100 on the same realistic rows (randn * 2
   logits, tol 1e-300 so no row stops on tolerance, default tmin): the bisection stops at its fixed point, so a
   large max_iter costs what the fp64 arithmetic allows (goal: within 1.2x).
3. ``latency``: p50 / p99 latency of plain requests through ``python -m engine serve`` (the OpenAI server, the
   official ``openai`` client, loopback), alone and while the costliest request the default operator caps admit
   decodes beside them: EM-INF at ``em_steps`` = its cap with ``em_threshold`` 0 (it never stops early), and
   adaptive temperature at ``at_max_iter`` = its cap with tiny ``at_tol`` and ``at_tmin`` (the bisection runs to
   the cap), against the control: a plain request of the same length beside them. Goal: the worst slows plain
   requests by at most 1.5x at p50 and p99. The caps' defaults (``kernels.params.CAPS``) were chosen from this
   measurement and the op's own cost per row (README, "Operator caps").
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import kernels
from bench.timing import measure_interleaved
from engine.serve import ServerProcess
from kernels.params import CAPS, operator_caps

VOCAB = 151936
PROCESSOR_BATCH = 64


def run(device: torch.device, quick: bool = False, model: str | None = None, progress: bool = True) -> dict:
    out: dict[str, object] = {"processor": _processor(device, quick), "bisection": _bisection(device, quick)}
    if device.type == "cpu" and importlib.util.find_spec("vllm") is not None:
        out["latency"] = _latency(model or ("tiny-random" if quick else "smollm2-135m-instruct"), quick, progress)
    out["targets"] = _targets(out)
    return out


# ------------------------------------------------------------------------------------------------------ processor

def _processor(device: torch.device, quick: bool) -> dict | None:
    if importlib.util.find_spec("vllm") is None:
        return None
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.v1.sample.logits_processor import BatchUpdateBuilder

    from engine.vllm_plugin import EMLogitsProcessor

    batch = 16 if quick else PROCESSOR_BATCH

    def processor(distinct: int) -> EMLogitsProcessor:
        proc = EMLogitsProcessor(VllmConfig(), device, False)
        builder = BatchUpdateBuilder()
        for i in range(batch):
            k = i % distinct
            extra = {"em_mode": "em_inf", "em_lr": 0.1 + 0.01 * k, "em_kl_weight": 0.05 + 0.001 * k,
                     "em_threshold": 0.0}
            builder.added.append((i, SamplingParams(extra_args=extra), [1], []))
        proc.update_state(builder.get_and_reset(batch))
        return proc

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(batch, VOCAB, generator=g) * 2.0).to(device)
    work = {1: logits.clone(), 16: logits.clone()}
    procs = {1: processor(1), 16: processor(16)}
    # apply works in place: threshold 0 keeps every row doing every step, so each call does the same work
    best = measure_interleaved({f"{k} settings": (lambda k=k: procs[k].apply(work[k])) for k in procs}, device,
                               min_seconds=0.2 if quick else 1.0, max_rounds=10, min_rounds=2 if quick else 3)
    return {"batch": batch, "vocab": VOCAB, "seconds_1_setting": best["1 settings"],
            "seconds_16_settings": best["16 settings"],
            "ratio_16_over_1": best["16 settings"] / best["1 settings"]}


# ------------------------------------------------------------------------------------------------------ bisection

def _bisection(device: torch.device, quick: bool) -> dict:
    batch = 8 if quick else 64
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(batch, VOCAB, generator=g) * 2.0).to(device)
    fns = {str(it): (lambda it=it: kernels.adaptive_temperature(logits, max_iter=it, tol=1e-300))
           for it in (100, 10000)}
    best = measure_interleaved(fns, device, min_seconds=0.5 if quick else 1.0, max_rounds=10, min_rounds=3)
    t100 = kernels.adaptive_temperature(logits, max_iter=100, tol=1e-300)[1]
    t10k = kernels.adaptive_temperature(logits, max_iter=10000, tol=1e-300)[1]
    return {"batch": batch, "vocab": VOCAB, "seconds_max_iter_100": best["100"],
            "seconds_max_iter_10000": best["10000"], "ratio": best["10000"] / best["100"],
            "same_temperatures": bool(torch.equal(t100, t10k))}


# -------------------------------------------------------------------------------------------------------- latency

def _worst_requests(caps: dict[str, int]) -> dict[str, dict]:
    """The costliest request of each mode the caps admit, and a plain one (the control: same length, no EM)."""
    return {
        "plain": {},
        "em_inf": {"em_mode": "em_inf", "em_steps": caps["em_steps"], "em_threshold": 0.0},
        "adaptive_temperature": {"em_mode": "adaptive_temperature", "at_max_iter": caps["at_max_iter"],
                                 "at_tol": 1e-300, "at_tmin": 1e-300},
    }


async def _plain_latencies(client, model: str, n: int, concurrency: int, max_tokens: int) -> list[float]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> float:
        async with sem:
            t0 = time.perf_counter()
            await client.completions.create(model=model, prompt=f"Question {i}: Janet has {i} ducks and", seed=i,
                                            max_tokens=max_tokens, temperature=0.7,
                                            extra_body={"ignore_eos": True})
            return time.perf_counter() - t0

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _scenario(base: str, model: str, worst: dict | None, n: int, concurrency: int, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
    background = None
    if worst is not None:
        async def hog() -> None:  # decodes until cancelled: beside every plain request of the scenario
            extra = {"ignore_eos": True, **({"vllm_xargs": worst} if worst else {})}
            stream = await client.completions.create(model=model, prompt="Once upon a time", max_tokens=100000,
                                                     temperature=1.0, stream=True, extra_body=extra)
            async for _ in stream:
                pass

        background = asyncio.create_task(hog())
        await asyncio.sleep(1.0)  # let it join the running batch
    try:
        lat = await _plain_latencies(client, model, n, concurrency, max_tokens)
    finally:
        if background is not None:
            background.cancel()
            try:
                await background
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - cancelling the stream aborts the request
                pass
        await client.close()
    lat.sort()
    return {"p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
            "n": len(lat)}


def _latency(model: str, quick: bool, progress: bool) -> dict:
    caps = operator_caps({})  # the defaults, whatever this machine's environment says
    n, concurrency, max_tokens = (8, 4, 8) if quick else (24, 4, 32)
    scenarios: dict[str, dict | None] = {"plain alone": None}
    scenarios.update({"beside plain" if mode == "plain" else f"beside worst {mode}": req
                      for mode, req in _worst_requests(caps).items()})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        server_args = ["--max-model-len", "2048", "--max-num-seqs", "16"]
        # a server as deployed: its engine core in a process of its own (the bench runs its engines in-process)
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
               **{c.env: str(caps[c.key]) for c in CAPS}}
        with ServerProcess(model, server_args, log_path=Path(tmp) / "server.log", env=env) as server:
            asyncio.run(_scenario(server.base, model, None, n, concurrency, max_tokens))  # warm-up
            # the scenarios in turns, twice, the faster of each kept: a busy shared machine slows them alike
            jobs = [name for _ in range(2) for name in scenarios]
            for name in tqdm(jobs, desc="serving latency", disable=not progress):
                r = asyncio.run(_scenario(server.base, model, scenarios[name], n, concurrency, max_tokens))
                best = results.setdefault(name, r)
                best.update(p50=min(best["p50"], r["p50"]), p99=min(best["p99"], r["p99"]))
    # The ratios are against the control, a plain request of the same length decoding beside them: a long
    # background stream changes the engine's batching and idle behaviour by itself (measured: plain requests beside
    # it 0.8-0.9x as long as alone on 2 cores), so only the control isolates what the EM settings cost.
    control = results["beside plain"]
    for r in results.values():
        r["p50_ratio"] = r["p50"] / control["p50"]
        r["p99_ratio"] = r["p99"] / control["p99"]
    return {"model": model, "caps": caps, "requests": n, "concurrency": concurrency, "max_tokens": max_tokens,
            "worst_requests": _worst_requests(caps), "scenarios": results}


# ------------------------------------------------------------------------------------------------------- report

def _targets(out: dict) -> list[dict]:
    targets = []
    if out.get("processor"):
        r = out["processor"]["ratio_16_over_1"]
        targets.append({"target": "processor time, 16 settings / 1 setting", "value": r, "goal": 1.2,
                        "met": r <= 1.2})
    r = out["bisection"]["ratio"]
    targets.append({"target": "adaptive T time, max_iter 10000 / 100", "value": r, "goal": 1.2, "met": r <= 1.2})
    if out.get("latency"):
        worst = max(max(s["p50_ratio"], s["p99_ratio"]) for name, s in out["latency"]["scenarios"].items()
                    if name.startswith("beside worst"))
        targets.append({"target": "plain latency beside the worst capped request / beside a plain one (p50, p99)",
                        "value": worst, "goal": 1.5, "met": worst <= 1.5})
    return targets


def markdown(section: dict) -> str:
    lines = []
    p = section.get("processor")
    if p:
        lines += [f"vLLM processor per decode step, [{p['batch']}, {p['vocab']}], every row EM-INF: "
                  f"1 setting {p['seconds_1_setting'] * 1e3:.2f} ms, 16 settings {p['seconds_16_settings'] * 1e3:.2f} "
                  f"ms ({p['ratio_16_over_1']:.2f}x).", ""]
    b = section["bisection"]
    lines += [f"Adaptive temperature [{b['batch']}, {b['vocab']}], tol 1e-300: max_iter 100 "
              f"{b['seconds_max_iter_100'] * 1e3:.2f} ms, max_iter 10000 {b['seconds_max_iter_10000'] * 1e3:.2f} ms "
              f"({b['ratio']:.2f}x); same temperatures: {b['same_temperatures']}.", ""]
    lat = section.get("latency")
    if lat:
        lines += [f"Latency of plain requests ({lat['requests']} requests, {lat['concurrency']} in flight, "
                  f"{lat['max_tokens']} tokens, {lat['model']}, default caps {lat['caps']}), alone and beside one "
                  "long request: plain (the control the ratios divide by) or the costliest each EM mode's caps admit:",
                  "", "| scenario | p50 s | p99 s | p50 x control | p99 x control |", "|---|---|---|---|---|"]
        for name, r in lat["scenarios"].items():
            lines.append(f"| {name} | {r['p50']:.3f} | {r['p99']:.3f} | {r['p50_ratio']:.2f} | {r['p99_ratio']:.2f} |")
        lines.append("")
    if section["targets"]:
        lines += ["| target | value | goal | met |", "|---|---|---|---|"]
        for t in section["targets"]:
            lines.append(f"| {t['target']} | {t['value']:.2f} | <= {t['goal']:.2f} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def plot(section: dict, path: str) -> None:
    lat = section.get("latency")
    if not lat:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(lat["scenarios"])
    p50 = [lat["scenarios"][n]["p50"] for n in names]
    p99 = [lat["scenarios"][n]["p99"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
    ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("seconds per plain request")
    ax.set_title(f"Plain-request latency beside the costliest admitted request ({lat['model']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

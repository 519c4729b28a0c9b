"""vLLM-CPU's recommendations, measured: decode tokens/s with and without its preloads and with the compiled model.

    python -m bench.cpu_setup [--model M] [--dtype auto] [--concurrency 16] [--prompts 32] [--max-tokens 128]
                              [--rounds 2] [--output out/cpu-setup]

vLLM-CPU warns at start-up unless libtcmalloc and libiomp5 are in LD_PRELOAD, and compiles the model unless told
to stay eager. Whether either helps is a property of the machine, so it is measured here rather than assumed: each
variant (no preload, each library ``engine.cpu.preload_libraries`` finds, all of them; eager, and compiled with no
preload and with all of them) decodes the same GSM8K prompts with plain sampling in a fresh process started with
that LD_PRELOAD (a library preloaded into a running process does nothing), the variants in turns for ``--rounds``
rounds, the best tokens/s of each kept, and the start-up seconds (load, compile, first batch) beside it. The child
checks that the libraries it was given are mapped into the vLLM worker's process (``/proc/<pid>/maps``) and records
the worker's own LD_PRELOAD: where no OpenMP library is preloaded, vLLM preloads torch's libgomp into its engine
itself (vllm.platforms.cpu), so "none" means "vLLM's own choice". The report gives every round's tokens/s and
their spread, the noise a ratio must clear. Writes ``cpu-setup.json`` and ``cpu-setup.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench.decoding import PROMPT_ROOM
from bench.timing import describe_device
from engine.backends import resolve_dtype_name
from engine.cpu import preload_libraries
from engine.strategies import Generator
from evals.tasks import get_task


def variants(found: dict[str, str | None]) -> dict[str, dict]:
    """Variant name -> {"preload": libraries, "eager": bool}: no preload, each library found and all of them, eager;
    then compiled, with no preload and with all the libraries."""
    libs = {name: path for name, path in found.items() if path}
    out = {"none": {"preload": [], "eager": True}}
    out.update({name: {"preload": [path], "eager": True} for name, path in libs.items()})
    if len(libs) > 1:
        out["+".join(libs)] = {"preload": list(libs.values()), "eager": True}
    out["compiled"] = {"preload": [], "eager": False}
    if libs:
        out["+".join(libs) + "+compiled"] = {"preload": list(libs.values()), "eager": False}
    return out


def _mapped(pids: list[int], libs: list[str]) -> dict[str, bool]:
    """Whether each library is mapped into every one of ``pids`` (a preload that took effect)."""
    out = {}
    for lib in libs:
        base = os.path.basename(os.path.realpath(lib))
        ok = bool(pids)
        for pid in pids:
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                ok = False
                break
            ok = ok and base in maps
        out[lib] = ok
    return out


def _worker_pids() -> list[int]:
    """This process and its descendants (vLLM's engine core and worker processes)."""
    pids, frontier = [os.getpid()], [os.getpid()]
    while frontier:
        pid = frontier.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return pids


def _ld_preload(pid: int) -> str | None:
    """The LD_PRELOAD that process ``pid`` was started with (None where unreadable)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"LD_PRELOAD="):
            return item[len(b"LD_PRELOAD="):].decode(errors="replace")
    return ""


def child(model: str, dtype: str, concurrency: int, prompts: int, max_tokens: int, libs: list[str],
          eager: bool) -> dict:
    """One variant's decode in this process (started with its LD_PRELOAD): tokens/s of plain sampling."""
    queue = [s.prompt for s in get_task("gsm8k").load(limit=prompts)]
    t0 = time.perf_counter()
    # vLLM only: a Generator that cannot start vLLM falls back to HF, which would measure the wrong engine.
    gen = Generator(model, backend="vllm", device="cpu", dtype=dtype, seed=0, max_model_len=PROMPT_ROOM + max_tokens,
                    max_num_seqs=concurrency, enforce_eager=eager)
    try:
        gen.generate(queue[:concurrency], "sampling", temperature=0.1, max_tokens=8, seed=0, progress=False)
        start_seconds = time.perf_counter() - t0
        pids = _worker_pids()
        mapped = _mapped(pids, libs)
        worker_preload = {str(pid): _ld_preload(pid) for pid in pids}
        t0 = time.perf_counter()
        results = gen.generate(queue, "sampling", temperature=0.1, max_tokens=max_tokens, seed=0, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        gen.close()
    tokens = sum(r.generated_tokens for r in results)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "mapped": mapped,
            "start_seconds": start_seconds, "worker_ld_preload": worker_preload}


def measure(model: str, dtype: str, concurrency: int, prompts: int, max_tokens: int, rounds: int,
            progress: bool) -> dict:
    found = preload_libraries()
    setups = variants(found)
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    order = [(r, name) for r in range(rounds) for name in runs]
    for _, name in tqdm(order, desc="cpu setups", disable=not progress):
        libs, eager = setups[name]["preload"], setups[name]["eager"]
        env = {**base_env, **({"LD_PRELOAD": ":".join(libs)} if libs else {})}
        cmd = [sys.executable, "-m", "bench.cpu_setup", "--child", json.dumps({"preload": libs, "eager": eager}),
               "--model", model, "--dtype", dtype, "--concurrency", str(concurrency), "--prompts", str(prompts),
               "--max-tokens", str(max_tokens)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            runs[name].append({"error": proc.stderr[-2000:]})
            continue
        runs[name].append(json.loads(line[-1][len("RESULT "):]))
    rows = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "tokens_per_second" in r]
        rows[name] = {**setups[name], "runs": rs,
                      "best_tokens_per_second": max((r["tokens_per_second"] for r in ok), default=None),
                      "start_seconds": min((r["start_seconds"] for r in ok), default=None),
                      "took_effect": all(all(r["mapped"].values()) for r in ok) if ok else False}
    base = rows["none"]["best_tokens_per_second"]
    for row in rows.values():
        tps = row["best_tokens_per_second"]
        row["vs_none"] = None if tps is None or not base else tps / base
    return {"device": describe_device(torch.device("cpu")), "model": model,
            "dtype": resolve_dtype_name(dtype, "cpu"),
            "concurrency": concurrency, "prompts": prompts, "max_tokens": max_tokens, "rounds": rounds,
            "found": found, "variants": rows}


def markdown(r: dict) -> str:
    lines = [f"# vLLM-CPU setups on {r['device']['name']} ({r['device']['threads']} threads)", "",
             f"{r['model']} ({r['dtype']}), plain sampling, {r['prompts']} GSM8K prompts x "
             f"{r['max_tokens']} tokens, at most {r['concurrency']} in flight; each variant in a fresh process, "
             f"{r['rounds']} rounds in turns, best tokens/s kept, start-up (load, compile, first batch) the shortest. "
             "\"none\": no LD_PRELOAD of ours; vLLM then preloads torch's libgomp into its engine itself.", "",
             "| variant | LD_PRELOAD | model | tokens/s | vs none | each round | start-up s | mapped into the worker |",
             "|---|---|---|---|---|---|---|---|"]
    spreads = []
    for name, row in r["variants"].items():
        tps, vs, start = row["best_tokens_per_second"], row["vs_none"], row.get("start_seconds")
        libs = ", ".join(os.path.basename(p) for p in row["preload"]) or "-"
        each = [x["tokens_per_second"] for x in row.get("runs", []) if "tokens_per_second" in x]
        if len(each) > 1:
            spreads.append(1 - min(each) / max(each))
        lines.append(f"| {name} | {libs} | {'eager' if row['eager'] else 'compiled'} | "
                     f"{'failed' if tps is None else f'{tps:.1f}'} | {'' if vs is None else f'{vs:.2f}x'} | "
                     f"{' / '.join(f'{x:.1f}' for x in each)} | {'' if start is None else f'{start:.0f}'} | "
                     f"{'yes' if row['took_effect'] else 'no'} |")
    if spreads:
        lines += ["", f"The same variant's rounds differ by up to {100 * max(spreads):.0f}% (slowest against fastest): "
                      "a ratio within that of 1.00x is not told apart from no effect on this machine."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--dtype", default="auto", help="auto (the CPU's fastest correct dtype), float32 or bfloat16")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", default="out/cpu-setup")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        r = child(args.model, args.dtype, args.concurrency, args.prompts, args.max_tokens, spec["preload"],
                  spec["eager"])
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    r = measure(args.model, args.dtype, args.concurrency, args.prompts, args.max_tokens, args.rounds,
                not args.no_progress)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu-setup.json").write_text(json.dumps(r, indent=2))
    (out / "cpu-setup.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

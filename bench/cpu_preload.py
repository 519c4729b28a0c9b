"""vLLM-CPU's recommended preloads, measured: decode tokens/s with and without tcmalloc and Intel OpenMP.

    python -m bench.cpu_preload [--model M] [--concurrency 16] [--prompts 32] [--max-tokens 128] [--rounds 2]
                                [--output out/cpu-preload]

vLLM-CPU warns at start-up unless libtcmalloc and libiomp5 are in LD_PRELOAD. Whether they help is a property of
the machine, so it is measured here rather than assumed: each variant (none, tcmalloc, iomp5, both, as far as
``engine.cpu.preload_libraries`` finds them) decodes the same GSM8K prompts with plain sampling in a fresh process
started with that LD_PRELOAD (a library preloaded into a running process does nothing), the variants in turns for
``--rounds`` rounds, the best tokens/s of each kept. The child checks that the libraries it was given are mapped
into the vLLM worker's process (``/proc/<pid>/maps``), so a variant that did not take effect is reported as such.
Writes ``cpu-preload.json`` and ``cpu-preload.md``.
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

from bench.timing import describe_device
from engine.cpu import preload_libraries


def variants(found: dict[str, str | None]) -> dict[str, list[str]]:
    """Variant name -> the libraries to preload: none, each library found, and all of them together."""
    libs = {name: path for name, path in found.items() if path}
    out = {"none": []}
    out.update({name: [path] for name, path in libs.items()})
    if len(libs) > 1:
        out["+".join(libs)] = list(libs.values())
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


def child(model: str, concurrency: int, prompts: int, max_tokens: int, libs: list[str]) -> dict:
    """One variant's decode in this process (started with its LD_PRELOAD): tokens/s of plain sampling."""
    from engine.strategies import Generator
    from evals.tasks import get_task

    queue = [s.prompt for s in get_task("gsm8k").load(limit=prompts)]
    gen = Generator(model, device="cpu", seed=0, max_num_seqs=concurrency, enforce_eager=True)
    try:
        gen.generate(queue[:concurrency], "sampling", temperature=0.1, max_tokens=8, seed=0, progress=False)
        mapped = _mapped(_worker_pids(), libs)
        t0 = time.perf_counter()
        results = gen.generate(queue, "sampling", temperature=0.1, max_tokens=max_tokens, seed=0, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        gen.close()
    tokens = sum(r.generated_tokens for r in results)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "mapped": mapped}


def measure(model: str, concurrency: int, prompts: int, max_tokens: int, rounds: int, progress: bool) -> dict:
    found = preload_libraries()
    libraries = variants(found)
    runs: dict[str, list[dict]] = {name: [] for name in libraries}
    base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    order = [(r, name) for r in range(rounds) for name in runs]
    for _, name in tqdm(order, desc="preload variants", disable=not progress):
        libs = libraries[name]
        env = {**base_env, **({"LD_PRELOAD": ":".join(libs)} if libs else {})}
        cmd = [sys.executable, "-m", "bench.cpu_preload", "--child", json.dumps(libs), "--model", model,
               "--concurrency", str(concurrency), "--prompts", str(prompts), "--max-tokens", str(max_tokens)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            runs[name].append({"error": proc.stderr[-2000:]})
            continue
        runs[name].append(json.loads(line[-1][len("RESULT "):]))
    rows = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "tokens_per_second" in r]
        rows[name] = {"libraries": libraries[name], "runs": rs,
                      "best_tokens_per_second": max((r["tokens_per_second"] for r in ok), default=None),
                      "took_effect": all(all(r["mapped"].values()) for r in ok) if ok else False}
    base = rows["none"]["best_tokens_per_second"]
    for row in rows.values():
        tps = row["best_tokens_per_second"]
        row["vs_none"] = None if tps is None or not base else tps / base
    return {"device": describe_device(torch.device("cpu")), "model": model, "concurrency": concurrency,
            "prompts": prompts, "max_tokens": max_tokens, "rounds": rounds, "found": found, "variants": rows}


def markdown(r: dict) -> str:
    lines = [f"# vLLM-CPU preloads on {r['device']['name']} ({r['device']['threads']} threads)", "",
             f"{r['model']}, plain sampling, {r['prompts']} GSM8K prompts x {r['max_tokens']} tokens, at most "
             f"{r['concurrency']} in flight, eager; each variant in a fresh process, {r['rounds']} rounds in turns, "
             "best kept.", "", "| LD_PRELOAD | tokens/s | vs none | mapped into the worker |", "|---|---|---|---|"]
    for name, row in r["variants"].items():
        tps, vs = row["best_tokens_per_second"], row["vs_none"]
        lines.append(f"| {name} | {'failed' if tps is None else f'{tps:.1f}'} | "
                     f"{'' if vs is None else f'{vs:.2f}x'} | {'yes' if row['took_effect'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", default="out/cpu-preload")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        r = child(args.model, args.concurrency, args.prompts, args.max_tokens, json.loads(args.child))
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    r = measure(args.model, args.concurrency, args.prompts, args.max_tokens, args.rounds, not args.no_progress)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu-preload.json").write_text(json.dumps(r, indent=2))
    (out / "cpu-preload.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

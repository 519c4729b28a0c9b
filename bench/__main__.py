"""`python -m bench`: kernel, decoding, serving and training benchmarks and the kernels' compile check; JSON +
markdown + PNG.

    python -m bench [--quick] [--sections kernels,decoding,serving,training,compile] [--device cpu|cuda] [--model M]
                    [--output DIR] [--no-torch-compile] [--no-progress]
    python -m bench compare A.json B.json

    # the real-model run (resumable: rerun the same command after an interruption)
    python -m bench --model qwen2.5-coder-1.5b-instruct --sections decoding --prompts-per-task 96 --max-tokens 1024 \
        --concurrency 64 --output out/bench-qwen --plot-with bench/results/<embedded-model run>-results.json

Every comparison is a ratio measured side by side in one run on the same inputs; absolute times are quoted with the
device they were measured on (results["device"]).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.timing import describe_device

# section name -> module with run(device, quick, ...) -> dict, markdown(dict) -> str, plot(dict, path)
SECTIONS = {"kernels": "bench.kernels", "decoding": "bench.decoding", "serving": "bench.serving",
            "training": "bench.training", "compile": "bench.compile"}
DEFAULT_MODEL = "smollm2-135m-instruct"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run (minutes): fewer sizes and prompts")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local path or offline name for decoding")
    p.add_argument("--output", default="out/bench", help="directory for results.json, results.md and plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--prompts-per-task", type=int, default=None,
                   help="decoding: problems per task (GSM8K, MATH-500; default 16, --quick 4)")
    p.add_argument("--max-tokens", type=int, default=None, help="decoding: token budget per sequence (default 384)")
    p.add_argument("--strategies", default=None, help="decoding: comma-separated subset (greedy is always run)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="decoding: sequences in flight for every strategy (default 16, the engine's batch-16 "
                        "target; the real-model run uses 64, ~1.5x the tokens/s of 16 on a 2-core CPU)")
    p.add_argument("--dtype", default="auto",
                   help="decoding: auto (CPU: bf16 with AMX / AVX-512 BF16 if it passes a greedy-agreement check "
                        "with fp32, else fp32), float32 or bfloat16")
    p.add_argument("--plot-with", action="append", default=[],
                   help="decoding: results.json of another model's run to plot beside this one (repeatable)")
    p.add_argument("--no-torch-compile", action="store_true",
                   help="kernels section: skip the torch.compile baseline (compiling it per shape takes minutes)")
    args = p.parse_args(argv)
    unknown = [s for s in args.sections.split(",") if s not in SECTIONS]
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible to torch")
    return args


def run(argv: list[str]) -> dict[str, object]:
    args = _parse(argv)
    # The engine in this process: on a small CPU machine a separate engine-core process only competes with the model
    # for the same cores (python -m engine does the same).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    device = torch.device(args.device)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {
        "device": describe_device(device), "model": args.model, "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": source_commit(),
    }
    report = [f"# Benchmark on {results['device'].get('name')} ({args.device}), commit {results['commit']}", ""]
    for name in args.sections.split(","):
        module = importlib.import_module(SECTIONS[name])
        t0 = time.perf_counter()
        section = module.run(device, quick=args.quick, **_section_kwargs(name, args))
        section["section_seconds"] = time.perf_counter() - t0
        results[name] = section
        report += [f"## {name}", "", module.markdown(section), ""]
        module.plot(section, str(out_dir / f"{name}.png"))
    _write_atomic(out_dir / "results.json", json.dumps(results, indent=2, default=str))
    _write_atomic(out_dir / "results.md", "\n".join(report))
    print("\n".join(report))
    print(f"\nwrote {out_dir / 'results.json'}, {out_dir / 'results.md'} and plots")
    return results


def source_commit(root: Path = Path(__file__).resolve().parent.parent) -> str | None:
    """The checkout's HEAD, with "-dirty" when tracked files differ from it; None outside a git checkout.

    A committed run is only reproducible with the code it measured, so the results name it.
    """

    def git(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    except OSError:  # no git on this machine
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _section_kwargs(name: str, args: argparse.Namespace) -> dict[str, object]:
    kwargs: dict[str, object] = {"progress": not args.no_progress}
    if name == "kernels":
        if args.no_torch_compile:
            kwargs["with_compile"] = False
    elif name != "compile":
        kwargs["model"] = args.model
    if name == "decoding":
        kwargs.update(prompts_per_task=args.prompts_per_task, max_tokens=args.max_tokens, dtype=args.dtype,
                      concurrency=args.concurrency, output=args.output, plot_with=args.plot_with,
                      strategies=args.strategies.split(",") if args.strategies else None)
    return kwargs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def compare(path_a: str, path_b: str) -> str:
    """Markdown: kernel rows and decoding strategies side by side, with B/A ratios."""
    a, b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    lines = [f"{tag}: {path} ({r['device'].get('name')}, commit {r.get('commit')})"
             for tag, path, r in (("A", path_a, a), ("B", path_b, b))] + [""]
    if "kernels" in a and "kernels" in b:
        key = lambda r: (r["op"], r["backend"], r["B"])  # noqa: E731
        rows_b = {key(r): r for r in b["kernels"]["rows"] if "seconds" in r}
        lines += ["| op | backend | B | A ms | B ms | B/A time |", "|---|---|---|---|---|---|"]
        for r in a["kernels"]["rows"]:
            other = rows_b.get(key(r))
            if "seconds" in r and other:
                lines.append(f"| {r['op']} | {r['backend']} | {r['B']} | {r['seconds'] * 1e3:.3f} "
                             f"| {other['seconds'] * 1e3:.3f} | {other['seconds'] / r['seconds']:.2f} |")
        lines.append("")
    if "decoding" in a and "decoding" in b:
        sa, sb = a["decoding"]["strategies"], b["decoding"]["strategies"]
        lines += ["| strategy | metric | A | B | B/A |", "|---|---|---|---|---|"]
        for name in sa:
            if name not in sb:
                continue
            for metric in ("tokens_per_answer", "seconds_per_answer", "flops_per_answer", "accuracy"):
                va, vb = sa[name].get(metric), sb[name].get(metric)
                if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                    ratio = f"{vb / va:.2f}" if va else ""
                    lines.append(f"| {name} | {metric} | {va:.4g} | {vb:.4g} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        if len(argv) != 3:
            print("usage: python -m bench compare A.json B.json", file=sys.stderr)
            return 2
        print(compare(argv[1], argv[2]))
        return 0
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

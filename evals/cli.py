"""``python -m evals``: run benchmarks with a decoding strategy, write per-sample JSONL + summary JSON, print a table.

Resuming: samples already in ``<output>/<task>/<strategy>/samples.jsonl`` (matched by id) are not generated again,
so re-running the same command after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from engine.strategies import STRATEGIES, Generator
from evals.data import DataNotFound
from evals.grading import math_verify_equal
from evals.tasks import REFERENCE_SYSTEM_PROMPT, SYSTEM_PROMPT, TASKS, get_task
from kernels.params import add_cli_flags, cli_values

GRADERS = ("ours", "math-verify", "both")
DEFAULT_TASKS = "math500,amc,aime24,minerva,olympiadbench,gsm8k,leetcode,humaneval,mbpp,ugphysics,scicode"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF id, local path, or an engine.models name (e.g. tiny-random)")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from: {', '.join(TASKS)}")
    p.add_argument("--strategy", default="sampling", choices=STRATEGIES)
    p.add_argument("--limit", type=int, default=None, help="first N samples of each task")
    p.add_argument("--ids", default=None, help="comma-separated sample ids to run (applied before --limit)")
    p.add_argument("--backend", choices=("vllm", "hf"), default=None, help="default: vLLM when installed, else HF")
    p.add_argument("--data-dir", default=None, help="benchmark folder (default: ../shared/benchmarks or $EVALS_DATA_DIR)")
    p.add_argument("--output", default="runs/evals", help="output folder")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=None, help="default: the task's protocol value")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=None, help="samples (self_consistency, default 4) / rounds (refinement, 3)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=64, help="samples handed to the engine per call (resume unit)")
    p.add_argument("--grade-workers", type=int, default=2, help="threads grading (code runs one sandbox per thread)")
    p.add_argument("--grader", choices=GRADERS, default="ours",
                   help="math answers: ours (evals.grading), math-verify (Hugging Face's, the `math-verify` extra), or "
                        "both (accuracy stays ours; each record also holds math-verify's verdict and the summary counts "
                        "disagreements). Code, physics and SciCode tasks are always graded by running or their own judge")
    add_cli_flags(p)
    p.add_argument("--subject", default=None, help="UGPhysics subject (default SemiconductorPhysics)")
    p.add_argument("--scicode-split", choices=("test", "dev"), default="test")
    p.add_argument("--scicode-h5", default=None, help="SciCode test_data.h5 (grades the test split)")
    p.add_argument("--lcb-release", default="release_v2", help="LiveCodeBench release tag (release_v1..v6, vN, vM_vN)")
    p.add_argument("--lcb-start-date", default="2023-05-01", help="LiveCodeBench: first contest date kept (YYYY-MM-DD)")
    p.add_argument("--lcb-end-date", default="2024-05-31", help="LiveCodeBench: last contest date kept (YYYY-MM-DD)")
    p.add_argument("--lcb-timeout", type=int, default=6, help="LiveCodeBench: seconds per test (the runner's default)")
    p.add_argument("--lcb-prompt-style", choices=("codeqwen", "generic"), default="codeqwen",
                   help="LiveCodeBench prompt: the runner's Qwen instruct style or its generic chat style")
    p.add_argument("--reference-system-prompt", action="store_true",
                   help="use the reference's byte-exact system prompt (literal double backslash before boxed)")
    return p


def _read_done(path: Path) -> dict[str, dict]:
    done = {}
    if path.exists():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    done[str(rec["id"])] = rec
                except (ValueError, KeyError):
                    continue  # a line cut by an interruption: that sample is redone
    return done


def summarize(task: str, strategy: str, model: str, records: list[dict], seconds: float) -> dict:
    graded = [r for r in records if r["correct"] is not None]
    n = len(graded)
    acc = sum(bool(r["correct"]) for r in graded) / n if n else None
    stderr = math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else (0.0 if n == 1 else None)
    out = {"task": task, "strategy": strategy, "model": model, "n": len(records), "n_graded": n,
           "accuracy": acc, "stderr": stderr,
           "tokens": sum(r.get("generated_tokens", 0) for r in records),
           "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in records),
           "seconds": round(seconds, 3)}
    graders = {r.get("grader", "ours") for r in graded}
    if graders != {"ours"}:
        out["grader"] = "/".join(sorted(graders))
    both = [r for r in graded if r.get("math_verify_correct") is not None and r.get("grader") == "both"]
    if both:
        # --grader both: accuracy above is ours; math-verify's verdicts and where the two disagree
        out["math_verify_accuracy"] = sum(bool(r["math_verify_correct"]) for r in both) / len(both)
        out["disagreements"] = sum(bool(r["correct"]) != bool(r["math_verify_correct"]) for r in both)
        out["ours_only"] = sum(bool(r["correct"]) and not r["math_verify_correct"] for r in both)
        out["math_verify_only"] = sum(bool(r["math_verify_correct"]) and not r["correct"] for r in both)
    return out


def markdown_table(summaries: list[dict]) -> str:
    lines = ["| task | strategy | model | n | accuracy | stderr | tokens | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        acc = "ungraded" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}"
        se = "-" if s["stderr"] is None else f"{100 * s['stderr']:.1f}"
        lines.append(f"| {s['task']} | {s['strategy']} | {s['model']} | {s['n']} | {acc} | {se} | {s['tokens']} | "
                     f"{s['seconds']:.1f} |")
    return "\n".join(lines)


def run_task(task, gen, args, out_dir: Path) -> dict:
    samples = task.load()
    if args.ids:
        wanted = {i.strip() for i in args.ids.split(",")}
        samples = [s for s in samples if str(s.id) in wanted]
        if not samples:
            raise SystemExit(f"{task.name}: none of the ids {sorted(wanted)} exist")
    samples = samples[:args.limit] if args.limit is not None else samples
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "samples.jsonl"
    done = _read_done(path)
    todo = [s for s in samples if str(s.id) not in done]
    # seconds spent in earlier (resumed) runs are kept in the records
    if todo:
        print(f"[{task.name}] {len(done)} done, {len(todo)} to run", file=sys.stderr)
    gen_kwargs = dict(temperature=args.temperature, max_tokens=args.max_tokens or task.default_max_tokens,
                      seed=args.seed, n=args.n, params=cli_values(args) or None, progress=True)
    if args.strategy == "self_consistency":
        if task.answer_fn() is None:
            raise SystemExit(f"{task.name}: self-consistency needs an answer to vote on; this task has none")
        gen_kwargs.update(answer_fn=task.answer_fn(), equal_fn=task.equal_fn())
    use_math_verify = getattr(args, "grader", "ours") != "ours"
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"{task.name}/{args.strategy}",
               unit="sample", file=sys.stderr)
    with open(path, "a", encoding="utf-8") as f, ThreadPoolExecutor(max(1, args.grade_workers)) as pool:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            if hasattr(task, "generate"):
                outs = task.generate(gen, batch, args.strategy, **gen_kwargs)
            else:
                results = gen.generate([s.prompt for s in batch], args.strategy, **gen_kwargs)
                outs = [(r.text, {"prompt_tokens": r.prompt_tokens, "generated_tokens": r.generated_tokens,
                                  "seconds": r.seconds, "candidates": r.candidates if len(r.candidates) > 1 else None})
                        for r in results]
            grades = list(pool.map(lambda so: task.grade(so[0], so[1][0]), zip(batch, outs)))
            second = use_math_verify and task.kind == "math"
            mv = list(pool.map(lambda so: math_verify_equal(so[1][0], so[0].reference), zip(batch, outs))) \
                if second else [None] * len(batch)
            for s, (text, st), g, v in zip(batch, outs, grades, mv):
                rec = {"id": str(s.id), "task": task.name, "strategy": args.strategy, "output": text,
                       "extracted": g.extracted, "reference": s.reference if task.kind in ("math",) else None,
                       "correct": g.correct, "details": g.details or None, "meta": s.meta or None, **st}
                if second:
                    rec["grader"] = args.grader
                    rec["math_verify_correct"], rec["math_verify_extracted"] = v
                    if args.grader == "math-verify":
                        rec["ours_correct"], rec["correct"] = g.correct, v[0]
                f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                done[str(s.id)] = rec
            f.flush()
            bar.update(len(batch))
    bar.close()
    records = [done[str(s.id)] for s in samples if str(s.id) in done]
    summary = summarize(task.name, args.strategy, args.model, records, sum(r.get("seconds", 0.0) for r in records))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        print(f"error: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("error: --limit must be >= 1", file=sys.stderr)
        return 2
    if args.grader != "ours":
        from evals.mathverify import INSTALL_HINT, available

        if not available():
            print(f"error: --grader {args.grader} needs math-verify: {INSTALL_HINT}", file=sys.stderr)
            return 2
    system = REFERENCE_SYSTEM_PROMPT if args.reference_system_prompt else SYSTEM_PROMPT
    options = {"subject": args.subject, "scicode_split": args.scicode_split, "scicode_h5": args.scicode_h5,
               "lcb_release": args.lcb_release, "lcb_start_date": args.lcb_start_date,
               "lcb_end_date": args.lcb_end_date, "lcb_timeout": args.lcb_timeout,
               "lcb_prompt_style": args.lcb_prompt_style}
    try:  # fail on bad task options or missing data before loading a model
        tasks = [get_task(n, data_dir=args.data_dir, system_prompt=system, **options) for n in names]
        for t in tasks:
            t.load(1)
    except (DataNotFound, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = Generator(args.model, backend=args.backend, seed=args.seed, max_model_len=args.max_model_len,
                    dtype=args.dtype, device=args.device)
    summaries = []
    model_tag = args.model.replace("/", "__")
    try:
        for t in tasks:
            t0 = time.perf_counter()
            s = run_task(t, gen, args, Path(args.output) / model_tag / t.name / args.strategy)
            s["wall_seconds_this_run"] = round(time.perf_counter() - t0, 3)
            summaries.append(s)
    finally:
        gen.close()
    table = markdown_table(summaries)
    print(table)
    for s in summaries:
        if "disagreements" in s:
            print(f"{s['task']}: math-verify accuracy {100 * s['math_verify_accuracy']:.1f} (accuracy above is ours); "
                  f"{s['disagreements']} disagreements: {s['ours_only']} only ours accepts, "
                  f"{s['math_verify_only']} only math-verify accepts")
    Path(args.output, model_tag).mkdir(parents=True, exist_ok=True)
    Path(args.output, model_tag, f"summary_{args.strategy}.json").write_text(json.dumps(summaries, indent=2))
    return 0

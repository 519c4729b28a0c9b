"""SciCode: 65 main problems (test split) / 15 (dev split), generated step by step with the with-background prompt.

Grading runs each step as SciCode's evaluator does (eval/scripts/test_generated_code.py @588b406): the step's program
is the dependencies, the code so far and this step's code, then ``from scicode.parse.parse import
process_hdf5_to_tuple``, ``targets = process_hdf5_to_tuple(step_id, n)`` and each test case after ``target =
targets[i]``; it passes when it exits 0. The ``scicode`` package those lines import (the test cases also import
``scicode.compare.cmp``) is our re-write of SciCode's, copied into the sandbox (evals/tasks/_scicode_sandbox). The
targets come from SciCode's ``test_data.h5`` (not in the offline data): ``--scicode-h5 PATH`` grades either split
against it; without it the test split is generated but left ungraded (correct = None), and the dev split's targets are
computed by running its ``ground_truth_code`` in the sandbox (``dev_targets``). ``build_targets_h5`` writes such
targets in test_data.h5's layout, which cross-checks the h5 path against the ground truth.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

from evals.data import locate, read_jsonl
from evals.sandbox import run_python
from evals.tasks.base import Grade, Sample, Task
from evals.tasks.code import extract_code

SCICODE_SYSTEM = "You are a helpful assistant."
SKIPPED_STEPS = ("13.6", "62.1", "76.3")  # the reference feeds gold code for these; it is not in the offline data
STEP_TIMEOUT_S = 300.0

TEMPLATE = """PROBLEM DESCRIPTION:
You will be provided with the main description of the problem, previous steps, and the next step. Your task will be \
to generate the disciplinary knowledge necessary for solving the next step and then develop a Python solution \
focused on this step.

PREVIOUS STEPS DESCRIPTION:
{previous}

NEXT STEP - PROBLEM DESCRIPTION AND FUNCTION HEADER:
This part will describe the next step in the problem-solving process. First, provide the necessary scientific \
background knowledge as a comment at the beginning of your response, starting with 'Background: '. Then, a function \
header will be provided, and your task is to develop the Python code for this next step based on the provided \
description and function header.

{next_step}

DEPENDENCIES:
Use only the following dependencies in your solution. Do not include these dependencies at the beginning of your code.
{deps}

RESPONSE GUIDELINES:
1. Start with the scientific background required for the next step, formatted as a comment.
2. Then write the complete and executable Python program for the next step in a single block.
3. Your response should focus exclusively on implementing the solution for the next step, adhering closely to the \
specified function header and the context provided by the initial steps.
4. DO NOT include previous function code, example usage or test code in your response.
5. Ensure your response is in the format of ```python``` and includes the necessary background as a comment at the top.
"""

_PACKAGE = Path(__file__).with_name("_scicode_sandbox") / "scicode"
# Bump when what dev_targets computes changes: cached targets from an older grader are not reused.
TARGETS_VERSION = "3"


def sandbox_package(h5: str | Path | None = None) -> dict[str, str]:
    """The files of our ``scicode`` package, named as the sandbox places them; with ``h5``, parse.py reads that file."""
    files = {str(Path("scicode") / f.relative_to(_PACKAGE)): f.read_text() for f in sorted(_PACKAGE.rglob("*.py"))}
    if h5 is not None:
        files["scicode/parse/h5_path.txt"] = str(Path(h5).resolve())
    return files


def step_program(code_content: str, step: dict, targets_line: str) -> str:
    """SciCode's test file for one step: the code, the targets, then each test case after ``target = targets[i]``."""
    lines = [code_content, "", targets_line]
    for i, tc in enumerate(step["test_cases"]):
        lines += [f"target = targets[{i}]", "", *tc.split("\n")]
    return "\n".join(lines) + "\n"


def h5_targets_line(step: dict) -> str:
    return (f"\nfrom scicode.parse.parse import process_hdf5_to_tuple\n\n"
            f"targets = process_hdf5_to_tuple({step['step_number']!r}, {len(step['test_cases'])})")


def _target_expr(test_case: str) -> tuple[str, str] | None:
    """Split a test case into (setup code, the expression compared with ``target``) by finding the last assert's call
    or comparison that has ``target`` as an operand. When the assert only compares ``target[0]``, ``target[1]``, ...
    (constant indices from 0 up), the expression is the tuple of what each is compared with. None when the assert
    does not use ``target``."""
    try:
        tree = ast.parse(test_case)
    except SyntaxError:
        return None
    asserts = [n for n in tree.body if isinstance(n, ast.Assert)]
    if not asserts:
        return None
    last = asserts[-1]

    def is_target(n):
        return isinstance(n, ast.Name) and n.id == "target"

    def target_index(n):
        if (isinstance(n, ast.Subscript) and is_target(n.value) and isinstance(n.slice, ast.Constant)
                and type(n.slice.value) is int):
            return n.slice.value
        return None

    def operand_groups():
        for node in ast.walk(last.test):
            if isinstance(node, ast.Call):
                yield node.args
            elif isinstance(node, ast.Compare):
                yield [node.left, *node.comparators]

    expr = None
    by_index = {}
    for ops in operand_groups():
        if any(is_target(o) for o in ops):
            others = [o for o in ops if not is_target(o)]
            if others:
                expr = others[0]
                break
        for o in ops:
            i = target_index(o)
            others = [x for x in ops if target_index(x) is None and not is_target(x)]
            if i is not None and others and i not in by_index:
                by_index[i] = others[0]
    if expr is None and by_index and sorted(by_index) == list(range(len(by_index))):
        expr = ast.Tuple(elts=[by_index[i] for i in range(len(by_index))], ctx=ast.Load())
    if expr is None:
        return None
    setup = [n for n in tree.body if n is not last]
    return ast.unparse(ast.Module(body=setup, type_ignores=[])), ast.unparse(expr)


def _cache_dir() -> Path:
    return Path(os.environ.get("EVALS_CACHE", Path.home() / ".cache" / "em-reasoning-evals"))


def dev_targets(problem: dict) -> dict[str, bytes | None]:
    """Pickled target lists per step of a dev problem, computed by running its ground-truth code (cached on disk)."""
    key = hashlib.sha256((TARGETS_VERSION + json.dumps(problem, sort_keys=True)).encode()).hexdigest()[:16]
    cache = _cache_dir() / "scicode_targets" / f"{problem['problem_id']}-{key}.json"
    if cache.exists():
        return {k: (bytes.fromhex(v) if v is not None else None) for k, v in json.loads(cache.read_text()).items()}
    out: dict[str, bytes | None] = {}
    gt_code = []
    for step in problem["sub_steps"]:
        gt_code.append(step["ground_truth_code"])
        lines = [problem["required_dependencies"], *gt_code, "import pickle", "_targets = []"]
        for tc in step["test_cases"]:
            split = _target_expr(tc)
            if split is None:
                lines.append("_targets.append(None)")
            else:
                setup, expr = split
                lines.append(f"{setup}\n_targets.append({expr})")
        lines.append("pickle.dump(_targets, open('targets.pkl', 'wb'))")
        res = run_python("\n".join(lines), STEP_TIMEOUT_S, memory_mb=4096, files=sandbox_package(),
                         collect=("targets.pkl",))
        out[step["step_number"]] = res.collected.get("targets.pkl") if res.passed else None
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({k: (v.hex() if v is not None else None) for k, v in out.items()}))
    return out


def build_targets_h5(problems: list[dict], path: str | Path) -> list[str]:
    """Writes the dev problems' ground-truth targets (``dev_targets``) into ``path`` in test_data.h5's layout and
    returns the steps written (those whose ground truth ran). The file is written inside the sandbox by our
    scicode.parse.parse, so the host never unpickles what sandboxed code produced."""
    files = sandbox_package()
    steps = []
    for problem in problems:
        for sid, blob in dev_targets(problem).items():
            if blob is not None:
                files[f"targets/{sid}.pkl"] = blob
                steps.append(sid)
    program = ("import pickle\nimport h5py\nfrom scicode.parse.parse import save_step_targets\n"
               "with h5py.File('targets.h5', 'w') as f:\n"
               f"    for sid in {steps!r}:\n"
               "        with open(f'targets/{sid}.pkl', 'rb') as t:\n"
               "            save_step_targets(f, sid, pickle.load(t))\n")
    res = run_python(program, STEP_TIMEOUT_S, memory_mb=4096, files=files, collect=("targets.h5",))
    if not res.passed or "targets.h5" not in res.collected:
        raise RuntimeError(f"writing the targets file failed: {res.stderr_tail[-2000:]}")
    Path(path).write_bytes(res.collected["targets.h5"])
    return steps


class SciCode(Task):
    name = "scicode"
    kind = "scicode"
    default_max_tokens = 2048
    description = "SciCode main problems, step by step (test: 65, graded only with --scicode-h5; dev: 15, graded)"

    def _load(self):
        split = self.options.get("scicode_split") or "test"
        if split not in ("test", "dev"):
            raise ValueError(f"--scicode-split must be test or dev, got {split!r}")
        h5 = self.options.get("scicode_h5")
        if h5 and not Path(h5).is_file():
            raise ValueError(f"--scicode-h5 must be an existing file (SciCode's test_data.h5), got {str(h5)!r}")
        path = locate(self.data_dir, "scicode/problems_all.jsonl" if split == "test" else "scicode/problems_dev.jsonl")
        return [Sample(id=p["problem_id"], prompt=[], reference=p, meta={"split": split,
                                                                          "steps": len(p["sub_steps"])})
                for p in read_jsonl(path)]

    def step_prompt(self, problem: dict, k: int, previous_code: list[str]) -> list[dict]:
        prev = []
        for j in range(k):
            s = problem["sub_steps"][j]
            prev.append(s["step_description_prompt"] + "\n" + (s.get("step_background") or "") + "\n\n"
                        + (previous_code[j] if j < len(previous_code) else ""))
        s = problem["sub_steps"][k]
        next_step = (s["step_description_prompt"] + "\n" + (s.get("step_background") or "") + "\n\n"
                     + s["function_header"] + "\n\n" + s["return_line"])
        text = TEMPLATE.format(previous="\n\n---\n\n".join(prev), next_step=next_step,
                               deps=problem["required_dependencies"])
        return self.chat(text, system=SCICODE_SYSTEM)

    def generate(self, gen, samples: list[Sample], strategy: str, **kwargs) -> list[tuple[str, dict]]:
        """Round k generates step k of every problem that has one, with its own earlier steps' code in the prompt."""
        codes: list[list[str]] = [[] for _ in samples]
        raws: list[list[str]] = [[] for _ in samples]
        stats = [{"prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0} for _ in samples]
        rounds = max(len(s.reference["sub_steps"]) for s in samples)
        for k in range(rounds):
            idx = [i for i, s in enumerate(samples) if k < len(s.reference["sub_steps"])]
            prompts = [self.step_prompt(samples[i].reference, k, codes[i]) for i in idx]
            results = gen.generate(prompts, strategy, **kwargs)
            for i, r in zip(idx, results):
                step_id = samples[i].reference["sub_steps"][k]["step_number"]
                code = extract_code(r.text) if step_id not in SKIPPED_STEPS else ""
                codes[i].append(code)
                raws[i].append(r.text)
                stats[i]["prompt_tokens"] += r.prompt_tokens
                stats[i]["generated_tokens"] += r.generated_tokens
                stats[i]["seconds"] += r.seconds
        return [(json.dumps(raw), st) for raw, st in zip(raws, stats)]

    def grade(self, sample, output):
        problem = sample.reference
        try:
            raws = json.loads(output)
            assert isinstance(raws, list)
        except (ValueError, AssertionError):
            raws = [output]
        codes = [extract_code(r) for r in raws]
        h5 = self.options.get("scicode_h5")
        split = sample.meta.get("split", "test")
        if split == "test" and not h5:
            return Grade(correct=None, extracted=None, details={"reason": "no test_data.h5 (--scicode-h5)"})
        targets = dev_targets(problem) if not h5 else None
        step_pass = {}
        for k, step in enumerate(problem["sub_steps"]):
            sid = step["step_number"]
            if sid in SKIPPED_STEPS:
                continue
            if k >= len(codes):
                step_pass[sid] = False
                continue
            code_content = "\n\n".join([problem["required_dependencies"], *codes[:k + 1]])
            if h5:
                program, files = step_program(code_content, step, h5_targets_line(step)), sandbox_package(h5)
            else:
                if targets.get(sid) is None:
                    step_pass[sid] = None  # the ground truth itself failed: cannot grade this step
                    continue
                line = "import pickle as _pk\ntargets = _pk.load(open('targets.pkl', 'rb'))"
                program = step_program(code_content, step, line)
                files = {**sandbox_package(), "targets.pkl": targets[sid]}
            res = run_python(program, STEP_TIMEOUT_S, memory_mb=4096, files=files)
            step_pass[sid] = res.passed
        graded = [v for v in step_pass.values() if v is not None]
        correct = bool(graded) and all(graded) if graded else None
        return Grade(correct=correct, extracted=None,
                     details={"steps": step_pass, "steps_passed": sum(bool(v) for v in graded),
                              "steps_graded": len(graded)})

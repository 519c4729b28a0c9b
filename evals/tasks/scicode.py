"""SciCode: 65 main problems (test split) / 15 (dev split), generated step by step with the with-background prompt.

Grading needs each test case's ``target``. The test split's targets live only in SciCode's ``test_data.h5`` (not in
the offline data): pass ``--scicode-h5 PATH`` to grade it; without it the test split is generated but left ungraded
(correct = None). The dev split ships ``ground_truth_code``: we run it in the sandbox to produce the targets.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle  # noqa: F401  (the programs we build use it inside the sandbox)
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

# Comparison helpers the test cases call (SciCode's scicode.compare.cmp, re-written).
HELPERS = '''
import numpy as _np
def are_dicts_close(d1, d2, atol=1e-8, rtol=1e-5):
    if set(d1.keys()) != set(d2.keys()):
        return False
    for k in d1:
        a, b = d1[k], d2[k]
        if isinstance(a, str) or isinstance(b, str):
            if a != b:
                return False
        elif not _np.allclose(a, b, atol=atol, rtol=rtol):
            return False
    return True
def are_csc_matrix_close(m1, m2):
    return _np.allclose(m1.toarray(), m2.toarray())
def cmp_tuple_or_list(v1, v2):
    if len(v1) != len(v2):
        return False
    for a, b in zip(v1, v2):
        if isinstance(a, dict):
            if not are_dicts_close(a, b):
                return False
        elif hasattr(a, "toarray"):
            if not are_csc_matrix_close(a, b):
                return False
        elif isinstance(a, bool):
            if a != b:
                return False
        else:
            try:
                if not _np.allclose(a, b):
                    return False
            except (ValueError, TypeError):
                if a != b:
                    return False
    return True
'''

# Reads SciCode's test_data.h5 layout: {step}/test{i}/ holding var1..varN datasets or groups (list / dict /
# sparse_matrix). Runs inside the sandbox, so the grader itself never needs h5py.
H5_READER = '''
import h5py as _h5
def _h5_value(obj):
    if isinstance(obj, _h5.Dataset):
        v = obj[()]
        return v.decode("utf-8") if isinstance(v, bytes) else v
    keys = list(obj.keys())
    if "list" in keys:
        return [_h5_value(obj["list"][k]) for k in obj["list"].keys()]
    if "sparse_matrix" in keys:
        import scipy.sparse as _sp
        g = obj["sparse_matrix"]
        data, shape = g["data"][()], tuple(g["shape"][()])
        if "row" in g:
            return _sp.coo_matrix((data, (g["row"][()], g["col"][()])), shape=shape)
        if "blocksize" in g:
            return _sp.bsr_matrix((data, g["indices"][()], g["indptr"][()]), shape=shape, blocksize=tuple(g["blocksize"][()]))
        return _sp.csr_matrix((data, g["indices"][()], g["indptr"][()]), shape=shape)
    out = {}
    for k, v in obj.items():
        try:
            kk = float(k)
        except ValueError:
            kk = k
        out[kk] = _h5_value(v)
    return out
def _h5_targets(path, step, n):
    res = []
    with _h5.File(path, "r") as f:
        for i in range(n):
            g = f[f"{step}/test{i + 1}"]
            keys = list(g.keys())
            vals = [_h5_value(g[k]) for k in keys]
            res.append(vals[0] if len(vals) == 1 else tuple(vals))
    return res
'''


def _target_expr(test_case: str) -> tuple[str, str] | None:
    """Split a test case into (setup code, the expression compared with ``target``) by finding the last assert's call
    or comparison that has ``target`` as an operand. None when the assert does not use ``target``."""
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

    for node in ast.walk(last.test):
        if isinstance(node, ast.Call) and any(is_target(a) for a in node.args):
            others = [a for a in node.args if not is_target(a)]
            if others:
                expr = others[0]
                break
        if isinstance(node, ast.Compare):
            ops = [node.left, *node.comparators]
            if any(is_target(o) for o in ops):
                others = [o for o in ops if not is_target(o)]
                if others:
                    expr = others[0]
                    break
    else:
        return None
    setup = [n for n in tree.body if n is not last]
    return ast.unparse(ast.Module(body=setup, type_ignores=[])), ast.unparse(expr)


def _cache_dir() -> Path:
    return Path(os.environ.get("EVALS_CACHE", Path.home() / ".cache" / "em-reasoning-evals"))


def dev_targets(problem: dict) -> dict[str, bytes | None]:
    """Pickled target lists per step of a dev problem, computed by running its ground-truth code (cached on disk)."""
    key = hashlib.sha256(json.dumps(problem, sort_keys=True).encode()).hexdigest()[:16]
    cache = _cache_dir() / "scicode_targets" / f"{problem['problem_id']}-{key}.json"
    if cache.exists():
        return {k: (bytes.fromhex(v) if v is not None else None) for k, v in json.loads(cache.read_text()).items()}
    out: dict[str, bytes | None] = {}
    gt_code = []
    for step in problem["sub_steps"]:
        gt_code.append(step["ground_truth_code"])
        lines = [problem["required_dependencies"], *gt_code, HELPERS, "import pickle", "_targets = []"]
        for tc in step["test_cases"]:
            split = _target_expr(tc)
            if split is None:
                lines.append("_targets.append(None)")
            else:
                setup, expr = split
                lines.append(f"{setup}\n_targets.append({expr})")
        lines.append("pickle.dump(_targets, open('targets.pkl', 'wb'))")
        res = run_python("\n".join(lines), STEP_TIMEOUT_S, memory_mb=4096, collect=("targets.pkl",))
        out[step["step_number"]] = res.collected.get("targets.pkl") if res.passed else None
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({k: (v.hex() if v is not None else None) for k, v in out.items()}))
    return out


class SciCode(Task):
    name = "scicode"
    kind = "scicode"
    default_max_tokens = 2048
    description = "SciCode main problems, step by step (test: 65, graded only with --scicode-h5; dev: 15, graded)"

    def _load(self):
        split = self.options.get("scicode_split") or "test"
        if split not in ("test", "dev"):
            raise ValueError(f"--scicode-split must be test or dev, got {split!r}")
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
        targets = dev_targets(problem) if split == "dev" else None
        step_pass = {}
        for k, step in enumerate(problem["sub_steps"]):
            sid = step["step_number"]
            if sid in SKIPPED_STEPS:
                continue
            if k >= len(codes):
                step_pass[sid] = False
                continue
            parts = [problem["required_dependencies"], *codes[:k + 1], HELPERS]
            files = {}
            n = len(step["test_cases"])
            if split == "dev":
                if targets.get(sid) is None:
                    step_pass[sid] = None  # the ground truth itself failed: cannot grade this step
                    continue
                files["targets.pkl"] = targets[sid]
                parts.append("import pickle as _pk\n_targets = _pk.load(open('targets.pkl', 'rb'))")
            else:
                parts.append(H5_READER + f"\n_targets = _h5_targets({str(h5)!r}, {sid!r}, {n})")
            for i, tc in enumerate(step["test_cases"]):
                parts.append(f"target = _targets[{i}]\n{tc}")
            res = run_python("\n\n".join(parts), STEP_TIMEOUT_S, memory_mb=4096, files=files)
            step_pass[sid] = res.passed
        graded = [v for v in step_pass.values() if v is not None]
        correct = bool(graded) and all(graded) if graded else None
        return Grade(correct=correct, extracted=None,
                     details={"steps": step_pass, "steps_passed": sum(bool(v) for v in graded),
                              "steps_graded": len(graded)})

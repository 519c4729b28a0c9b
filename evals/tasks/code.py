"""Code benchmarks: LeetCode (the paper's protocol), HumanEval, MBPP. Every program runs in ``evals.sandbox``."""

from __future__ import annotations

import re
import textwrap

from evals.data import locate, read_json_list, read_jsonl
from evals.sandbox import run_python
from evals.tasks.base import Grade, Sample, Task

# PRIME's "action" system prompt, which the reference inlines for LeetCode (em_pt_semantics.md section 6).
ACTION_SYSTEM_PROMPT = (
    "\nWhen tackling complex reasoning tasks, you have access to the following actions. Use them as needed to "
    "progress through your thought process.\n\n[ASSESS]\n\n[ADVANCE]\n\n[VERIFY]\n\n[SIMPLIFY]\n\n[SYNTHESIZE]\n\n"
    "[PIVOT]\n\n[OUTPUT]\n\nYou should strictly follow the format below:\n\n[ACTION NAME]\n\n# Your action step 1\n\n"
    "# Your action step 2\n\n# Your action step 3\n\n...\n\nNext action: [NEXT ACTION NAME]\n"
)
CODE_INSTRUCTION = "\n\nWrite Python code to solve the problem. Present the code in \n```python\nYour code\n```\nat the end."
# The fixed header the LeetCode harness puts before every program (contest solutions rely on these names).
LEETCODE_IMPORTS = (
    "\nfrom typing import *\n\nfrom functools import *\nfrom collections import *\nfrom itertools import *\n"
    "from heapq import *\nfrom bisect import *\nfrom string import *\nfrom operator import *\nfrom math import *\n"
    "import math\nimport datetime\ninf = float('inf')\n"
)
LEETCODE_TIMEOUT_S = 10.0


def match_code(text: str) -> str:
    """The reference's extraction, kept for comparison (``python -m evals.agreement``): the last ```python block
    containing "def " (else the last python block), then the same over plain ``` blocks, else the text before the
    first fence."""
    for pat in (r"```python(.*?)```", r"```(.*?)```"):
        blocks = re.findall(pat, text, re.DOTALL)
        if blocks:
            for b in reversed(blocks):
                if "def " in b:
                    return b
            return blocks[-1]
    return text.split("```")[0]


_TAGGED = re.compile(r"```[ \t]*(?:python3?|py3?)(?![\w+-])(.*?)```", re.S | re.I)
_ANY_BLOCK = re.compile(r"```(.*?)```", re.S)
_INFO_LINE = re.compile(r"^[ \t]*[A-Za-z][\w+#.-]*[ \t]*\n")


def _clean_block(body: str, untagged: bool) -> str:
    if untagged:
        body = _INFO_LINE.sub("", body, count=1)  # "```py\n": the info string is not code
    body = body.split("\n", 1)[1] if body.strip() and not body.split("\n", 1)[0].strip() else body
    return textwrap.dedent(body).strip("\n") + "\n"


def extract_code(text: str) -> str:
    """The program in a model output, chosen as the reference chooses (``match_code``: the last python block
    containing "def ", else the last python block; the same over all blocks; else the text before the first fence)
    but without its syntactic slips, each of which fails a correct program before any test runs:
    - the block is dedented: inside a markdown list item every line carries the item's indentation, and an indented
      ``class Solution:`` is an IndentationError;
    - the info string is not code: the reference only recognises a lowercase "python" tag, so a ``py`` or ``Python``
      tag became the program's first line (a NameError);
    - Windows line ends are made plain, and a python block left open at the end (the model stopped after the code)
      is still a block.
    """
    text = (text or "").replace("\r\n", "\n")
    for pat, untagged in ((_TAGGED, False), (_ANY_BLOCK, True)):
        blocks = pat.findall(text)
        if text.count("```") % 2 == 1:
            m = re.search(r"```[ \t]*(?:python3?|py3?)?(?![\w+-])([^`]*)$", text, re.I)
            if m and (untagged or re.match(r"```[ \t]*(?:python|py)", m.group(0), re.I)):
                blocks.append(m.group(1))
        if blocks:
            chosen = next((b for b in reversed(blocks) if "def " in b), blocks[-1])
            return _clean_block(chosen, untagged)
    return text.split("```")[0]


def wrap_solution(code: str) -> str:
    """LeetCode: code without a ``class Solution`` is indented into one (the reference does the same, but tests for the
    exact text "class Solution:", so ``class Solution(object):`` was wrapped a second time)."""
    if re.search(r"^class\s+Solution\b", code, re.M):
        return code
    return "class Solution:\n" + "\n".join("    " + line for line in code.split("\n"))


def ref_wrap_solution(code: str) -> str:
    """The reference's LeetCode wrapping, kept for comparison: code without the text "class Solution:" is indented
    into one."""
    if "class Solution:" in code:
        return code
    return "class Solution:\n" + "\n".join("    " + line for line in code.split("\n"))


def code_equal(a: str, b: str) -> bool:
    """Self-consistency for code: programs vote together when they are equal up to whitespace and comments."""
    def norm(s: str) -> str:
        s = re.sub(r"#[^\n]*", "", s)
        return re.sub(r"\s+", " ", s).strip()

    return norm(a) == norm(b)


class CodeTask(Task):
    kind = "code"
    timeout_s = 10.0

    def answer_fn(self):
        return lambda text: extract_code(text).strip() or None

    def equal_fn(self):
        return code_equal

    def program(self, sample: Sample, output: str, reference_rules: bool = False) -> tuple[str, str]:
        """(extracted code, the program that runs). ``reference_rules``: extract and wrap as the reference does
        (``match_code``, ``ref_wrap_solution``), for ``python -m evals.agreement``."""
        raise NotImplementedError

    def grade(self, sample: Sample, output: str) -> Grade:
        code, program = self.program(sample, output)
        res = run_python(program, self.timeout_s, memory_mb=int(self.options.get("memory_mb", 2048)))
        return Grade(correct=res.passed, extracted=code,
                     details={"timed_out": res.timed_out, "returncode": res.returncode,
                              "stderr_tail": res.stderr_tail[-1000:], "seconds": round(res.seconds, 3)})


class LeetCode(CodeTask):
    name = "leetcode"
    description = ("LeetCode contest problems (180; PRIME's set, 10 s limit). The system prompt is PRIME's \"action\" "
                   "template, the paper's protocol: small models often copy its scaffold ([ACTION NAME] / # Your action "
                   "step 1 ...) instead of solving (6 of 16 greedy outputs of qwen2.5-coder-1.5b-instruct did)")
    default_max_tokens = 8192
    timeout_s = LEETCODE_TIMEOUT_S

    def _load(self):
        path = locate(self.data_dir, "leetcode/leetcode-test.json")
        return [Sample(id=r["task_id"], prompt=self.chat(r["prompt_sft"] + CODE_INSTRUCTION, system=ACTION_SYSTEM_PROMPT),
                       reference=r["test"], meta={"difficulty": r["meta"]["difficulty"], "title": r["title"]})
                for r in read_jsonl(path)]

    def program(self, sample, output, reference_rules=False):
        code = ref_wrap_solution(match_code(output)) if reference_rules else wrap_solution(extract_code(output))
        return code, LEETCODE_IMPORTS + "\n" + code + "\n\n" + sample.reference + "\n"


HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Present the complete function, including its "
                         "signature, in a ```python code block at the end.\n\n```python\n{prompt}```")
MBPP_INSTRUCTION = ("{prompt}\nYour code should pass this test:\n{test}\n\nPresent the code in \n```python\nYour "
                    "code\n```\nat the end.")


class HumanEval(CodeTask):
    name = "humaneval"
    description = "HumanEval (164; program = completion + test + check(entry_point))"
    default_max_tokens = 2048

    def _load(self):
        base = locate(self.data_dir, "humaneval/HumanEval.jsonl.gz", ("openai/openai_humaneval", None, "test"))
        rows = base if isinstance(base, list) else read_jsonl(base)
        return [Sample(id=r["task_id"], prompt=self.chat(HUMANEVAL_INSTRUCTION.format(prompt=r["prompt"]), system=""),
                       reference={"test": r["test"], "entry_point": r["entry_point"], "prompt": r["prompt"]},
                       meta={"canonical_solution": r["canonical_solution"]})
                for r in rows]

    def program(self, sample, output, reference_rules=False):
        ref = sample.reference
        code = match_code(output) if reference_rules else extract_code(output)
        if not re.search(r"def\s+" + re.escape(ref["entry_point"]) + r"\s*\(", code):
            # a body-only completion: put it under the prompt's signature
            code = ref["prompt"] + code
        elif "import" not in code:
            # the prompt's imports (typing, math) are part of the task
            code = "\n".join(l for l in ref["prompt"].splitlines() if l.startswith(("import ", "from "))) + "\n" + code
        return code, code + "\n\n" + ref["test"] + f"\n\ncheck({ref['entry_point']})\n"


class MBPP(CodeTask):
    name = "mbpp"
    description = "MBPP (PRIME's 399-item sanitized set; program = test_imports + code + asserts)"
    default_max_tokens = 2048

    def _load(self):
        path = locate(self.data_dir, "mbpp/new_mbpp.json")
        return [Sample(id=str(r["task_id"]),
                       prompt=self.chat(MBPP_INSTRUCTION.format(prompt=r["prompt"], test=r["test_list"][0]), system=""),
                       reference={"test_imports": r["test_imports"], "test_list": r["test_list"]},
                       meta={"code": r["code"]})
                for r in read_json_list(path)]

    def program(self, sample, output, reference_rules=False):
        code = match_code(output) if reference_rules else extract_code(output)
        ref = sample.reference
        return code, "\n".join(ref["test_imports"]) + "\n" + code + "\n\n" + "\n".join(ref["test_list"]) + "\n"

"""LiveCodeBench's test runner for one program, executed as the program of an ``evals.sandbox`` run.

It re-implements what lcb_runner/evaluation/testing_util.py (LiveCodeBench @28fef95) does inside its worker process:
the two modes (stdin/stdout programs wrapped into a function and fed each test's input through a mocked stdin;
call-based ``Solution`` methods called with each test's JSON arguments), the per-test SIGALRM time limit,
LiveCodeBench's import header, the line-by-line comparison after stripping (with its Decimal fallback), and stopping
at the first failing test. What it leaves to the sandbox: LiveCodeBench's ``reliability_guard`` (which nulls os.kill,
os.remove, subprocess.Popen, ...) is replaced by the sandbox's real containment, and the runner's global deadline is
the sandbox's wall-clock timeout.

Reads ``lcb_job.json`` ({code, inputs, outputs, fn_name, timeout}) from its directory and writes ``lcb_results.json``
({results, metadata}) there. Result codes are LiveCodeBench's: True passed, -2 wrong answer, -3 time limit exceeded,
-4 runtime error (compile errors included). Like _sandbox_boot.py this file must not import the package.
"""

import ast
import builtins
import json
import signal
import sys
from decimal import Decimal
from io import StringIO
from types import ModuleType
from unittest.mock import mock_open

# LiveCodeBench's header before every program (testing_util.import_string), byte for byte: solutions rely on it.
IMPORT_HEADER = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\nfrom heapq import *\n"
    "from bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\nfrom statistics import *\n"
    "from itertools import *\nfrom functools import *\nfrom operator import *\nfrom io import *\nfrom sys import *\n"
    "from json import *\nfrom builtins import *\nfrom typing import *\nimport string\nimport re\nimport datetime\n"
    "import collections\nimport heapq\nimport bisect\nimport copy\nimport math\nimport random\nimport statistics\n"
    "import itertools\nimport functools\nimport operator\nimport io\nimport sys\nimport json\n"
    "sys.setrecursionlimit(50000)\n"
)

# the harness's own handles, taken before any solution code can replace them
_open, _stdout, _stdin = builtins.open, sys.stdout, sys.stdin


class TimeoutException(Exception):
    pass


def _on_alarm(signum, frame):
    raise TimeoutException("time limit exceeded")


def _truncate(s, length=300):
    s = s if isinstance(s, str) else str(s)
    return s if len(s) <= length else s[:length // 2] + "...(truncated) ..." + s[-length // 2:]


class _MockBuffer:
    """sys.stdin.buffer as LiveCodeBench mocks it: read() gives all bytes, readline() always the first line."""

    def __init__(self, text):
        self.data = text.encode("utf-8")

    def read(self, *args):
        return self.data

    def readline(self, *args):
        return self.data.split(b"\n")[0] + b"\n"


class _MockStdin:
    """sys.stdin as LiveCodeBench mocks it (MockStdinWithBuffer): read() returns the whole input every time,
    readline() consumes lines, readlines() is ``input.split("\\n")`` (no line ends), anything else goes to a StringIO.
    Iterating over it fails, as it does in LiveCodeBench (the class has no __iter__)."""

    def __init__(self, text):
        self.text = text
        self._io = StringIO(text)
        self.buffer = _MockBuffer(text)

    def read(self, *args):
        return self.text

    def readline(self, *args):
        return self._io.readline(*args)

    def readlines(self, *args):
        return self.text.split("\n")

    def __getattr__(self, name):
        return getattr(self._io, name)


def clean_if_name(code):
    """A trailing ``if __name__ == '__main__':`` block is replaced by its body (the program runs as a function)."""
    try:
        tree = ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, ast.If) and ast.unparse(last.test).strip() == "__name__ == '__main__'":
            code = ast.unparse(tree.body[:-1]) + "\n" + ast.unparse(last.body)
    except Exception:
        pass
    return code


def make_function(code):
    """Top-level imports stay at module level; every other statement becomes the body of ``wrapped_function``."""
    try:
        tree = ast.parse(code)
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        others = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        fields = dict(name="wrapped_function", body=others, decorator_list=[], returns=None, type_comment=None,
                      args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
                      lineno=-1)
        if "type_params" in ast.FunctionDef._fields:  # Python >= 3.12
            fields["type_params"] = []
        return IMPORT_HEADER + "\n" + ast.unparse(imports) + "\n" + ast.unparse(ast.FunctionDef(**fields))
    except Exception:
        return code


def compile_code(code, timeout):
    signal.alarm(timeout)
    try:
        module = ModuleType("tmp_sol", "")
        exec(code, module.__dict__)
        # LiveCodeBench's test for a LeetCode-style solution: the source mentions ``class Solution``
        return module.Solution() if "class Solution" in code else module
    finally:
        signal.alarm(0)


def _stripped_lines(text):
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line):
    try:
        return True, [Decimal(x) for x in line.split()]
    except Exception:
        return False, []


def _lines_match(prediction, expected):
    """LiveCodeBench's stdout check: same number of stripped lines; each line equal as text or, failing that, as a
    list of Decimals (so 0.50 == 0.5, but no float tolerance)."""
    got, want = _stripped_lines(prediction), _stripped_lines(expected)
    if len(got) != len(want):
        return "Wrong answer: mismatched output length"
    for i, (a, b) in enumerate(zip(got, want)):
        if a == b:
            continue
        ok_a, da = _decimals(a)
        ok_b, db = _decimals(b)
        if not (ok_a and ok_b and da == db):
            return f"Wrong answer at output_line_idx={i}: {_truncate(a)} != {_truncate(b)}"
    return None


def grade_stdio(code, inputs, outputs, timeout):
    method = getattr(compile_code(make_function(clean_if_name(code)), timeout), "wrapped_function", None)
    if method is None:
        raise RuntimeError("the program could not be wrapped into a function")
    results = []
    for inp, out in zip(inputs, outputs):
        if isinstance(inp, list):
            inp = "\n".join(inp)
        captured = StringIO()
        captured.close = lambda *a: None  # a program that closes stdout must not lose what it printed
        sys.stdout, sys.stdin, builtins.open = captured, _MockStdin(inp), mock_open(read_data=inp)
        signal.alarm(timeout)
        try:
            try:
                method()
            except SystemExit:
                pass  # exit() ends the program, not the test
            signal.alarm(0)
        except Exception as e:
            signal.alarm(0)
            code_, msg = (-3, "Time Limit Exceeded") if isinstance(e, TimeoutException) else (-4, "Runtime Error")
            results.append(code_)
            return results, {"error": repr(e), "error_code": code_, "error_message": msg,
                             "inputs": _truncate(inp), "expected": _truncate(out)}
        finally:
            signal.alarm(0)
            sys.stdout, sys.stdin, builtins.open = _stdout, _stdin, _open
        prediction = captured.getvalue()
        wrong = _lines_match(prediction, out)
        if wrong:
            results.append(-2)
            return results, {"output": _truncate(prediction), "inputs": _truncate(inp), "expected": _truncate(out),
                             "error_code": -2, "error_message": wrong}
        results.append(True)
    return results, {}


def grade_call_based(code, inputs, outputs, fn_name, timeout):
    solution = compile_code(IMPORT_HEADER + "\n\n" + code, timeout)
    method = getattr(solution, fn_name, None)
    if method is None:
        raise RuntimeError(f"the program defines no method {fn_name!r}")
    args = [[json.loads(line) for line in inp.split("\n")] for inp in inputs]
    expected = [json.loads(out) for out in outputs]
    results = []
    for arg, want in zip(args, expected):
        signal.alarm(timeout)
        try:
            got = method(*arg)
            signal.alarm(0)
            if isinstance(got, tuple):  # tuples count as the lists the ground truth stores
                got = list(got)
            if got != want:
                results.append(-2)
                return results, {"output": _truncate(got), "inputs": _truncate(arg), "expected": _truncate(want),
                                 "error_code": -2, "error_message": "Wrong Answer"}
            results.append(True)
        except Exception as e:
            signal.alarm(0)
            code_, msg = (-3, "Time Limit Exceeded") if isinstance(e, TimeoutException) else (-4, "Runtime Error")
            results.append(code_)
            return results, {"error": repr(e), "error_code": code_, "error_message": msg,
                             "inputs": _truncate(arg), "expected": _truncate(want)}
        finally:
            signal.alarm(0)
    return results, {}


def main():
    with _open("lcb_job.json", encoding="utf-8") as f:
        job = json.load(f)
    sys.set_int_max_str_digits(50000)  # LiveCodeBench's evaluator sets this before it runs anything
    signal.signal(signal.SIGALRM, _on_alarm)
    timeout = int(job["timeout"])
    try:
        if job["fn_name"] is None:
            results, meta = grade_stdio(job["code"], job["inputs"], job["outputs"], timeout)
        else:
            results, meta = grade_call_based(job["code"], job["inputs"], job["outputs"], job["fn_name"], timeout)
    except Exception as e:  # compile errors, a missing method, malformed test data: LiveCodeBench's [-4]
        results, meta = [-4], {"error_code": -4, "error_message": f"Error during testing: {e}"}
    finally:
        signal.alarm(0)
        sys.stdout, sys.stdin, builtins.open = _stdout, _stdin, _open
    with _open("lcb_results.json", "w", encoding="utf-8") as f:
        json.dump({"results": results, "metadata": meta}, f)


if __name__ == "__main__":
    main()

"""Answer extraction and mathematical equivalence for the math benchmarks.

``extract_answer(text)`` finds the final answer a model wrote; ``math_equal(prediction, reference)`` decides whether
two answers are the same mathematical object. Cheap string/number checks run in the calling process; everything that
touches sympy runs in a persistent pool of worker processes with a per-item deadline, and a worker that misses its
deadline is killed and replaced. So ``math_equal`` returns within about ``timeout`` seconds on any input, from any
thread (``signal.alarm`` only works on the main thread, which is why the reference's timeout breaks under threads).

Deviations from the reference grader (Qwen2.5-Math ``math_equal``), all on purpose:
- percentages: the reference accepts x, x/100 and x*100 for every numeric answer, which marks 50 and 0.5 equal. We
  scale by 100 only when one side carries a percent sign.
- bare comma lists ("1, -2") compare as multisets (solution sets); parenthesised ones as ordered tuples/intervals, where
  the bracket kinds must agree.
- numbers are equal within relative tolerance 1e-4 (as the reference), integers compare exactly.
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
from fractions import Fraction

from evals._latex import LatexError, check_safe, latex_to_sympy_str

REL_TOL = 1e-4
# The tolerance of the comparison in progress inside a worker (one request at a time per worker process).
_TOL = REL_TOL
DEFAULT_TIMEOUT_S = 3.0
_MAX_LEN = 2000

# ----------------------------------------------------------------------------------------------------------------
# extraction


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), or of ``\\boxed 5``; else None."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = idx + (len("\\boxed") if text.startswith("\\boxed", idx) else len("\\fbox"))
    if i < len(text) and text[i] == " ":
        # "\boxed 5": the token up to whitespace or $
        m = re.match(r" +([^\s$]+)", text[i:])
        return m.group(1) if m else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def all_boxed(text: str) -> list[str]:
    """Every ``\\boxed{...}`` content in order (for multi-answer physics items)."""
    out, pos = [], 0
    while True:
        idx = text.find("\\boxed{", pos)
        if idx < 0:
            return out
        depth, j = 0, idx + len("\\boxed")
        for j in range(idx + len("\\boxed"), len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    out.append(text[idx + len("\\boxed{"):j].strip())
                    break
        else:
            return out
        pos = j + 1


_MARKERS = [  # (regex, group) tried in order; the last occurrence in the text wins
    (re.compile(r"final answer is\s*\$([^$]+)\$\s*\.?\s*I hope", re.I), 1),
    (re.compile(r"final answer is\s*:?\s*\$([^$]+)\$", re.I), 1),
    (re.compile(r"the (?:final )?answer is\s*:?\s*\$([^$]+)\$", re.I), 1),
    (re.compile(r"the (?:final )?answer is\s*:?\s*\\\((.+?)\\\)", re.I), 1),
    (re.compile(r"the (?:final )?answer is\s*:?\s*([^\n]+)", re.I), 1),
    (re.compile(r"(?:^|\n)\s*(?:final )?answer\s*:\s*\n?\s*([^\n]+)", re.I), 1),
]


_STRICT_MARKER = re.compile(r"the answer is:|(?:^|\n)\s*(?:final )?answer\s*:", re.I)


def _clean_extracted(ans: str) -> str:
    ans = ans.strip()
    ans = re.sub(r"\s*I hope it is correct\.?$", "", ans)
    ans = ans.strip().rstrip(".").strip()
    if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
        ans = ans.strip("$").strip()
    if ans.startswith("\\(") and ans.endswith("\\)"):
        ans = ans[2:-2].strip()
    if ans.startswith("\\[") and ans.endswith("\\]"):
        ans = ans[2:-2].strip()
    return ans


def extract_answer(text: str | None) -> str | None:
    """The final answer in a model output: the last ``\\boxed{}``/``\\fbox{}``; failing that the reference's markers
    ("final answer is $...$. I hope it is correct", "The answer is: ...", "Answer: ..."). None when there is none."""
    if not text:
        return None
    box_pos = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    best, best_pos = None, -1
    for pat, grp in _MARKERS:
        for m in pat.finditer(text):
            if m.start() > best_pos or (m.start() == best_pos and best is None):
                best, best_pos = m.group(grp), m.start()
        if best is not None:
            break
    # whichever the model wrote last is its final word: "... \boxed{0} for part one. Answer: 1.6" means 1.6,
    # "The final answer is $\boxed{2}$" means 2
    # only the reference's strict markers ("the answer is:", a line starting "Answer:") override an earlier box;
    # looser phrases after a box are usually restatements or alternative solutions
    strict = [m.start() for m in _STRICT_MARKER.finditer(text)]
    late_marker = best is not None and strict and strict[-1] > box_pos and best_pos >= strict[-1]
    if box_pos >= 0 and (not late_marker or last_boxed(best) is not None):
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed if boxed.strip() else None
    if best is None:
        return None
    ans = _clean_extracted(best)
    inner = last_boxed(ans)
    return (inner if inner is not None else ans) or None


# ----------------------------------------------------------------------------------------------------------------
# normalisation (pure string work, safe in the calling process)

_UNIT_WORDS = ("degrees", "degree", "cm", "centimeters", "meters", "meter", "m", "km", "inches", "inch", "feet",
               "foot", "ft", "miles", "mile", "mph", "units", "unit", "sq", "square", "hours", "hour", "minutes",
               "minute", "seconds", "second", "days", "day", "weeks", "years", "dollars", "dollar", "cents", "cent",
               "points", "ways", "people", "students", "cubic", "pounds", "grams", "kg", "g", "s", "mm")


def _strip_text_units(s: str) -> str:
    # a trailing \text{...} / \mbox{...} / \mathrm{...} after a number is a unit ("5\text{ cm}", "10\mathrm{~m}")
    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"(?<=[0-9}])\s*\\(?:text|mbox|mathrm)\{\s*~?[A-Za-z][A-Za-z\s.^/{}0-9-]*\}\s*(?:\^\{?-?\d+\}?)?\s*$",
                   "", s).strip()
    return s


def normalize(ans: str, strip_lhs: bool = True) -> str:
    """Canonical string form used for exact comparison and as input to the parser. ``strip_lhs`` drops a leading
    "x =" of a single variable (off when the other answer is itself an equation)."""
    s = str(ans).strip()
    # "11,\\! 111" is a thousands separator in MATH's style
    s = re.sub(r",\\!\s*", ",", s)
    s = s.replace("\n", " ").replace("\\!", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = re.sub(r"\\(?:,|;|:|quad|qquad)", " ", s).replace("~", " ")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\circ", "", s)
    s = _strip_text_units(s)
    m = re.fullmatch(r"\\(?:text|textbf|mathbf|mathrm|mbox)\{(.*)\}", s.strip())
    if m and "{" not in m.group(1):
        s = m.group(1).strip()
    # AIME-style "(023)": a parenthesised lone integer is that integer
    m = re.fullmatch(r"\(\s*(\d+)\s*\)", s)
    if m:
        s = m.group(1)
    # leading "x =" / "k=" of a single variable
    m = re.fullmatch(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*=\s*([^=<>]+)", s) if strip_lhs else None
    if m:
        s = m.group(1)
    s = re.sub(r"^\s*[A-Za-z]\s*\\in\s*", "", s)
    # a base subscript on a numeral ("204_5") names the digits, which is what the references keep
    s = re.sub(r"^(\d+)_\{?\d+\}?$", r"\1", s.strip())
    s = re.sub(r"\s+", " ", s).strip()
    # well-formed thousands separators: 1,000,000 and 1{,}000 -> 1000000
    s = s.replace("{,}", ",")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = s.rstrip(".").strip()
    if s.startswith("."):
        s = "0" + s
    return s


def _has_percent(s: str) -> bool:
    return "%" in s


def _plain_number(s: str) -> Fraction | float | None:
    """Parse a plain decimal, integer, a/b fraction or scientific-notation number without sympy."""
    t = s.replace("\\%", "").replace("%", "").replace(" ", "")
    if len(t) > 400:
        return None  # no real answer is that long; int() would refuse it anyway
    t = re.sub(r"^\\frac\{(-?\d+)\}\{(\d+)\}$", r"\1/\2", t)
    t = re.sub(r"^-\\frac\{(\d+)\}\{(\d+)\}$", r"-\1/\2", t)
    t = re.sub(r"^\\frac(\d)(\d)$", r"\1/\2", t)
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)(?:\\times|\*|\\cdot)10\^\{?(-?\d+)\}?", t)
    if m:
        return float(m.group(1)) * 10.0 ** int(m.group(2))
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", t):
        if re.fullmatch(r"[+-]?\d+", t):
            return Fraction(int(t))
        try:
            return Fraction(t) if "e" not in t.lower() else float(t)
        except (ValueError, ZeroDivisionError):
            return None
    m = re.fullmatch(r"(-?\d+)/(\d+)", t)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    return None


def numbers_close(a: float | Fraction, b: float | Fraction, rel_tol: float = REL_TOL) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        if a.denominator == 1 and b.denominator == 1 and rel_tol <= REL_TOL:
            return a == b  # math answers: integers are exact (AIME 204 vs 204.01 must fail)
        if a == b:
            return True
    fa, fb = float(a), float(b)
    if math.isnan(fa) or math.isnan(fb):
        return False
    return math.isclose(fa, fb, rel_tol=rel_tol, abs_tol=1e-12)


def _numeric_equal(p: str, r: str, rel_tol: float = REL_TOL) -> bool | None:
    """True/False when both sides are plain numbers, None when the question needs the parser."""
    pn, rn = _plain_number(p), _plain_number(r)
    if pn is None or rn is None:
        return None
    if numbers_close(pn, rn, rel_tol):
        return True
    # a percent on one side: 50\% == 0.5
    if _has_percent(p) != _has_percent(r):
        scale = Fraction(100)
        if _has_percent(p):
            return numbers_close(Fraction(pn) / scale if isinstance(pn, Fraction) else pn / 100, rn, rel_tol)
        return numbers_close(pn, Fraction(rn) / scale if isinstance(rn, Fraction) else rn / 100, rel_tol)
    return False


def _normalize_pair(prediction: str, reference: str) -> tuple[str, str]:
    # "y = 2x+1" against "2x - y + 1 = 0" must keep both left-hand sides
    eq_p, eq_r = "=" in prediction, "=" in reference
    return normalize(prediction, strip_lhs=not eq_r), normalize(reference, strip_lhs=not eq_p)


def quick_equal(prediction: str | None, reference: str | None, rel_tol: float | None = None) -> bool | None:
    """Checks that cannot hang (string and plain-number comparison). None means undecided."""
    rel_tol = _TOL if rel_tol is None else rel_tol
    if prediction is None or reference is None:
        return False
    p, r = _normalize_pair(prediction, reference)
    if not p:
        return False
    if p == r or p.replace(" ", "") == r.replace(" ", ""):
        return True
    num = _numeric_equal(p, r, rel_tol)
    if num is not None:
        return num
    if len(p) > _MAX_LEN or len(r) > _MAX_LEN:
        return False
    return None


# ----------------------------------------------------------------------------------------------------------------
# structural and symbolic comparison (runs inside a worker process)

def _split_top(s: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur).strip())
    return parts


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _matrix_rows(s: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}", s.strip(), re.S)
    if not m:
        return None
    rows = [r.strip() for r in re.split(r"\\\\", m.group(2)) if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]


def _sympy_parse(s: str):
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        factorial_notation,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    expr = latex_to_sympy_str(s)
    check_safe(expr)
    if any(op in expr for op in ("<", ">", "!=")) or expr.count("=") > 0:
        raise LatexError("relation, not an expression")
    names = {n: getattr(sympy, n) for n in ("sqrt", "pi", "E", "oo", "log", "exp", "sin", "cos", "tan", "cot", "sec",
                                            "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh", "Abs", "binomial",
                                            "I", "factorial", "Integer", "Float", "Rational", "Symbol")}
    names.update({"ln": sympy.log, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
                  "__builtins__": {}})
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor,
                                                  factorial_notation)
    return parse_expr(expr, local_dict={}, global_dict=names, transformations=transformations, evaluate=True)


def _expr_equal(a, b) -> bool:
    import sympy

    if a == b:
        return True
    try:
        if a.is_number and b.is_number:
            va, vb = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
            if abs(va.imag) < 1e-12 and abs(vb.imag) < 1e-12:
                return math.isclose(va.real, vb.real, rel_tol=_TOL, abs_tol=1e-12)
            return abs(va - vb) <= _TOL * max(abs(va), abs(vb), 1e-12)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        pass
    try:
        if sympy.simplify(a - b) == 0:
            return True
    except Exception:  # sympy raises many types on odd input
        pass
    # symbolic but simplify could not close it: compare at random rational points
    syms = sorted(a.free_symbols | b.free_symbols, key=str)
    if not syms:
        return False
    import random

    rng = random.Random(0)
    agree = 0
    for _ in range(6):
        sub = {s: sympy.Rational(rng.randint(1, 97), rng.randint(1, 13)) for s in syms}
        try:
            va, vb = complex(sympy.N(a.subs(sub))), complex(sympy.N(b.subs(sub)))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        if not (math.isfinite(abs(va)) and math.isfinite(abs(vb))):
            continue
        if abs(va - vb) > _TOL * max(abs(va), abs(vb), 1e-9):
            return False
        agree += 1
    return agree >= 3


def _scalar_equal(p: str, r: str) -> bool:
    q = quick_equal(p, r)
    if q is not None:
        return q
    p, r = _normalize_pair(p, r)
    # equations: a=b vs c=d -> a-b proportional to c-d (same solution set for linear/polynomial forms)
    if p.count("=") == 1 and r.count("=") == 1:
        return _equation_equal(p, r)
    if p.count("=") == 1 and r.count("=") == 0:
        # "y = 2x" vs "2x": compare the right-hand side
        p = p.split("=")[1]
    if r.count("=") == 1 and p.count("=") == 0:
        r = r.split("=")[1]
    try:
        a, b = _sympy_parse(p), _sympy_parse(r)
    except Exception:  # unparsable: only the string checks above can make it equal
        return False
    return _expr_equal(a, b)


def _equation_equal(p: str, r: str) -> bool:
    import sympy

    try:
        pl, pr = p.split("=")
        rl, rr = r.split("=")
        if normalize(pl).replace(" ", "") == normalize(rl).replace(" ", "") and _scalar_equal(pr, rr):
            return True
        dp = _sympy_parse(pl) - _sympy_parse(pr)
        dr = _sympy_parse(rl) - _sympy_parse(rr)
    except Exception:
        return False
    if _expr_equal(dp, dr) or _expr_equal(dp, -dr):
        return True
    try:
        ratio = sympy.simplify(dp / dr)
        return bool(ratio.is_number and ratio != 0)
    except Exception:
        return False


def _interval_or_tuple(s: str):
    """('(', [parts], ']') for a bracketed list, None otherwise."""
    s = s.strip()
    if s.startswith("\\{") and s.endswith("\\}"):
        return "{", _split_top(s[2:-2]), "}"
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1]):
        return s[0], _split_top(s[1:-1]), s[-1]
    return None


def _lists_equal(ps: list[str], rs: list[str], ordered: bool) -> bool:
    if len(ps) != len(rs):
        return False
    if ordered:
        return all(_math_equal_impl(a, b) for a, b in zip(ps, rs))
    remaining = list(rs)
    for a in ps:
        for k, b in enumerate(remaining):
            if _math_equal_impl(a, b):
                del remaining[k]
                break
        else:
            return False
    return True


def _math_equal_impl(prediction: str, reference: str) -> bool:
    """The full comparison; may call sympy, so only run it under a deadline (``math_equal`` does)."""
    q = quick_equal(prediction, reference)
    if q is not None:
        return q
    p, r = _normalize_pair(prediction, reference)
    # matrices
    pm, rm = _matrix_rows(p), _matrix_rows(r)
    if pm is not None or rm is not None:
        if pm is None or rm is None or len(pm) != len(rm) or any(len(x) != len(y) for x, y in zip(pm, rm)):
            return False
        return all(_scalar_equal(a, b) for x, y in zip(pm, rm) for a, b in zip(x, y))
    # unions of intervals
    if "\\cup" in p or "\\cup" in r:
        pu, ru = [x.strip() for x in p.split("\\cup")], [x.strip() for x in r.split("\\cup")]
        return _lists_equal(pu, ru, ordered=False)
    pt, rt = _interval_or_tuple(p), _interval_or_tuple(r)
    if pt is not None and rt is not None and (len(pt[1]) > 1 or len(rt[1]) > 1):
        if pt[0] == "{" or rt[0] == "{":
            return pt[0] == rt[0] and _lists_equal(pt[1], rt[1], ordered=False)
        if (pt[0], pt[2]) != (rt[0], rt[2]):
            return False
        return _lists_equal(pt[1], rt[1], ordered=True)
    if (pt is not None and len(pt[1]) > 1) != (rt is not None and len(rt[1]) > 1):
        # a bracketed tuple against a bare list: compare in order ("(1,2)" vs "1, 2")
        pp = pt[1] if pt is not None and len(pt[1]) > 1 else _split_top(p)
        rr = rt[1] if rt is not None and len(rt[1]) > 1 else _split_top(r)
        return len(pp) > 1 and _lists_equal(pp, rr, ordered=True)
    pl, rl = _split_top(p), _split_top(r)
    if len(pl) > 1 or len(rl) > 1:
        return _lists_equal(pl, rl, ordered=False)
    return _scalar_equal(p, r)


# ----------------------------------------------------------------------------------------------------------------
# the worker pool: plain subprocesses speaking JSON lines. Not multiprocessing: its spawn/forkserver modes re-import
# the caller's __main__ (breaking scripts without a main guard), and fork is unsafe once torch/vLLM threads run.


def _worker_loop() -> None:
    """Body of ``python -m evals.grading --worker``: one JSON request per line in, one JSON bool per line out."""
    import json
    import sys

    try:
        import resource

        limit = int(os.environ.get("EVALS_GRADING_MEM_MB", "3072")) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    import sympy  # noqa: F401  (import before the first deadline starts)

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    global _TOL
    for line in sys.stdin:
        try:
            pred, ref, _TOL = json.loads(line)
            out = bool(_math_equal_impl(pred, ref))
        except (Exception, RecursionError, MemoryError):
            out = False
        sys.stdout.write("1\n" if out else "0\n")
        sys.stdout.flush()


class _Worker:
    def __init__(self):
        import subprocess
        import sys

        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "evals.grading", "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0)
        self.ready = False

    def _readline(self, timeout: float) -> str | None:
        import select

        fd = self.proc.stdout
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return None
        line = fd.readline()
        return line.decode().strip() if line else None

    def wait_ready(self, timeout: float = 120.0) -> bool:
        if not self.ready:
            self.ready = self._readline(timeout) == "ready"
        return self.ready

    def ask(self, prediction: str, reference: str, timeout: float, rel_tol: float) -> bool | None:
        import json

        self.proc.stdin.write((json.dumps([prediction, reference, rel_tol]) + "\n").encode())
        self.proc.stdin.flush()
        line = self._readline(timeout)
        return None if line is None or line not in ("0", "1") else line == "1"

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class GradingPool:
    """Worker processes for the sympy part of ``math_equal``; each call borrows one, and a worker that misses its
    deadline (or dies) is killed and replaced, so one pathological answer costs at most ``timeout`` seconds."""

    def __init__(self, workers: int = 1):
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        for _ in range(max(1, workers)):
            self._spawn()

    def _spawn(self) -> None:
        w = _Worker()
        with self._lock:
            self._all.append(w)
        self._idle.put(w)

    def equal(self, prediction: str, reference: str, timeout: float, rel_tol: float = REL_TOL) -> bool:
        w = self._idle.get()
        try:
            if not w.wait_ready():
                raise OSError("math grading worker did not start")
            out = w.ask(prediction, reference, timeout, rel_tol)
        except (OSError, ValueError):
            out = None
        if out is None:
            self._replace(w)
            return False
        self._idle.put(w)
        return out

    def _replace(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            if w in self._all:
                self._all.remove(w)
        self._spawn()

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.kill()


_POOL: GradingPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> GradingPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = GradingPool(workers=int(os.environ.get("EVALS_GRADING_WORKERS", "1")))
            import atexit

            atexit.register(shutdown_pool)
        return _POOL


def shutdown_pool() -> None:
    """Stop the grading workers."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


def math_equal(prediction: str | None, reference: str | None, timeout: float = DEFAULT_TIMEOUT_S,
               rel_tol: float = REL_TOL) -> bool:
    """Whether two final answers denote the same mathematical object (see module docstring). Never raises on
    malformed input and returns within about ``timeout`` seconds; a timeout counts as not equal. ``rel_tol`` is the
    relative tolerance for numbers (1e-4 as the reference; UGPhysics uses 1e-2)."""
    if prediction is None or reference is None:
        return False
    if not (rel_tol >= 0 and math.isfinite(rel_tol)):
        raise ValueError(f"rel_tol must be a finite number >= 0, got {rel_tol!r}")
    prediction, reference = str(prediction), str(reference)
    q = quick_equal(prediction, reference, rel_tol)
    if q is not None:
        return q
    return _pool().equal(prediction, reference, timeout, rel_tol)


def grade_math(output: str, reference: str, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str | None]:
    """Extract the answer from a model output and compare it with the reference answer: (correct, extracted)."""
    pred = extract_answer(output)
    return (pred is not None and math_equal(pred, reference, timeout=timeout)), pred


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--worker"]:
        _worker_loop()

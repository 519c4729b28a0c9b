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

What it reads beyond the reference, as math-verify (Hugging Face's grader; ``evals.mathverify``) does, measured on
math-verify's own test pairs (tests/evals/test_math_verify_pairs.py, evals/AGREEMENT.md):
- boxes joined by a short connective are one answer ("\\boxed{1}, \\boxed{2}"); a "Final Answer:" anywhere after a
  box overrides it; without box or marker, the last math span or number of the text is the answer;
- relations: "5 \\geq x" = "x \\leq 5", "-x > -1" = "x < 1", and an inequality in one unknown equals its interval;
- "a \\pm b" is the set {a+b, a-b}; "and"/"or"/";" separate list items; bare solution lists are sets (a tuple
  written twice counts once); percent words, bare unit words, mixed numbers, repeating decimals, "\\mathbb{R}".
- an equation equals a bare value only when its left side is a name ("x", "f(x)", "(p,q)", "AB") or the whole
  equation is a computation ("180 + 24 = 204"): "1" is not "2x+z=1".
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
from fractions import Fraction

from evals._latex import LatexError, check_safe, latex_to_sympy_str, matching_brace

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
    j = matching_brace(text, i)
    return None if j is None else text[i + 1:j].strip()


def all_boxed(text: str) -> list[str]:
    """Every ``\\boxed{...}`` content in order (for multi-answer physics items)."""
    out, pos = [], 0
    while True:
        idx = text.find("\\boxed{", pos)
        if idx < 0:
            return out
        j = matching_brace(text, idx + len("\\boxed"))
        if j is None:
            return out
        out.append(text[idx + len("\\boxed{"):j].strip())
        pos = j + 1


_MARKERS = [  # (regex, group) tried in order; the last occurrence in the text wins
    (re.compile(r"final answer is\s*\$([^$]+)\$\s*\.?\s*I hope", re.I), 1),
    (re.compile(r"final answer is\s*:?\s*\$([^$]+)\$", re.I), 1),
    (re.compile(r"the (?:final )?answer is\s*:?\s*\$([^$]+)\$", re.I), 1),
    (re.compile(r"the (?:final )?answer is\s*:?\s*\\\((.+?)\\\)", re.I), 1),
    (re.compile(r"the (?:final )?answer is\s*:?\s*([^\n]+)", re.I), 1),
    (re.compile(r"(?:^|\n)\s*(?:final )?answer\s*:\s*\n?\s*([^\n]+)", re.I), 1),
    (re.compile(r"final answer\s*:\s*([^\n]+)", re.I), 1),
]

# "the answer is:", a line starting "Answer:", and "Final Answer:" anywhere (Qwen's "Final Answer: The final answer
# is $X$. I hope it is correct." often follows a box of an intermediate result on the same line)
_STRICT_MARKER = re.compile(r"the answer is:|final answer\s*:|(?:^|\n)\s*answer\s*:", re.I)


def _clean_extracted(ans: str) -> str:
    ans = ans.strip()
    ans = re.sub(r"\s*I hope it is correct\.?$", "", ans)
    ans = ans.strip().rstrip(".").strip()
    # 'The final answer is "$12$ and $13$".'
    ans = re.sub(r'^\\?"(.*?)\\?"$', r"\1", ans).strip()
    if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
        ans = ans.strip("$").strip()
    if ans.startswith("\\(") and ans.endswith("\\)"):
        ans = ans[2:-2].strip()
    if ans.startswith("\\[") and ans.endswith("\\]"):
        ans = ans[2:-2].strip()
    return ans


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Every top-level ``\\boxed{...}`` / ``\\fbox{...}`` as (start, end, content), in order; a box nested in another
    is part of the outer one's content."""
    out, pos = [], 0
    pat = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
    while True:
        m = pat.search(text, pos)
        if not m:
            return out
        i = m.end()
        if i < len(text) and text[i] == " " and m.group(0) == "\\boxed":
            t = re.match(r" +([^\s$]+)", text[i:])
            if t:
                out.append((m.start(), i + t.end(), t.group(1)))
                pos = i + t.end()
                continue
        if i >= len(text) or text[i] != "{":
            pos = i
            continue
        end = matching_brace(text, i)
        if end is None:
            return out
        out.append((m.start(), end + 1, text[i + 1:end].strip()))
        pos = end + 1


# What may stand between two boxes that together state one answer: "\boxed{1}, \boxed{2}", "\boxed{-2} \quad
# \text{and} \quad \boxed{1}", "\(y_1 = \boxed{..}\) and \(y_2 = \boxed{..}\)". Longer text, a paragraph break or a
# new sentence means the earlier box was an intermediate result.
_BOX_GAP_MAX = 40
_BOX_GAP_WORDS = 4  # "papers and", "for part (a) and" join; "no no no no no" does not (math-verify's own tests)
# words saying the earlier box was replaced, not continued ("\boxed{1/2} and later \boxed{3}")
_REVISION_WORDS = {"later", "then", "but", "actually", "wait", "instead", "so", "thus", "therefore", "hence", "not", "no",
                   "correct", "corrected", "final"}
_SENTENCE_BREAK = re.compile(r"\n\s*\n|[.!?]\s+[A-Z]")


def boxed_answer(text: str) -> str | None:
    """The boxed final answer: the last box, together with the boxes just before it when only a short connective
    separates them (joined with ", ", identical repeats once). None when the last box is missing or broken."""
    last = last_boxed(text)
    if last is None:
        return None
    boxes = _boxes(text)
    if not boxes or boxes[-1][2] != last:
        return last  # the last box is nested inside another, or broken: keep the plain rule
    group = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        gap = text[prev[1]:group[0][0]]
        words = re.findall(r"(?<![\\A-Za-z])[A-Za-z]+", gap)
        if len(gap) > _BOX_GAP_MAX or len(words) > _BOX_GAP_WORDS or _SENTENCE_BREAK.search(gap) \
                or any(w.lower() in _REVISION_WORDS for w in words):
            break
        group.insert(0, prev)
    parts = []
    for _, _, c in group:
        if c and c not in parts:
            parts.append(c)
    return ", ".join(parts) if parts else last


# Math spans a model writes in prose: $...$ and \(...\) stay on one line (an inline formula cut by a line break is not
# an answer, as in math-verify), $$...$$ and \[...\] may span lines.
# (an escaped dollar, "\$", is text inside a span, not its end)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|(?<!\\)\$((?:\\\$|[^$\n])+?)(?<!\\)\$|\\\(([^\n]+?)\\\)", re.S)
_ANY_DOLLAR_REGION = re.compile(r"\$\$.*?\$\$|(?<!\\)\$(?:\\\$|[^$])*(?<!\\)\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.^])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?(?:/\d+)?|\.\d+)"
                     r"(?:\s*(?:\\?%|percent(?:age)?\b|pct\b))?(?![0-9])")
_SPAN_JOIN = re.compile(r"\s*(?:,|;|\band\b|\bor\b|\\quad|\\text\{\s*(?:and|or)\s*\})?\s*", re.I)


def _prose_words(text: str) -> int:
    t = _ANY_DOLLAR_REGION.sub(" ", text)
    t = re.sub(r"\\(?:begin|end)\{[^}]*\}", " ", t)
    t = re.sub(r"\\[A-Za-z]+", " ", t)
    return len(re.findall(r"[A-Za-z]{3,}", t))


def _last_in_prose(text: str) -> str | None:
    """The answer of a text with no box and no marker, as math-verify reads it: whichever ends last of the last math
    span (with the spans just before it that only a connective separates: "$1$ and $2$") and the last plain number
    outside any math span."""
    spans = [(m.start(), m.end(), next(g for g in m.groups() if g is not None).strip()) for m in _MATH_SPAN.finditer(text)]
    spans = [sp for sp in spans if sp[2]]
    span_ans, span_end = None, -1
    if spans:
        group = [spans[-1]]
        for prev in reversed(spans[:-1]):
            if not _SPAN_JOIN.fullmatch(text[prev[1]:group[0][0]]):
                break
            group.insert(0, prev)
        span_ans, span_end = ", ".join(sp[2] for sp in group), spans[-1][1]
    # numbers written inside any $...$ region (even one cut by a line break) are not prose numbers
    masked = _ANY_DOLLAR_REGION.sub(lambda m: " " * len(m.group(0)), text)
    nums = list(_NUMBER.finditer(masked))
    if nums and nums[-1].end() > span_end:
        return nums[-1].group(0).strip()
    return span_ans


def extract_answer(text: str | None) -> str | None:
    """The final answer in a model output: the last ``\\boxed{}``/``\\fbox{}`` (with the boxes just before it that a
    connective joins: ``\\boxed{1}, \\boxed{2}``); failing that the reference's markers ("final answer is $...$. I
    hope it is correct", "The answer is: ...", "Answer: ..."); failing that, the last math span or number of the text,
    as math-verify reads prose ("Therefore $x \\geq 5$"). A short line with no math in it is itself the answer
    ("28 percent"). None when there is none."""
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
        boxed = boxed_answer(text)
        if boxed is not None:
            return boxed if boxed.strip() else None
    if best is not None:
        ans = _clean_extracted(best)
        inner = boxed_answer(ans)
        if inner is not None:
            return inner or None
        if _prose_words(ans) < 2:
            return ans or None
        # "Final Answer: The largest $n$ is 34." -> 34
        return _last_in_prose(re.sub(r"\s*I hope it is correct.*$", "", ans, flags=re.S)) or ans or None
    if box_pos >= 0:
        return None  # the last box is empty or cut off: the model's final answer is unreadable
    line = text.strip().rstrip(".").strip()
    if "\n" not in line and len(line) <= 40 and "$" not in line and not _MATH_SPAN.search(line) \
            and _prose_words(line) <= 1:
        return line or None
    return _last_in_prose(text)


# ----------------------------------------------------------------------------------------------------------------
# normalisation (pure string work, safe in the calling process)

_UNIT_WORDS = ("degrees", "degree", "cm", "centimeters", "meters", "meter", "m", "km", "inches", "inch", "feet",
               "foot", "ft", "miles", "mile", "mph", "units", "unit", "sq", "square", "hours", "hour", "minutes",
               "minute", "seconds", "second", "days", "day", "weeks", "years", "dollars", "dollar", "cents", "cent",
               "points", "ways", "people", "students", "cubic", "pounds", "grams", "kg", "g", "s", "mm")


_UNIT_RE = "|".join(sorted((re.escape(u) for u in _UNIT_WORDS), key=len, reverse=True))


def _strip_text_units(s: str) -> str:
    # a trailing \text{...} / \mbox{...} / \mathrm{...} after a number is a unit ("5\text{ cm}", "10\mathrm{~m}"), and
    # so is a bare unit word ("35 cm", "125 miles")
    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"(?<=[0-9}])\s*\\(?:text|textnormal|textbf|textit|mbox|mathrm)\{\s*~?[A-Za-z][A-Za-z\s.^/{}0-9-]*\}"
                   r"\s*(?:\^\{?-?\d+\}?)?\s*$", "", s).strip()
        s = re.sub(r"(?<=[0-9])\s*(?:" + _UNIT_RE + r")\s*(?:\^\{?\d\}?|²|³)?$", "", s).strip()
    return s


# A name that a final answer may be assigned to: "x", "a_{37}", "AB", "f(x)", "(p,q)", "S_{MBCN}:S", "\alpha". An
# equation whose left side is such a name states a value; any other equation ("2x+z=1") is not a value, so a bare
# number never matches it by its right-hand side alone.
_NAME = r"(?:[A-Za-z]|[A-Z]{2,3}|\\(?!pi\b|infty\b)[A-Za-z]+)(?:_\{?[A-Za-z0-9,]+\}?)?'*"
_LHS_NAME = re.compile(rf"\s*(?:{_NAME}(?:\(\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\))?|\(\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\)"
                       rf"|{_NAME}(?:\s*:\s*{_NAME})+|\|{_NAME}\||\\frac\{{{_NAME}\}}\{{{_NAME}\}})\s*")
_RELATIONS = "<>≤≥≠"


def _is_arithmetic(s: str) -> bool:
    """Numbers and operators only ("180 + 24", "\\frac{3}{4}\\cdot 2"): no unknowns."""
    t = re.sub(r"\\(?:frac|dfrac|tfrac|sqrt|cdot|times|div|pi)(?![A-Za-z])", " ", s)
    return bool(re.search(r"\d", t)) and re.fullmatch(r"[\d\s.+\-*/^(){}\[\],]*", t) is not None


def _is_name(s: str) -> bool:
    return bool(_LHS_NAME.fullmatch(s))


def _relation_symbols(s: str) -> str:
    """LaTeX and ASCII relations -> one character each (so that "=" only ever means equality)."""
    s = re.sub(r"\\(?:leqslant|leq|le)(?![A-Za-z])|<=|≤|⩽", "≤", s)
    s = re.sub(r"\\(?:geqslant|geq|ge)(?![A-Za-z])|>=|≥|⩾", "≥", s)
    s = re.sub(r"\\(?:neq|ne)(?![A-Za-z])|(?<![\d!])!=|≠", "≠", s)
    s = re.sub(r"\\lt(?![A-Za-z])", "<", s)
    s = re.sub(r"\\gt(?![A-Za-z])", ">", s)
    return s


def normalize(ans: str, strip_lhs: bool = True) -> str:
    """Canonical string form used for exact comparison and as input to the parser. ``strip_lhs`` drops a leading
    "x =" of a name (off when the other answer is itself an equation)."""
    s = str(ans).strip()
    if "\\begin" not in s:
        # "\\frac" written with a doubled backslash (an escaped string pasted twice); matrices use \\ as row break
        s = re.sub(r"\\\\(?=[A-Za-z])", r"\\", s)
    # "11,\\! 111" is a thousands separator in MATH's style
    s = re.sub(r",\\!\s*", ",", s)
    s = s.replace("\n", " ").replace("\\!", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\cfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = re.sub(r"(?<!\\)\\(?:,|;|:|quad|qquad|\s)", " ", s).replace("~", " ")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\circ", "", s)
    s = re.sub(r"\s*\{\s*,\s*\}\s*", "{,}", s)
    s = re.sub(r"\\mathbb\s*\{?R\}?", r"(-\\infty,\\infty)", s)
    s = s.replace("\\varnothing", "\\emptyset").replace("\\{\\}", "\\emptyset")
    s = _relation_symbols(s)
    # "x \approx 11" states 11; "x = 1/3 \approx 0.33" states 1/3
    if "=" in s:
        s = re.sub(r"\s*\\approx.*$", "", s)
    s = re.sub(r"^\s*\\approx\s*", "", s).replace("\\approx", "=")
    # words joining the items of a list: "1\text{ and }2", "19, 46, and 82", "(11,7)or(7,11)", "-12;-11"
    s = re.sub(r"\s*,?\s*\\text(?:normal)?\{\s*(?:and|or)\s*\}\s*", ", ", s)
    s = re.sub(r"(?<=\S)\s*,?\s+(?:and|or)\s+(?=\S)", ", ", s)
    s = re.sub(r"(?<=[)\]\d])\s*or\s*(?=[(\[A-Za-z-])", ", ", s)
    s = s.replace(";", ",")
    # "28 percent", "28 pct" -> 28\%
    s = re.sub(r"(?<=\d)\s*(?:percent(?:age)?|pct)\b", r"\\%", s)
    s = _strip_text_units(s)
    m = re.fullmatch(r"\\(?:text|textbf|mathbf|mathrm|mbox|textnormal)\{(.*)\}", s.strip())
    if m and "{" not in m.group(1):
        s = m.group(1).strip()
    s = s.strip()
    # "{1,3}": LaTeX grouping braces around a whole answer carry nothing
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}" and _balanced(s[1:-1]):
        s = s[1:-1].strip()
    # "[\begin{array}..\end{array}]", "(\begin{pmatrix}..\end{pmatrix})": the brackets of a matrix
    m = re.fullmatch(r"[\[(]\s*(\\begin\{(\w+)\}.*\\end\{\2\})\s*[\])]", s, re.S)
    if m:
        s = m.group(1)
    # AIME-style "(023)": a parenthesised lone integer is that integer
    m = re.fullmatch(r"\(\s*(\d+)\s*\)", s)
    if m:
        s = m.group(1)
    # "x = 5+5+1 = 7 = 11": a chain of equalities from a name states its last value
    if s.count("=") >= 2 and not any(c in s for c in _RELATIONS) and len(_split_top(s)) == 1:
        parts = s.split("=")
        if _is_name(parts[0]):
            s = parts[0].strip() + " = " + parts[-1].strip()
    # "180 + 24 = 204", "\frac{1}{2} = 0.5": a computation written out states its last value
    if strip_lhs and "=" in s and not any(c in s for c in _RELATIONS) and len(_split_top(s)) == 1:
        parts = s.split("=")
        if all(_is_arithmetic(x) for x in parts):
            s = parts[-1].strip()
    # leading "x =", "f(x) =", "(p,q) =" of a name
    if strip_lhs and s.count("=") == 1 and not any(c in s for c in _RELATIONS):
        lhs, rhs = s.split("=")
        if _is_name(lhs) and rhs.strip():
            s = rhs
    s = re.sub(r"^\s*[A-Za-z]\s*\\in\s*", "", s)
    # a base subscript on a numeral ("204_5") names the digits, which is what the references keep
    s = re.sub(r"^(\d+)_\{?\d+\}?$", r"\1", s.strip())
    s = re.sub(r"\s+", " ", s).strip()
    # well-formed thousands separators: 1,000,000 and 1{,}000 -> 1000000 (not "0,111", a decimal comma)
    s = s.replace("{,}", ",")
    if re.fullmatch(r"-?(?!0,)\d{1,3}(,\d{3})+(\.\d+)?", s):
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
    # mixed number "2\frac12" = 2 + 1/2 and repeating decimal "2.\overline{3}" = 7/3
    m = re.fullmatch(r"(-?)(\d+)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))", t)
    if m and int(m.group(5) or m.group(6)) != 0:
        v = int(m.group(2)) + Fraction(int(m.group(3) or m.group(4)), int(m.group(5) or m.group(6)))
        return -v if m.group(1) else v
    m = re.fullmatch(r"(-?)(\d+)\.(\d*)\\overline\{(\d+)\}", t)
    if m:
        head, rep = m.group(3), m.group(4)
        v = int(m.group(2)) + (Fraction(int(head or "0")) + Fraction(int(rep), 10 ** len(rep) - 1)) / 10 ** len(head)
        return -v if m.group(1) else v
    t = re.sub(r"^\\frac\{(-?\d+)\}\{(\d+)\}$", r"\1/\2", t)
    t = re.sub(r"^-\\frac\{(\d+)\}\{(\d+)\}$", r"-\1/\2", t)
    t = re.sub(r"^(-?)\\frac(\d)(\d)$", r"\1\2/\3", t)
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


def _decimal_comma(x: str, other: str) -> str:
    """"1000,99" is 1000.99 when the other answer is a decimal (continental notation). Not "1,000" (thousands) and not
    "1,2", which is far more often a list of two answers than 1.2."""
    m = re.fullmatch(r"(-?\d+),(\d{2,})", x)
    if m and (len(m.group(2)) != 3 or m.group(1) in ("0", "-0")) and re.fullmatch(r"-?\d*\.\d+", other):
        return x.replace(",", ".")
    return x


def _normalize_pair(prediction: str, reference: str) -> tuple[str, str]:
    # "y = 2x+1" against "2x - y + 1 = 0" must keep both left-hand sides
    eq_p, eq_r = "=" in prediction, "=" in reference
    return normalize(prediction, strip_lhs=not eq_r), normalize(reference, strip_lhs=not eq_p)


def quick_equal(prediction: str | None, reference: str | None, rel_tol: float | None = None) -> bool | None:
    """Checks that cannot hang (string and plain-number comparison). None means undecided."""
    rel_tol = _TOL if rel_tol is None else rel_tol
    if prediction is None or reference is None:
        return False
    if prediction.strip() and prediction.strip() == reference.strip():
        return True  # the common case, before the ~20 rewrites of normalize
    p, r = _normalize_pair(prediction, reference)
    if not p:
        return False
    if p == r or p.replace(" ", "") == r.replace(" ", ""):
        return True
    p, r = _decimal_comma(p, r), _decimal_comma(r, p)
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
    if "=" in p or "=" in r:
        # normalize already reduced "y = 2x" to "2x"; an equation left here ("2x+z=1") is not a value, and only
        # comparing its right-hand side would accept "1" for it
        return False
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


def _dedupe(xs: list[str]) -> list[str]:
    """Drop items equal to an earlier one by the cheap checks ("(3,17,3,7)" twice, "15\\frac{39}{40}" and
    "\\frac{639}{40}")."""
    out = []
    for x in xs:
        if not any(quick_equal(x, y) for y in out):
            out.append(x)
    return out


def _lists_equal(ps: list[str], rs: list[str], ordered: bool) -> bool:
    if not ordered:
        # solution sets: a tuple written twice is one solution
        ps, rs = _dedupe(ps), _dedupe(rs)
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


def _expand_pm(s: str) -> list[str] | None:
    """Items of a list with each "a \\pm b" written out as a+b and a-b; None when an item has several."""
    t = s.strip()
    if t.startswith("\\{") and t.endswith("\\}"):
        t = t[2:-2]
    out = []
    for item in _split_top(t):
        n = item.count("\\pm") + item.count("\\mp")
        if n > 1:
            return None
        if n == 0:
            out.append(item)
            continue
        k = item.find("\\pm") if "\\pm" in item else item.find("\\mp")
        head, tail = item[:k].strip(), item[k + 3:].strip()
        out += [f"{head}+({tail})" if head else tail, f"{head}-({tail})" if head else f"-({tail})"]
    return out


def _relation(s: str) -> tuple[list[str], list[str]] | None:
    """("a < x <= b" ->) (["a", "x", "b"], ["<", "≤"]) for a chain of inequalities at top level, else None."""
    if not any(c in s for c in _RELATIONS):
        return None
    parts, ops, depth, cur = [], [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if depth == 0 and ch in _RELATIONS + "=":
            parts.append("".join(cur).strip())
            ops.append(ch)
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    if not ops or any(not x for x in parts):
        return None
    return parts, ops


def _is_number_str(s: str) -> bool:
    if _plain_number(s) is not None or s.strip() in ("\\infty", "-\\infty", "+\\infty"):
        return True
    try:
        return bool(_sympy_parse(s).is_number)
    except Exception:  # unparsable: not a number
        return False


def _relation_interval(rel: tuple[list[str], list[str]]) -> str | None:
    """The interval an inequality in one unknown describes: "x > 3" -> "(3,\\infty)", "-2 ≤ x ≤ 7" -> "[-2,7]"."""
    parts, ops = rel
    flip = {"<": ">", ">": "<", "≤": "≥", "≥": "≤"}
    if any(o not in flip for o in ops):
        return None
    if len(parts) == 2:
        a, b = parts
        op = ops[0]
        if _is_number_str(a) and not _is_number_str(b):
            a, b, op = b, a, flip[op]
        if not _is_number_str(b) or _is_number_str(a):
            return None
        if op in "<≤":
            return "(-\\infty," + b + (")" if op == "<" else "]")
        return ("(" if op == ">" else "[") + b + ",\\infty)"
    if len(parts) == 3:
        lo, x, hi = parts
        o1, o2 = ops
        if o1 in ">≥" and o2 in ">≥":  # "7 ≥ x ≥ -2"
            lo, hi, o1, o2 = hi, lo, flip[o2], flip[o1]
        if o1 not in "<≤" or o2 not in "<≤" or _is_number_str(x) or not (_is_number_str(lo) and _is_number_str(hi)):
            return None
        return ("(" if o1 == "<" else "[") + lo + "," + hi + (")" if o2 == "<" else "]")
    return None


def _relation_sides(rel: tuple[list[str], list[str]]):
    """sympy (d, op) with "a op b" as "d op 0" and op one of <, ≤, ≠, = (a > b becomes b - a < 0)."""
    parts, ops = rel
    if len(ops) != 1:
        return None
    a, b = _sympy_parse(parts[0]), _sympy_parse(parts[1])
    op = ops[0]
    if op in ">≥":
        return b - a, {">": "<", "≥": "≤"}[op]
    return a - b, op


def _relation_equal(rel_p, rel_r, p: str, r: str) -> bool:
    if rel_p is not None and rel_r is not None:
        try:
            sp, sr = _relation_sides(rel_p), _relation_sides(rel_r)
        except Exception:  # a side sympy cannot read
            sp = sr = None
        if sp is not None and sr is not None and sp[1] == sr[1]:
            import sympy

            (dp, op), (dr, _) = sp, sr
            if _expr_equal(dp, dr) or (op in "≠=" and _expr_equal(dp, -dr)):
                return True
            try:  # "2x < 4" and "x < 2": the same up to a positive factor (any nonzero one for = and ≠)
                ratio = sympy.simplify(dp / dr)
                if ratio.is_number and ratio != 0 and (op in "≠=" or bool(ratio > 0)):
                    return True
            except Exception:
                pass
        ip, ir = _relation_interval(rel_p), _relation_interval(rel_r)
        return ip is not None and ir is not None and _math_equal_impl(ip, ir)
    rel, other = (rel_p, r) if rel_p is not None else (rel_r, p)
    interval = _relation_interval(rel) if "=" not in rel[1] else None
    return interval is not None and _math_equal_impl(interval, other)


def _math_equal_impl(prediction: str, reference: str) -> bool:
    """The full comparison; may call sympy, so only run it under a deadline (``math_equal`` does)."""
    q = quick_equal(prediction, reference)
    if q is not None:
        return q
    p, r = _normalize_pair(prediction, reference)
    # "1 \pm \sqrt{19}" is the set {1+\sqrt{19}, 1-\sqrt{19}}
    if "\\pm" in p or "\\pm" in r or "\\mp" in p or "\\mp" in r:
        pe, re_ = _expand_pm(p), _expand_pm(r)
        if pe is not None and re_ is not None:
            return _lists_equal(pe, re_, ordered=False)
        return False
    # inequalities and their intervals: "5 \geq x" = "x \leq 5", "-2 \le x \le 7" = "[-2,7]"
    rel_p = _relation(p) if len(_split_top(p)) == 1 else None
    rel_r = _relation(r) if len(_split_top(r)) == 1 else None
    if rel_p is not None or rel_r is not None:
        return _relation_equal(rel_p, rel_r, p, r)
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
    if (pt is not None and pt[0] == "{") != (rt is not None and rt[0] == "{"):
        # a set in braces against a bare list: both are sets
        pp = pt[1] if pt is not None and pt[0] == "{" else _split_top(p)
        rr = rt[1] if rt is not None and rt[0] == "{" else _split_top(r)
        if (pt is None or pt[0] == "{") and (rt is None or rt[0] == "{"):
            return _lists_equal(pp, rr, ordered=False)
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
        # requests: [prediction, reference, rel_tol] -> 1/0; ["math-verify-load"] -> 1/0 (importable);
        # ["math-verify", output, reference] -> [1/0, extracted or null]
        try:
            req = json.loads(line)
            if req[0] == "math-verify-load":
                import math_verify  # noqa: F401  (imported outside any per-item deadline)

                out = 1
            elif req[0] == "math-verify":
                from evals.mathverify import verify_pair

                ok, extracted = verify_pair(req[1], req[2])
                out = [int(ok), extracted]
            else:
                pred, ref, _TOL = req
                out = int(bool(_math_equal_impl(pred, ref)))
        except (Exception, RecursionError, MemoryError):
            out = [0, None] if line.startswith('["math-verify"') else 0
        sys.stdout.write(json.dumps(out) + "\n")
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
        self.math_verify_loaded = False

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

    def request(self, req: list, timeout: float):
        """Send one request; its JSON answer, or None when the deadline passed or the answer is garbled."""
        import json

        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        line = self._readline(timeout)
        try:
            return None if line is None else json.loads(line)
        except ValueError:
            return None

    def ask(self, prediction: str, reference: str, timeout: float, rel_tol: float) -> bool | None:
        out = self.request([prediction, reference, rel_tol], timeout)
        return None if out not in (0, 1) else out == 1

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

    def math_verify(self, output: str, reference: str, timeout: float) -> tuple[bool, str | None]:
        """math-verify's verdict in a worker under the same deadline (a miss counts as not equal)."""
        w = self._idle.get()
        out = None
        try:
            if not w.wait_ready():
                raise OSError("math grading worker did not start")
            if not w.math_verify_loaded:
                # the import (antlr, latex2sympy) takes seconds: outside the per-item deadline
                loaded = w.request(["math-verify-load"], 120.0)
                if loaded != 1:
                    # no answer in time: the worker may still answer later, so it cannot serve anyone else
                    self._replace(w) if loaded is None else self._idle.put(w)
                    from evals.mathverify import INSTALL_HINT

                    raise ImportError(f"math-verify is not importable in the grading worker: {INSTALL_HINT}")
                w.math_verify_loaded = True
            out = w.request(["math-verify", output, reference], timeout)
        except (OSError, ValueError):
            out = None
        if not (isinstance(out, list) and len(out) == 2):
            self._replace(w)
            return False, None
        self._idle.put(w)
        return bool(out[0]), out[1]

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


MATH_VERIFY_TIMEOUT_S = 10.0  # math-verify's own defaults: 5 s to parse and 5 s to compare


def math_verify_equal(output: str | None, reference: str | None,
                      timeout: float = MATH_VERIFY_TIMEOUT_S) -> tuple[bool, str | None]:
    """math-verify's verdict on a whole model output against a reference answer, run in the grading pool (so from
    any thread, under the pool's deadline; math-verify's signal-based timeouts are off). Returns (equal, what it
    extracted). Raises ImportError when math-verify is not installed."""
    from evals.mathverify import INSTALL_HINT, available

    if not available():
        raise ImportError(f"math-verify is not installed: {INSTALL_HINT}")
    if not output or reference is None:
        return False, None
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return _pool().math_verify(str(output), str(reference), timeout)


def grade_math(output: str, reference: str, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str | None]:
    """Extract the answer from a model output and compare it with the reference answer: (correct, extracted)."""
    pred = extract_answer(output)
    return (pred is not None and math_equal(pred, reference, timeout=timeout)), pred


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--worker"]:
        _worker_loop()

"""LaTeX answer strings -> sympy-parsable strings, without antlr or latex2sympy.

Answers in these benchmarks are short formulas (numbers, fractions, radicals, powers, trig/log, sets, intervals,
matrices). A small rewriter covers them more robustly than a full LaTeX grammar, and its output is then parsed with a
restricted ``sympy.parse_expr`` namespace (no builtins, no attribute access) because the input is model-written.
"""

from __future__ import annotations

import re

# Text-only commands whose argument is kept as plain text.
_TEXT_CMDS = ("text", "textbf", "textit", "mathrm", "mathbf", "mathit", "mbox", "operatorname", "mathsf", "boldsymbol",
              "mathnormal", "rm", "bf")
_SPACES = (r"\!", r"\,", r"\;", r"\:", r"\ ", r"\quad", r"\qquad", "~", r"\displaystyle", r"\textstyle", r"\limits")
_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "exp", "ln",
          "log"}
_SYMBOLS = {"pi": "pi", "infty": "oo", "infinity": "oo", "cdot": "*", "times": "*", "div": "/", "ast": "*",
            "le": "<=", "leq": "<=", "ge": ">=", "geq": ">=", "neq": "!=", "ne": "!=", "lt": "<", "gt": ">",
            "alpha": "alpha", "beta": "beta", "gamma": "gamma", "delta": "delta", "theta": "theta",
            "lambda": "lamda", "mu": "mu", "sigma": "sigma", "omega": "omega", "phi": "phi", "varphi": "phi",
            "epsilon": "epsilon", "varepsilon": "epsilon", "rho": "rho", "tau": "tau", "eta": "eta", "psi": "psi",
            "nu": "nu", "xi": "xi", "kappa": "kappa", "zeta": "zeta", "chi": "chi"}


class LatexError(ValueError):
    """The string is not a formula this converter understands."""


def matching_brace(s: str, i: int) -> int | None:
    """Index of the "}" that closes the "{" at s[i], or None when the braces never balance."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


def _group(s: str, i: int) -> tuple[str, int]:
    """Argument starting at s[i] (after spaces): a {...} group or a single token. Returns (content, next index)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise LatexError("missing argument")
    if s[i] == "{":
        j = matching_brace(s, i)
        if j is None:
            raise LatexError("unbalanced braces")
        return s[i + 1:j], j + 1
    if s[i] == "\\":
        m = re.match(r"\\[A-Za-z]+", s[i:])
        if m:
            return m.group(0), i + len(m.group(0))
    return s[i], i + 1


def _replace_cmd_args(s: str, cmd: str, nargs: int, fmt) -> str:
    """Rewrite every ``\\cmd{a}{b}`` (arguments may be bare tokens, as in ``\\frac12``)."""
    pat = re.compile(r"\\" + cmd + r"(?![A-Za-z])")
    for _ in range(200):
        m = pat.search(s)
        if not m:
            return s
        i = m.end()
        opt = None
        if cmd == "sqrt":
            j = i
            while j < len(s) and s[j] == " ":
                j += 1
            if j < len(s) and s[j] == "[":
                k = s.find("]", j)
                if k < 0:
                    raise LatexError("unclosed sqrt index")
                opt, i = s[j + 1:k], k + 1
        args = []
        for _ in range(nargs):
            a, i = _group(s, i)
            args.append(a)
        s = s[:m.start()] + fmt(*args, opt=opt) + s[i:]
    raise LatexError("too deeply nested")


def _text_unwrap(s: str) -> str:
    for cmd in _TEXT_CMDS:
        s = _replace_cmd_args(s, cmd, 1, lambda a, opt=None: a)
    return s


def latex_to_sympy_str(s: str) -> str:
    """Convert one LaTeX formula (no top-level commas) to a string for ``parse_expr``; raises LatexError."""
    s = s.strip().strip("$")
    for sp in _SPACES:
        s = s.replace(sp, " ")
    s = s.replace(r"\left", "").replace(r"\right", "").replace(r"\big", "").replace(r"\Big", "")
    s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac").replace(r"\cfrac", r"\frac")
    s = s.replace(r"\lbrace", "(").replace(r"\rbrace", ")").replace(r"\{", "(").replace(r"\}", ")")
    s = s.replace(r"\lvert", "|").replace(r"\rvert", "|").replace(r"\vert", "|")
    s = s.replace("−", "-").replace("×", "*").replace("·", "*").replace("π", r"\pi").replace("√", r"\sqrt")
    s = s.replace("∞", r"\infty").replace(r"\mathrm{e}", "E").replace(r"\exp", "exp")
    s = _text_unwrap(s)
    s = _replace_cmd_args(s, "frac", 2, lambda a, b, opt=None: f"(({a})/({b}))")
    s = _replace_cmd_args(s, "binom", 2, lambda a, b, opt=None: f"binomial({a},{b})")
    s = _replace_cmd_args(s, "sqrt", 1, lambda a, opt=None: f"sqrt({a})" if opt is None else f"(({a})**(1/({opt})))")
    s = _replace_cmd_args(s, "overline", 1, lambda a, opt=None: a)
    # \log_{b} x / \log_b(x): base-b logarithm
    s = re.sub(r"\\log_\{([^{}]+)\}\s*\(([^()]*)\)", r"log(\2,\1)", s)
    s = re.sub(r"\\log_\{([^{}]+)\}\s*([A-Za-z0-9.]+)", r"log(\2,\1)", s)
    s = re.sub(r"\\log_([0-9A-Za-z])\s*\(([^()]*)\)", r"log(\2,\1)", s)
    s = re.sub(r"\\log_([0-9A-Za-z])\s*([A-Za-z0-9.]+)", r"log(\2,\1)", s)
    # degrees and primes carry no value here
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°", "", s)

    def cmd(m: re.Match) -> str:
        name = m.group(1)
        if name in _FUNCS:
            return " " + name + " "
        if name in _SYMBOLS:
            return " " + _SYMBOLS[name] + " "
        raise LatexError(f"unsupported command \\{name}")

    s = re.sub(r"\\([A-Za-z]+)", cmd, s)
    if "\\" in s:
        raise LatexError("stray backslash")
    # |x| -> Abs(x) (non-nested)
    s = re.sub(r"\|([^|]+)\|", r"Abs(\1)", s)
    # powers and subscripts: ^{...} -> **(...), x_{12} -> x_12
    s = re.sub(r"_\{([A-Za-z0-9]+)\}", r"_\1", s)
    s = s.replace("^", "**")
    s = s.replace("{", "(").replace("}", ")").replace("[", "(").replace("]", ")")
    # e**x and e^(...) mean Euler's number
    s = re.sub(r"(?<![A-Za-z_])e(?=\s*\*\*)", "E", s)
    s = re.sub(r"\s+", " ", s).strip()
    if not s:
        raise LatexError("empty formula")
    return s


_ALLOWED_CHARS = re.compile(r"^[A-Za-z0-9_+\-*/().,!<>= ]*$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ALLOWED_NAMES = {"sqrt", "pi", "E", "oo", "log", "ln", "exp", "sin", "cos", "tan", "cot", "sec", "csc", "asin",
                  "acos", "atan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "Abs", "binomial", "I",
                  "factorial"}


def check_safe(expr: str) -> None:
    """Reject anything that could reach Python beyond arithmetic on symbols (parse_expr evaluates its input)."""
    if not _ALLOWED_CHARS.match(expr):
        raise LatexError("unexpected characters")
    if "__" in expr or re.search(r"\.\s*[A-Za-z_]", expr) or "lambda" in expr:
        raise LatexError("attribute access or lambda")
    if len(expr) > 400:
        raise LatexError("formula too long")
    for name in _IDENT.findall(expr):
        if name not in _ALLOWED_NAMES and not re.fullmatch(r"[A-Za-z]+(_[A-Za-z0-9]+)?", name):
            raise LatexError(f"name not allowed: {name}")

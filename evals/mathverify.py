"""Hugging Face's ``math-verify`` (PyPI ``math-verify[antlr4_13_2]==0.9.0``, the ``math-verify`` extra) as a second
opinion on math answers: ``python -m evals --grader math-verify|both`` and ``python -m evals.agreement``.

Only ``evals.grading``'s worker processes call ``verify_pair``: math-verify's own timeouts are turned off here
(they use ``signal.alarm``, which raises off the main thread) and the pool's per-item deadline applies instead.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'math-verify[antlr4_13_2]==0.9.0' (or the em-reasoning extra: pip install -e '.[math-verify]')"


def available() -> bool:
    """Whether math-verify is importable in this environment."""
    return importlib.util.find_spec("math_verify") is not None


def gold_text(reference: str) -> str:
    """A benchmark's reference answer (bare LaTeX such as ``\\frac{1}{2}``) in the form math-verify extracts a gold
    from: one inline math span."""
    ref = str(reference).strip()
    if ref.startswith("$") and ref.endswith("$"):
        return ref
    return "$" + ref + "$"


def verify_pair(output: str, reference: str) -> tuple[bool, str | None]:
    """math-verify's verdict on a model output against a reference answer, as its README and open-r1 call it
    (default extraction configs for both, ``verify(gold, pred)``), with its timeouts off. Returns (equal, the
    prediction it extracted as text or None)."""
    from math_verify import parse, verify

    gold = parse(gold_text(reference), parsing_timeout=None)
    pred = parse(str(output), parsing_timeout=None)
    extracted = str(pred[-1]) if pred else None
    if not gold or not pred:
        return False, extracted
    return bool(verify(gold, pred, timeout_seconds=None)), extracted

"""math-verify as a second opinion, run inside our grading pool (skipped only when math-verify is not installed)."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from evals.mathverify import available, gold_text

pytestmark = pytest.mark.skipif(not available(), reason="math-verify not installed (the `math-verify` extra)")


def test_verdicts_and_extraction():
    from evals.grading import math_verify_equal

    assert math_verify_equal("so the answer is $\\boxed{\\frac{1}{2}}$", "0.5") == (True, "\\frac{1}{2}")
    assert math_verify_equal("Therefore $x \\geq 5$.", "x \\ge 5")[0] is True
    assert math_verify_equal("\\boxed{3}", "4")[0] is False
    assert math_verify_equal("", "4") == (False, None)
    with pytest.raises(ValueError, match="timeout"):
        math_verify_equal("\\boxed{3}", "3", timeout=0)


def test_runs_from_threads_under_the_pool_deadline():
    """math-verify's own signal.alarm timeouts raise off the main thread; inside our workers they are off and the
    pool's deadline applies, so threads get verdicts and a pathological answer costs at most the deadline."""
    import time

    from evals.grading import math_verify_equal

    pairs = [("\\boxed{3}", "3"), ("\\boxed{4}", "3"), ("$\\frac{2}{4}$", "\\frac12"), ("\\boxed{x^2-1}", "(x-1)(x+1)")]
    with ThreadPoolExecutor(3) as ex:
        out = [v for v, _ in ex.map(lambda p: math_verify_equal(*p), pairs)]
    assert out == [True, False, True, True]
    t0 = time.perf_counter()
    assert math_verify_equal("\\boxed{10^{10^{10^{10^{10}}}}}", "1", timeout=2.0)[0] is False
    assert time.perf_counter() - t0 < 20


def test_gold_text():
    assert gold_text("\\frac{1}{2}") == "$\\frac{1}{2}$" and gold_text("$5$") == "$5$"

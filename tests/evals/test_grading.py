"""Truth table for evals.grading: equivalent forms must match, near misses must not, malformed input must not hang."""

import time

import pytest

from evals.grading import all_boxed, extract_answer, last_boxed, math_equal

EQUAL = [
    ("4", "4"), ("4.0", "4"), ("142", "142.0"), ("-3", "-3.0"), ("1,000", "1000"), ("1{,}000", "1000"),
    ("11,\\! 111,\\! 111,\\! 100", "11,111,111,100"), ("0.5", "\\frac{1}{2}"), ("\\frac12", "0.5"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\tfrac{3}{4}", "0.75"), ("1/2", "\\frac{1}{2}"), ("-\\frac{1}{3}", "-1/3"),
    ("\\frac{-1}{3}", "-\\frac{1}{3}"), (".5", "0.5"), ("50\\%", "50"), ("50\\%", "0.5"), ("12.5%", "\\frac{1}{8}"),
    ("\\sqrt{8}", "2\\sqrt{2}"), ("2\\sqrt2", "\\sqrt{8}"), ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"), ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("\\sqrt[3]{8}", "2"), ("\\sqrt[3]{27}", "3"), ("2^{10}", "1024"), ("2^3", "8"), ("10^{-2}", "0.01"),
    ("3\\cdot 4", "12"), ("3\\times 4", "12"), ("\\pi", "\\pi"), ("2\\pi", "\\pi\\cdot 2"), ("\\frac{\\pi}{2}", "\\pi/2"),
    ("\\frac{3\\pi}{4}", "0.75\\pi"), ("3.14159265", "\\pi"), ("\\left(1,2\\right)", "(1,2)"), ("(1, 2)", "(1,2)"),
    ("(-\\infty, 3]", "(-\\infty,3]"), ("[0,1)", "[0, 1)"), ("(-\\infty,-2)\\cup(2,\\infty)", "(-\\infty,-2) \\cup (2,\\infty)"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"), ("1, 2", "2, 1"), ("-2, 1", "1,-2"), ("x=3", "3"), ("3", "x = 3"), ("k=\\frac{1}{2}", "0.5"),
    ("y=2x+1", "y=1+2x"), ("y = 2x + 1", "2x - y + 1 = 0"), ("x^2+2x+1", "(x+1)^2"), ("(x+1)(x-1)", "x^2-1"),
    ("\\frac{x}{2}", "0.5x"), ("2a+3b", "3b+2a"), ("\\sin^2 x + \\cos^2 x", "1"), ("\\ln(e^2)", "2"), ("e^{0}", "1"),
    ("\\log_2 8", "3"), ("\\log_{10}(1000)", "3"), ("|{-5}|", "5"), ("\\binom{5}{2}", "10"), ("5!", "120"),
    ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("90°", "90"), ("5\\text{ cm}", "5"), ("10\\mathrm{~m}", "10"),
    ("\\$18", "18"), ("18 \\text{ dollars}", "18"), ("\\text{Evelyn}", "Evelyn"), ("\\text{(C)}", "(C)"),
    ("204_5", "204"), ("x \\in [-2,7]", "[-2,7]"), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\begin{pmatrix} 0.5 & 1 \\\\ 2 & 3 \\end{pmatrix}", "\\begin{pmatrix} \\frac12 & 1 \\\\ 2 & 3 \\end{pmatrix}"),
    ("\\begin{bmatrix} 2 \\\\ 4 \\end{bmatrix}", "\\begin{bmatrix} \\sqrt4 \\\\ 2^2 \\end{bmatrix}"),
    ("1.0001", "1.00005"), ("3.0 \\times 10^{8}", "300000000"), ("6.02e23", "6.02\\times10^{23}"),
    ("\\frac{100}{3}", "33.3333"), ("2\\frac{1}{2}", "2.5"), ("\\frac{5}{2}", "2.5"),
    ("\\displaystyle\\frac{1}{4}", "0.25"), ("\\left[0,\\frac{1}{2}\\right]", "[0,0.5]"), ("(3, -\\sqrt{2})", "(3,-\\sqrt2)"),
    ("\\infty", "\\infty"), ("-\\infty", "-\\infty"), ("a^2+b^2", "b^2+a^2"), ("\\sqrt{x^2}", "|x|") if False else ("\\sqrt{4x^2}", "2\\sqrt{x^2}"),
    ("i", "i"), ("1+i", "i+1"),
    # issue #15: relations, sets, lists and notations math-verify reads
    ("5\\geq x", "x\\leq 5"), ("x \\geq 5", "x >= 5"), ("-x > -1", "x < 1"), ("2x < 4", "x < 2"),
    ("x>3", "(3,\\infty)"), ("x \\le 3", "(-\\infty,3]"), ("-2\\le x\\le 7", "[-2,7]"), ("-793 < a < 10", "(-793, 10)"),
    ("x \\neq 3", "x != 3"), ("\\mathbb{R}", "(-\\infty,\\infty)"), ("1\\text{ and }2", "1,2"), ("19, 46, and 82", "82, 46, 19"),
    ("5 cm", "5"), ("\\pm 2", "2,-2"), ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}"), ("28 percent", "28\\%"),
    ("28 pct", "28\\%"), ("a+b+c", "c+a+b"), ("(1,2),(3,4),(1,2)", "(3,4),(1,2)"), ("2\\frac12", "2.5"),
    ("-1\\frac{1}{3}", "-\\frac43"), ("2.\\overline{3}", "\\frac{7}{3}"), ("\\varnothing", "\\emptyset"), ("1000,99", "1000.99"),
    ("0,111", "0.111"), ("k = 1", "1"), ("(p,q)=(3,2)", "(3,2)"), ("f(x) = x^2", "x^2"), ("x = 5+5+1 = 11", "x = 11"),
    ("x\\approx 11", "11"), ("x = \\frac13 \\approx 0.33", "\\frac{1}{3}"), ("\\{1,3\\}", "1, 3"), ("{1,3}", "(1,3)"),
    ("14{, }916", "14916"), ("\\left[\\begin{array}{cc}1 & 2 \\\\ 3 & 4\\end{array}\\right]", "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}"),
    ("AB=4, CD=5", "4, 5"), ("x_1 = 2, x_2 = 3", "3, 2"), ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}"),
    ("1.5e6", "1500000"), ("1e-5", "0.00001"), ("180 + 24 = 204", "204"), ("\\frac{1}{2} = 0.5", "0.5"),
]

NOT_EQUAL = [
    ("4", "5"), ("204", "204.1"), ("99999", "100000"), ("0.333", "\\frac{1}{3}"), ("50", "0.5"), ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("\\sqrt{2}", "\\sqrt{3}"), ("2\\sqrt{2}", "\\sqrt{6}"), ("(1,2)", "(2,1)"), ("[0,1)", "[0,1]"), ("(0,1)", "[0,1]"),
    ("\\{1,2\\}", "\\{1,2,3\\}"), ("1, 2", "1, 2, 3"), ("x^2+1", "(x+1)^2"), ("2a+3b", "3a+2b"), ("\\pi", "3"),
    ("\\frac{\\pi}{2}", "\\frac{\\pi}{3}"), ("y=2x+1", "y=2x-1"), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"), ("-3", "3"), ("10^{3}", "10^{4}"),
    ("\\log_2 8", "4"), ("1.1", "1.0"), ("2", "x"), ("A", "B"), ("\\text{Evelyn}", "Bob"), ("", "0"), ("  ", "1"),
    ("1e-5", "0"), ("\\infty", "-\\infty"), ("(-\\infty, 3]", "(-\\infty, 3)"),
    # issue #15: false accepts (a bare number is not an equation in other unknowns) and near-miss relations
    ("1", "2x+z=1"), ("0", "a+3z=0"), ("0", "a^2+b=0"), ("11a+c", "7=11a+c"), ("3", "x+y=3"),
    ("x<5", "x>5"), ("x \\leq 5", "x \\geq 5"), ("x > -1", "x < 1"), ("x<3", "(3,\\infty)"), ("-2<x<7", "[-2,7]"),
    ("x \\le 3", "(-\\infty,3)"), ("\\pm 2", "2"), ("2", "\\pm 2"), ("1,000", "1.0"), ("1,2", "1.2"), ("12:00", "1:00"), ("(3,1)", "{1,3}"),
    ("(1,2),(3,4)", "(1,2)"), ("2\\frac12", "1"), ("2.\\overline{3}", "2.3"), ("\\mathbb{R}", "(0,\\infty)"),
    ("1, 2", "1, 2, 3, 3"), ("x = 5+5+1 = 12", "x = 11"), ("28 percent", "0.28\\%"),
    ("180 + 24 = 204", "205"), ("7 = 11a + c", "11a+c"),
]

MALFORMED = [
    "10^{10^{10^{10}}}", "\\frac{", "\\frac{1}{", "}{", "((((((((((", "\\sqrt", "\\begin{pmatrix} 1 & \\\\",
    "__import__('os').system('echo pwned')", "lambda: 1", "x.__class__", "\\left(", "9" * 5000,
    "\\boxed{\\boxed{}}", "(1,2", "\\text{", "2^{2^{2^{2^{2^{2}}}}}", "\\unknowncmd{3}", "1/0", "0/0", "\\infty - \\infty",
]


@pytest.mark.parametrize("pred,ref", EQUAL)
def test_equal(pred, ref):
    assert math_equal(pred, ref), (pred, ref)
    assert math_equal(ref, pred), (ref, pred)  # symmetric


@pytest.mark.parametrize("pred,ref", NOT_EQUAL)
def test_not_equal(pred, ref):
    assert not math_equal(pred, ref), (pred, ref)


@pytest.mark.parametrize("junk", MALFORMED)
def test_malformed_never_hangs(junk):
    t0 = time.perf_counter()
    assert math_equal(junk, "5", timeout=2.0) is False
    assert time.perf_counter() - t0 < 15  # deadline 2 s, plus a worker restart at most


def test_truth_table_size():
    assert len(EQUAL) + len(NOT_EQUAL) + len(MALFORMED) >= 100


def test_math_equal_from_threads():
    """signal.alarm would fail here; the worker pool does not."""
    from concurrent.futures import ThreadPoolExecutor

    pairs = [("\\frac{1}{2}", "0.5"), ("x^2-1", "(x-1)(x+1)"), ("3", "4"), ("10^{10^{10}}", "1")] * 2
    with ThreadPoolExecutor(4) as ex:
        out = list(ex.map(lambda p: math_equal(*p, timeout=2.0), pairs))
    assert out == [True, True, False, False] * 2


EXTRACT = [
    ("so the answer is $\\boxed{42}$.", "42"), ("\\boxed{\\frac{1}{2}} and later \\boxed{3}", "3"),
    ("\\fbox{7}", "7"), ("nested \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"), ("\\boxed 5$", "5"),
    ("The final answer is $12$. I hope it is correct.", "12"), ("The answer is: 7", "7"), ("Answer: 3/4", "3/4"),
    ("the answer is \\(x+1\\).", "x+1"), ("no answer here", None), ("", None), ("\\boxed{", None), ("\\boxed{}", None),
    ("The final answer is $\\boxed{2}$", "2"),
    # issue #15: several boxes, a mid-line "Final Answer:", prose with no box or marker
    ("so \\boxed{1}, \\boxed{2}.", "1, 2"), ("$\\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}$", "-2, 1"),
    ("\\boxed{1} no no no no no \\boxed{2}", "2"), ("First \\boxed{3}.\n\nSo the answer is \\boxed{4}", "4"),
    ("\\boxed{5} or \\boxed{5}", "5"),
    ("$0.05 \\cdot 10,200 = \\boxed{255}$ So $10,455. Final Answer: The final answer is $10,455$. I hope it is correct.",
     "10,455"),
    ("Answer $ 9 $", "9"), ("Answer \\[ 9 \\]", "9"), ("Therefore $x \\geq 5$ is the solution.", "x \\geq 5"),
    ("Answer $ \n 9 \n $", None), ("Final Answer: The largest $n$ is 34.", "34"), ("28 percent", "28 percent"),
    ("the number is not 10 which is 1,000.99", "1,000.99"), ("AZYUK2A", "AZYUK2A"), ("$1$ and $2$ and $3$", "1, 2, 3"),
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract(text, expected):
    assert extract_answer(text) == expected


def test_rel_tol_parameter():
    assert math_equal("4.88 \\times 10^{23}", "4.9\\times 10^{23}", rel_tol=1e-2)
    assert not math_equal("4.88 \\times 10^{23}", "4.9\\times 10^{23}")
    with pytest.raises(ValueError):
        math_equal("1", "2", rel_tol=-1)


@pytest.mark.parametrize(
    "text, want",
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\fbox{x+1}", "x+1"),
        ("answer: \\boxed 7 done", "7"),
        ("\\boxed{2} and a cut-off \\boxed{3", None),  # the last box is the answer, even when it is broken
        ("no box here", None),
    ],
)
def test_last_boxed(text, want):
    assert last_boxed(text) == want


@pytest.mark.parametrize("text, last, every", [
    ("\\boxed{\\frac{1}{2}} and \\boxed{3}", "3", ["\\frac{1}{2}", "3"]),
    ("\\boxed{a{b}c}", "a{b}c", ["a{b}c"]),
    ("\\boxed{1} then \\boxed{2", None, ["1"]),  # a box cut off by the token budget: no content from it
    ("\\boxed{", None, []),
])
def test_boxes_take_balanced_braces_only(text, last, every):
    assert last_boxed(text) == last
    assert all_boxed(text) == every

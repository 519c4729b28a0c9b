"""The agreement script's reference rules and its headline numbers (documented in evals/AGREEMENT.md)."""

import pytest

from evals.agreement import compare, corpora, ref_is_equiv, ref_match_answer
from evals.data import default_data_dir
from evals.grading import extract_answer


def test_reference_rules():
    assert ref_match_answer("so the answer is: 5") == (True, "5")
    assert ref_match_answer("x \\boxed{3} y")[1] == "3"
    assert ref_match_answer("nothing")[0] is False
    assert ref_is_equiv("\\dfrac{1}{2}", "0.5") and not ref_is_equiv("\\sqrt{8}", "2\\sqrt{2}")


def test_strict_marker_after_box_wins_loose_phrase_does_not():
    assert extract_answer("\\boxed{0} for part one.\nAnswer: 1.6") == "1.6"
    assert extract_answer("\\boxed{5}. So the final answer is 7 in another approach.") == "5"


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/benchmarks")
def test_math500_solutions_agreement_counts():
    pairs = corpora(default_data_dir(), [])["MATH-500 solutions vs answer"]
    c, _ = compare(pairs)
    assert c["n"] == 500 and c["ours correct"] == 500 and c["reference only"] == 0
    assert c["reference rules correct"] == 480  # the 20 "ours only" rows are listed in AGREEMENT.md


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/benchmarks")
def test_near_misses_are_never_accepted():
    from evals.agreement import near_miss_corpus

    pairs = near_miss_corpus(default_data_dir())
    c, _ = compare(pairs, labels=[0] * len(pairs))
    assert c["n"] > 300 and c["ours false accepts"] == 0 and c["ours correct"] == c["n"]


def test_math_verify_pairs_row():
    from evals.agreement import compare_math_verify_pairs, math_verify_pairs

    pairs = math_verify_pairs()
    assert len(pairs) == 265  # the 269 transcribed pairs less the 4 debatable ones
    c, ex = compare_math_verify_pairs(pairs, with_math_verify=False)
    assert c["ours false accepts"] == 0 and c["ours correct"] >= 0.95 * c["n"]
    assert len(ex) == c["n"] - c["ours correct"]


def test_math_verify_column():
    from evals.mathverify import available

    if not available():
        pytest.skip("math-verify not installed (the `math-verify` extra)")
    pairs = [("so \\boxed{3}", "3"), ("We get \\boxed{0} for part one.\nAnswer: 1.6", "1.6"), ("\\boxed{4}", "3")]
    c, ex = compare(pairs, with_math_verify=True, labels=[1, 1, 0])
    # math-verify prefers the box over a later "Answer:" line; ours takes the strict marker
    assert (c["ours correct"], c["math-verify correct"]) == (3, 2)
    assert c["ours accepts, math-verify not"] == 1 and c["math-verify false accepts"] == 0
    assert ex[0][2] == "0" and c["math-verify seconds"] > 0


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/benchmarks")
def test_code_outcomes_count_extraction_changes(tmp_path):
    """A LeetCode output whose block sits in a markdown list item: ours passes, the reference's extraction fails."""
    import json

    from evals.agreement import code_outcomes

    solution = ("class Solution:\n    def beautifulIndices(self, s, a, b, k):\n"
                "        ia = [i for i in range(len(s) - len(a) + 1) if s[i:i + len(a)] == a]\n"
                "        ib = [j for j in range(len(s) - len(b) + 1) if s[j:j + len(b)] == b]\n"
                "        return [i for i in ia if any(abs(i - j) <= k for j in ib)]\n")
    indented = "\n".join("   " + line if line else line for line in solution.split("\n"))
    tid = "weekly-contest-380-find-beautiful-indices-in-the-given-array-i"
    recs = [{"id": tid, "task": "leetcode", "output": f"1. Code:\n   ```python\n{indented}   ```\n"},
            {"id": tid, "task": "leetcode", "output": f"```python\n{solution}```"}]
    path = tmp_path / "m" / "leetcode" / "greedy" / "samples.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (c,) = code_outcomes([path], default_data_dir()).values()
    assert (c["n"], c["program differs"], c["ours pass"], c["reference pass"]) == (2, 1, 2, 1)
    assert (c["ours pass, reference fails"], c["reference passes, ours fails"]) == (1, 0)

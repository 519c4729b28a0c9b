"""Agreement between our graders and the reference's extraction/strip rules on the same outputs.

    python -m evals.agreement [--data-dir DIR] [--samples RUN/samples.jsonl ...] [--out evals/AGREEMENT.md]

The reference (EM_PT eval/Math) extracts with ``match_answer`` (cut after the last "the answer is: " / "answer:\\n" /
"answer: " marker, lowercase search, then the last \\boxed/\\fbox wins) and first compares with MATH's
``is_equiv`` (``_strip_string`` both sides, then string equality) before its latex2sympy ``math_equal``. The
latex2sympy/antlr fallback is not reproduced here, so "reference" below means its extraction plus its string rules;
rows where we say equal and those rules say not equal are exactly the cases that fallback would have to rescue.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter
from pathlib import Path

from evals.data import default_data_dir, read_jsonl
from evals.grading import REL_TOL, extract_answer, math_equal, math_verify_equal

# ---------------------------------------------------------------- the reference's rules, re-implemented

def ref_last_boxed(s: str) -> str | None:
    idx = s.rfind("\\boxed")
    if idx < 0:
        idx = s.rfind("\\fbox")
        if idx < 0:
            return None
    depth, left = 0, None
    for i in range(idx, len(s)):
        if s[i] == "{":
            depth += 1
            left = i if left is None else left
        elif s[i] == "}":
            depth -= 1
            if depth == 0 and left is not None:
                return s[left + 1:i].strip()
    return None


def ref_match_answer(response: str) -> tuple[bool, str]:
    matched = False
    for marker in ("the answer is: ", "answer:\n", "answer: "):
        k = response.lower().rfind(marker)
        if k != -1:
            matched = True
            response = response[k + len(marker):].strip()
            if response.endswith("\n"):
                response = response[:-2]
    boxed = ref_last_boxed(response)
    if boxed:
        matched, response = True, boxed
    return matched, response


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if sub and sub[0] == "{":
            out += sub
        elif len(sub) >= 2:
            a, b = sub[0], sub[1]
            out += "{" + a + "}" + ("{" + b + "}" + sub[2:] if b != "{" else b + sub[2:])
        else:
            return s
    return out


def _fix_sqrt(s: str) -> str:
    parts = s.split("\\sqrt")
    out = parts[0]
    for sub in parts[1:]:
        out += ("\\sqrt{" + sub[0] + "}" + sub[1:]) if sub and sub[0] != "{" else "\\sqrt" + sub
    return out


def ref_strip_string(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s and len(s.split("\\text{ ")) == 2:
        s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    if len(s.split("/")) == 2:
        a, b = s.split("/")
        if a.isdigit() and b.isdigit():
            s = "\\frac{" + a + "}{" + b + "}"
    return s


def ref_is_equiv(pred: str | None, gt: str) -> bool:
    if pred is None:
        return False
    try:
        return ref_strip_string(pred) == ref_strip_string(gt)
    except (IndexError, ValueError):
        return pred == gt


# ---------------------------------------------------------------- corpora

def corpora(data_dir: Path, samples: list[Path]) -> dict[str, list[tuple[str, str]]]:
    """name -> [(model-like output, reference answer)]."""
    out: dict[str, list[tuple[str, str]]] = {}
    m5 = read_jsonl(data_dir / "math500/test.jsonl")
    out["MATH-500 solutions vs answer"] = [(r["solution"], r["answer"]) for r in m5]
    aime = read_jsonl(data_dir / "aime_aimo/aimo-validation-aime.jsonl")
    out["AIME 22-24 solutions vs answer"] = [(r["solution"], str(r["answer"]).lstrip("0")) for r in aime]
    mv = read_jsonl(data_dir / "minerva_math/test.jsonl")
    # the answer restated in the Qwen / "I hope it is correct" format models are prompted with elsewhere
    out["MATH-500 answers as 'The final answer is $X$. I hope it is correct.'"] = [
        (f"... The final answer is ${r['answer']}$. I hope it is correct.", r["answer"]) for r in m5]
    out["MATH-500 answers as 'The answer is: X'"] = [(f"So, the answer is: {r['answer']}", r["answer"]) for r in m5]
    out["Minerva answers as 'Answer: X' after an unrelated box"] = [
        (f"We get \\boxed{{0}} for part one.\nAnswer: {ref_last_boxed(r['solution'])}", ref_last_boxed(r["solution"]))
        for r in mv]
    for p in samples:
        rows = [json.loads(line) for line in open(p) if line.strip()]
        rows = [r for r in rows if isinstance(r.get("reference"), str)]
        if rows:
            out[f"model outputs: {'/'.join(p.parts[-4:-1])} ({len(rows)})"] = [(r["output"], r["reference"]) for r in rows]
    return out


def near_miss_corpus(data_dir: Path) -> list[tuple[str, str]]:
    """MATH-500 solutions against a wrong answer: every integer answer n replaced by n+1 (all labelled 0)."""
    out = []
    for r in read_jsonl(data_dir / "math500/test.jsonl"):
        if re.fullmatch(r"-?\d+", r["answer"].strip()):
            out.append((r["solution"], str(int(r["answer"]) + 1)))
    return out


def math_verify_pairs(path: Path | None = None) -> list[dict]:
    """math-verify's own test pairs (tests/evals/data/math_verify_pairs.json), the debatable ones left out."""
    path = path or Path(__file__).resolve().parents[1] / "tests/evals/data/math_verify_pairs.json"
    if not path.exists():
        return []
    return [p for p in json.loads(path.read_text())["pairs"] if "debatable" not in p]


def _pair_tol(pair: dict) -> float:
    p = pair.get("options", {}).get("precision", 6)
    return 1.5 * 10.0 ** -p if p <= 3 else REL_TOL


def _mv_pair(pair: dict) -> bool:
    """math-verify on one of its own test pairs, called as its tests call it (with that test's options); main thread,
    so its own timeouts apply."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    o = pair.get("options", {})
    if o.get("match_types") == "default":
        return bool(verify(parse(pair["gold"]), parse(pair["pred"])))
    cfg = [LatexExtractionConfig(boxed_match_priority=0) if m == "latex" else ExprExtractionConfig()
           for m in o.get("match_types", ["latex", "expr"])]
    return bool(verify(parse(pair["gold"], cfg), parse(pair["pred"], cfg), float_rounding=o.get("precision", 6),
                       strict=o.get("strict", True), allow_set_relation_comp=o.get("allow_set_relation_comp", False)))


def compare(pairs: list[tuple[str, str]], with_math_verify: bool = False,
            labels: list[int] | None = None) -> tuple[Counter, list[tuple]]:
    """Verdicts of ours, the reference's rules and (optionally) math-verify on (output, gold) pairs; ``labels`` are
    the right verdicts (default: every pair is a right answer). Seconds spent per grader go in the counter too."""
    import time

    c: Counter = Counter()
    examples, ref_examples = [], []
    labels = labels if labels is not None else [1] * len(pairs)
    for (text, gt), label in zip(pairs, labels):
        t0 = time.perf_counter()
        ours_ex = extract_answer(text)
        ours = ours_ex is not None and math_equal(ours_ex, gt)
        c["ours seconds"] += time.perf_counter() - t0
        _, ref_ex = ref_match_answer(text)
        ref = ref_is_equiv(ref_ex, gt)
        c["n"] += 1
        c["ours correct"] += ours == bool(label)
        c["ours false accepts"] += ours and not label
        c["reference rules correct"] += ref == bool(label)
        c["extraction differs"] += (ours_ex or "").strip() != (ref_ex or "").strip()
        if ours and not ref:
            c["ours only"] += 1
        elif ref and not ours:
            c["reference only"] += 1
        mv, mv_ex = None, None
        if with_math_verify:
            t0 = time.perf_counter()
            mv, mv_ex = math_verify_equal(text, gt)
            c["math-verify seconds"] += time.perf_counter() - t0
            c["math-verify correct"] += mv == bool(label)
            c["math-verify false accepts"] += mv and not label
            c["ours accepts, math-verify not"] += ours and not mv
            c["math-verify accepts, ours not"] += mv and not ours
        # the listing shows disagreements with math-verify first, then with the reference's rules
        if mv is not None and mv != ours and len(examples) < 8:
            examples.append((ours_ex, ref_ex, mv_ex, gt, ours, ref, mv))
        elif ours != ref and len(ref_examples) < 8:
            ref_examples.append((ours_ex, ref_ex, mv_ex, gt, ours, ref, mv))
    return c, (examples + ref_examples)[:8]


def compare_math_verify_pairs(pairs: list[dict], with_math_verify: bool) -> tuple[Counter, list[tuple]]:
    """Ours (extracting from both texts, as tests/evals/test_math_verify_pairs.py does) and math-verify (with each
    test's options) on math-verify's own labelled pairs."""
    import time

    c: Counter = Counter()
    examples = []
    for pair in pairs:
        t0 = time.perf_counter()
        pred, gold = extract_answer(pair["pred"]), extract_answer(pair["gold"])
        ours = pred is not None and math_equal(pred, gold if gold is not None else pair["gold"], rel_tol=_pair_tol(pair))
        c["ours seconds"] += time.perf_counter() - t0
        label = bool(pair["expected"])
        c["n"] += 1
        c["ours correct"] += ours == label
        c["ours false accepts"] += ours and not label
        mv = None
        if with_math_verify:
            t0 = time.perf_counter()
            mv = _mv_pair(pair)
            c["math-verify seconds"] += time.perf_counter() - t0
            c["math-verify correct"] += mv == label
            c["math-verify false accepts"] += mv and not label
            c["ours accepts, math-verify not"] += ours and not mv
            c["math-verify accepts, ours not"] += mv and not ours
        if ours != label and len(examples) < 12:
            examples.append((pair["id"], pred, gold, label, ours, mv))
    return c, examples


def _code_lines(program: str) -> list[str]:
    return [line.rstrip() for line in program.splitlines() if line.strip()]


def code_outcomes(samples: list[Path], data_dir: Path) -> dict[str, Counter]:
    """For code records in samples.jsonl files: how many graded outcomes change between our extraction
    (``extract_code``) and the reference's (``match_code`` and its wrapping). Programs that come out identical are
    not run twice."""
    from evals.sandbox import run_python
    from evals.tasks import get_task

    out: dict[str, Counter] = {}
    tasks = {}
    for p in samples:
        rows = [json.loads(line) for line in open(p) if line.strip()]
        rows = [r for r in rows if r.get("task") in ("leetcode", "humaneval", "mbpp")]
        for r in rows:
            if r["task"] not in tasks:
                t = get_task(r["task"], data_dir=data_dir)
                tasks[r["task"]] = (t, {str(s.id): s for s in t.load()})
            task, by_id = tasks[r["task"]]
            s = by_id.get(str(r["id"]))
            if s is None:
                continue
            key = f"{r['task']}: {'/'.join(p.parts[-4:-1])}"
            c = out.setdefault(key, Counter())
            ours_code, ours_prog = task.program(s, r["output"])
            ref_code, ref_prog = task.program(s, r["output"], reference_rules=True)
            ours_ok = run_python(ours_prog, task.timeout_s).passed
            same = _code_lines(ref_prog) == _code_lines(ours_prog)  # blank lines and trailing spaces aside
            ref_ok = ours_ok if same else run_python(ref_prog, task.timeout_s).passed
            c["n"] += 1
            c["program differs"] += not same
            c["ours pass"] += ours_ok
            c["reference pass"] += ref_ok
            c["ours pass, reference fails"] += ours_ok and not ref_ok
            c["reference passes, ours fails"] += ref_ok and not ours_ok
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evals.agreement", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--samples", nargs="*", default=[], help="samples.jsonl files written by python -m evals")
    ap.add_argument("--out", default=str(Path(__file__).with_name("AGREEMENT.md")))
    ap.add_argument("--no-math-verify", action="store_true", help="leave out the math-verify column")
    args = ap.parse_args(argv)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None:
        raise SystemExit("error: no data directory; pass --data-dir")
    from evals.mathverify import INSTALL_HINT, available

    with_mv = not args.no_math_verify
    if with_mv and not available():
        raise SystemExit(f"error: the math-verify column needs math-verify ({INSTALL_HINT}); or pass --no-math-verify")
    samples = [Path(p) for p in args.samples]
    lines = ["# Grader agreement: ours, math-verify and the reference's extraction and strip rules", "",
             "Generated by `python -m evals.agreement` (see its docstring for what \"reference\" means; math-verify is "
             "`math-verify[antlr4_13_2]==0.9.0`, called as in its README: default extraction of the whole output, "
             "the gold as one math span). \"correct\" = graded as labelled: every pair of the first corpora is a "
             "right answer; the near-miss corpus and math-verify's pairs carry their own labels.", "",
             "| corpus | n | ours correct | math-verify correct | reference rules correct | ours false accepts | "
             "math-verify false accepts | ours accepts, math-verify not | math-verify accepts, ours not | "
             "extraction differs (ours vs reference) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    details = []
    total: Counter = Counter()

    def cell(x):
        return "`" + str(x).replace("|", "\\|").replace("\n", " ")[:80] + "`"

    def row(name, c):
        mv = (lambda k: str(c[k])) if with_mv else (lambda k: "-")
        lines.append(f"| {name} | {c['n']} | {c['ours correct']} | {mv('math-verify correct')} | "
                     f"{c['reference rules correct'] if 'reference rules correct' in c else '-'} | "
                     f"{c['ours false accepts']} | {mv('math-verify false accepts')} | "
                     f"{mv('ours accepts, math-verify not')} | {mv('math-verify accepts, ours not')} | "
                     f"{c['extraction differs'] if 'extraction differs' in c else '-'} |")
        for k in ("n", "ours seconds", "math-verify seconds"):
            total[k] += c[k]

    named = list(corpora(data_dir, samples).items())
    named.append(("MATH-500 solutions vs a near miss (integer answer + 1; labelled wrong)", near_miss_corpus(data_dir)))
    for name, pairs in named:
        labels = [0] * len(pairs) if name.startswith("MATH-500 solutions vs a near miss") else None
        c, ex = compare(pairs, with_mv, labels)
        row(name, c)
        if ex:
            details.append(f"\n### {name}: disagreements (first {len(ex)})\n")
            details.append("| ours extracted | reference extracted | math-verify extracted | gold | ours | reference | "
                           "math-verify |")
            details.append("|---|---|---|---|---|---|---|")
            for o, r, m, g, vo, vr, vm in ex:
                details.append(f"| {cell(o)} | {cell(r)} | {cell(m)} | {cell(g)} | {vo} | {vr} | {vm} |")
    mvp = math_verify_pairs()
    if mvp:
        c, ex = compare_math_verify_pairs(mvp, with_mv)
        row("math-verify's own test pairs (non-debatable; labelled)", c)
        if ex:
            details.append("\n### math-verify's own test pairs: ours not as labelled\n")
            details.append("| id | ours extracted (prediction) | ours extracted (gold) | label | ours | math-verify |")
            details.append("|---|---|---|---|---|---|")
            for i, p, g, lab, vo, vm in ex:
                details.append(f"| {i} | {cell(p)} | {cell(g)} | {int(lab)} | {vo} | {vm} |")
    speed = [f"\nSpeed on {_cpu_name()}, all corpora above ({total['n']} answers): ours "
             f"{1000 * total['ours seconds'] / max(1, total['n']):.2f} ms per answer"]
    if with_mv:
        ratio = total["math-verify seconds"] / max(total["ours seconds"], 1e-9)
        speed.append(f", math-verify {1000 * total['math-verify seconds'] / max(1, total['n']):.2f} ms per answer "
                     f"(ours {ratio:.1f}x faster; math-verify runs in our grading workers, as `--grader both` runs it, "
                     f"except on its own pairs, where it runs in-process with each test's options).")
    lines.append("".join(speed))
    code = code_outcomes(samples, data_dir) if samples else {}
    if code:
        lines += ["", "## Code extraction: ours (`extract_code`) vs the reference's (`match_code`) on model outputs", "",
                  "| task: run | n | program differs | ours pass | reference pass | ours pass, reference fails | "
                  "reference passes, ours fails |", "|---|---|---|---|---|---|---|"]
        for name, c in code.items():
            lines.append(f"| {name} | {c['n']} | {c['program differs']} | {c['ours pass']} | {c['reference pass']} | "
                         f"{c['ours pass, reference fails']} | {c['reference passes, ours fails']} |")
    text = "\n".join(lines + details) + "\n"
    print(text)
    Path(args.out).write_text(text + "\n" + EXPLANATION)
    return 0


EXPLANATION = """## Why ours and math-verify differ

Every class of disagreement seen in the tables above, and the cases the issue (#15) names:

- **A box then a strict marker** (row "Minerva answers as 'Answer: X' after an unrelated box"). math-verify ranks
  any `\\boxed{}` above an "Answer:" line, so it grades the unrelated `\\boxed{0}`; ours follows the reference's
  rule that a strict marker ("the answer is:", a line starting "Answer:", "Final Answer:") after the box is the
  model's last word. One of the 272 agrees by chance (its answer is 0).
- **Bare LaTeX after a marker** (row "The answer is: X"). math-verify's LaTeX extraction needs math delimiters and
  its expression extraction reads a leading number, so `6+9i` becomes 6, `2\\sqrt{5}` becomes 2 and
  `\\frac{\\sqrt{3}}{3}` nothing. Ours reads the marker's text as an answer.
- **AIME formatting.** `\\textbf{033}`, `\\textbf{(023) }` and `\\textbf{(073)}` are read by math-verify as the text
  "033", "(023)": no match with 33, 23, 73. Ours unwraps `\\textbf`, parenthesised and zero-padded integers.
- **A loose phrase after the box.** An AIME solution ends with an alternative method, "Thus, the final answer is
  6!/(2!2!2!)*2!*(4!)^3 which leads us to the same solution": math-verify grades the 6 it finds there, ours keeps
  the box (only strict markers override a box).
- **Numbers math-verify does not read** (issue #15): e-notation `1.5e6`, `6.02e23` against `6.02\\times10^{23}`,
  `1e-5` against `0.00001`; "The answer is (C)" against `C` or `(C)`; `\\varnothing` against `\\emptyset`;
  repeating decimals `2.\\overline{3}` against 7/3; a predicted inequality against a gold interval (`x>3` against
  `(3,\\infty)`: math-verify compares a relation with a set only when the relation is the gold, unless its
  `allow_set_relation_comp` is on). Ours accepts all of these (truth table in tests/evals/test_grading.py).
- **math-verify's own test pairs.** 265 of its 269 pairs have a label a grader without its options should meet
  (the 4 others are marked debatable in tests/evals/data/math_verify_pairs.json: an option-only label, an
  ill-formed gold, and a wrong label). Ours misses 6, all missed accepts: matrix arithmetic left unevaluated (2),
  `1\\leq|z|\\leq 3/2` as a union of intervals in z, named components `p=5,q=2;p=7,q=2` against tuples, a cut-off
  gold box naming `W(n)` against `W(x)`, and `\\sum` expressions. Before #15 ours graded 58% of the pairs as
  labelled; the causes (answers spread over several boxes, a mid-line "Final Answer:", prose answers, relations,
  `\\pm`, "and"/"or" lists, percent words, bare units, decimal commas, duplicated tuples, mixed numbers) are fixed
  in evals.grading.
- **False accepts: none on either side.** Not on the near-miss corpus (every integer MATH-500 answer plus one
  against the full solution) and not on math-verify's pairs labelled 0. Before #15 ours accepted a bare number
  against an equation in several unknowns (`1` against `2x+z=1`: only the right-hand side was compared); now an
  equation matches a bare value only when its left side is a name (`x`, `f(x)`, `(p,q)`, `AB`, `a_{37}`) or the
  whole equation is a computation (`180 + 24 = 204`).
- **Neither grader**: `i` against `\\sqrt{-1}` and `e^{i\\pi}` against `-1` (ours reads `i` and `e` inside `e^{i\\pi}`
  as symbols; reading them as the imaginary unit would break answers in a variable i).
- **Deliberate strictness (ours).** Two integers compare exactly (99999 is not 100000), and a percent scaling is
  only applied when a percent sign is written (50 is not 0.5); math-verify agrees on both. `1,2` is a list, not the
  decimal 1.2 (a decimal comma is read only with two or more digits after it, `1000,99`, `0,111`).

## Why ours and the reference's rules differ

- **Equivalent forms the string rules cannot see.** The reference's `_strip_string` equality fails on
  `\\frac9{19}` vs `\\frac{9}{19}` only when the shapes differ after its fixes, on `204_5` vs `204` (base
  subscripts), `x \\in [-2,7]` vs `[-2,7]`, `11,\\! 111,\\! 111,\\! 100` vs `11,111,111,100`, `\\sqrt{8}` vs
  `2\\sqrt{2}`, decimals vs fractions other than 0.5, and reordered sums. Our `math_equal` normalises these or
  decides them with sympy. In the reference these cases fall through to its latex2sympy `math_equal`, which rescues
  some (numbers, simple expressions) when antlr parses them, not the subscript / `\\in` / thousand-separator cases.
- **Markers.** The reference lowercases the response but searches for the markers literally, cuts at the last
  marker and then prefers the last `\\boxed{}` *after* the cut. "The final answer is $X$. I hope it is correct."
  (Qwen's format, which the reference's Qwen-math path does read) is not one of the math500/AMC/AIME markers, so
  that path keeps the whole response and fails; we read it. When a strict marker ("the answer is:", a line
  starting "Answer:") follows an earlier box, both take the marker's text (row "Minerva answers as 'Answer: X'
  after an unrelated box": full agreement); looser phrases after a box do not override it, because in the AIME
  solutions they come from alternative solutions appended after the boxed answer.
- **Several boxes.** MATH-500 solutions that box two forms of one answer (`\\boxed{15\\frac{39}{40}}, or
  \\boxed{\\frac{639}{40}}`) are one answer for us (boxes joined by a short connective, equal items once); the
  reference keeps the last box. Same verdict, so these only show as "extraction differs".
- **AIME formatting.** `\\boxed{\\textbf{(245) }}` and zero-padded `033` are the written answers 245 and 33;
  we unwrap `\\textbf` and parenthesised lone integers, the string rules do not.
- **No answer.** On tiny-random outputs neither finds an answer; "extraction differs" counts that we return None
  where the reference returns the whole response (its "not matched" value). Verdicts agree.
- **Percent and x100.** The reference's numeric `math_equal` accepts x, x/100 and x*100 for every number; we accept
  the scaling only when a percent sign is written (so 50 vs 0.5 is wrong for us, right for the reference).
- **Integers.** Two integers compare exactly for us (99999 vs 100000 is wrong); the reference's rel_tol 1e-4 would
  accept it.

## Code extraction

The reference takes the last ```` ```python ```` block containing "def " (else the last python block, else the same
over plain blocks) and runs it as written. `evals.tasks.code.extract_code` chooses the same block but removes the
slips that fail a correct program before any test runs: the indentation of a block inside a markdown list item
(qwen2.5-coder-1.5b-instruct's LeetCode answer to weekly-contest-380-find-beautiful-indices-in-the-given-array-i
died with IndentationError), a `py`/`Python` info string read as the first line of code, Windows line ends, a
python block left open at the end of the output, and (LeetCode) `class Solution(object):` wrapped into a second
class. The table "Code extraction" (present when `--samples` names code runs) counts, on those model outputs, the
programs that differ and the graded outcomes that change. In the committed file it holds the only code outputs this
machine could produce in time (2 shared CPUs, no GPU): the embedded smollm2-135m-instruct, greedy, HF backend,
`--limit 8 --max-tokens 256` on HumanEval, MBPP and LeetCode. The differing programs (2 HumanEval, 3 LeetCode,
no MBPP) are all blocks cut off by the token limit (ours runs the open block, the reference the empty text before
the fence); both fail, so no outcome changes. None of these 8 LeetCode outputs echoed the action template. The issue's qwen2.5-coder
LeetCode case (a block in a list item) is rebuilt in tests/evals/test_tasks.py and test_agreement.py: it passes with
ours and fails with the reference's extraction.
"""

if __name__ == "__main__":
    raise SystemExit(main())

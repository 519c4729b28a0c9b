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
from collections import Counter
from pathlib import Path

from evals.data import default_data_dir, read_jsonl
from evals.grading import extract_answer, math_equal


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


def ref_wrap_solution(code: str) -> str:
    """The reference's LeetCode wrapping: code without the text "class Solution:" is indented into one."""
    if "class Solution:" in code:
        return code
    return "class Solution:\n" + "\n".join("    " + line for line in code.split("\n"))


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


def compare(pairs: list[tuple[str, str]]) -> tuple[Counter, list[tuple]]:
    c: Counter = Counter()
    examples = []
    for text, gt in pairs:
        ours_ex = extract_answer(text)
        _, ref_ex = ref_match_answer(text)
        ours = ours_ex is not None and math_equal(ours_ex, gt)
        ref = ref_is_equiv(ref_ex, gt)
        c["n"] += 1
        c["ours correct"] += ours
        c["reference rules correct"] += ref
        c["extraction differs"] += (ours_ex or "").strip() != (ref_ex or "").strip()
        if ours and not ref:
            c["ours only"] += 1
        elif ref and not ours:
            c["reference only"] += 1
        if ours != ref and len(examples) < 8:
            examples.append((ours_ex, ref_ex, gt, ours, ref))
    return c, examples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evals.agreement", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--samples", nargs="*", default=[], help="samples.jsonl files written by python -m evals")
    ap.add_argument("--out", default=str(Path(__file__).with_name("AGREEMENT.md")))
    args = ap.parse_args(argv)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None:
        raise SystemExit("error: no data directory; pass --data-dir")
    lines = ["# Grader agreement: ours vs the reference's extraction and strip rules", "",
             "Generated by `python -m evals.agreement` (see its docstring for what \"reference\" means).", "",
             "| corpus | n | ours correct | reference rules correct | ours only | reference only | extraction differs |",
             "|---|---|---|---|---|---|---|"]
    details = []
    for name, pairs in corpora(data_dir, [Path(p) for p in args.samples]).items():
        c, ex = compare(pairs)
        lines.append(f"| {name} | {c['n']} | {c['ours correct']} | {c['reference rules correct']} | "
                     f"{c['ours only']} | {c['reference only']} | {c['extraction differs']} |")
        if ex:
            details.append(f"\n### {name}: disagreements (first {len(ex)})\n")
            details.append("| ours extracted | reference extracted | gold | ours | reference |")
            details.append("|---|---|---|---|---|")
            for o, r, g, vo, vr in ex:
                cell = lambda s: "`" + str(s).replace("|", "\\|").replace("\n", " ")[:80] + "`"  # noqa: E731
                details.append(f"| {cell(o)} | {cell(r)} | {cell(g)} | {vo} | {vr} |")
    text = "\n".join(lines + details) + "\n"
    print(text)
    Path(args.out).write_text(text + "\n" + EXPLANATION)
    return 0


EXPLANATION = """## Why they differ

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
- **AIME formatting.** `\\boxed{\\textbf{(245) }}` and zero-padded `033` are the written answers 245 and 33;
  we unwrap `\\textbf` and parenthesised lone integers, the string rules do not.
- **No answer.** On tiny-random outputs neither finds an answer; "extraction differs" counts that we return None
  where the reference returns the whole response (its "not matched" value). Verdicts agree.
- **Percent and x100.** The reference's numeric `math_equal` accepts x, x/100 and x*100 for every number; we accept
  the scaling only when a percent sign is written (so 50 vs 0.5 is wrong for us, right for the reference).
- **Integers.** Two integers compare exactly for us (99999 vs 100000 is wrong); the reference's rel_tol 1e-4 would
  accept it.
"""

if __name__ == "__main__":
    raise SystemExit(main())

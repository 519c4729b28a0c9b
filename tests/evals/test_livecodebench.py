"""LiveCodeBench on the shipped fixtures (tests/evals/fixtures/livecodebench): loading by release and date window,
the dataset's test encodings, the runner's prompts and extraction, and grading in both modes, where a wrong, crashing,
slow or endless solution never passes and a correct one never fails. End to end through ``python -m evals``."""

import base64
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import jinja2
import pytest

from engine.models import _CHATML_TEMPLATE
from evals.data import DataNotFound
from evals.tasks import get_task
from evals.tasks.livecodebench import decode_tests, encode_private_tests, extract_code

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LCB = FIXTURES / "livecodebench"


def _task(**opts):
    # 2 s per test: short, yet far above what the correct solutions need on a loaded machine
    return get_task("livecodebench", data_dir=FIXTURES, **{"lcb_timeout": 2, **opts})


@pytest.fixture(scope="module")
def samples():
    return {s.id: s for s in _task().load()}


def test_fixture_files_are_what_the_builder_writes():
    spec = importlib.util.spec_from_file_location("lcb_make_fixtures", LCB / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, rows in (("test.jsonl", mod.FILE1), ("test2.jsonl", mod.FILE2)):
        stored = [json.loads(line) for line in (LCB / "code_generation_lite" / name).read_text().splitlines()]
        assert stored == rows
        # every field is a string, as in the HF dataset's features
        assert all(isinstance(v, str) for r in stored for v in r.values())


def test_release_files_and_date_window():
    # the paper's default: release_v2 (both files), 2023-05-01 .. 2024-05-31, sorted by question_id as the runner does
    assert [s.id for s in _task().load()] == ["fix001_a", "fix002_lc", "fix004_lc", "fix005_b"]
    # release_v1 is test.jsonl alone; v2 is test2.jsonl alone
    assert [s.id for s in _task(lcb_release="release_v1").load()] == ["fix001_a", "fix002_lc"]
    assert [s.id for s in _task(lcb_release="v2").load()] == ["fix004_lc", "fix005_b"]
    # both ends are inclusive days: 2023-04-30 and 2024-06-01 come in when the window reaches them
    wide = _task(lcb_start_date="2023-04-30", lcb_end_date="2024-06-01").load()
    assert [s.id for s in wide] == ["fix001_a", "fix002_lc", "fix003_old", "fix004_lc", "fix005_b", "fix006_late"]
    assert [s.id for s in _task(lcb_end_date="2024-05-30").load()] == ["fix001_a", "fix002_lc", "fix005_b"]


def test_bad_options_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="--lcb-release"):
        _task(lcb_release="release_v9").load()
    with pytest.raises(ValueError, match="--lcb-start-date"):
        _task(lcb_start_date="2023/05/01")
    with pytest.raises(ValueError, match="after --lcb-end-date"):
        _task(lcb_start_date="2024-06-01", lcb_end_date="2024-05-01")
    with pytest.raises(ValueError, match=r"--lcb-timeout .*\[1, 600\]"):
        _task(lcb_timeout=0)
    # a local copy without all of the release's files is an error, not a silent subset
    folder = tmp_path / "livecodebench" / "code_generation_lite"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text((LCB / "code_generation_lite" / "test.jsonl").read_text())
    with pytest.raises(DataNotFound, match="missing test2.jsonl"):
        get_task("livecodebench", data_dir=tmp_path).load()


def test_test_case_encodings(samples):
    lc = samples["fix002_lc"].reference
    assert not lc["private_test_cases"].startswith("[")  # stored compressed
    private = decode_tests(lc["private_test_cases"])
    assert private[1] == {"input": "[0, 0, 0]\n1", "output": "3", "testtype": "functional"}
    assert decode_tests(encode_private_tests(private)) == private
    plain = samples["fix004_lc"].reference["private_test_cases"]
    assert plain.startswith("[") and decode_tests(plain)[1]["output"] == "[9, 0, 7, 5]"
    assert lc["fn_name"] == "countPairs" and samples["fix001_a"].reference["fn_name"] is None
    # a pickle that would build an object (and so could run code) is refused
    evil = base64.b64encode(zlib.compress(pickle.dumps(Path("/")))).decode()
    with pytest.raises(pickle.UnpicklingError):
        decode_tests(evil)


def _chatml(messages):
    return jinja2.Template(_CHATML_TEMPLATE).render(messages=messages, add_generation_prompt=True)


INTRO = ("You will be given a question (problem specification) and will generate a correct Python program that "
         "matches the specification and passes all tests. You will NOT return anything except for the program.\n\n")


def test_codeqwen_prompt_renders_to_the_runners_text(samples):
    """LiveCodeBench writes CodeQwenInstruct prompts as raw ChatML; ours are messages that must render to the same
    bytes (the texts below are the runner's, prompts/code_generation.py @28fef95)."""
    head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\n" + INTRO
    tail = "<|im_end|>\n<|im_start|>assistant\n"
    s = samples["fix002_lc"]
    starter = "class Solution:\n    def countPairs(self, nums: List[int], target: int) -> int:\n        "
    q = s.prompt[1]["content"].split("Question: ", 1)[1].split("\n\nYou will use", 1)[0]
    want = (head + f"Question: {q}\n\nYou will use the following starter code to write the solution to the problem "
            f"and enclose your code within delimiters.\n```python\n{starter}\n```\n\n" + tail)
    assert _chatml(s.prompt) == want
    s = samples["fix001_a"]
    q = s.prompt[1]["content"].split("Question: ", 1)[1].split("\n\nRead the inputs", 1)[0]
    want = (head + f"Question: {q}\n\nRead the inputs from stdin solve the problem and write the answer to stdout (do "
            "not directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that when "
            "the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n```python\n"
            "# YOUR CODE HERE\n```\n\n" + tail)
    assert _chatml(s.prompt) == want
    assert q.startswith("You are given N integers")


def test_generic_prompt():
    s = {x.id: x for x in _task(lcb_prompt_style="generic").load()}["fix002_lc"]
    assert s.prompt[0]["content"].startswith("You are an expert Python programmer.")
    user = s.prompt[1]["content"]
    assert user.startswith("### Question:\nGiven an integer array") and "### Format: You will use the following" in user
    assert user.endswith("```\n\n### Answer: (use the provided format with backticks)\n\n")
    with pytest.raises(ValueError, match="--lcb-prompt-style"):
        _task(lcb_prompt_style="fancy")


def test_extraction_takes_the_last_fenced_block():
    assert extract_code("a\n```python\nx = 1\n```\ntext\n```python\ny = 2\nz = 3\n```\nbye") == "y = 2\nz = 3"
    assert extract_code("```python\nprint(1)") == ""
    assert extract_code("no code") == ""
    # the runner stops generating at "###": nothing after it counts, a block it cuts is incomplete
    assert extract_code("```python\nx = 1\n```\n### Explanation\n```python\ny = 2\n```") == "x = 1"
    assert extract_code("```python\nx = 1  ### note\n```") == ""


def _block(code):
    return f"Some reasoning first.\n```python\n{code}\n```\nDone."


STDIN_CORRECT = "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a))\nprint(max(a))"
STDIN_MAIN_GUARD = ("import sys\n\ndef main():\n    data = sys.stdin.read().split()\n    n = int(data[0])\n"
                    "    a = [int(x) for x in data[1:1 + n]]\n    print(sum(a), '  ')\n    print(max(a))\n    exit(0)\n"
                    "    print('never')\n\nif __name__ == \"__main__\":\n    main()")
CALL_CORRECT = ("class Solution:\n    def countPairs(self, nums: List[int], target: int) -> int:\n"
                "        return sum(1 for i, j in combinations(range(len(nums)), 2) if nums[i] + nums[j] < target)")

CASES = [
    # (problem, solution, passes, first failing code in the runner's results or None)
    ("fix001_a", STDIN_CORRECT, True, None),
    ("fix001_a", STDIN_MAIN_GUARD, True, None),  # __main__ guard, sys.stdin.read, exit(), trailing spaces
    ("fix001_a", "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a))\nprint(a[-1])", False, -2),
    ("fix001_a", STDIN_CORRECT + "\nprint()\nprint('extra')", False, -2),
    ("fix001_a", "n = int(input())\nprint(1 // (n - n))", False, -4),
    ("fix001_a", "def f(:\n    pass", False, -4),
    ("fix001_a", "import time\ntime.sleep(3)\n" + STDIN_CORRECT, False, -3),
    ("fix001_a", "while True:\n    pass", False, -3),
    ("fix002_lc", CALL_CORRECT, True, None),
    ("fix002_lc", CALL_CORRECT.replace("< target", "<= target"), False, -2),
    # memorised public answers: the private tests catch it
    ("fix002_lc", ("class Solution:\n    def countPairs(self, nums, target):\n        if target == 2:\n"
                   "            return 3\n        if target == -2:\n            return 10\n        return 0"),
     False, -2),
    ("fix002_lc", "class Solution:\n    def countPairs(self, nums, target):\n        return nums[10]", False, -4),
    ("fix002_lc", "class Solution:\n    def countPair(self, nums, target):\n        return 0", False, -4),
    ("fix002_lc", "class Solution:\n    def countPairs(self, nums, target):\n        while True:\n            pass",
     False, -3),
    ("fix002_lc", CALL_CORRECT.replace("return sum", "import time\n        time.sleep(4)\n        return sum"), False,
     -3),
    ("fix004_lc", "class Solution:\n    def digits(self, n):\n        return tuple(int(c) for c in str(n))", True,
     None),
    ("fix004_lc", "class Solution:\n    def digits(self, n):\n        return [c for c in str(n)]", False, -2),
    ("fix005_b", "t = int(input())\nfor _ in range(t):\n    a, b = map(int, input().split())\n    print((a + b) / 2)",
     True, None),  # 2.5 vs 2.50: equal as decimals
    ("fix005_b", ("t = int(input())\nfor _ in range(t):\n    a, b = map(int, input().split())\n"
                  "    print(f'{(a + b) / 2 + 1e-9:.9f}')"), False, -2),  # no float tolerance
]


@pytest.mark.parametrize("pid,code,passes,fail_code", CASES)
def test_grading(samples, pid, code, passes, fail_code):
    task = _task()
    g = task.grade(samples[pid], _block(code))
    assert g.correct is passes, g.details
    assert g.extracted == code
    results = g.details["results"]
    if passes:
        assert results == [True] * g.details["n_tests"]
    else:
        assert results[-1] == fail_code, g.details
        assert all(r is True for r in results[:-1])
    assert not g.details["timed_out"]  # the per-test alarm decided, not the deadline


def test_endless_loop_that_swallows_the_alarm_is_killed_by_the_deadline(samples):
    """The per-test alarm cannot stop a loop that catches it: the sandbox's deadline, the runner's global timeout
    ((1 + 1) * 3 tests + 5 = 11 s here), kills it and every test counts as failed (-1)."""
    code = ("while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass")
    method = "class Solution:\n    def digits(self, n):\n" + "\n".join("        " + ln for ln in code.split("\n"))
    g = _task(lcb_timeout=1).grade(samples["fix004_lc"], _block(method))
    assert g.correct is False and g.details["timed_out"] and g.details["results"] == [-1, -1, -1]
    assert g.details["seconds"] < 30


def test_exit_in_a_call_based_solution_fails(samples):
    """SystemExit escapes the runner's call-based loop and ends its worker: all tests -1, as there."""
    g = _task().grade(samples["fix002_lc"], _block("class Solution:\n    def countPairs(self, nums, target):\n"
                                                  "        exit(0)"))
    assert g.correct is False and g.details["results"] == [-1] * 5


def test_no_code_block_is_wrong_without_running(samples):
    g = _task().grade(samples["fix001_a"], "I would print the sum.")
    assert g.correct is False and g.details["reason"] == "no code block"


def _cli(args, out, **env):
    return subprocess.run([sys.executable, "-m", "evals", "--model", "tiny-random", "--backend", "hf", "--max-tokens",
                           "8", "--output", str(out), "--tasks", "livecodebench", *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **env),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_end_to_end_on_tiny_random(tmp_path):
    r = _cli(["--data-dir", str(FIXTURES), "--limit", "2", "--lcb-timeout", "1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    d = tmp_path / "tiny-random" / "livecodebench" / "sampling"
    recs = [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]
    assert [x["id"] for x in recs] == ["fix001_a", "fix002_lc"]
    assert all(x["correct"] is False for x in recs)  # eight random tokens hold no code block
    s = json.loads((d / "summary.json").read_text())
    assert s["n"] == 2 and s["n_graded"] == 2 and s["accuracy"] == 0.0 and s["tokens"] > 0


def test_cli_errors_before_loading_a_model(tmp_path):
    r = _cli(["--data-dir", str(tmp_path / "nowhere")], tmp_path)
    assert r.returncode == 2 and "code_generation_lite" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["--data-dir", str(FIXTURES), "--lcb-end-date", "2024-5-32"], tmp_path)
    assert r.returncode == 2 and "--lcb-end-date" in r.stderr and "Traceback" not in r.stderr

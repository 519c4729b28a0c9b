"""LiveCodeBench code generation, loaded, prompted, extracted and graded as LiveCodeBench's own runner does.

Followed: github.com/LiveCodeBench/LiveCodeBench @28fef95ea8c9f7a547c8329f2cd3d32b92c1fa24 (lcb_runner/benchmarks/
code_generation.py, prompts/code_generation.py, utils/extraction_utils.py, evaluation/testing_util.py and
compute_code_generation_metrics.py) and the HF dataset ``livecodebench/code_generation_lite`` (its loading script
code_generation_lite.py maps a release tag to JSONL files). The paper: ``release_v2``, problems dated 2023-05-01 ..
2024-05-31 (511 problems), pass@1 with one sample per problem.

Data: ``<data-dir>/livecodebench/code_generation_lite/test.jsonl, test2.jsonl, ...`` (a clone of the HF dataset
repository), else the hub through ``datasets`` (the runner's own call), else the release's JSONL files through
``huggingface_hub``. Each row keeps the dataset's fields: the public tests as a JSON string, the private ones as JSON or
base64(zlib(pickle(JSON string))), ``metadata`` as a JSON string naming ``func_name`` for call-based problems.

Deliberate differences from the runner (README "LiveCodeBench" says the same):
- the private tests are unpickled with an unpickler that only builds plain strings (the dataset stores a pickled
  str), so a tampered local file cannot run code when it is loaded;
- the program runs in evals.sandbox (namespaces, rlimits, audit hooks) instead of under reliability_guard, with 4 GB
  of address space (the runner's comment says 4 GB; its call passes no limit); the runner's global deadline,
  (timeout + 1) * tests + 5 seconds, is the sandbox's wall-clock and CPU limit;
- the runner's stop string "###" is applied to the text before extraction rather than during generation (the
  extracted code is the same; token counts include what came after it);
- a response without a complete code block is graded wrong without running it (the runner runs the empty program,
  which fails every test).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from datetime import datetime
from pathlib import Path

from evals.data import DataNotFound, default_data_dir, read_jsonl
from evals.sandbox import run_python
from evals.tasks.base import Grade, Sample, Task

HF_DATASET = "livecodebench/code_generation_lite"
LOCAL_DIR = "livecodebench/code_generation_lite"
DEFAULT_RELEASE = "release_v2"
DEFAULT_START_DATE = "2023-05-01"
DEFAULT_END_DATE = "2024-05-31"
DEFAULT_TIMEOUT_S = 6  # the runner's --timeout default: seconds per test (SIGALRM, so whole seconds)
STOP = "###"  # the runner's --stop default
MEMORY_MB = 4096
_HARNESS = Path(__file__).with_name("_lcb_harness.py")


def _release_files() -> dict[str, list[str]]:
    """Release tag -> JSONL files, as code_generation_lite.py's ALLOWED_FILES: release_vN is cumulative, vN is the
    Nth file alone, vM_vN the files M..N."""
    names = ["test.jsonl"] + [f"test{i}.jsonl" for i in range(2, 7)]
    files = {f"release_v{i}": names[:i] for i in range(1, 7)}
    files["release_latest"] = list(names)
    for i in range(1, 7):
        files[f"v{i}"] = [names[i - 1]]
        for j in range(i + 1, 7):
            files[f"v{i}_v{j}"] = names[i - 1:j]
    return files


RELEASE_FILES = _release_files()

# Prompts: LiveCodeBench's code-generation prompts (prompts/code_generation.py).
SYSTEM_MESSAGE_GENERIC = ("You are an expert Python programmer. You will be given a question (problem specification) "
                          "and will generate a correct Python program that matches the specification and passes all "
                          "tests.")
FORMATTING_WITH_STARTER_CODE = ("You will use the following starter code to write the solution to the problem and "
                                "enclose your code within delimiters.")
FORMATTING_WITHOUT_STARTER_CODE = ("Read the inputs from stdin solve the problem and write the answer to stdout (do "
                                   "not directly test on the sample inputs). Enclose your code within delimiters as "
                                   "follows. Ensure that when the python program runs, it reads the inputs, runs the "
                                   "algorithm and writes output to STDOUT.")
CODEQWEN_SYSTEM = "You are a helpful assistant."
CODEQWEN_INTRO = ("You will be given a question (problem specification) and will generate a correct Python program "
                  "that matches the specification and passes all tests. You will NOT return anything except for the "
                  "program.\n\n")
PROMPT_STYLES = ("codeqwen", "generic")


def codeqwen_messages(question: str, starter_code: str) -> list[dict]:
    """LMStyle.CodeQwenInstruct, the runner's style for every Qwen2.5 instruct model. The runner writes the ChatML
    text itself; these messages render to exactly that text under Qwen's ChatML template (the user turn starts with
    the newline after ``<|im_start|>user`` and ends with the blank line before ``<|im_end|>``)."""
    text = CODEQWEN_INTRO + f"Question: {question}\n\n"
    if starter_code:
        text += f"{FORMATTING_WITH_STARTER_CODE}\n```python\n{starter_code}\n```\n\n"
    else:
        text += f"{FORMATTING_WITHOUT_STARTER_CODE}\n```python\n# YOUR CODE HERE\n```\n\n"
    return [{"role": "system", "content": CODEQWEN_SYSTEM}, {"role": "user", "content": "\n" + text}]


def generic_messages(question: str, starter_code: str) -> list[dict]:
    """LMStyle.OpenAIChat (also LLaMa3, MistralWeb, TogetherAI...): the generic system message and question template."""
    text = f"### Question:\n{question}\n\n"
    if starter_code:
        text += f"### Format: {FORMATTING_WITH_STARTER_CODE}\n```python\n{starter_code}\n```\n\n"
    else:
        text += f"### Format: {FORMATTING_WITHOUT_STARTER_CODE}\n```python\n# YOUR CODE HERE\n```\n\n"
    text += "### Answer: (use the provided format with backticks)\n\n"
    return [{"role": "system", "content": SYSTEM_MESSAGE_GENERIC}, {"role": "user", "content": text}]


def apply_stop(output: str) -> str:
    """The runner generates with stop=["###"] (its --stop default): cutting the text at the first "###" leaves
    what the runner's model would have returned, whatever our engine generated after it."""
    return output.split(STOP, 1)[0]


def extract_code(output: str) -> str:
    """The runner's extract_code for chat models: the lines between the last two lines containing ```, else ""."""
    lines = apply_stop(output).split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    if len(fences) < 2:
        return ""
    return "\n".join(lines[fences[-2] + 1:fences[-1]])


class _StringsOnly(pickle.Unpickler):
    """The private tests are a pickled ``str``: building one needs no class, so refuse every global."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from LiveCodeBench test data")


def decode_tests(field: str) -> list[dict]:
    """A test-case field as the dataset stores it: JSON, or base64(zlib(pickle(JSON string))) for private tests."""
    try:
        return json.loads(field)
    except ValueError:
        raw = zlib.decompress(base64.b64decode(field.encode("utf-8")))
        return json.loads(_StringsOnly(io.BytesIO(raw)).load())


def encode_private_tests(tests: list[dict]) -> str:
    """The dataset's encoding of private tests (the inverse of decode_tests' second branch), for building fixtures."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("utf-8")


def _parse_date(value: str, flag: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{flag} must be a date YYYY-MM-DD, got {value!r}") from e


def _hub_rows(release: str, where: Path | None) -> list[dict]:
    errors = []
    try:
        from datasets import load_dataset

        ds = load_dataset(HF_DATASET, split="test", version_tag=release, trust_remote_code=True)
        return [dict(r) for r in ds]
    except ImportError:
        errors.append("the `datasets` package is not installed")
    except Exception as e:  # offline, or a `datasets` that no longer runs loading scripts (>= 4.0)
        errors.append(f"datasets: {type(e).__name__}: {str(e)[:200]}")
    try:
        from huggingface_hub import hf_hub_download

        rows = []
        for name in RELEASE_FILES[release]:
            rows += read_jsonl(Path(hf_hub_download(HF_DATASET, name, repo_type="dataset")))
        return rows
    except Exception as e:
        errors.append(f"huggingface_hub: {type(e).__name__}: {str(e)[:200]}")
    local = f"{where}/" if where is not None else f"<data-dir>/{LOCAL_DIR}/"
    raise DataNotFound(f"LiveCodeBench {release}: no local copy at {local} ({', '.join(RELEASE_FILES[release])}) and "
                       f"the hub failed ({'; '.join(errors)}); clone the HF dataset {HF_DATASET} into "
                       f"<data-dir>/{LOCAL_DIR} and pass --data-dir")


def load_rows(data_dir: Path | str | None, release: str) -> list[dict]:
    """The rows of a release: from ``data_dir/livecodebench/code_generation_lite`` when its files are there, else
    from the hub. A local copy missing some of the release's files is an error, never a silent subset."""
    if release not in RELEASE_FILES:
        raise ValueError(f"--lcb-release must be one of {', '.join(RELEASE_FILES)}; got {release!r}")
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = base / LOCAL_DIR if base is not None else None
    if folder is not None and folder.is_dir():
        present = [n for n in RELEASE_FILES[release] if (folder / n).is_file()]
        if present:
            missing = [n for n in RELEASE_FILES[release] if n not in present]
            if missing:
                raise DataNotFound(f"LiveCodeBench {release} needs {', '.join(RELEASE_FILES[release])} in {folder}; "
                                   f"missing {', '.join(missing)}")
            rows = []
            for name in RELEASE_FILES[release]:
                rows += read_jsonl(folder / name)
            return rows
    return _hub_rows(release, folder)


class LiveCodeBench(Task):
    name = "livecodebench"
    kind = "code"
    default_max_tokens = 2000  # the runner's --max_tokens default
    description = "LiveCodeBench code generation (release_v2, 2023-05-01..2024-05-31: 511; runner's tests and limits)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        opts = self.options
        self.release = opts.get("lcb_release") or DEFAULT_RELEASE
        self.start = _parse_date(opts.get("lcb_start_date") or DEFAULT_START_DATE, "--lcb-start-date")
        self.end = _parse_date(opts.get("lcb_end_date") or DEFAULT_END_DATE, "--lcb-end-date")
        if self.start > self.end:
            raise ValueError(f"--lcb-start-date ({self.start:%Y-%m-%d}) is after --lcb-end-date ({self.end:%Y-%m-%d})")
        timeout = opts.get("lcb_timeout")
        self.timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        if not isinstance(self.timeout, int) or not 1 <= self.timeout <= 600:
            raise ValueError(f"--lcb-timeout must be a whole number of seconds in [1, 600], got {timeout!r}")
        self.prompt_style = opts.get("lcb_prompt_style") or "codeqwen"
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"--lcb-prompt-style must be one of {', '.join(PROMPT_STYLES)}, got {self.prompt_style!r}")

    def messages(self, row: dict) -> list[dict]:
        build = codeqwen_messages if self.prompt_style == "codeqwen" else generic_messages
        return build(row["question_content"], row["starter_code"])

    def _load(self):
        samples = []
        for row in load_rows(self.data_dir, self.release):
            # the runner's window: contest_date (ISO) within [start, end], both days as midnight, both inclusive
            date = datetime.fromisoformat(row["contest_date"])
            if not self.start <= date <= self.end:
                continue
            meta = json.loads(row["metadata"])
            samples.append(Sample(
                id=row["question_id"], prompt=self.messages(row),
                # the test fields stay encoded until grading: decoded, a release holds gigabytes of tests
                reference={"public_test_cases": row["public_test_cases"],
                           "private_test_cases": row["private_test_cases"], "fn_name": meta.get("func_name")},
                meta={"title": row["question_title"], "platform": row["platform"], "difficulty": row["difficulty"],
                      "contest_date": row["contest_date"], "starter_code": bool(row["starter_code"])}))
        return sorted(samples, key=lambda s: s.id)  # the runner sorts by question_id

    def answer_fn(self):
        return lambda text: extract_code(text).strip() or None

    def equal_fn(self):
        from evals.tasks.code import code_equal

        return code_equal

    def tests(self, sample: Sample) -> tuple[list[str], list[str]]:
        ref = sample.reference
        cases = decode_tests(ref["public_test_cases"]) + decode_tests(ref["private_test_cases"])
        return [t["input"] for t in cases], [t["output"] for t in cases]

    def grade(self, sample: Sample, output: str) -> Grade:
        code = extract_code(output)
        inputs, outputs = self.tests(sample)
        if not code.strip():
            return Grade(correct=False, extracted=code, details={"reason": "no code block", "n_tests": len(inputs)})
        return self.grade_code(code, inputs, outputs, sample.reference["fn_name"])

    def grade_code(self, code: str, inputs: list[str], outputs: list[str], fn_name: str | None) -> Grade:
        """Pass iff every test passes (the runner's pass@1 with one sample)."""
        job = {"code": code, "inputs": inputs, "outputs": outputs, "fn_name": fn_name, "timeout": self.timeout}
        deadline = (self.timeout + 1) * len(inputs) + 5  # the runner's global timeout for one program
        res = run_python(_HARNESS.read_text(), deadline, memory_mb=int(self.options.get("memory_mb") or MEMORY_MB),
                         files={"lcb_job.json": json.dumps(job)}, collect=("lcb_results.json",))
        if "lcb_results.json" in res.collected:
            out = json.loads(res.collected["lcb_results.json"])
            results, meta = out["results"], out["metadata"]
        else:  # killed by the deadline or crashed the interpreter: the runner counts every test as -1
            results, meta = [-1] * len(inputs), {"error_message": "global timeout" if res.timed_out else
                                                  f"harness died (exit {res.returncode})"}
        passed = len(results) == len(inputs) and all(r is True for r in results)
        return Grade(correct=passed, extracted=code,
                     details={"results": results, "n_tests": len(inputs), "error": meta.get("error_message"),
                              "timed_out": res.timed_out, "seconds": round(res.seconds, 3),
                              "stderr_tail": res.stderr_tail[-500:] or None})

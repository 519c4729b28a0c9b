"""engine.hf_processors: the transformers LogitsProcessors equal the kernels ops, and the reference mode reproduces the
authors' HF sampler step (Adam on one Parameter with whole-tensor sums, their processor order, the 1e-9 clamp)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from engine.hf_processors import (
    AdaptiveTemperatureLogitsProcessor,
    EMInfLogitsProcessor,
    SeededSamplingLogitsProcessor,
    authors_logits_processor,
)
from engine.models import resolve
from kernels import adaptive_temperature, em_inf, entropy
from kernels import reference as kref
from kernels.reference_authors import AUTHORS_PROB_CLAMP, authors_em_inf_step, authors_sampler_step


def _logits(b: int, v: int = 512, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * scale


def _ids(b: int) -> torch.LongTensor:
    return torch.zeros(b, 1, dtype=torch.long)


# ------------------------------------------------------------------------------------------- processors == ops


def test_em_inf_processor_equals_op():
    z = _logits(4)
    proc = EMInfLogitsProcessor(lr=0.1, steps=3, kl_weight=0.05, threshold=0.3)
    out = proc(_ids(4), z.clone())
    assert torch.equal(out, em_inf(z, 0.1, 3, 0.05, 0.3))
    assert (entropy(out) < entropy(z)).all()  # it did minimise


def test_adaptive_temperature_processor_equals_op():
    z = _logits(4)
    proc = AdaptiveTemperatureLogitsProcessor(tmin=0.01, tmax=1.0, max_iter=100, tol=0.1, target_ratio=0.85,
                                              threshold=1e-5)
    out = proc(_ids(4), z.clone())
    ref_out, ref_t = adaptive_temperature(z, 0.01, 1.0, 100, 0.1, 0.85, 1e-5)
    assert torch.equal(out, ref_out)
    assert torch.equal(proc.last_temperatures, ref_t)
    assert ((ref_t > 0.01) & (ref_t < 1.0)).all()


@pytest.mark.parametrize("reference", [False, True])
def test_processors_run_under_inference_mode(reference):
    # vLLM and generate() callers may hold inference tensors; the autograd-based paths must still work.
    z = _logits(1)  # batch 1: the reference mode's whole-tensor sums are then per row
    with torch.inference_mode():
        zi = z.clone()
        out = EMInfLogitsProcessor(reference=reference)(_ids(1), zi)
        out_at = AdaptiveTemperatureLogitsProcessor(reference=reference)(_ids(1), zi)
    assert _max_outliers_close(out, em_inf(z), atol=1e-4, max_outliers=2)
    assert torch.allclose(out_at, adaptive_temperature(z)[0])


@pytest.mark.parametrize(
    "kwargs, name",
    [({"lr": 0.0}, "lr"), ({"steps": -1}, "steps"), ({"kl_weight": float("nan")}, "kl_weight"),
     ({"threshold": -1.0}, "threshold"), ({"steps": 2.5}, "steps")],
)
def test_em_inf_processor_validates(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EMInfLogitsProcessor(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"tmin": 0.0}, "tmin"), ({"tmin": 0.5, "tmax": 0.1}, "tmax"), ({"max_iter": -3}, "max_iter"),
     ({"tol": 0.0}, "tol"), ({"target_ratio": -0.5}, "target_ratio"), ({"threshold": float("inf")}, "threshold")],
)
def test_adaptive_temperature_processor_validates(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdaptiveTemperatureLogitsProcessor(**kwargs)


# ---------------------------------------------------------------------------------------------- reference mode


def _closed_form_authors_step(z0: torch.Tensor, lr: float, steps: int, kl_weight: float, threshold: float):
    """The authors' loop written out by hand in float64: whole-tensor entropy sum with their epsilon, batchmean KL,
    explicit Adam (no torch.optim, no autograd)."""
    z0 = z0.double()
    b, eps_h = z0.shape[0], kref.EM_INF_EPS
    p0 = torch.softmax(z0, -1)
    z, m, v = z0.clone(), torch.zeros_like(z0), torch.zeros_like(z0)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        q = torch.softmax(z, -1)
        if -(q * torch.log(q + eps_h)).sum() < threshold:  # one entropy for the whole tensor
            break
        a = -(torch.log(q + eps_h) + q / (q + eps_h))  # dH/dq of H = -sum q log(q + eps)
        grad = q * (a - (q * a).sum(-1, keepdim=True)) + kl_weight * (q - p0) / b
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        z = z - lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps)
    return z


def _max_outliers_close(a: torch.Tensor, b: torch.Tensor, atol: float, max_outliers: int) -> bool:
    # Adam's first step is ~lr*sign(g): an element whose gradient is ~0 can flip sign on the last bit (DESIGN.md).
    return int(((a.double() - b.double()).abs() > atol).sum()) <= max_outliers


@pytest.mark.parametrize("b", [1, 3])
def test_reference_step_matches_hand_written_authors_loop(b):
    z = _logits(b, scale=2.0, seed=b)
    got = authors_em_inf_step(z, lr=0.1, steps=3, kl_weight=0.05, threshold=0.3)
    want = _closed_form_authors_step(z, 0.1, 3, 0.05, 0.3)
    assert got.dtype == torch.float32
    assert _max_outliers_close(got, want, atol=1e-5, max_outliers=2)


def test_reference_mode_equals_op_at_batch_one():
    z = _logits(1)
    out = EMInfLogitsProcessor(reference=True)(_ids(1), z.clone())
    oracle, _ = kref.em_inf(z)
    assert _max_outliers_close(out, oracle, atol=1e-5, max_outliers=2)


def test_reference_mode_couples_the_batch_like_the_authors():
    # Row 0 is already confident (entropy below the threshold on its own), row 1 is uncertain. Per row (our op) row 0
    # is left alone; the authors' whole-tensor entropy sum is above the threshold, so their loop moves row 0 too.
    confident = torch.full((1, 64), -20.0)
    confident[0, 0] = 10.0
    z = torch.cat([confident, _logits(1, v=64, scale=0.5)])
    assert entropy(z[:1]).item() < 0.3 < entropy(z).sum().item()
    ours = EMInfLogitsProcessor()(_ids(2), z.clone())
    theirs = EMInfLogitsProcessor(reference=True)(_ids(2), z.clone())
    assert torch.equal(ours[0], z[0])
    assert not torch.equal(theirs[0], z[0])
    assert _max_outliers_close(theirs, _closed_form_authors_step(z, 0.1, 3, 0.05, 0.3), atol=1e-4, max_outliers=2)


def test_authors_logits_processor_order_and_defaults():
    instruct = GenerationConfig(repetition_penalty=1.05, top_k=20, top_p=0.8, temperature=0.7)
    procs = authors_logits_processor(instruct, temperature=0.1)
    assert [type(p) for p in procs] == [RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                        TopKLogitsWarper, TopPLogitsWarper]
    assert procs[1].temperature == 0.1 and procs[2].top_k == 20 and procs[3].top_p == 0.8
    base = authors_logits_processor(GenerationConfig(), temperature=0.1)
    # The base model's config leaves top_k unset and transformers 4.46 filled in 50.
    assert [type(p) for p in base] == [TemperatureLogitsWarper, TopKLogitsWarper]
    assert base[1].top_k == 50


# ---------------------------------------------------------------------------------------------- seeded sampler


def test_seeded_sampler_reproduces_global_rng_multinomial_per_row():
    z = _logits(3, v=50, scale=1.0)
    seeds = [7, 8, 9]
    proc = SeededSamplingLogitsProcessor(seeds)
    drawn = []
    for _ in range(5):
        out = proc(_ids(3), z)
        assert torch.isinf(out).sum() == 3 * 49 and (out == 0).sum() == 3  # one-hot: greedy picks the draw
        drawn.append(out.argmax(-1))
    drawn = torch.stack(drawn, 1)
    for b, s in enumerate(seeds):
        torch.manual_seed(s)
        want = [torch.multinomial(F.softmax(z[b], -1), 1).item() for _ in range(5)]
        assert drawn[b].tolist() == want
    # A row's draws do not depend on the rows beside it.
    alone = SeededSamplingLogitsProcessor([8])
    assert [alone(_ids(1), z[1:2]).argmax(-1).item() for _ in range(5)] == drawn[1].tolist()


def test_seeded_sampler_clamp_brings_back_masked_tokens():
    # One live token, nine masked (-inf, as top-k leaves them). Clamping probabilities at min_prob before
    # multinomial gives each masked token weight min_prob: P(live) = 1 / (1 + 9 * min_prob).
    z = torch.full((1, 10), float("-inf"))
    z[0, 3] = 0.0
    plain = SeededSamplingLogitsProcessor([0])
    assert all(plain(_ids(1), z).argmax(-1).item() == 3 for _ in range(200))
    clamped = SeededSamplingLogitsProcessor([0], min_prob=0.2)
    live = sum(clamped(_ids(1), z).argmax(-1).item() == 3 for _ in range(4000)) / 4000
    assert abs(live - 1 / 2.8) < 0.03


def test_seeded_sampler_validates():
    with pytest.raises(ValueError, match="seeds"):
        SeededSamplingLogitsProcessor([])
    with pytest.raises(ValueError, match="min_prob"):
        SeededSamplingLogitsProcessor([0], min_prob=1.5)
    with pytest.raises(ValueError, match="rows"):
        SeededSamplingLogitsProcessor([0, 1])(_ids(3), _logits(3))


def test_processor_pipeline_equals_authors_sampler_step():
    z = _logits(1, scale=2.0)
    input_ids = torch.tensor([[5, 9, 5, 11]])
    procs = authors_logits_processor(GenerationConfig(repetition_penalty=1.05, top_k=20, top_p=0.8), 0.1)
    pipeline = LogitsProcessorList(
        [EMInfLogitsProcessor(reference=True), *procs, SeededSamplingLogitsProcessor([123], min_prob=1e-9)]
    )
    ours = [pipeline(input_ids, z.clone()).argmax(-1).item() for _ in range(20)]
    torch.manual_seed(123)
    theirs = [authors_sampler_step(z.clone(), input_ids, procs).item() for _ in range(20)]
    assert ours == theirs
    assert AUTHORS_PROB_CLAMP == 1e-9


def test_reference_pipeline_in_generate_matches_authors_loop():
    """HF generate (KV cache, our processors in reference mode) == the authors' step in a plain loop (full forward
    every step, global RNG after torch.manual_seed), token for token, on the tiny model at the paper's settings."""
    model = AutoModelForCausalLM.from_pretrained(resolve("tiny-random"), dtype=torch.float32).eval()
    prompt = torch.tensor([[11, 42, 7, 99, 3]])
    instruct = GenerationConfig(repetition_penalty=1.05, top_k=20, top_p=0.8)
    procs = authors_logits_processor(instruct, 0.1)
    steps, seed = 10, 42
    pipeline = LogitsProcessorList(
        [EMInfLogitsProcessor(reference=True), *procs, SeededSamplingLogitsProcessor([seed], min_prob=1e-9)]
    )
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=steps, logits_processor=pipeline)
        ids = prompt.clone()
        torch.manual_seed(seed)
        for _ in range(steps):
            logits = model(ids).logits[:, -1].float()
            nxt = authors_sampler_step(logits, ids, procs)
            ids = torch.cat([ids, nxt[:, None]], 1)
    generated = out[0, prompt.shape[1]:].tolist()  # may end early at EOS
    assert len(generated) >= 3
    assert generated == ids[0, prompt.shape[1]:].tolist()[: len(generated)]


def test_authors_step_turns_underflowed_rows_nan_where_the_op_stays_finite():
    """The documented difference (kernels/SEMANTICS.md): their kl_div(probs.log(), p0) is 0 * inf once an fp32
    probability underflows to exactly 0, even at kl_weight 0; the op (and our reference) stays finite."""
    z = torch.tensor([[0.0, -0.5, -104.0]])
    for kl_weight in (0.05, 0.0):
        assert torch.isnan(authors_em_inf_step(z, lr=0.1, steps=3, kl_weight=kl_weight, threshold=0.3)).all()
        out = em_inf(z, lr=0.1, steps=3, kl_weight=kl_weight, threshold=0.3)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, kref.em_inf(z, 0.1, 3, kl_weight, 0.3)[0])
    # one nat less and nothing underflows: the two agree
    z = torch.tensor([[0.0, -0.5, -103.0]])
    torch.testing.assert_close(authors_em_inf_step(z, 0.1, 3, 0.05, 0.3), em_inf(z), rtol=1e-6, atol=1e-6)

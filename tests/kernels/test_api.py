"""The public op layer: argument checks, empty batches, bad rows, batch independence, and the reference itself.

Backend parity lives in the per-op modules (test_entropy.py, test_em_inf.py, test_adaptive_temperature.py); here the
reference is checked against an independent closed-form implementation, so that the oracle every backend is held
to is right.
"""

import math
import warnings

import pytest
import torch

import kernels
from kernels import ops, params, reference


def _rows(batch: int, vocab: int, scale: float = 2.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=g) * scale


# --- argument checks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": -1.0}, "lr"), ({"lr": "0.1"}, "lr"),
        ({"steps": -1}, "steps"), ({"steps": 1.5}, "steps"), ({"steps": True}, "steps"), ({"steps": 10**6}, "steps"),
        ({"kl_weight": -0.1}, "kl_weight"), ({"kl_weight": float("inf")}, "kl_weight"),
        ({"threshold": -1.0}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ],
)
def test_em_inf_rejects_bad_hyper_parameters(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        kernels.em_inf(_rows(2, 16), **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"tmin": 0.0}, "tmin"), ({"tmin": -0.5}, "tmin"), ({"tmax": 0.001}, "tmax"), ({"tmax": float("inf")}, "tmax"),
        ({"max_iter": -1}, "max_iter"), ({"max_iter": 2.0}, "max_iter"), ({"tol": 0.0}, "tol"),
        ({"target_ratio": 0.0}, "target_ratio"), ({"threshold": -1e-5}, "threshold"),
    ],
)
def test_adaptive_temperature_rejects_bad_hyper_parameters(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        kernels.adaptive_temperature(_rows(2, 16), **kwargs)


@pytest.mark.parametrize("op", [kernels.entropy, kernels.em_inf, kernels.adaptive_temperature])
@pytest.mark.parametrize(
    "bad", [torch.zeros(4), torch.zeros(2, 3, 4), torch.zeros(2, 5, dtype=torch.long), torch.zeros(3, 0), [[0.0]]]
)
def test_ops_reject_bad_logits(op, bad):
    with pytest.raises(ValueError, match="^logits must"):
        op(bad)


def test_error_message_names_the_allowed_range():
    with pytest.raises(ValueError) as info:
        kernels.em_inf(_rows(1, 8), lr=-3)
    # the range as the schema (kernels.params) spells it: "(0, 100]"
    assert params.EM_INF.param("lr").range_text() in str(info.value) and "(0, 100]" in str(info.value)
    assert "-3" in str(info.value)


# --- empty batches and bad rows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_batch(dtype):
    z = torch.empty(0, 1000, dtype=dtype)
    assert kernels.entropy(z).shape == (0,)
    out, valid = kernels.em_inf(z, return_valid=True)
    assert out.shape == (0, 1000) and out.dtype == dtype and valid.shape == (0,)
    out, temps, valid = kernels.adaptive_temperature(z, return_valid=True)
    assert out.shape == (0, 1000) and temps.shape == (0,) and valid.shape == (0,)


def _batch_with_bad_rows(vocab: int = 1000) -> tuple[torch.Tensor, list[int]]:
    z = _rows(6, vocab, seed=3)
    z[1, 17] = float("nan")
    z[3, 5] = float("inf")
    z[4] = float("-inf")
    return z, [0, 2, 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bad_rows_come_back_unchanged_and_flagged_without_touching_healthy_rows(dtype):
    z, healthy = _batch_with_bad_rows()
    z = z.to(dtype)
    bad = [1, 3, 4]

    h = kernels.entropy(z)
    assert torch.isnan(h[bad]).all() and torch.isfinite(h[healthy]).all()
    torch.testing.assert_close(h[healthy], kernels.entropy(z[healthy]))

    out, valid = kernels.em_inf(z, return_valid=True)
    assert valid.tolist() == [True, False, True, False, False, True]
    assert torch.equal(out[bad].float().nan_to_num(), z[bad].float().nan_to_num())
    torch.testing.assert_close(out[healthy], kernels.em_inf(z[healthy]))

    out, temps, valid = kernels.adaptive_temperature(z, return_valid=True)
    assert valid.tolist() == [True, False, True, False, False, True]
    assert torch.equal(out[bad].float().nan_to_num(), z[bad].float().nan_to_num())
    assert temps[bad].tolist() == [1.0, 1.0, 1.0]
    out_alone, temps_alone = kernels.adaptive_temperature(z[healthy])
    torch.testing.assert_close(temps[healthy], temps_alone)
    torch.testing.assert_close(out[healthy], out_alone)


def test_masked_entries_stay_masked_and_count_zero():
    z = _rows(3, 500, seed=5)
    masked = torch.arange(500) % 3 == 0
    z[:, masked] = float("-inf")
    torch.testing.assert_close(kernels.entropy(z), reference.entropy(z[:, ~masked].contiguous()))
    out = kernels.em_inf(z)
    assert torch.isneginf(out[:, masked]).all() and torch.isfinite(out[:, ~masked]).all()
    out, _ = kernels.adaptive_temperature(z)
    assert torch.isneginf(out[:, masked]).all()


def test_steps_zero_is_identity():
    z = _rows(2, 300)
    assert torch.equal(kernels.em_inf(z, steps=0), z)


# --- the reference is the authors' computation -------------------------------------------------------------------

def _closed_form_em_inf(z0: torch.Tensor, lr, steps, kl_weight, threshold) -> torch.Tensor:
    """EM-INF for one row in float64 with the analytic gradient and a hand-written Adam (independent of autograd)."""
    z0 = z0.double()
    p0 = torch.softmax(z0, -1)
    z, m, v = z0.clone(), torch.zeros_like(z0), torch.zeros_like(z0)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        q = torch.softmax(z, -1)
        logq_eps = torch.log(q + 1e-12)
        h = -(q * logq_eps).sum()
        if h < threshold:
            break
        # d/dq of -sum q log(q + eps) is -(log(q + eps) + q / (q + eps)); chain through softmax
        dh_dq = -(logq_eps + q / (q + 1e-12))
        grad = q * (dh_dq - (q * dh_dq).sum()) + kl_weight * (q - p0)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        z = z - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return z


@pytest.mark.parametrize("lr, steps, kl_weight, threshold", [(0.1, 3, 0.05, 0.3), (0.05, 10, 0.5, 0.0)])
def test_reference_em_inf_matches_closed_form_adam(lr, steps, kl_weight, threshold):
    z = _rows(3, 2000, seed=11)
    out, valid = reference.em_inf(z, lr, steps, kl_weight, threshold)
    assert valid.all()
    for b in range(3):
        expect = _closed_form_em_inf(z[b], lr, steps, kl_weight, threshold)
        # fp32 autograd vs fp64 analytic: elements whose gradient is ~0 may take a different Adam sign (see
        # DESIGN.md "Testing numerics"); everything else agrees to fp32 rounding of lr-sized moves.
        diff = (out[b].double() - expect).abs()
        assert (diff > 1e-4).sum() <= 3, f"row {b}: {(diff > 1e-4).sum()} elements differ"


def test_reference_em_inf_stops_below_threshold():
    peaked = torch.full((1, 100), -20.0)
    peaked[0, 7] = 10.0  # entropy ~ 1e-11 nats
    out, _ = reference.em_inf(peaked, threshold=0.3)
    assert torch.equal(out, peaked)
    # The threshold is checked before each step only: a row above it gets exactly `steps` updates.
    z = _rows(1, 1000)
    one = reference.em_inf(z, steps=1)[0]
    moved = (one - z).abs()
    assert math.isclose(float(moved.max()), 0.1, rel_tol=1e-3)  # first Adam step ~ lr * sign(g)


def test_reference_em_inf_lowers_entropy_and_keeps_the_head():
    z = _rows(4, 5000, scale=3.0, seed=2)
    out, _ = reference.em_inf(z, steps=3)
    assert (reference.entropy(out) < reference.entropy(z)).all()
    assert torch.equal(out.argmax(-1), z.argmax(-1))


def test_reference_entropy_matches_float64():
    z = _rows(5, 3000, scale=4.0)
    p = torch.softmax(z.double(), -1)
    expect = -(p * torch.log(p)).sum(-1)
    torch.testing.assert_close(reference.entropy(z).double(), expect, rtol=1e-5, atol=1e-6)
    one_hot = torch.full((1, 50), float("-inf"))
    one_hot[0, 3] = 0.0
    assert float(reference.entropy(one_hot)) == 0.0


def test_reference_adaptive_temperature_hits_the_target():
    z = _rows(4, 4000, scale=2.0, seed=9)
    out, temps, valid = reference.adaptive_temperature(z, target_ratio=0.5, tol=0.01)
    h0, h = reference.entropy(z), reference.entropy(out)
    assert valid.all() and (temps < 1).all() and (temps >= 0.01).all()
    assert torch.allclose(h, 0.5 * h0, atol=0.02)
    # H(z) <= threshold: T = 1 and the logits pass through
    peaked = torch.full((1, 10), -50.0)
    peaked[0, 0] = 50.0
    out, temps, _ = reference.adaptive_temperature(peaked)
    assert temps.tolist() == [1.0] and torch.equal(out, peaked)


def test_reference_adaptive_temperature_returns_last_midpoint_when_not_converged():
    z = _rows(1, 1000, seed=4)
    _, temps, _ = reference.adaptive_temperature(z, max_iter=1, tol=1e-9)
    assert temps.tolist() == [pytest.approx((0.01 + 1.0) / 2)]


# --- dispatch ----------------------------------------------------------------------------------------------------

def test_cpu_tensors_use_the_compiled_extension_when_built():
    from kernels import _cpu

    expected = _cpu if _cpu.available() else reference
    assert ops.backend_for(torch.zeros(1, 4)) is expected


def test_missing_extension_falls_back_to_reference_with_one_warning(monkeypatch):
    from kernels import _cpu

    monkeypatch.setattr(_cpu, "_C", None)
    monkeypatch.setattr(ops, "_warned", set())
    z = _rows(2, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = kernels.entropy(z)
        kernels.entropy(z)
    assert sum("kernels._C" in str(w.message) for w in caught) == 1
    torch.testing.assert_close(first, reference.entropy(z))


def test_reference_em_inf_accepts_inference_tensors():
    with torch.inference_mode():
        z = _rows(2, 100)
    out, valid = reference.em_inf(z)
    assert valid.all() and not torch.equal(out, z)

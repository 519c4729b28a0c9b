"""Exact torch references of the public ops: the oracle every backend is tested against.

These reproduce the authors' per-step computation (shared/reference/em_pt_semantics.md sections 1 and 2) one row at a
time, with their epsilons, their optimiser (``torch.optim.Adam`` on a ``Parameter``) and their stopping rules. They are
slow on purpose: clarity and faithfulness, not speed. All maths runs in fp32; outputs keep the input dtype.

Invalid rows (any NaN or +inf, or no finite entry) are returned unchanged and flagged in the returned ``valid`` mask,
as every backend does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import params

EM_INF_EPS = 1e-12  # the authors' entropy epsilon in EM-INF: H = -sum q log(q + 1e-12)
ADAPTIVE_T_EPS = 1e-9  # the authors' entropy epsilon in adaptive temperature


def valid_rows(logits: torch.Tensor) -> torch.Tensor:
    """[B] bool: rows with no NaN, no +inf and at least one finite entry."""
    z = logits.float()
    no_nan_or_posinf = ~(torch.isnan(z) | (z == float("inf"))).any(dim=-1)
    has_finite = torch.isfinite(z).any(dim=-1)
    return no_nan_or_posinf & has_finite


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b are the same elements of the same storage (an op's ``out`` that is its input)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def pass_through(logits: torch.Tensor, out: torch.Tensor | None, rows: torch.Tensor | None):
    """(out, valid) of an op that changes no row: processed rows get the logits, unprocessed ones stay as they are."""
    valid = valid_rows(logits)
    if rows is None:
        if out is None:
            return logits.clone(), valid
        if not same_view(out, logits):
            out.copy_(logits)
        return out, valid
    if out is None:
        out = logits.clone()
    elif not same_view(out, logits):
        out.copy_(torch.where(rows[:, None], logits, out))
    return out, valid | ~rows


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of softmax(logits) per row: logsumexp(z) - sum softmax(z) * z.

    logits: [B, V], any float dtype. Returns [B] fp32. Entries equal to -inf contribute 0; invalid rows give NaN.
    """
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    p = torch.exp(z - lse)
    pz = torch.where(p > 0, p * z, torch.zeros_like(z))  # p * (-inf) would be NaN for masked entries
    h = lse.squeeze(-1) - pz.sum(dim=-1)
    return torch.where(valid_rows(logits), h, torch.full_like(h, float("nan")))


def _em_inf_row(z0: torch.Tensor, lr: float, steps: int, kl_weight: float, threshold: float) -> torch.Tensor:
    """The authors' EM-INF loop (``ent_sample``) on one row z0 [V] fp32, with B = 1 so their sums are per row."""
    z0 = z0.unsqueeze(0)
    p0 = F.softmax(z0, dim=-1).detach()
    z = torch.nn.Parameter(z0.clone())
    opt = torch.optim.Adam([z], lr=lr)  # torch defaults: betas (0.9, 0.999), eps 1e-8, bias-corrected
    for _ in range(steps):
        q = F.softmax(z, dim=-1)
        h = -torch.sum(q * torch.log(q + EM_INF_EPS))
        if h < threshold:  # checked before the update, at T = 1; the entropy after the last update is never checked
            break
        kl = F.kl_div(torch.log_softmax(z, dim=-1), p0, reduction="batchmean")  # KL(p0 || q)
        loss = h + kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z.detach().squeeze(0)


def _row_params(mode: params.Mode, values: dict, b: int, caps: dict[str, int | None]) -> dict:
    """Row b's hyper-parameters as Python scalars: a per-row tensor gives its b-th value; integers are clamped to
    the schema's range and to the caller's bound (as every backend clamps them)."""
    row = {}
    for p in mode.params:
        v = values[p.name]
        v = p.default if v is None else v
        if isinstance(v, torch.Tensor):
            v = v[b].item()
        if p.kind is int:
            high = p.high if caps.get(p.name) is None else min(p.high, caps[p.name])
            v = int(min(max(v, p.low), high))
        else:
            v = float(v)
        row[p.name] = v
    return row


def _output(logits: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return logits.clone() if out is None else out


def em_inf(
    logits: torch.Tensor,
    lr: float | torch.Tensor | None = None,
    steps: int | torch.Tensor | None = None,
    kl_weight: float | torch.Tensor | None = None,
    threshold: float | torch.Tensor | None = None,
    *,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    max_steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM-INF: per row, up to ``steps`` Adam steps on the logits that lower entropy + kl_weight * KL(p0 || q).

    logits: [B, V], any float dtype. Returns (logits' [B, V] in the input dtype, valid [B] bool). Each
    hyper-parameter is a scalar (None: kernels.params' default) or a [B] tensor of per-row values; ``steps`` is
    clamped to the schema's range and to ``max_steps``. rows: [B] bool, rows where False are neither processed nor
    written (valid True). out: where to write (may be ``logits``); None: a copy of the logits.
    """
    valid = valid_rows(logits)
    values = dict(lr=lr, steps=steps, kl_weight=kl_weight, threshold=threshold)
    out = _output(logits, out)
    for b in range(logits.shape[0]):
        if rows is not None and not rows[b]:
            valid[b] = True
            continue
        if not valid[b]:
            out[b] = logits[b]
            continue
        prm = _row_params(params.EM_INF, values, b, {"steps": max_steps})
        # inference_mode(False): callers such as HF generate may hand us inference tensors, which cannot enter
        # autograd; the row's copy made here is an ordinary tensor. The result is written in the caller's mode.
        with torch.inference_mode(False), torch.enable_grad():
            z = _em_inf_row(logits[b].float().clone(), **prm)
        out[b] = z.to(logits.dtype)
    return out, valid


def _entropy_eps(z: torch.Tensor) -> float:
    p = F.softmax(z, dim=-1)
    return float(-torch.sum(p * torch.log(p + ADAPTIVE_T_EPS)))


def _adaptive_temperature_row(
    z: torch.Tensor, tmin: float, tmax: float, max_iter: int, tol: float, target_ratio: float, threshold: float
) -> float:
    """The authors' ``AdaptiveTemperatureProcessor`` bisection on one row z [V] fp32; returns T.

    One addition, which leaves the result bit for bit the authors': the loop stops at its fixed point. Once a
    midpoint equals lo or hi, the update leaves [lo, hi] as it was or collapses it to [mid, mid]; either way every
    further midpoint is that same number (the float64 (lo + hi) / 2 of two equal doubles is that double), every
    further entropy the same value, every further decision the same, and every iteration sets t = mid, converged
    or not. So t = mid is the result whatever max_iter is left, and the loop returns it without evaluating it.
    """
    h0 = _entropy_eps(z)
    target = max(threshold, target_ratio * h0)
    t = 1.0
    if h0 > threshold:
        lo, hi = tmin, tmax
        for _ in range(max_iter):
            mid = (lo + hi) / 2
            t = mid  # when not converged, the last midpoint is returned
            if mid == lo or mid == hi:  # the fixed point (see above): t is final
                break
            h = _entropy_eps(z / mid)
            if abs(h - target) < tol:
                break
            if h < target:
                lo = mid  # too cold: raise the lower bound
            else:
                hi = mid
    return t


def adaptive_temperature(
    logits: torch.Tensor,
    tmin: float | torch.Tensor | None = None,
    tmax: float | torch.Tensor | None = None,
    max_iter: int | torch.Tensor | None = None,
    tol: float | torch.Tensor | None = None,
    target_ratio: float | torch.Tensor | None = None,
    threshold: float | torch.Tensor | None = None,
    *,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    max_iter_bound: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adaptive temperature: per row, bisect T in [tmin, tmax] until H(softmax(z / T)) is within tol of the target.

    logits: [B, V], any float dtype. Returns (logits / T [B, V] in the input dtype, T [B] fp32, valid [B] bool).
    The midpoints are computed in float64 as the authors' Python floats are; the entropies in fp32.
    Hyper-parameters, rows and out as in :func:`em_inf` (max_iter clamped to the schema's range and to
    ``max_iter_bound``); rows not processed get T = 1.
    """
    valid = valid_rows(logits)
    temps = torch.ones(logits.shape[0], dtype=torch.float32, device=logits.device)
    values = dict(tmin=tmin, tmax=tmax, max_iter=max_iter, tol=tol, target_ratio=target_ratio, threshold=threshold)
    out = _output(logits, out)
    for b in range(logits.shape[0]):
        if rows is not None and not rows[b]:
            valid[b] = True
            continue
        if not valid[b]:
            out[b] = logits[b]
            continue
        z = logits[b].float()
        t = _adaptive_temperature_row(z, **_row_params(params.ADAPTIVE_TEMPERATURE, values, b,
                                                       {"max_iter": max_iter_bound}))
        temps[b] = t
        out[b] = (z / t).to(logits.dtype)
    return out, temps, valid

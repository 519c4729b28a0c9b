"""The public ops: argument checks at the API boundary, then one dispatch point per op.

Backends (all private, same signatures, same results):
- ``kernels._triton``: Triton kernels, for CUDA tensors.
- ``kernels._cpu``: the compiled C++ extension ``kernels._C`` (csrc/), for CPU tensors.
- ``kernels.reference``: the exact torch oracle, used when neither fits (with a one-time warning).

No op syncs with the host (one exception: CUDA EM-INF with a per-row ``steps`` tensor and no ``max_steps`` reads its
maximum): invalid rows (NaN, +inf, or nothing finite) are passed through unchanged and reported in the ``valid``
mask that ``return_valid=True`` returns.

Hyper-parameters: kernels.params is their one schema (names, defaults, ranges); an argument left at None takes the
schema's default at call time. Each is a Python scalar, checked on the host (ValueError naming it and its range), or
a [B] tensor of per-row values on the logits' device, not checked (the kernels clamp integers to the schema's range
and stay finite on any float). Per-row values, the ``rows`` mask and ``out`` (which may be the logits themselves)
run in the same launches as scalars: one launch set for the whole batch.
"""

from __future__ import annotations

import math
import warnings
from types import ModuleType
from typing import Any

import torch

from kernels import params, reference
from kernels.params import Mode, Param

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def backend_for(logits: torch.Tensor) -> ModuleType:
    """The backend module that runs ops on this tensor's device."""
    if logits.is_cuda:
        from kernels import _triton

        if _triton.available():
            return _triton
        _warn_once("triton", "kernels: Triton is not importable; CUDA tensors use the slow torch reference")
        return reference
    if logits.device.type == "cpu":
        from kernels import _cpu

        if _cpu.available():
            return _cpu
        _warn_once(
            "cpu",
            "kernels: the compiled extension kernels._C is missing (reinstall the package to build csrc/); "
            f"CPU tensors use the slow torch reference ({_cpu.load_error()})",
        )
    return reference


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, V], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension V, got V = 0")


ParamValue = float | int | torch.Tensor
_FLOAT_DTYPES = (torch.float32, torch.float64)
_INT_DTYPES = (torch.int32, torch.int64)


def _check_param(p: Param, value: Any, batch: int, device: torch.device) -> ParamValue:
    """A Python scalar checked by the schema (ValueError naming the parameter and its range), or a per-row [B]
    tensor on the logits' device whose dtype fits the parameter's kind. Tensor values are not checked: that would
    sync with the device; the kernels clamp integer values to the schema's range and survive any float value."""
    if not isinstance(value, torch.Tensor):
        return p.check(value)
    allowed = _INT_DTYPES if p.kind is int else _FLOAT_DTYPES
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{p.name} as a per-row tensor must have shape [B] = [{batch}], got {tuple(value.shape)}")
    if value.dtype not in allowed:
        names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(f"{p.name} as a per-row tensor must be {names}, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{p.name} as a per-row tensor must be on the logits' device {device}, got {value.device}")
    return value


def _resolve(mode: Mode, given: dict[str, Any], logits: torch.Tensor) -> dict[str, ParamValue]:
    """Op keyword -> checked value; None takes the schema's default (read at call time)."""
    batch, device = logits.shape[0], logits.device
    values = {p.name: _check_param(p, p.default if given[p.name] is None else given[p.name], batch, device)
              for p in mode.params}
    if mode is params.ADAPTIVE_TEMPERATURE and not any(isinstance(values[n], torch.Tensor) for n in ("tmin", "tmax")):
        mode.check_joint(values, lambda p: p.name)  # tmax >= tmin, when both are known on the host
    return values


def _check_bound(mode: Mode, name: str, spelled: str, bound: Any) -> int | None:
    """A host-known upper bound of an integer parameter given per row (None: not given)."""
    return None if bound is None else mode.param(name).check(bound, spelled)


def _check_rows(rows: Any, logits: torch.Tensor) -> torch.Tensor | None:
    if rows is None:
        return None
    if not isinstance(rows, torch.Tensor) or rows.dtype != torch.bool or tuple(rows.shape) != (logits.shape[0],):
        shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise ValueError(f"rows must be None or a bool tensor of shape [B] = [{logits.shape[0]}], got {shape}")
    if rows.device != logits.device:
        raise ValueError(f"rows must be on the logits' device {logits.device}, got {rows.device}")
    return rows


def _span(t: torch.Tensor) -> tuple[int, int]:
    extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def _check_out(out: Any, logits: torch.Tensor) -> torch.Tensor | None:
    """None, or a [B, V] tensor like the logits with unit stride along V and rows that do not overlap, which is
    either the logits themselves (same storage, same strides: in place) or does not overlap them."""
    if out is None:
        return None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"out must be None or a torch.Tensor, got {type(out).__name__}")
    if out.shape != logits.shape or out.dtype != logits.dtype or out.device != logits.device:
        raise ValueError(f"out must match the logits' shape, dtype and device {tuple(logits.shape)}, {logits.dtype}, "
                         f"{logits.device}; got {tuple(out.shape)}, {out.dtype}, {out.device}")
    batch, vocab = out.shape
    if (vocab > 1 and out.stride(1) != 1) or (batch > 1 and out.stride(0) < vocab):
        raise ValueError(f"out must have unit stride along V and non-overlapping rows, got strides {out.stride()}")
    if out.numel() and logits.numel() and not reference.same_view(out, logits):
        (a0, a1), (b0, b1) = _span(out), _span(logits)
        if a0 < b1 and b0 < a1:
            raise ValueError("out must be the logits themselves (in place) or not overlap them")
    return out


def bisection_iterations(tmin: float, tmax: float, max_iter: int) -> int:
    """The most bisection iterations that can matter for [tmin, tmax]: min(max_iter, n) where n bounds the iterations
    the reference's bisection runs before its fixed point, on any path. Adaptive temperature with max_iter and with
    this value return the same T (bit for bit), so a caller may pass it as ``max_iter_bound`` or as ``max_iter``.

    The float64 interval [lo, hi] roughly halves per iteration and reaches its fixed point (a midpoint equal to lo or
    hi, after which every iteration recomputes that midpoint, see kernels.reference) once lo and hi are neighbouring
    doubles: at the latest when its width falls below the spacing of doubles at tmin, the smallest in the interval.
    So n = ceil(log2((tmax - tmin) / ulp(tmin))) + 2 (the + 2 covers the midpoints' rounding): 61 for the default
    [0.01, 1], 1051 for [1e-300, 1], 1 when tmin == tmax. tests/kernels/test_adaptive_temperature.py checks it on
    extreme intervals and paths. Arguments are checked as the op checks them.
    """
    mode = params.ADAPTIVE_TEMPERATURE
    values = mode.check({"tmin": tmin, "tmax": tmax, "max_iter": max_iter})
    tmin, tmax, max_iter = values["tmin"], values["tmax"], values["max_iter"]
    if tmax == tmin:
        return min(max_iter, 1)
    n = math.ceil(math.log2(tmax - tmin) - math.log2(math.ulp(tmin))) + 2
    return min(max_iter, n)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) per row.

    logits: [B, V], any float dtype, on CPU or CUDA. Returns [B] fp32 on the same device: logsumexp(z) - sum
    softmax(z) * z. Entries equal to -inf contribute 0; rows with NaN or +inf, or with no finite entry, give NaN.
    """
    _check_logits(logits)
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.float32, device=logits.device)
    return backend_for(logits).entropy(logits)


def em_inf(
    logits: torch.Tensor,
    lr: ParamValue | None = None,
    steps: int | torch.Tensor | None = None,
    kl_weight: ParamValue | None = None,
    threshold: ParamValue | None = None,
    *,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    max_steps: int | None = None,
    return_valid: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """EM-INF on next-token logits: per row, up to ``steps`` Adam steps that lower entropy + kl_weight * KL(p0 || q).

    Per row this is exactly the authors' loop on that row alone (Adam with betas (0.9, 0.999), eps 1e-8; the
    entropy at T = 1 is checked against ``threshold`` before each step and the row stops once it is below).
    logits: [B, V], any float dtype. Returns logits' [B, V] in the input dtype, and with ``return_valid`` also
    valid [B] bool (False: the row held NaN/+inf or nothing finite and was returned unchanged).

    Hyper-parameters (names, defaults, ranges: kernels.params.EM_INF; None means the schema's default): each a
    Python scalar, checked here, or a [B] tensor on the logits' device with one value per row (float32/float64 for
    lr, kl_weight, threshold; int32/int64 for steps), not checked (no host sync): steps is clamped to [0, 1000]
    and to ``max_steps`` in the kernels, and any float value gives a finite computation (NaN: a garbage row).
    Mixed scalars and tensors are fine; the whole batch runs in one launch set.
    max_steps: a host-known bound of a per-row ``steps`` (CUDA launches max_steps + 1 passes; without it the op
    reads ``int(steps.max())``, one host sync). rows: None (every row) or [B] bool; rows where it is False are not
    processed nor written (valid True for them). out: None (a new tensor) or a [B, V] tensor of the logits' dtype,
    e.g. the logits themselves for an in-place update; rows not processed keep what ``out`` held (with out=None,
    a copy of the logits).
    """
    _check_logits(logits)
    mode = params.EM_INF
    p = _resolve(mode, dict(lr=lr, steps=steps, kl_weight=kl_weight, threshold=threshold), logits)
    max_steps = _check_bound(mode, "steps", "max_steps", max_steps)
    rows = _check_rows(rows, logits)
    out = _check_out(out, logits)
    steps = p["steps"]
    if not isinstance(steps, torch.Tensor) and max_steps is not None:
        steps = min(steps, max_steps)
    if logits.shape[0] == 0 or (not isinstance(steps, torch.Tensor) and steps == 0) or max_steps == 0:
        res, valid = reference.pass_through(logits, out, rows)
    else:
        if rows is not None and out is None:
            out = logits.clone()
        res, valid = backend_for(logits).em_inf(logits, p["lr"], steps, p["kl_weight"], p["threshold"], rows=rows,
                                                out=out, max_steps=max_steps)
    return (res, valid) if return_valid else res


def adaptive_temperature(
    logits: torch.Tensor,
    tmin: ParamValue | None = None,
    tmax: ParamValue | None = None,
    max_iter: int | torch.Tensor | None = None,
    tol: ParamValue | None = None,
    target_ratio: ParamValue | None = None,
    threshold: ParamValue | None = None,
    *,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    max_iter_bound: int | None = None,
    return_valid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adaptive temperature: per row, the authors' bisection for T such that H(z / T) ~ target_ratio * H(z).

    logits: [B, V], any float dtype. Returns (logits / T [B, V] in the input dtype, T [B] fp32), and with
    ``return_valid`` also valid [B] bool. T = 1 when H(z) <= threshold and for invalid rows (returned unchanged).
    The bisection stops at its fixed point (a midpoint equal to an end of the interval), where the reference's
    result is already final, so a large max_iter costs only the iterations that can change T
    (:func:`bisection_iterations`).

    Hyper-parameters (kernels.params.ADAPTIVE_TEMPERATURE; None means the schema's default): Python scalars,
    checked here, or [B] tensors on the logits' device (float32/float64; int32/int64 for max_iter), not checked:
    max_iter is clamped to [0, 10000] and to ``max_iter_bound`` in the kernels; any float value gives a finite
    computation. max_iter_bound: optional host-known bound of a per-row max_iter (the CUDA launch count needs no
    sync either way). rows / out: as for :func:`em_inf`; rows not processed get T = 1 and valid True.
    """
    _check_logits(logits)
    mode = params.ADAPTIVE_TEMPERATURE
    p = _resolve(mode, dict(tmin=tmin, tmax=tmax, max_iter=max_iter, tol=tol, target_ratio=target_ratio,
                            threshold=threshold), logits)
    max_iter_bound = _check_bound(mode, "max_iter", "max_iter_bound", max_iter_bound)
    rows = _check_rows(rows, logits)
    out = _check_out(out, logits)
    if not isinstance(p["max_iter"], torch.Tensor) and max_iter_bound is not None:
        p["max_iter"] = min(p["max_iter"], max_iter_bound)
    if logits.shape[0] == 0:
        empty = torch.empty(0, dtype=torch.float32, device=logits.device)
        res, temps, valid = (logits.clone() if out is None else out), empty, empty.bool()
    else:
        if rows is not None and out is None:
            out = logits.clone()
        res, temps, valid = backend_for(logits).adaptive_temperature(
            logits, p["tmin"], p["tmax"], p["max_iter"], p["tol"], p["target_ratio"], p["threshold"], rows=rows,
            out=out, max_iter_bound=max_iter_bound)
    return (res, temps, valid) if return_valid else (res, temps)

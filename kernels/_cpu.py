"""CPU backend: thin wrappers over the compiled extension ``kernels._C`` built from csrc/cpu by setup.py.

Hyper-parameters arrive as Python scalars or [B] tensors (kernels.ops checked them); the extension takes each as a
(scalar, optional tensor) pair, and clamps per-row integers to the schema's range and the caller's bound.
"""

from __future__ import annotations

import torch

from kernels import params

try:
    from kernels import _C  # type: ignore[attr-defined]

    _load_error: str | None = None
except ImportError as exc:  # the package was installed without building csrc/
    _C = None
    _load_error = str(exc)


def available() -> bool:
    return _C is not None


def load_error() -> str | None:
    return _load_error


def _pair(value) -> tuple:
    """(scalar, tensor or None) as the extension takes a hyper-parameter."""
    if isinstance(value, torch.Tensor):
        return 0, value.contiguous()
    return value, None


def _high(mode: params.Mode, name: str, bound: int | None) -> int:
    high = int(mode.param(name).high)
    return high if bound is None else min(high, bound)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    return _C.entropy(logits.contiguous())


def em_inf(logits, lr, steps, kl_weight, threshold, *, rows=None, out=None, max_steps=None, module=None):
    return (module or _C).em_inf(
        logits.contiguous(), *_pair(lr), *_pair(steps), *_pair(kl_weight), *_pair(threshold),
        None if rows is None else rows.contiguous(), out, _high(params.EM_INF, "steps", max_steps))


def adaptive_temperature(logits, tmin, tmax, max_iter, tol, target_ratio, threshold, *, rows=None, out=None,
                         max_iter_bound=None, module=None):
    return (module or _C).adaptive_temperature(
        logits.contiguous(), *_pair(tmin), *_pair(tmax), *_pair(max_iter), *_pair(tol), *_pair(target_ratio),
        *_pair(threshold), None if rows is None else rows.contiguous(), out,
        _high(params.ADAPTIVE_TEMPERATURE, "max_iter", max_iter_bound))

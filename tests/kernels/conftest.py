"""Helpers shared by the kernel test modules (fixtures, since the test modules are not importable packages)."""

import pytest

from kernels import reference


def _near_boundary_args(z0, case: str, gap: float) -> tuple:
    """adaptive_temperature arguments that put one decision of row z0's bisection `gap` nats from its boundary:
    threshold_*: H_eps(T=1) next to the threshold; tol_*: the first midpoint's H_eps next to target + tol or
    target - tol (converging there or not); target_4th_midpoint: the 4th midpoint's H_eps next to the target."""
    h_eps = reference._entropy_eps
    h0 = h_eps(z0)
    args = (0.01, 1.0, 100, 0.1, 0.85, 1e-5)
    if case.startswith("threshold"):
        return args[:5] + (h0 + (gap if case == "threshold_above" else -gap),)
    if case.startswith("tol"):
        d = abs(h_eps(z0 / 0.505) - 0.85 * h0)
        return (0.01, 1.0, 100, d + (gap if case == "tol_converges" else -gap), 0.85, 1e-5)
    assert case == "target_4th_midpoint", case
    lo, hi = 0.01, 1.0
    for _ in range(4):  # the path towards T = 0.3: its 4th midpoint
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < 0.3 else (lo, mid)
    return (0.01, 1.0, 9, 1e-6, (h_eps(z0 / mid) + gap) / h0, 1e-5)


@pytest.fixture
def near_boundary_args():
    return _near_boundary_args


@pytest.fixture
def sm90_exp(monkeypatch):
    """Triton's interpreter computing fp32 exp as the compiled sm_90 code does (kernels._triton.aot's PTX):
    ex2.approx.f32 of fp32(x * log2 e). Rounding the argument costs up to |x| 2^-24 relative, more than ex2.approx's
    own ~2^-22 for |x| > 4, so the emulation is the exact 2^y of the rounded argument. Lets the interpreter tests see
    the GPU's exp error, a few ulps where numpy's is under one."""
    import numpy as np
    from triton.runtime import interpreter

    log2e = np.float32(1.4426950408889634)

    def exp(x):
        if x.dtype != np.float32:
            return np.exp(x)
        return np.exp2((x * log2e).astype(np.float32).astype(np.float64)).astype(np.float32)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_exp", lambda self, arg: self.unary_op(arg, exp))

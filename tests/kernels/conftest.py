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

"""Adaptive temperature's op contract on every backend (the `backend` fixture of conftest.py: reference, C++ native
and AVX2 builds, Triton in the interpreter with one and with several programs per row, CUDA): per-row
hyper-parameters in one launch set, the rows mask, the output tensor (in place included), values no host check has
seen, and the bisection's fixed point (issue #13): the reference stops there with the authors' result, bit for bit,
and every backend returns that T at max_iter 10000 for what the arithmetic allows, bounded by
kernels.ops.bisection_iterations.

The comparator (`assert_rows_as_alone`): a row of a mixed batch has, bit for bit, the T and the output that the same
backend returns for that row alone called with that row's hyper-parameters as Python scalars. The scalar path is
held to the oracle by the backend parity tests (test_cpu_kernels.py, test_triton_kernels.py).
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import kernels
from kernels import ops, reference

ARGS = (0.01, 1.0, 100, 0.1, 0.85, 1e-5)  # the scripts' values
TMIN = [0.01, 0.02, 0.01, 0.05, 0.01, 0.1]
MAX_ITER = [100, 0, 3, 10000, 50, 7]
TOL = [0.1, 0.1, 0.1, 1e-3, 0.05, 0.1]
THRESHOLD = [1e-5, 1e-5, 1e-5, 1e-5, 50.0, 1e-5]  # row 4: above H(z), T = 1


def rows_of(batch: int, vocab: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """Rows of spread entropies; row 1 masked (every third token -inf), row 2 with a NaN (invalid)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, vocab, generator=g) * torch.linspace(0.3, 3.0, batch)[:, None]
    z[1, ::3] = float("-inf")
    z[2, vocab // 2] = float("nan")
    return z.to(dtype).to(device)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype])


def scalar(v, b: int):
    return v[b].item() if isinstance(v, torch.Tensor) else v


NAMES = ("tmin", "tmax", "max_iter", "tol", "target_ratio", "threshold")


def assert_rows_as_alone(backend, x, result, prm: tuple, mask=None, sentinel=None, bound=None) -> None:
    out, temps, valid = result
    for b in range(x.shape[0]):
        if mask is not None and not mask[b]:
            assert bool(valid[b]) and float(temps[b]) == 1.0, f"row {b} left out: valid, T = 1"
            assert torch.equal(bits(out[b]), bits(sentinel[b])), f"row {b} left out was written"
            continue
        row = [scalar(v, b) for v in prm]
        row[2] = int(min(max(row[2], 0), 10000 if bound is None else bound))
        a_out, a_t, a_valid = backend.adaptive_temperature(x[b : b + 1].clone(), *row)
        assert bool(valid[b]) == bool(a_valid[0]), f"row {b}"
        assert float(temps[b]) == float(a_t[0]), f"row {b}: T {float(temps[b])} alone {float(a_t[0])}"
        assert torch.equal(bits(out[b]), bits(a_out[0])), f"row {b}: per-row output differs from its scalar call"


def per_row(device: str) -> tuple:
    return (torch.tensor(TMIN, dtype=torch.float32, device=device), 1.0,
            torch.tensor(MAX_ITER, dtype=torch.int64, device=device),
            torch.tensor(TOL, dtype=torch.float64, device=device), 0.85,
            torch.tensor(THRESHOLD, dtype=torch.float64, device=device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bound", [None, 60])
def test_per_row_parameters_in_one_call(backend, dtype, bound):
    x = rows_of(6, 4500, dtype, backend.device)
    prm = per_row(backend.device)
    result = backend.adaptive_temperature(x, *prm, max_iter_bound=bound)
    _, temps, valid = result
    assert valid.tolist() == [True, True, False, True, True, True]
    assert temps[[1, 2, 4]].tolist() == [1.0, 1.0, 1.0]  # max_iter 0, invalid, threshold above H
    assert_rows_as_alone(backend, x, result, prm, bound=bound)


def test_mixed_scalars_and_tensors_and_the_rows_mask(backend):
    x = rows_of(6, 1000, torch.float32, backend.device, seed=1)
    prm = list(ARGS)
    prm[2] = torch.tensor(MAX_ITER, dtype=torch.int32, device=backend.device)
    prm[1] = torch.tensor([1.0, 0.9, 2.0, 1.0, 1.0, 0.5], dtype=torch.float64, device=backend.device)
    mask = torch.tensor([True, False, True, True, False, True], device=backend.device)
    sentinel = torch.full_like(x, 7.0)
    out = sentinel.clone()
    result = backend.adaptive_temperature(x, *prm, rows=mask, out=out)
    assert result[0].data_ptr() == out.data_ptr()
    assert result[2].tolist() == [True, True, False, True, True, True]
    assert_rows_as_alone(backend, x, result, tuple(prm), mask, sentinel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_in_place(backend, dtype):
    x = rows_of(6, 4500, dtype, backend.device, seed=2)
    prm = per_row(backend.device)
    mask = torch.tensor([True, True, True, False, True, True], device=backend.device)
    e_out, e_t, e_valid = backend.adaptive_temperature(x, *prm, rows=mask, out=x.clone())
    y = x.clone()
    out, temps, valid = backend.adaptive_temperature(y, *prm, rows=mask, out=y)
    assert out.data_ptr() == y.data_ptr() and torch.equal(valid, e_valid) and torch.equal(temps, e_t)
    assert torch.equal(bits(y), bits(e_out)) and torch.equal(bits(y[3]), bits(x[3]))
    e_out, e_t, _ = backend.adaptive_temperature(x, *ARGS)  # scalar parameters in place: as out of place
    y = x.clone()
    _, temps, _ = backend.adaptive_temperature(y, *ARGS, out=y)
    assert torch.equal(bits(y), bits(e_out)) and torch.equal(temps, e_t)


def test_integer_values_are_clamped(backend):
    x = rows_of(6, 1000, torch.float32, backend.device, seed=3)[[0, 3, 4, 5]].contiguous()
    max_iter = torch.tensor([10**12, -3, 2, 4], dtype=torch.int64, device=backend.device)
    result = backend.adaptive_temperature(x, 0.01, 1.0, max_iter, 1e-6, 0.85, 1e-5, max_iter_bound=3)
    assert_rows_as_alone(backend, x, result, (0.01, 1.0, max_iter, 1e-6, 0.85, 1e-5), bound=3)


def test_unchecked_float_values_finish(backend):
    # NaN / inverted / negative floats are not checked on the host: the row may be garbage, the call finishes
    x = rows_of(6, 1000, torch.float32, backend.device, seed=4)
    nan = float("nan")
    f64 = dict(dtype=torch.float64, device=backend.device)
    tmin = torch.tensor([nan, 0.5, 0.01, -1.0, 0.01, 0.01], **f64)
    tmax = torch.tensor([1.0, 0.1, nan, 1.0, 1.0, 1.0], **f64)
    tol = torch.tensor([0.1, 0.1, 0.1, 0.1, nan, 0.1], **f64)
    thr = torch.tensor([1e-5, 1e-5, 1e-5, 1e-5, 1e-5, nan], **f64)
    # max_iter 300: a NaN interval never reaches a fixed point, so those rows run every iteration
    out, temps, valid = backend.adaptive_temperature(x, tmin, tmax, 300, tol, -0.5, thr)
    assert out.shape == x.shape and temps.shape == valid.shape == (6,)


# --- the fixed point --------------------------------------------------------------------------------------------

def authors_bisection(z: torch.Tensor, tmin, tmax, max_iter, tol, target_ratio, threshold) -> float:
    """The authors' loop without the fixed-point stop (em_pt_semantics.md section 2), as the reference had it."""
    h0 = reference._entropy_eps(z)
    target = max(threshold, target_ratio * h0)
    t = 1.0
    if h0 > threshold:
        lo, hi = tmin, tmax
        for _ in range(max_iter):
            mid = (lo + hi) / 2
            h = reference._entropy_eps(z / mid)
            t = mid
            if abs(h - target) < tol:
                break
            if h < target:
                lo = mid
            else:
                hi = mid
    return t


@pytest.mark.parametrize("tmin", [0.01, 1e-6, 1e-30])
def test_reference_fixed_point_stop_is_the_authors_result(tmin):
    # tol 1e-12: no row converges; the authors' loop runs all 10000 iterations, the reference stops at the fixed
    # point (after at most bisection_iterations), with the same T bit for bit
    z = rows_of(4, 300, torch.float32, "cpu", seed=5)[[0, 1, 3]].float()
    z[2, :2] = 9.0  # a tied maximum: H(z / T) -> log 2 > target, the path runs down to tmin
    args = (tmin, 1.0, 10000, 1e-12, 0.85, 1e-5)
    _, temps, _ = reference.adaptive_temperature(z, *args)
    for b in range(3):
        assert float(temps[b]) == float(torch.tensor(authors_bisection(z[b], *args), dtype=torch.float32)), b


def _iterations_to_fixed_point(tmin: float, tmax: float, up) -> int:
    lo, hi = tmin, tmax
    for i in range(1, 5000):
        mid = (lo + hi) / 2
        if mid == lo or mid == hi:
            return i
        if up(i, mid):
            lo = mid
        else:
            hi = mid
    raise AssertionError("no fixed point")


def _up_before(c):
    return lambda i, m: i < c


def _up_from(c):
    return lambda i, m: i >= c


def _coin(seed):
    r = random.Random(seed)
    return lambda i, m: r.random() < 0.5


def _below(t):
    return lambda i, m: m < t


@pytest.mark.parametrize("tmin", [5e-324, 1e-320, 2.2250738585072014e-308, 1e-300, 1e-30, 1e-6, 0.01, 0.5, 999.0])
def test_bisection_iterations_bounds_every_path(tmin):
    # the fixed point comes within the bound on any path: all up, all down, alternating, switching once, random,
    # and towards a fixed target, for intervals from one ulp wide to the whole range
    for tmax in sorted({tmin, math.nextafter(tmin, 2e6), 3 * tmin, 1.0, 2.0, 1e6}):
        if tmax < tmin or tmax > 1e6:
            continue
        n = ops.bisection_iterations(tmin, tmax, 10000)
        paths = [lambda i, m: True, lambda i, m: False, lambda i, m: i % 2 == 0, lambda i, m: i % 2 == 1]
        paths += [_up_before(c) for c in range(1, 70, 3)] + [_up_from(c) for c in range(1, 70, 3)]
        paths += [_coin(k) for k in range(50)] + [_below(t) for t in (tmin * 1.5, (tmin + tmax) / 3, tmax * 0.999, 0.25)]
        worst = max(_iterations_to_fixed_point(tmin, tmax, p) for p in paths)
        assert worst <= n, (tmin, tmax, worst, n)
    assert ops.bisection_iterations(0.01, 1.0, 10000) == 61 and ops.bisection_iterations(0.01, 1.0, 20) == 20
    assert ops.bisection_iterations(0.3, 0.3, 100) == 1 and ops.bisection_iterations(0.3, 0.3, 0) == 0
    with pytest.raises(ValueError, match="^tmax must be"):
        ops.bisection_iterations(0.5, 0.1, 100)


def tied_rows(device: str) -> torch.Tensor:
    """Rows whose bisection runs down to tmin far from every decision boundary: a tied maximum keeps
    H(z / T) >= log 2 at any T, above the target (0.3 nats) by 0.39 nats. Row 2: a 'realistic' row (randn * 2)."""
    g = torch.Generator().manual_seed(6)
    z = torch.randn(3, 1000, generator=g)
    z[:2, :2] = 8.0
    z[1] *= 0.5
    z[2] *= 2.0
    return z.to(device)


@pytest.mark.parametrize("tmin", [0.01, 1e-30])
def test_max_iter_10000_stops_at_the_fixed_point(backend, tmin):
    # max_iter 10000, tol 1e-9: rows 0 and 1 never converge and run to the fixed point next to tmin (61 / 154
    # iterations); T is the reference's, and the same as with max_iter = bisection_iterations (no later iteration
    # can change it). Row 2 converges on the way (tol 0.1 there).
    z = tied_rows(backend.device)
    h0 = [reference._entropy_eps(z[b].float().cpu()) for b in range(3)]
    ratio = torch.tensor([0.3 / h0[0], 0.3 / h0[1], 0.85], dtype=torch.float64, device=backend.device)
    tol = torch.tensor([1e-9, 1e-9, 0.1], dtype=torch.float64, device=backend.device)
    bound = ops.bisection_iterations(tmin, 1.0, 10000)
    _, temps, _ = backend.adaptive_temperature(z, tmin, 1.0, 10000, tol, ratio, 1e-5)
    _, at_bound, _ = backend.adaptive_temperature(z, tmin, 1.0, bound, tol, ratio, 1e-5)
    _, ref_t, _ = reference.adaptive_temperature(z.cpu(), tmin, 1.0, 10000, tol.cpu(), ratio.cpu(), 1e-5)
    assert torch.equal(temps.cpu(), ref_t) and torch.equal(at_bound.cpu(), ref_t), (temps, at_bound, ref_t)
    assert abs(float(ref_t[0]) - tmin) < 1e-6 * tmin  # the path did run down to tmin
    if backend.name.startswith("triton") or backend.name == "cuda":
        from kernels._triton import k_adaptive_temperature as k

        counts = torch.zeros(3, dtype=torch.int32, device=backend.device)
        k.adaptive_temperature(z, tmin, 1.0, 10000, tol, ratio, 1e-5, backend.splits, sweep_counts=counts)
        assert int(counts[0]) <= 1 + -(-bound // k.LEVELS) + 1, (counts, bound)  # what the arithmetic allows


def test_max_iter_bound_keeps_t_at_the_default_interval():
    # the plugin may pass bisection_iterations(tmin, tmax, max_iter) as max_iter: same T on realistic rows
    z = rows_of(6, 2000, torch.float32, "cpu", seed=7)
    for tol in (0.1, 1e-9):
        args = [0.01, 1.0, 10000, tol, 0.85, 1e-5]
        _, t_full, _ = reference.adaptive_temperature(z, *args)
        args[2] = ops.bisection_iterations(0.01, 1.0, 10000)
        _, t_bound, _ = reference.adaptive_temperature(z, *args)
        assert torch.equal(t_full, t_bound)


def test_op_checks_bounds_and_tensors():
    x = rows_of(3, 100, torch.float32, "cpu")
    with pytest.raises(ValueError, match="^max_iter_bound must be"):
        kernels.adaptive_temperature(x, max_iter_bound=10**6)
    with pytest.raises(ValueError, match="^max_iter as a per-row tensor must be int32 or int64"):
        kernels.adaptive_temperature(x, max_iter=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="^tmin as a per-row tensor must be float32 or float64"):
        kernels.adaptive_temperature(x, tmin=torch.ones(3, dtype=torch.int64))
    # tmax >= tmin is checked when both are scalars; with a tensor the kernels take the values as they are
    with pytest.raises(ValueError, match="^tmax must be >= tmin"):
        kernels.adaptive_temperature(x, tmin=0.5, tmax=0.1)
    kernels.adaptive_temperature(x, tmin=torch.full((3,), 0.5), tmax=0.1)

"""EM-INF's op contract on every backend (the `backend` fixture of conftest.py: reference, C++ native and AVX2 builds,
Triton in the interpreter with one and with several programs per row, CUDA): per-row hyper-parameters in one launch
set, the rows mask, the output tensor (in place included), and values no host check has seen.

The comparator (`assert_rows_as_alone`): a row of a mixed batch is, bit for bit, what the same backend returns for
that row alone called with that row's hyper-parameters as Python scalars. The scalar path itself is held to the
oracle by the backend parity tests (test_cpu_kernels.py, test_triton_kernels.py), so per-row results inherit it.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import params

DTYPES = [torch.float32, torch.bfloat16]
# per-row values: steps 0 (identity), a threshold that stops row 4 early, kl_weight 0 (no KL term) on row 1
LR = [0.1, 0.3, 0.05, 0.1, 0.2, 0.1]
STEPS = [3, 0, 5, 2, 4, 1]
KL = [0.05, 0.0, 1.0, 0.05, 0.5, 0.05]
THRESHOLD = [0.3, 0.3, 0.0, 0.3, 7.9, 0.3]


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


def assert_rows_as_alone(backend, x, out, valid, prm: dict, mask, sentinel: torch.Tensor, max_steps=None) -> None:
    for b in range(x.shape[0]):
        if mask is not None and not mask[b]:
            assert bool(valid[b]), f"row {b} left out must be reported valid"
            assert torch.equal(bits(out[b]), bits(sentinel[b])), f"row {b} left out was written"
            continue
        row = {k: scalar(v, b) for k, v in prm.items()}
        steps = int(min(max(row["steps"], 0), 1000 if max_steps is None else max_steps))
        alone, alone_valid = backend.em_inf(x[b : b + 1].clone(), row["lr"], steps, row["kl_weight"],
                                            row["threshold"])
        assert bool(valid[b]) == bool(alone_valid[0]), f"row {b}"
        assert torch.equal(bits(out[b]), bits(alone[0])), f"row {b}: per-row result differs from its scalar call"


def per_row(device: str, dtype_f=torch.float64, dtype_i=torch.int32) -> dict:
    return dict(lr=torch.tensor(LR, dtype=dtype_f, device=device), steps=torch.tensor(STEPS, dtype=dtype_i,
                device=device), kl_weight=torch.tensor(KL, dtype=torch.float32, device=device),
                threshold=torch.tensor(THRESHOLD, dtype=dtype_f, device=device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_steps", [None, 5])
def test_per_row_parameters_in_one_call(backend, dtype, max_steps):
    x = rows_of(6, 4500, dtype, backend.device)  # 3 blocks of the Triton kernel: 2 programs per row split it
    prm = per_row(backend.device)
    out, valid = backend.em_inf(x, prm["lr"], prm["steps"], prm["kl_weight"], prm["threshold"], max_steps=max_steps)
    assert valid.tolist() == [True, True, False, True, True, True]
    assert torch.equal(bits(out[2]), bits(x[2]))  # invalid: unchanged
    assert torch.equal(bits(out[1]), bits(x[1]))  # steps 0: unchanged
    assert_rows_as_alone(backend, x, out, valid, prm, None, x, max_steps)


def test_mixed_scalars_and_tensors_and_the_rows_mask(backend):
    x = rows_of(6, 1000, torch.float32, backend.device, seed=1)
    prm = dict(lr=0.1, steps=torch.tensor(STEPS, device=backend.device), kl_weight=0.05,
               threshold=torch.tensor(THRESHOLD, dtype=torch.float32, device=backend.device))
    mask = torch.tensor([True, True, True, False, True, False], device=backend.device)
    sentinel = torch.full_like(x, 7.0)
    out = sentinel.clone()
    res, valid = backend.em_inf(x, prm["lr"], prm["steps"], prm["kl_weight"], prm["threshold"], rows=mask, out=out)
    assert res.data_ptr() == out.data_ptr()
    assert valid.tolist() == [True, True, False, True, True, True]
    assert_rows_as_alone(backend, x, out, valid, prm, mask, sentinel)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place(backend, dtype):
    # out = logits: rows processed in place, rows left out untouched, invalid rows unchanged
    x = rows_of(6, 4500, dtype, backend.device, seed=2)
    prm = per_row(backend.device, dtype_i=torch.int64)
    mask = torch.tensor([True, True, True, True, False, True], device=backend.device)
    expected, ev = backend.em_inf(x, *prm.values(), rows=mask, out=x.clone())
    y = x.clone()
    res, valid = backend.em_inf(y, *prm.values(), rows=mask, out=y)
    assert res.data_ptr() == y.data_ptr() and torch.equal(valid, ev)
    assert torch.equal(bits(y), bits(expected))
    assert torch.equal(bits(y[4]), bits(x[4])) and torch.equal(bits(y[2]), bits(x[2]))
    # scalar parameters in place: as out of place
    expected, _ = backend.em_inf(x, 0.1, 3, 0.05, 0.3)
    y = x.clone()
    backend.em_inf(y, 0.1, 3, 0.05, 0.3, out=y)
    assert torch.equal(bits(y), bits(expected))


def test_integer_values_are_clamped(backend):
    # steps beyond the range or the caller's bound, and negative: clamped, as the reference clamps them
    x = rows_of(6, 1000, torch.float32, backend.device, seed=3)[[0, 3, 4, 5]].contiguous()
    steps = torch.tensor([10**12, -7, 2, 4], dtype=torch.int64, device=backend.device)
    out, _ = backend.em_inf(x, 0.1, steps, 0.05, 0.0, max_steps=3)
    for b, n in enumerate([3, 0, 2, 3]):
        alone, _ = backend.em_inf(x[b : b + 1].clone(), 0.1, n, 0.05, 0.0)
        assert torch.equal(bits(out[b]), bits(alone[0])), b


def test_unchecked_float_values_finish(backend):
    # NaN / negative / huge floats in tensors are not checked on the host: the row may be garbage, but the call
    # finishes and the other rows are untouched by it
    if backend.name == "reference":
        pytest.skip("the reference's torch.optim.Adam refuses a NaN or negative lr itself")
    x = rows_of(6, 1000, torch.float32, backend.device, seed=4)[[0, 1, 3, 4, 5]].contiguous()
    nan = float("nan")
    lr = torch.tensor([nan, -1.0, 1e30, 0.1, 0.1], dtype=torch.float64, device=backend.device)
    kl = torch.tensor([0.05, nan, 0.05, -5.0, 0.05], dtype=torch.float32, device=backend.device)
    thr = torch.tensor([0.3, 0.3, nan, 0.3, float("inf")], dtype=torch.float64, device=backend.device)
    out, valid = backend.em_inf(x, lr, 3, kl, thr)
    assert out.shape == x.shape and valid.shape == (5,)
    assert torch.equal(bits(out[4]), bits(x[4]))  # threshold +inf: H < inf before the first step, unchanged


def test_defaults_come_from_the_schema(monkeypatch):
    x = rows_of(4, 300, torch.float32, "cpu")[[0, 3]].contiguous()
    lr = params.EM_INF.param("lr")
    changed = params.Mode(params.EM_INF.name, params.EM_INF.prefix, tuple(
        params.Param(**{**p.__dict__, "default": 0.37}) if p is lr else p for p in params.EM_INF.params))
    monkeypatch.setattr(params, "EM_INF", changed)
    assert torch.equal(kernels.em_inf(x), kernels.em_inf(x, lr=0.37))
    assert not torch.equal(kernels.em_inf(x), kernels.em_inf(x, lr=lr.default))


def test_op_checks_tensors_rows_and_out():
    x = rows_of(3, 100, torch.float32, "cpu")
    with pytest.raises(ValueError, match="^steps as a per-row tensor must be int32 or int64"):
        kernels.em_inf(x, steps=torch.ones(3))
    with pytest.raises(ValueError, match=r"^lr as a per-row tensor must have shape \[B\] = \[3\]"):
        kernels.em_inf(x, lr=torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="^rows must be"):
        kernels.em_inf(x, rows=torch.ones(3))
    with pytest.raises(ValueError, match="^out must match"):
        kernels.em_inf(x, out=torch.empty(3, 100, dtype=torch.float16))
    storage = torch.randn(301)
    with pytest.raises(ValueError, match="^out must be the logits themselves"):  # shifted by one element
        kernels.em_inf(storage[:300].view(3, 100), out=storage[1:].view(3, 100))
    with pytest.raises(ValueError, match="^max_steps must be"):
        kernels.em_inf(x, steps=torch.ones(3, dtype=torch.int64), max_steps=-1)


def test_op_steps_zero_with_rows_and_out():
    x = rows_of(3, 100, torch.float32, "cpu")
    out = torch.zeros_like(x)
    mask = torch.tensor([True, False, True])
    res, valid = kernels.em_inf(x, steps=0, rows=mask, out=out, return_valid=True)
    assert res is out and valid.tolist() == [True, True, False]
    assert torch.equal(out[1], torch.zeros(100)) and torch.equal(bits(out[0]), bits(x[0]))

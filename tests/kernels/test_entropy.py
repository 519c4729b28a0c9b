"""Parity of kernels.entropy on every backend (the `backend` fixture of conftest.py: reference, C++ native and AVX2
builds, Triton in the interpreter with one and with several programs per row, CUDA), held by one comparator,
`check_entropy`, at the tolerance each backend is documented to meet:

- C++ (cpu, cpu_avx2): against the float64 truth (kernel_cases.entropy64), relative 1e-5, absolute 1e-7 (the
  reference's own fp32 result is farther off on peaked rows);
- Triton (interpreter, CUDA): against the fp32 reference, relative and absolute 2e-5;
- the reference: the oracle itself (its contract, and the same bits on a second call).

Every backend: fp32 [B], NaN exactly on the invalid rows (a NaN, a +inf, or no finite entry).
"""

from __future__ import annotations

import math

import pytest
import torch
from kernel_cases import (
    ALL,
    CPP,
    CPU_SIDE,
    CUDA,
    DTYPES,
    KINDS,
    MIXED_KINDS,
    bad_rows,
    entropy64,
    kind_rows,
    mixed_rows,
    with_bad_rows,
)

from kernels import reference


def check_entropy(backend, h: torch.Tensor, x: torch.Tensor) -> None:
    assert h.dtype == torch.float32 and h.shape == (x.shape[0],)
    valid = reference.valid_rows(x.cpu())
    h_cpu = h.cpu()
    assert torch.equal(h_cpu.isnan(), ~valid), "NaN exactly on the invalid rows"
    if backend.name in CPP:
        truth = entropy64(x)
        assert torch.allclose(h_cpu[valid].double(), truth[valid], rtol=1e-5, atol=1e-7), (h, truth)
    elif backend.name == "reference":  # the oracle: deterministic, bit for bit
        assert torch.equal(h_cpu.nan_to_num(), reference.entropy(x).cpu().nan_to_num())
    else:  # Triton, interpreted or compiled
        ref = reference.entropy(x)
        torch.testing.assert_close(h_cpu.nan_to_num(), ref.cpu().nan_to_num(), rtol=2e-5, atol=2e-5)


def by(names):
    return pytest.mark.parametrize("backend", names, indirect=True)


# --- mixed batches at the real sizes (the backends fast on CPU) ---------------------------------------------------

@by(CPU_SIDE)
@pytest.mark.parametrize("dtype", DTYPES)
# 1001: a tail vector for every SIMD width (1000 and the larger vocabularies are multiples of 8)
@pytest.mark.parametrize(
    "batch, vocab", [(1, 7), (3, 1000), (3, 1001), (64, 1000), (3, 32000), (1, 151936), (8, 151936)]
)
def test_mixed_rows(backend, batch, vocab, dtype):
    x = mixed_rows(batch, vocab, dtype, seed=batch * 7 + vocab)
    h = backend.entropy(x)
    check_entropy(backend, h, x)
    # masked entries contribute 0; an exactly one-hot row has H == 0
    for b in range(batch):
        if MIXED_KINDS[b % len(MIXED_KINDS)] == "one_hot":
            assert h[b] == 0.0


@by(CPP)
def test_near_one_hot_keeps_the_tail(backend):
    # The tail mass (~1e-8 per row) is below fp32's resolution next to the max's 1.0: the C++ kernel counts the
    # entries at the max exactly instead of adding them into the same fp32 sum (relative 1e-5 with no absolute slack).
    vocab = 151936
    x = torch.zeros(4, vocab)
    x[:, 0] = torch.tensor([20.0, 25.0, 30.0, 14.0]) + math.log(vocab)
    truth = entropy64(x)
    h = backend.entropy(x)
    check_entropy(backend, h, x)
    assert torch.allclose(h.double(), truth, rtol=1e-5, atol=0), (h, truth)


# --- one kind per batch, small grids (every backend but CUDA, which has its own grid below) -----------------------

@by(CPU_SIDE + ["triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [7, 1000, 4097])
def test_kinds(backend, vocab, dtype):
    backend = backend.split(None)  # Triton: the kernel's own split choice
    for kind in KINDS:
        z = kind_rows(3, vocab, kind, dtype)
        check_entropy(backend, backend.entropy(z), z)


@by(["triton"])
@pytest.mark.parametrize("splits", [1, 2, 3])
def test_split_paths(backend, splits):
    # 1: one program per row writes H directly; 2, 3: partial records merged by a second launch
    z = torch.cat([kind_rows(1, 9000, kind, torch.float32, seed=i) for i, kind in enumerate(KINDS)])
    check_entropy(backend, backend.split(splits).entropy(z), z)


@by(CPU_SIDE + ["triton"])
def test_large_vocab_and_one_row(backend):
    backend = backend.split(None)
    z = kind_rows(1, 32000, "randn", torch.bfloat16, seed=3)
    check_entropy(backend, backend.entropy(z), z)


@by(CPU_SIDE + ["triton_split"])
def test_row_strided_view(backend):
    base = kind_rows(3, 2000, "randn", torch.float32)
    z = base[:, 500:1500]  # stride(0) = 2000
    check_entropy(backend, backend.entropy(z), z)


# --- invalid rows, empty batches (every backend) ------------------------------------------------------------------

@by(ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_invalid_rows_are_nan_and_others_unaffected(backend, dtype):
    x, bad = with_bad_rows(mixed_rows(6, 5000, dtype, seed=3, device=backend.device))
    h = backend.entropy(x)
    check_entropy(backend, h, x)
    good = [b for b in range(6) if b not in bad]
    assert torch.isnan(h[bad]).all()
    assert torch.equal(h[good], backend.entropy(x[good]))
    z = bad_rows(1000, dtype, device=backend.device)  # NaN, +inf, all -inf, healthy
    check_entropy(backend, backend.entropy(z), z)


@by(ALL)
def test_nan_hidden_in_a_fully_masked_block(backend):
    # A 2048-wide block with nothing finite but a NaN: its max is -inf, the NaN must still flag the row.
    x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(0))
    x[0, :2048] = float("-inf")
    x[0, 100] = float("nan")
    x = x.to(backend.device)
    h = backend.entropy(x)
    check_entropy(backend, h, x)
    assert torch.isnan(h[0]) and torch.isfinite(h[1])
    _, valid = backend.em_inf(x, 0.1, 3, 0.05, 0.0)
    assert valid.tolist() == [False, True]


@by(ALL)
def test_empty_batch(backend):
    for dtype in DTYPES:
        h = backend.entropy(torch.empty(0, 100, dtype=dtype, device=backend.device))
        assert h.shape == (0,) and h.dtype == torch.float32


# --- CUDA at the real sizes ---------------------------------------------------------------------------------------

@by(CUDA)
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("vocab", [1000, 32000, 151936])
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_sizes(backend, batch, vocab, dtype):
    for kind in KINDS:
        z = kind_rows(batch, vocab, kind, dtype, device=backend.device)
        check_entropy(backend, backend.entropy(z), z)
    z = bad_rows(vocab, dtype, device=backend.device)
    check_entropy(backend, backend.entropy(z), z)

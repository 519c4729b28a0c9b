"""Data and float64 truths shared by the per-op parity modules (test_entropy.py, test_em_inf.py,
test_adaptive_temperature.py) and the backend modules (test_cpu_kernels.py, test_triton_kernels.py).

The test modules are not importable packages (--import-mode=importlib), so conftest.py loads this file as the
module `kernel_cases`; import it from a test module as `import kernel_cases` (or `from kernel_cases import ...`).

Two kinds of rows:
- `mixed_rows`: every batch mixes typical, -inf-masked, near-uniform, near-one-hot, exactly one-hot and peaked rows
  (MIXED_KINDS, in turn), so that each batch holds rows on both sides of the EM-INF threshold;
- `kind_rows`: a batch of one kind (KINDS), as the Triton tests had them; `bad_rows`: NaN, +inf, all -inf, healthy.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels import reference

# Backend subsets for @pytest.mark.parametrize("backend", ..., indirect=True) (the `backend` fixture of conftest.py)
CPP = ["cpu", "cpu_avx2"]  # the C++ extension: installed (-march=native) and AVX2 builds
CUDA = [pytest.param("cuda", marks=pytest.mark.cuda)]
CPU_SIDE = ["reference"] + CPP  # fast on CPU: the real vocabulary and large batches
ALL = CPU_SIDE + ["triton", "triton_split"] + CUDA

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MIXED_KINDS = ["typical", "masked", "near_uniform", "near_one_hot", "one_hot", "peaked"]
KINDS = ["randn", "masked", "near_uniform", "near_one_hot", "one_hot"]
# relative spacing of the output dtype: an fp32 computation may differ from another by one rounding of the output
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def mixed_rows(batch: int, vocab: int, dtype: torch.dtype = torch.float32, seed: int = 0,
               device: str = "cpu") -> torch.Tensor:
    """[batch, vocab] logits cycling through MIXED_KINDS, rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        kind = MIXED_KINDS[b % len(MIXED_KINDS)]
        z = torch.randn(vocab, generator=g) * 2.5
        top = int(torch.randint(vocab, (1,), generator=g))
        if kind == "masked":  # about a third of the vocabulary banned, but never the whole row
            z[torch.rand(vocab, generator=g) < 0.35] = float("-inf")
            z[top] = 3.0
        elif kind == "near_uniform":
            z = torch.randn(vocab, generator=g) * 1e-3
        elif kind == "near_one_hot":
            z[top] = 22.0 + math.log(vocab)  # tail mass ~1e-8..1e-7 in total: H just above 0
        elif kind == "one_hot":  # exactly one-hot in fp32: every other exp underflows to 0
            z = torch.zeros(vocab)
            z[top] = 200.0
        elif kind == "peaked":  # a few head tokens, entropy of order 1
            z[top] = 12.0 + math.log(vocab)
            z[(top + 1) % vocab] = 11.0 + math.log(vocab)
        rows.append(z)
    return torch.stack(rows).to(dtype).to(device)


def with_bad_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Copy of x with rows 1, 2, 3 made invalid: a NaN, a +inf, all -inf (needs batch >= 5)."""
    x = x.clone()
    v = x.shape[1]
    x[1, v // 2] = float("nan")
    x[2, v - 1] = float("inf")
    x[3] = float("-inf")
    return x, [1, 2, 3]


def kind_rows(batch: int, vocab: int, kind: str, dtype: torch.dtype, seed: int = 0, device: str = "cpu"):
    """[batch, vocab] logits of one kind of KINDS."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, vocab, generator=g) * 2.0
    if kind == "masked":  # a vocabulary mask: every third token banned
        z[:, ::3] = float("-inf")
    elif kind == "near_uniform":
        z = z * 1e-3
    elif kind == "near_one_hot":
        z[:, vocab // 2] += 30.0
    elif kind == "one_hot":  # exactly one finite entry
        z = torch.full_like(z, float("-inf"))
        z[:, vocab // 3] = 1.5
    return z.to(dtype).to(device)


def bad_rows(vocab: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """Row 0 NaN, row 1 +inf, row 2 all -inf, row 3 healthy."""
    z = kind_rows(4, vocab, "randn", dtype, seed=7).float()
    z[0, vocab // 2] = float("nan")
    z[1, 0] = float("inf")
    z[2] = float("-inf")
    return z.to(dtype).to(device)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype])


def rows_of(batch: int, vocab: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """Rows of spread entropies for the per-row contract tests; row 1 masked (every third token -inf), row 2 with
    a NaN (invalid)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, vocab, generator=g) * torch.linspace(0.3, 3.0, batch)[:, None]
    z[1, ::3] = float("-inf")
    z[2, vocab // 2] = float("nan")
    return z.to(dtype).to(device)


def scalar(v, b: int):
    """Row b's value of a hyper-parameter given as a scalar or a [B] tensor."""
    return v[b].item() if isinstance(v, torch.Tensor) else v


def entropy64(x: torch.Tensor) -> torch.Tensor:
    """fp64 entropy per row, written so that tiny entropies keep their relative precision: H = log S - T / S with
    S = (count at the max) + (sum of the rest), T = sum exp(d) d, d = z - max. (lse - sum p z cancels to ~1e-15,
    which is all of H for a one-hot row.) NaN for invalid rows."""
    x = x.cpu()
    z = x.double()
    d = z - z.max(-1, keepdim=True).values
    e = torch.exp(d)
    at_max = (d == 0).sum(-1).double()
    rest = torch.where(d < 0, e, torch.zeros_like(e)).sum(-1)
    t = torch.where(e > 0, e * d, torch.zeros_like(e)).sum(-1)
    h = torch.log(at_max) + torch.log1p(rest / at_max) - t / (at_max + rest)
    return torch.where(reference.valid_rows(x), h, torch.full_like(h, float("nan")))


def em_inf_fp64(x: torch.Tensor, lr: float, steps: int, kl_weight: float, threshold: float) -> torch.Tensor:
    """The reference's own loop (torch Adam on the authors' loss) run in fp64: the exact computation every fp32
    implementation approximates. Invalid rows are left as they are."""
    x = x.cpu()
    out = x.double().clone()
    with torch.enable_grad():
        for b in torch.nonzero(reference.valid_rows(x)).flatten().tolist():
            out[b] = reference._em_inf_row(x[b].double(), lr, steps, kl_weight, threshold)
    return out


def reference_path(z, tmin, tmax, max_iter, tol, target_ratio, threshold):
    """The reference's bisection on one row: (H_eps(T=1), [(midpoint, H_eps there), ...] in the order evaluated)."""
    z = z.float()
    h0 = reference._entropy_eps(z)
    path = []
    if h0 > threshold:
        target = max(threshold, target_ratio * h0)
        lo, hi = tmin, tmax
        for _ in range(max_iter):
            mid = (lo + hi) / 2
            h = reference._entropy_eps(z / mid)
            path.append((mid, h))
            if abs(h - target) < tol:
                break
            if h < target:
                lo = mid
            else:
                hi = mid
    return h0, path

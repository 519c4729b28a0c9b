"""Triton backend of the ops (CUDA tensors; CPU tensors too under TRITON_INTERPRET=1, which is how tests run it
on machines without a GPU).

Same signatures and semantics as kernels.reference, row by row. No function here synchronises with the host:
validity and early exits are decided inside the kernels from per-row scalars that programs exchange through small
global buffers between launches. Triton is imported lazily, so `import kernels` works without it.

Kernel modules: k_entropy (entropy), k_em_inf (EM-INF), k_adaptive_temperature (adaptive temperature).
"""

from __future__ import annotations

import importlib.util

import torch


def available() -> bool:
    """True when triton is importable."""
    return importlib.util.find_spec("triton") is not None


def entropy(logits: torch.Tensor, num_splits: int | None = None) -> torch.Tensor:
    """[B, V] -> [B] fp32 entropy in nats; NaN for invalid rows. num_splits forces programs per row (tests)."""
    from kernels._triton import k_entropy

    return k_entropy.entropy(logits, num_splits)


def em_inf(logits: torch.Tensor, lr, steps, kl_weight, threshold, num_splits: int | None = None, *, rows=None,
           out=None, max_steps=None) -> tuple[torch.Tensor, torch.Tensor]:
    """EM-INF per row; returns (logits' [B, V] input dtype, valid [B] bool). Per-row parameters, rows and out as
    kernels.ops.em_inf takes them."""
    from kernels._triton import k_em_inf

    return k_em_inf.em_inf(logits, lr, steps, kl_weight, threshold, num_splits, rows=rows, out=out,
                           max_steps=max_steps)


def adaptive_temperature(logits: torch.Tensor, tmin, tmax, max_iter, tol, target_ratio, threshold,
                         num_splits: int | None = None, *, rows=None, out=None, max_iter_bound=None,
                         sweep_counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adaptive temperature per row; returns (logits / T [B, V] input dtype, T [B] fp32, valid [B] bool)."""
    from kernels._triton import k_adaptive_temperature

    return k_adaptive_temperature.adaptive_temperature(
        logits, tmin, tmax, max_iter, tol, target_ratio, threshold, num_splits, rows=rows, out=out,
        max_iter_bound=max_iter_bound, sweep_counts=sweep_counts,
    )

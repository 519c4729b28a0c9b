"""What both autograd functions of ``fused_linear_entropy`` (the chunked torch one in ``kernels.fused_linear`` and the
Triton one in ``kernels._triton.k_fused_linear``) share between forward and backward."""

from __future__ import annotations

import torch

from kernels.reference_fused import IGNORE_INDEX


def save_context(ctx, hidden, weight, targets, lse, mean_z, logprob, temperature, chunk_tokens, chunk_vocab) -> None:
    """What both backends' backward needs from their forward (the torch and the Triton autograd functions)."""
    ctx.save_for_backward(hidden, weight, targets, lse, mean_z)
    ctx.temperature = temperature
    ctx.chunks = (chunk_tokens, chunk_vocab)
    if targets is None:
        ctx.mark_non_differentiable(logprob)


def incoming_grads(g_ent, g_lp, targets, n_tok: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients reaching backward as contiguous fp32 [N]: a missing one as zeros, and no log-probability
    gradient for ignored targets (their logprob is the constant 0)."""
    zeros = torch.zeros(n_tok, dtype=torch.float32, device=device)
    g_ent = zeros if g_ent is None else g_ent.float().contiguous()
    if g_lp is None or targets is None:
        return g_ent, zeros  # both read-only in backward, so one buffer serves both
    return g_ent, torch.where(targets == IGNORE_INDEX, 0.0, g_lp.float()).contiguous()

"""Fused linear + entropy + log-probability: the training-side EM loss op, without the ``[N, V]`` logits in memory.

    entropy, logprob = fused_linear_entropy(hidden, lm_head_weight, targets, temperature=1.0)

With z = hidden @ weight.T / T, p = softmax(z) and lse = logsumexp(z):
    entropy_n = lse_n - sum_j p_nj z_nj              (nats)
    logprob_n = z_n,y_n - lse_n
Gradients w.r.t. z (upstream gH = dL/d entropy, gL = dL/d logprob, per token):
    d entropy / d z_j = -p_j (z_j - S),  S = sum_k p_k z_k        (since H = -sum p log p, log p_j = z_j - lse)
    d logprob / d z_j = [j == y] - p_j
    dL/dz = -p * (gH (z - S) + gL) + gL * onehot(y)
and z = hidden @ weight.T / T, so dL/dhidden = dL/dz @ weight / T and dL/dweight = dL/dz^T @ hidden / T.

How memory stays bounded: the work is cut into token chunks x vocabulary chunks. The forward keeps, per token, an
online (max m, sum e^(z-m), sum e^(z-m) (z-m)) triple merged across vocabulary chunks, plus the target logit; it saves
only lse and S ([N] each) for backward. The backward recomputes each chunk's logits from hidden and weight and
accumulates grad_hidden and grad_weight chunk by chunk. Peak extra memory is O(chunk_tokens x chunk_vocab) plus the
gradients themselves (grad_weight is [V, D]), independent of N x V. The price is one extra hidden @ weight.T matmul
in backward (4 matmuls in all instead of 3).

Backends (``backend=``): "auto" (default) runs CUDA tensors through kernels._triton.k_fused_linear (the same chunk
loops with cuBLAS matmuls, the per-chunk elementwise work in one Triton kernel each way; so far it has only run
under the Triton interpreter, not on a GPU) and CPU tensors through the chunked torch implementation below.
"torch" forces the chunked torch path on any device (on CUDA it is the Liger-Kernel-style baseline: cuBLAS
matmuls plus several torch elementwise kernels per chunk); "triton" forces the Triton path (CPU tensors only under
TRITON_INTERPRET=1, which is how the tests check it without a GPU).

dtypes: hidden and weight must share a float dtype. Matmuls run in that dtype (bf16 on GPU as in HF's lm_head); the
softmax statistics, entropy, log-probability and the gradient accumulators are fp32; gradients come back in the
input dtype. A target equal to ``IGNORE_INDEX`` (-100) gives logprob 0 and no gradient from logprob; with
``targets=None`` logprob is all zeros (a placeholder: finite, no gradient), and only the entropy is meaningful.
"""

from __future__ import annotations

import math

import torch

from kernels import _triton
from kernels.fused_linear_context import incoming_grads, save_context
from kernels.reference_fused import IGNORE_INDEX

DEFAULT_CHUNK_TOKENS = 1024
DEFAULT_CHUNK_VOCAB = 8192
BACKENDS = ("auto", "torch", "triton")


def _check_args(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor | None,
    temperature: float,
    chunk_tokens: int,
    chunk_vocab: int,
    backend: str = "auto",
) -> None:
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D ({'[N, D]' if name == 'hidden' else '[V, D]'}), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"weight must have V > 0 and D > 0, got shape {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, D] and weight [V, D] must share D, got {hidden.shape[1]} and {weight.shape[1]}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight must share a dtype, got {hidden.dtype} and {weight.dtype}")
    if hidden.device != weight.device:
        raise ValueError(f"hidden and weight must be on one device, got {hidden.device} and {weight.device}")
    if targets is not None:
        if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"targets must be an int64 tensor [N] or None, got {getattr(targets, 'dtype', targets)}")
        if targets.shape != (hidden.shape[0],):
            raise ValueError(f"targets must have shape [N] = ({hidden.shape[0]},), got {tuple(targets.shape)}")
        if targets.device != hidden.device:
            raise ValueError(f"targets must be on {hidden.device}, got {targets.device}")
        if targets.numel():
            bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= weight.shape[0]))
            if bool(bad.any()):  # one host sync per call: an out-of-range gather would be a device assert on CUDA
                raise ValueError(
                    f"targets must lie in [0, V = {weight.shape[0]}) or equal {IGNORE_INDEX}; "
                    f"got {int(targets[bad][0])}"
                )
    ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not (ok and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    for name, value in (("chunk_tokens", chunk_tokens), ("chunk_vocab", chunk_vocab)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _triton_available() -> bool:
    return _triton.available()


def _chunk_logits(h_scaled: torch.Tensor, w: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """fp32 logits [n, v] of one chunk; fp32 inputs write straight into the reusable buffer (no allocation)."""
    n, v = h_scaled.shape[0], w.shape[0]
    if h_scaled.dtype == torch.float32:
        out = buf[: n * v].view(n, v)
        return torch.mm(h_scaled, w.t(), out=out)
    return torch.mm(h_scaled, w.t()).float()


class _FusedLinearEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_tokens, chunk_vocab):
        n_tok, vocab = hidden.shape[0], weight.shape[0]
        dev = hidden.device
        inv_t = 1.0 / temperature
        lse = torch.empty(n_tok, dtype=torch.float32, device=dev)
        mean_z = torch.empty(n_tok, dtype=torch.float32, device=dev)  # S = sum_j p_j z_j
        ent = torch.empty(n_tok, dtype=torch.float32, device=dev)
        logprob = torch.zeros(n_tok, dtype=torch.float32, device=dev)
        buf = torch.empty(min(chunk_tokens, max(n_tok, 1)) * min(chunk_vocab, vocab), dtype=torch.float32, device=dev)
        for t0 in range(0, n_tok, chunk_tokens):
            t1 = min(t0 + chunk_tokens, n_tok)
            hs = hidden[t0:t1] * inv_t if temperature != 1.0 else hidden[t0:t1]
            tgt = targets[t0:t1] if targets is not None else None
            tgt_logit = torch.zeros(t1 - t0, dtype=torch.float32, device=dev)
            m = s = t = None
            for v0 in range(0, vocab, chunk_vocab):
                v1 = min(v0 + chunk_vocab, vocab)
                z = _chunk_logits(hs, weight[v0:v1], buf)
                m_c = z.amax(dim=1)
                z.sub_(m_c.unsqueeze(1))  # z - m_c, in place: e^(z - m_c) <= 1
                if tgt is not None:
                    inside = (tgt >= v0) & (tgt < v1)
                    idx = (tgt - v0).clamp_(0, v1 - v0 - 1).unsqueeze(1)
                    tgt_logit = torch.where(inside, z.gather(1, idx).squeeze(1) + m_c, tgt_logit)
                e = torch.exp(z)
                s_c = e.sum(dim=1)
                t_c = torch.linalg.vecdot(e, z)  # sum e^(z-m_c) (z - m_c)
                del e
                if m is None:
                    m, s, t = m_c, s_c, t_c
                else:
                    # Re-reference both partial sums to the new max: sum e^(z-m')(z-m') = a (t + (m - m') s).
                    m_new = torch.maximum(m, m_c)
                    a, b = torch.exp(m - m_new), torch.exp(m_c - m_new)
                    t = a * (t + (m - m_new) * s) + b * (t_c + (m_c - m_new) * s_c)
                    s = a * s + b * s_c
                    m = m_new
            log_s = torch.log(s)
            lse[t0:t1] = m + log_s
            mean_z[t0:t1] = m + t / s
            ent[t0:t1] = log_s - t / s  # lse - S without the cancellation of the large m
            if tgt is not None:
                lp = tgt_logit - lse[t0:t1]
                logprob[t0:t1] = torch.where(tgt == IGNORE_INDEX, torch.zeros_like(lp), lp)
        save_context(ctx, hidden, weight, targets, lse, mean_z, logprob, temperature, chunk_tokens, chunk_vocab)
        return ent, logprob

    @staticmethod
    def backward(ctx, g_ent, g_lp):
        hidden, weight, targets, lse, mean_z = ctx.saved_tensors
        chunk_tokens, chunk_vocab = ctx.chunks
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n_tok, vocab = hidden.shape[0], weight.shape[0]
        dev, dtype = hidden.device, hidden.dtype
        inv_t = 1.0 / ctx.temperature
        g_ent, g_lp = incoming_grads(g_ent, g_lp, targets, n_tok, dev)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=dev) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=dev) if need_w else None
        size = min(chunk_tokens, max(n_tok, 1)) * min(chunk_vocab, vocab)
        buf = torch.empty(size, dtype=torch.float32, device=dev)
        p_buf = torch.empty(size, dtype=torch.float32, device=dev)
        for t0 in range(0, n_tok, chunk_tokens):
            t1 = min(t0 + chunk_tokens, n_tok)
            hs = hidden[t0:t1] * inv_t if ctx.temperature != 1.0 else hidden[t0:t1]
            gh, gl = g_ent[t0:t1].unsqueeze(1), g_lp[t0:t1].unsqueeze(1)
            # dL/dz = -p (gH (z - S) + gL) = p * (z * (-gH) + (gH S - gL)): one fused multiply-add per element.
            neg_gh, offset = -gh, gh * mean_z[t0:t1].unsqueeze(1) - gl
            lse_c = lse[t0:t1].unsqueeze(1)
            tgt = targets[t0:t1] if targets is not None else None
            for v0 in range(0, vocab, chunk_vocab):
                v1 = min(v0 + chunk_vocab, vocab)
                w = weight[v0:v1]
                z = _chunk_logits(hs, w, buf)
                p = torch.sub(z, lse_c, out=p_buf[: z.numel()].view(z.shape)).exp_()  # softmax, recomputed
                dz = p.mul_(torch.addcmul(offset, z, neg_gh, out=z))
                if tgt is not None:
                    inside = ((tgt >= v0) & (tgt < v1)).unsqueeze(1)
                    idx = (tgt - v0).clamp(0, v1 - v0 - 1).unsqueeze(1)
                    dz.scatter_add_(1, idx, torch.where(inside, gl, torch.zeros_like(gl)))
                dz_in = dz if dtype == torch.float32 else dz.to(dtype)
                if need_h:
                    if dtype == torch.float32:
                        grad_h[t0:t1].addmm_(dz_in, w)
                    else:
                        grad_h[t0:t1] += torch.mm(dz_in, w).float()
                if need_w:
                    if dtype == torch.float32:
                        grad_w[v0:v1].addmm_(dz_in.t(), hs)
                    else:
                        grad_w[v0:v1] += torch.mm(dz_in.t(), hs).float()
                del z, p, dz, dz_in
        if need_h:
            grad_h = (grad_h.mul_(inv_t) if ctx.temperature != 1.0 else grad_h).to(dtype)
        if need_w:
            grad_w = grad_w.to(weight.dtype)  # 1/T is already inside hs
        return grad_h, grad_w, None, None, None, None


def fused_linear_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    chunk_vocab: int = DEFAULT_CHUNK_VOCAB,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token entropy and target log-probability of softmax(hidden @ weight.T / temperature), fused.

    hidden: [N, D] (final hidden states, after the last norm), weight: [V, D] (the lm_head weight), same float dtype
    and device; targets: [N] int64 token ids in [0, V) or -100 (ignored), or None. Returns (entropy [N] fp32 in
    nats, logprob [N] fp32). logprob is 0 for ignored targets and all zeros (non-differentiable) for targets=None.
    Differentiable w.r.t. hidden and weight; the [N, V] logits never exist: memory grows with
    chunk_tokens x chunk_vocab, not with N x V. backend: "auto" (Triton for CUDA tensors when triton is installed,
    chunked torch otherwise), "torch" or "triton" (see the module docstring). Raises ValueError naming the bad
    argument.
    """
    _check_args(hidden, weight, targets, temperature, chunk_tokens, chunk_vocab, backend)
    if targets is not None:
        targets = targets.long().contiguous()  # the Triton kernels index targets as a flat [N] array
    triton_dtype = hidden.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if backend == "auto":
        backend = "triton" if hidden.device.type == "cuda" and triton_dtype and _triton_available() else "torch"
    elif backend == "triton" and not triton_dtype:
        raise ValueError(f"backend 'triton' supports float32, bfloat16 and float16, got dtype {hidden.dtype}")
    # Autocast would re-cast the chunk matmuls (and clash with their fp32 out= buffers); the dtype contract is the
    # inputs' dtype, so callers under autocast cast hidden and weight to one dtype first (trainers.policy does).
    with torch.autocast(hidden.device.type, enabled=False):
        if backend == "triton":
            from kernels._triton import k_fused_linear  # imports triton, which CPU-only installs may lack

            return k_fused_linear.fused_linear_entropy(hidden, weight, targets, temperature, chunk_tokens, chunk_vocab)
        return _FusedLinearEntropy.apply(hidden, weight, targets, float(temperature), chunk_tokens, chunk_vocab)

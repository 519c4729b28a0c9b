"""Triton path of ``kernels.fused_linear_entropy``: cuBLAS GEMMs on chunks, Triton for everything elementwise.

STATUS: this module has only ever run under the Triton interpreter (TRITON_INTERPRET=1, CPU tensors, numpy
arithmetic), in tests/kernels/test_fused_linear.py. It has not been compiled or timed on a GPU; the `cuda`-marked
tests and the CUDA rows of `python -m bench --sections training` are written for that and have not been run.

Design (Liger-Kernel's fused linear cross-entropy, extended to the entropy): the matmuls stay in torch.mm (cuBLAS),
chunk by chunk, so no tl.dot tuning is involved; the per-chunk elementwise work that the torch path does in
several passes over the [n, v] chunk (max, exp, sum, dot, gather; in backward exp, fma, scatter, cast) is one
streaming Triton kernel each way.

Forward, per token chunk [t0, t1) and vocabulary chunk [v0, v1):
    x = hidden[t0:t1] @ weight[v0:v1].T          (matmul dtype, into a reused buffer)
    kernel: z = x / T in fp32; fold z into per-row running (m, s = sum e^(z-m), t = sum e^(z-m)(z-m)) kept in [N]
            fp32 buffers, and pick up the target logit when it falls in this chunk; on the last vocabulary chunk,
            write lse = m + log s, S = m + t/s, entropy = log s - t/s, logprob = z_y - lse.
Backward, per vocabulary chunk (outer) and token chunk (inner):
    x = hidden[t0:t1] @ weight[v0:v1].T          (recomputed)
    kernel: overwrite x in place with dL/dz / T, where dL/dz = -p (gH (z - S) + gL) + gL onehot(y), p = e^(z - lse),
            computed in fp32 and stored in the matmul dtype (bf16 rounded to nearest even)
    grad_hidden[t0:t1] += x @ weight[v0:v1];  grad_weight[v0:v1] += x.T @ hidden[t0:t1]
The vocabulary-outer order lets bf16 weights accumulate grad_weight in an fp32 buffer of one vocabulary chunk
instead of a full fp32 [V, D] copy; grad_hidden ([N, D]) is accumulated in fp32 whole.

The temperature is applied inside the kernels in fp32 (z = x / T), not by scaling hidden before a bf16 matmul, so
bf16 inputs get one rounding fewer than the torch path; fp32 results agree with it to rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton._common import next_pow2, stats_update, to_dtype_rne
from kernels._triton.launch import LOGITS, KernelLaunch
from kernels.fused_linear_context import incoming_grads, save_context
from kernels.reference_fused import IGNORE_INDEX

MAX_BLOCK = 4096
NUM_WARPS = 8


@triton.jit(do_not_specialize=["v0", "row0"])
def _fwd_chunk_kernel(
    x_ptr, stride_x, v_len, v0, row0, inv_t,
    tgt_ptr, m_ptr, s_ptr, t_ptr, zy_ptr,
    lse_ptr, mean_z_ptr, ent_ptr, lp_ptr,
    IGNORE: tl.constexpr, HAS_TGT: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program r folds row r of the chunk x [n, v_len] into the running stats of token row0 + r."""
    r = tl.program_id(0).to(tl.int64)
    g = row0 + r
    row = x_ptr + r * stride_x
    if FIRST:
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        t = tl.zeros((), tl.float32)
    else:
        m = tl.load(m_ptr + g)
        s = tl.load(s_ptr + g)
        t = tl.load(t_ptr + g)
    for off in range(0, v_len, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        msk = idx < v_len
        x = tl.load(row + idx, mask=msk, other=0.0).to(tl.float32)
        # padding must be -inf: stats_update gives -inf entries exactly zero weight
        m, s, t = stats_update(m, s, t, tl.where(msk, x * inv_t, float("-inf")))
    if HAS_TGT:
        y = tl.load(tgt_ptr + g)
        inside = (y >= v0) & (y < v0 + v_len)
        zy_new = tl.load(row + tl.where(inside, y - v0, 0), mask=inside, other=0.0).to(tl.float32) * inv_t
        if FIRST:
            zy = zy_new
        else:
            zy = tl.where(inside, zy_new, tl.load(zy_ptr + g))
    if LAST:
        log_s = tl.log(s)
        lse = m + log_s
        tl.store(lse_ptr + g, lse)
        tl.store(mean_z_ptr + g, m + t / s)
        tl.store(ent_ptr + g, log_s - t / s)  # lse - S without the cancellation of a large m
        if HAS_TGT:
            tl.store(lp_ptr + g, tl.where(y == IGNORE, 0.0, zy - lse))
    else:
        tl.store(m_ptr + g, m)
        tl.store(s_ptr + g, s)
        tl.store(t_ptr + g, t)
        if HAS_TGT:
            tl.store(zy_ptr + g, zy)


@triton.jit(do_not_specialize=["v0", "row0"])
def _bwd_chunk_kernel(
    x_ptr, stride_x, v_len, v0, row0, inv_t,
    tgt_ptr, lse_ptr, mean_z_ptr, g_ent_ptr, g_lp_ptr,
    HAS_TGT: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program r turns row r of the logits chunk x (before 1/T) into dL/dz / T, in place.

    g_lp must already be 0 for ignored targets; an ignored target (< 0) never matches a column either.
    """
    r = tl.program_id(0).to(tl.int64)
    g = row0 + r
    row = x_ptr + r * stride_x
    lse = tl.load(lse_ptr + g)
    mean_z = tl.load(mean_z_ptr + g)
    gh = tl.load(g_ent_ptr + g)
    gl = tl.load(g_lp_ptr + g)
    if HAS_TGT:
        y = tl.load(tgt_ptr + g) - v0
    for off in range(0, v_len, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        msk = idx < v_len
        z = tl.load(row + idx, mask=msk, other=0.0).to(tl.float32) * inv_t
        p = tl.exp(z - lse)
        dz = -p * (gh * (z - mean_z) + gl)
        if HAS_TGT:
            dz = tl.where(idx == y, dz + gl, dz)
        tl.store(row + idx, to_dtype_rne(dz * inv_t, x_ptr.dtype.element_ty), mask=msk)


_BLOCKS = tuple(1 << i for i in range(MAX_BLOCK.bit_length()))  # next_pow2 of a vocabulary chunk, capped
_ROW_STATS = ("m_ptr", "s_ptr", "t_ptr", "zy_ptr", "lse_ptr", "mean_z_ptr", "ent_ptr", "lp_ptr")
FWD = KernelLaunch(_fwd_chunk_kernel, num_warps=NUM_WARPS,
                   pointers={"x_ptr": LOGITS, "tgt_ptr": "i64", **{p: "fp32" for p in _ROW_STATS}},
                   scalars={"inv_t": "fp32"},
                   constexprs={"IGNORE": (IGNORE_INDEX,), "HAS_TGT": (False, True), "FIRST": (False, True),
                               "LAST": (False, True), "BLOCK": _BLOCKS}, sizes=("BLOCK",))
BWD = KernelLaunch(_bwd_chunk_kernel, num_warps=NUM_WARPS,
                   pointers={"x_ptr": LOGITS, "tgt_ptr": "i64",
                             **{p: "fp32" for p in ("lse_ptr", "mean_z_ptr", "g_ent_ptr", "g_lp_ptr")}},
                   scalars={"inv_t": "fp32"}, constexprs={"HAS_TGT": (False, True), "BLOCK": _BLOCKS},
                   sizes=("BLOCK",))


def _block(v_len: int) -> int:
    return min(MAX_BLOCK, next_pow2(v_len))


def _no_targets(device: torch.device) -> torch.Tensor:
    """The targets pointer when there are none (HAS_TGT=False never reads it), typed as the description says."""
    return torch.empty(1, dtype=torch.int64, device=device)


def _mm(a: torch.Tensor, b_t: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """a @ b_t.T into the front of buf (matmul dtype), so the chunk loop allocates nothing per chunk."""
    n, v = a.shape[0], b_t.shape[0]
    return torch.mm(a, b_t.t(), out=buf[: n * v].view(n, v))


class FusedLinearEntropyTriton(torch.autograd.Function):
    """Same contract as kernels.fused_linear._FusedLinearEntropy (arguments already validated, targets int64)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_tokens, chunk_vocab):
        n_tok, vocab = hidden.shape[0], weight.shape[0]
        dev = hidden.device
        inv_t = 1.0 / temperature
        f32 = dict(dtype=torch.float32, device=dev)
        lse, mean_z, ent = (torch.empty(n_tok, **f32) for _ in range(3))
        logprob = torch.zeros(n_tok, **f32)
        # running stats between vocabulary chunks; with one vocabulary chunk they are never read
        m, s, t, zy = (torch.empty(n_tok, **f32) for _ in range(4))
        has_tgt = targets is not None
        tgt = targets if has_tgt else _no_targets(dev)
        buf = torch.empty(min(chunk_tokens, max(n_tok, 1)) * min(chunk_vocab, vocab), dtype=hidden.dtype, device=dev)
        block = _block(min(chunk_vocab, vocab))
        for t0 in range(0, n_tok, chunk_tokens):
            t1 = min(t0 + chunk_tokens, n_tok)
            h = hidden[t0:t1]
            for v0 in range(0, vocab, chunk_vocab):
                v1 = min(v0 + chunk_vocab, vocab)
                x = _mm(h, weight[v0:v1], buf)
                FWD[(t1 - t0,)](
                    x, x.stride(0), v1 - v0, v0, t0, inv_t,
                    tgt, m, s, t, zy, lse, mean_z, ent, logprob,
                    IGNORE=IGNORE_INDEX, HAS_TGT=has_tgt, FIRST=v0 == 0, LAST=v1 == vocab, BLOCK=block,
                )
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
        f32 = dict(dtype=torch.float32, device=dev)
        g_ent, g_lp = incoming_grads(g_ent, g_lp, targets, n_tok, dev)
        has_tgt = targets is not None
        tgt = targets if has_tgt else _no_targets(dev)
        grad_h = torch.zeros(hidden.shape, **f32) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=dev) if need_w else None
        if not (need_h or need_w) or n_tok == 0:
            return (grad_h.to(dtype) if need_h else None), grad_w, None, None, None, None
        cv = min(chunk_vocab, vocab)
        buf = torch.empty(min(chunk_tokens, n_tok) * cv, dtype=dtype, device=dev)
        # fp32 weights accumulate straight into grad_w; others into one fp32 vocabulary chunk, cast when it is done
        gw_acc = torch.empty(cv, weight.shape[1], **f32) if need_w and dtype != torch.float32 else None
        block = _block(cv)
        for v0 in range(0, vocab, chunk_vocab):
            v1 = min(v0 + chunk_vocab, vocab)
            w = weight[v0:v1]
            acc_w = None
            if need_w:
                acc_w = grad_w[v0:v1] if gw_acc is None else gw_acc[: v1 - v0].zero_()
            for t0 in range(0, n_tok, chunk_tokens):
                t1 = min(t0 + chunk_tokens, n_tok)
                h = hidden[t0:t1]
                x = _mm(h, w, buf)
                BWD[(t1 - t0,)](
                    x, x.stride(0), v1 - v0, v0, t0, inv_t, tgt, lse, mean_z, g_ent, g_lp, HAS_TGT=has_tgt, BLOCK=block,
                )
                if need_h:
                    if dtype == torch.float32:
                        grad_h[t0:t1].addmm_(x, w)
                    else:
                        grad_h[t0:t1] += torch.mm(x, w)
                if need_w:
                    if dtype == torch.float32:
                        acc_w.addmm_(x.t(), h)
                    else:
                        acc_w += torch.mm(x.t(), h)
            if need_w and gw_acc is not None:
                grad_w[v0:v1].copy_(acc_w)
        return (grad_h.to(dtype) if need_h else None), grad_w, None, None, None, None


def fused_linear_entropy(hidden, weight, targets, temperature, chunk_tokens, chunk_vocab):
    """Entry point for kernels.fused_linear (which validates the arguments and disables autocast)."""
    return FusedLinearEntropyTriton.apply(hidden, weight, targets, float(temperature), chunk_tokens, chunk_vocab)

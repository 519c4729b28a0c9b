"""Entropy H = logsumexp(z) - sum softmax(z) z per row, reading the logits exactly once.

Pass structure: one streaming pass over the row (bytes per element = the input's element size), online (m, s, t)
with one exp per element. When the batch alone cannot fill the GPU, each row is split across `nsplit` programs that
write partial (m, s, t, flags) records; a second launch with one tiny program per row merges them. With one split
the streaming kernel writes H directly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton._common import (
    as_rows,
    flags_update,
    merge_partials,
    next_pow2,
    split_geometry,
    stats_update,
)
from kernels._triton.launch import LOGITS, POW2_SPLITS, KernelLaunch

# 4096 elements over 8 warps: 16 per thread, i.e. 16-byte vector loads for bf16 / fp16 and two for fp32.
BLOCK = 4096
NUM_WARPS = 8


@triton.jit(do_not_specialize=["NSPLIT"])
def row_stats_kernel(
    x_ptr, part_ptr, h_ptr, stride_x, V, CHUNK, NSPLIT, BLOCK: tl.constexpr, DIRECT: tl.constexpr
):
    """Program (row b, split k) streams x[b, k*CHUNK : (k+1)*CHUNK].

    DIRECT: write H[b] (NaN for an invalid row). Else: write the partial record part[b, k, 0:4] = (m, s, t, code).
    """
    b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    start = k * CHUNK
    end = tl.minimum(start + CHUNK, V)
    row = x_ptr + b * stride_x
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)
    bad = tl.zeros((), tl.int32)
    fin = tl.zeros((), tl.int32)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        x = tl.load(row + idx, mask=idx < end, other=float("-inf")).to(tl.float32)
        m, s, t = stats_update(m, s, t, x)
        bad, fin = flags_update(bad, fin, x)
    if DIRECT:
        h = tl.log(s) - t / s
        valid = (bad == 0) & (fin == 1)
        tl.store(h_ptr + b, tl.where(valid, h, float("nan")))
    else:
        rec = part_ptr + (b * NSPLIT + k) * 4
        tl.store(rec + 0, m)
        tl.store(rec + 1, s)
        tl.store(rec + 2, t)
        tl.store(rec + 3, (bad + 2 * fin).to(tl.float32))


@triton.jit(do_not_specialize=["NSPLIT"])
def merge_kernel(part_ptr, h_ptr, NSPLIT, NSPLIT_P2: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    _, h, valid = merge_partials(part_ptr + b * NSPLIT * 4, NSPLIT, NSPLIT_P2, 4, True)
    tl.store(h_ptr + b, tl.where(valid, h, float("nan")))


ROW_STATS = KernelLaunch(row_stats_kernel, num_warps=NUM_WARPS,
                         pointers={"x_ptr": LOGITS, "part_ptr": "fp32", "h_ptr": "fp32"},
                         constexprs={"BLOCK": (BLOCK,), "DIRECT": (False, True)})
MERGE = KernelLaunch(merge_kernel, num_warps=1, pointers={"part_ptr": "fp32", "h_ptr": "fp32"},
                     constexprs={"NSPLIT_P2": POW2_SPLITS}, sizes=("NSPLIT_P2",))


def row_partials(x: torch.Tensor, nsplit: int, chunk: int) -> torch.Tensor:
    """Launch the split streaming pass with a given geometry (chunk a multiple of BLOCK); returns the partial
    records part [B, nsplit, 4] fp32."""
    batch, vocab = x.shape
    part = torch.empty(batch, nsplit, 4, dtype=torch.float32, device=x.device)
    ROW_STATS[(batch, nsplit)](x, part, part, x.stride(0), vocab, chunk, nsplit, BLOCK=BLOCK, DIRECT=False)
    return part


def entropy(logits: torch.Tensor, num_splits: int | None = None) -> torch.Tensor:
    """[B, V] any float dtype -> [B] fp32 entropy in nats; NaN for rows with NaN/+inf or nothing finite."""
    x = as_rows(logits)
    batch, vocab = x.shape
    h = torch.empty(batch, dtype=torch.float32, device=x.device)
    if batch == 0:
        return h
    nsplit, chunk = split_geometry(batch, vocab, BLOCK, x.device, num_splits)
    if nsplit == 1:
        ROW_STATS[(batch, 1)](x, h, h, x.stride(0), vocab, chunk, 1, BLOCK=BLOCK, DIRECT=True)
        return h
    part = row_partials(x, nsplit, chunk)
    MERGE[(batch,)](part, h, nsplit, NSPLIT_P2=next_pow2(nsplit))
    return h

"""Shared pieces of the Triton kernels: online softmax statistics, their merge, launch geometry, fp64 arguments.

Row statistics are kept as (m, s, t): m the running max, s = sum exp(z - m), t = sum exp(z - m) * (z - m). Then
lse = m + log s and H = lse - sum softmax(z) z = log s - t / s. Keeping t relative to m (instead of sum e*z) avoids
the cancellation of lse against the weighted mean when |z| is large. Entries equal to -inf contribute exactly 0.
Partials from different programs merge with the same rescaling, so a row can be split across programs.

Validity (no NaN, no +inf, at least one finite entry) travels with the partials as a small float code:
bit 0 = "saw NaN or +inf", bit 1 = "saw a finite entry".
"""

from __future__ import annotations

import functools
import math
import struct

import torch
import triton
import triton.language as tl


@triton.jit
def stats_update(m, s, t, x):
    """Fold a block x [BLOCK] fp32 (padding = -inf) into the running scalars (m, s, t)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    # while nothing finite has been seen m_new is -inf; shift by 0 then so exp(-inf - (-inf)) never makes a NaN
    ms = tl.where(m_new == float("-inf"), 0.0, m_new)
    scale = tl.exp(m - ms)
    d = x - ms
    e = tl.exp(d)
    et = tl.where(e > 0, e * d, 0.0)  # e * (-inf) would be NaN for masked entries
    t = scale * (t + tl.where(s > 0, (m - ms) * s, 0.0)) + tl.sum(et, axis=0)
    s = s * scale + tl.sum(e, axis=0)
    return m_new, s, t


@triton.jit
def flags_update(code_bad, code_fin, x):
    """Running validity flags of a block (padding must be -inf, which counts as neither bad nor finite)."""
    bad = (x != x) | (x == float("inf"))
    fin = (x > float("-inf")) & (x < float("inf"))
    code_bad = tl.maximum(code_bad, tl.max(bad.to(tl.int32), axis=0))
    code_fin = tl.maximum(code_fin, tl.max(fin.to(tl.int32), axis=0))
    return code_bad, code_fin


@triton.jit
def merge_partials(base, NSPLIT, NSPLIT_P2: tl.constexpr, STRIDE: tl.constexpr, ok):
    """Merge NSPLIT partial (m, s, t, code) records stored STRIDE floats apart from `base`.

    Returns (lse, h, valid). `ok` masks the loads (False gives an all-empty merge). Every program that merges the
    same records gets bit-identical results, which is what lets programs of one row agree without a sync.
    """
    k = tl.arange(0, NSPLIT_P2)
    okv = tl.zeros([NSPLIT_P2], tl.int32) + ok  # broadcasts a Python bool or a scalar tensor alike
    msk = (k < NSPLIT) & (okv != 0)
    pm = tl.load(base + k * STRIDE + 0, mask=msk, other=float("-inf"))
    ps = tl.load(base + k * STRIDE + 1, mask=msk, other=0.0)
    pt = tl.load(base + k * STRIDE + 2, mask=msk, other=0.0)
    code = tl.load(base + k * STRIDE + 3, mask=msk, other=0.0).to(tl.int32)
    big_m = tl.max(pm, axis=0)
    ms = tl.where(big_m == float("-inf"), 0.0, big_m)
    sc = tl.exp(pm - ms)
    s = tl.sum(ps * sc, axis=0)
    t = tl.sum(tl.where(ps > 0, sc * (pt + (pm - ms) * ps), 0.0), axis=0)
    log_s = tl.log(s)
    lse = ms + log_s
    h = log_s - t / s
    bad = tl.max(code & 1, axis=0)
    fin = tl.max((code >> 1) & 1, axis=0)
    valid = (bad == 0) & (fin == 1)
    return lse, h, valid


@triton.jit
def f64_arg(bits):
    """A float64 passed bit-for-bit as an integer kernel argument (Triton types Python floats as fp32)."""
    return (tl.zeros((), dtype=tl.int64) + bits).to(tl.float64, bitcast=True)


def f64_bits(x: float) -> int:
    """The integer whose bits are the float64 x, for `f64_arg` on the kernel side."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """How many programs a launch should have to fill the device.

    CUDA: 4 per SM, enough resident warps to hide HBM latency. Interpreter (CPU tensors): 4 programs in total,
    which still exercises the cross-program merge in tests while keeping the interpreted program count low.
    """
    if device.type == "cuda":
        return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


# At most this many programs per row: the merges hold next_pow2(nsplit) partial records in registers, and beyond
# 1024 they spill (ahead-of-time compile check, sm_80 and sm_90). 1024 programs fill a GPU of up to 256 SMs for a
# single row, and V / 1024 keeps each program's chunk at a few blocks even at V = 151936.
MAX_SPLITS = 1024


def split_geometry(batch: int, vocab: int, block: int, device: torch.device, num_splits: int | None) -> tuple[int, int]:
    """(nsplit, chunk): programs per row and the elements each covers (a multiple of block).

    Small batches split the vocabulary so that batch * nsplit reaches the device's target program count; a chunk
    is at least one block. num_splits overrides the choice (tests use it to force both paths).
    """
    max_splits = triton.cdiv(vocab, block)
    if num_splits is None:
        num_splits = triton.cdiv(target_programs(device), max(batch, 1))
    nsplit = max(1, min(int(num_splits), max_splits, MAX_SPLITS))
    chunk = triton.cdiv(triton.cdiv(vocab, nsplit), block) * block
    return triton.cdiv(vocab, chunk), chunk


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def as_rows(logits: torch.Tensor) -> torch.Tensor:
    """The logits with unit stride along V (row stride is passed to the kernels, so row-sliced views need no copy)."""
    return logits if logits.stride(-1) == 1 else logits.contiguous()


@triton.jit
def to_dtype_rne(z, DTYPE: tl.constexpr):
    """fp32 -> DTYPE with round-to-nearest-even, as torch's .to() does.

    bf16 is rounded by hand on the bits: the Triton interpreter (how tests run without a GPU) truncates fp32 -> bf16,
    and one code path for both keeps the tests meaningful. fp16 and fp32 use the ordinary conversion.
    """
    if DTYPE == tl.bfloat16:
        bits = z.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return z.to(DTYPE)


@triton.jit
def merge_max_sum(base, NSPLIT, NSPLIT_P2: tl.constexpr, STRIDE: tl.constexpr):
    """Merge partial (m, s, _, code) records into (max, sum exp(z - max), valid): the softmax normaliser in the
    form torch's softmax uses, exp(z - max) / sum."""
    k = tl.arange(0, NSPLIT_P2)
    msk = k < NSPLIT
    pm = tl.load(base + k * STRIDE + 0, mask=msk, other=float("-inf"))
    ps = tl.load(base + k * STRIDE + 1, mask=msk, other=0.0)
    code = tl.load(base + k * STRIDE + 3, mask=msk, other=0.0).to(tl.int32)
    big_m = tl.max(pm, axis=0)
    ms = tl.where(big_m == float("-inf"), 0.0, big_m)
    s = tl.sum(ps * tl.exp(pm - ms), axis=0)
    valid = (tl.max(code & 1, axis=0) == 0) & (tl.max((code >> 1) & 1, axis=0) == 1)
    return big_m, s, valid


def row_records(batch: int, device: torch.device, values: tuple, rows: torch.Tensor | None,
                int_cols: dict[int, tuple[int, int]]) -> torch.Tensor:
    """[B, len(values) + 1] float64 per-row parameter records for PER_ROW kernels, built by device ops (no host
    sync): each value a Python scalar (broadcast) or a [B] tensor; integer columns clamped to their (low, high) here
    (kernels clamp again where a value bounds memory); the last column is 1.0 for rows to process, 0.0 for the
    rest."""
    cols = []
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            if i in int_cols:
                v = v.clamp(*int_cols[i])
            cols.append(v.to(torch.float64))
        else:
            if i in int_cols:
                v = min(max(v, int_cols[i][0]), int_cols[i][1])
            cols.append(torch.full((batch,), float(v), dtype=torch.float64, device=device))
    cols.append(torch.ones(batch, dtype=torch.float64, device=device) if rows is None else rows.to(torch.float64))
    return torch.stack(cols, dim=1).contiguous()

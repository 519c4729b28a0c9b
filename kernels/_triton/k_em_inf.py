"""Fused EM-INF: per row, up to `steps` Adam steps on the logits minimising H(q) + kl_weight * KL(p0 || q).

Why replay instead of streaming Adam state: Adam is elementwise, so element i's trajectory z_i^k, m_i^k, v_i^k is a
function of its own z0_i and of per-row scalars only: lse0 (for p0_i), and lse_k, H_k of each step k (for q_i^k and
the gradient). So pass P re-reads only z0 (input dtype), replays the first P steps in registers and reduces the
statistics of z_P; nothing per element is ever written until the output. Naive fused Adam would move z, m, v in and
out each step (about 28 bytes per element per step); here it is (steps + 1) reads of z0 plus one write of z':
10 bytes per element for bf16 with 3 steps, at the price of re-computing earlier steps (compute grows as
steps^2 / 2; the per-step work is a few exp/log/div per element).

Launches: `steps + 1`, one per pass, each with grid (B, nsplit). Pass P merges the partial (m, s, t) records of
step P-1 from all programs of the row itself (every program gets bit-identical scalars, so no merge launch and no
host sync), and program 0 of the row keeps the merged (lse, H) in a per-row table that later passes read.
A row stops when H_k < threshold (checked before step k, on the T = 1 entropy of the current logits); its output
is written by the pass right after it stops and later passes skip it without reading it.

Gradient, per element, with the authors' eps form H = -sum q log(q + 1e-12):
  dH/dz_i = -q_i (log(q_i + eps) + q_i / (q_i + eps) + H - R),  R = sum_j q_j^2 / (q_j + eps)
  dKL(p0||q)/dz_i = q_i - p0_i
The per-element terms follow the eps form exactly. The per-row scalars use H = lse - sum q z and R = 1, i.e. the
eps-free values: sum_i q_i log(1 + eps / q_i) and 1 - R are both below V * 1e-12 (1.5e-7 at V = 151936) and they
nearly cancel in H - R, so the gradient differs from the reference at the level of fp32 rounding of the row sum;
the threshold test sees H larger by at most V * 1e-12 nats.

Adam follows torch.optim.Adam (single-tensor path) operation by operation: m = lerp(m, g, 0.1),
v = 0.999 v + (0.001 g) g, denom = sqrt(v) / sqrt(1 - 0.999^t) + 1e-8, z += (-lr / (1 - 0.9^t)) m / denom, with
the bias corrections computed in float64 as Python does, and correctly rounded sqrt and division.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import params, reference
from kernels._triton._common import (
    as_rows,
    f64_arg,
    f64_bits,
    flags_update,
    merge_partials,
    next_pow2,
    row_records,
    split_geometry,
    stats_update,
    to_dtype_rne,
)
from kernels._triton.launch import LOGITS, POW2_SPLITS, KernelLaunch

BLOCK = 2048
NUM_WARPS = 8
NPRM = tl.constexpr(5)  # per-row parameter record (float64): lr, steps, kl_weight, threshold, active


@triton.jit
def _adam_step(z, m, v, p0, lse, h, step_size, bc2_sqrt, kl_weight, HAS_KL: tl.constexpr):
    q = tl.exp(z - lse)
    g = -q * (tl.log(q + 1e-12) + q / (q + 1e-12) + (h - 1.0))
    if HAS_KL:
        g += kl_weight * (q - p0)
    m = m + 0.1 * (g - m)
    v = v * 0.999 + (0.001 * g) * g
    denom = tl.math.div_rn(tl.sqrt_rn(v), bc2_sqrt) + 1e-8
    # masked (-inf) entries have q = p0 = 0, so g = m = 0 and the update is exactly 0: they stay -inf
    z = z + tl.math.div_rn(-step_size * m, denom)
    return z, m, v


@triton.jit
def _step_constants(b1p, b2p, lr):
    """Advance beta1^t, beta2^t (float64, as Python's floats) and return the fp32 Adam constants of step t."""
    b1p = b1p * 0.9
    b2p = b2p * 0.999
    step_size = (lr / (1.0 - b1p)).to(tl.float32)
    bc2_sqrt = tl.sqrt(1.0 - b2p).to(tl.float32)
    return b1p, b2p, step_size, bc2_sqrt


@triton.jit(do_not_specialize=["NSPLIT", "P", "STEPS", "lr_bits"])
def em_inf_pass_kernel(
    x_ptr,
    out_ptr,
    valid_ptr,
    part_ptr,
    rows_ptr,
    prm_ptr,
    stride_x,
    stride_o,
    V,
    CHUNK,
    NSPLIT,
    P,
    STEPS,
    lr_bits,
    kl_weight,
    threshold,
    BLOCK: tl.constexpr,
    NSPLIT_P2: tl.constexpr,
    HAS_KL: tl.constexpr,
    PER_ROW: tl.constexpr,
):
    """Pass P of EM-INF for program (row b, split k).

    part: [B, STEPS, NSPLIT, 4] fp32 partial (m, s, t, code) of z_P for P < STEPS (code only at P = 0).
    rows: [B, STEPS, 2] fp32 merged (lse_k, H_k), entry k written in pass k + 1 by split 0.
    PER_ROW: the row's (lr, steps, kl_weight, threshold, active) from prm [B, NPRM] float64 instead of the scalar
    arguments; STEPS is then the launch bound (passes 0 .. STEPS), the row's steps are clamped to [0, STEPS], a row
    is idle in the passes after its own last one, and an inactive row is neither read nor written (its valid entry,
    set by the launcher, stays True).
    """
    b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    # as tensors, so every flag below is a tensor bool even where Triton specialises an int argument to a constant
    P = tl.zeros((), tl.int32) + P
    STEPS = tl.zeros((), tl.int32) + STEPS
    start = k * CHUNK
    end = tl.minimum(start + CHUNK, V)
    if PER_ROW:
        prm = prm_ptr + b * NPRM
        lr = tl.load(prm + 0)
        steps_f = tl.load(prm + 1)
        steps_b = tl.minimum(tl.where(steps_f >= 0.0, steps_f, 0.0), STEPS.to(tl.float64)).to(tl.int32)  # NaN: 0
        kl_weight = tl.load(prm + 2).to(tl.float32)
        threshold = tl.load(prm + 3).to(tl.float32)
        active = tl.load(prm + 4) != 0.0
    else:
        lr = f64_arg(lr_bits)
        steps_b = STEPS
        active = P >= 0  # every row (a tensor bool)
    part_row = part_ptr + b * STEPS * NSPLIT * 4
    rows_row = rows_ptr + b * STEPS * 2

    # validity from the pass-0 records, then how many steps the row has applied so far (n <= P)
    _, _, valid = merge_partials(part_row, NSPLIT, NSPLIT_P2, 4, P > 0)
    alive = valid.to(tl.int32)
    n = tl.zeros((), tl.int32)
    for j in range(0, P - 1):
        h_j = tl.load(rows_row + j * 2 + 1)
        alive = alive & (h_j >= threshold).to(tl.int32)
        n += alive
    # statistics of z_{P-1} from every program's partial record, merged here (identically in each program)
    lse_f, h_f, _ = merge_partials(part_row + (P - 1) * NSPLIT * 4, NSPLIT, NSPLIT_P2, 4, P > 0)
    first = (k == 0) & (P > 0)
    # masks are normalised with `!= 0`: the interpreter turns `bool & bool` of scalars into ints
    tl.store(rows_row + (P - 1) * 2 + 0, lse_f, mask=first != 0)
    tl.store(rows_row + (P - 1) * 2 + 1, h_f, mask=first != 0)
    tl.store(valid_ptr + b, valid.to(tl.int8), mask=(first & (P == 1) & active) != 0)
    alive = alive & (h_f >= threshold).to(tl.int32) & (P > 0).to(tl.int32)
    n += alive

    continuing = n == P  # every check so far passed: the row is at z_P
    final = P == steps_b
    # pass 0 also takes the validity of a row with no step (its output is the raw copy written in that pass)
    do_stats = continuing & ((P < steps_b) | (P == 0)) & active
    # finished now, or stopped at the last check; never after the row's own last pass
    write_out = ((continuing & final) | ((n == P - 1) & (P > 0))) & (P <= steps_b) & active
    raw_copy = write_out & (n == 0)  # nothing applied (or invalid row): the input bits, untouched
    n_mem = tl.maximum(tl.minimum(n, P - 1), 0)  # steps whose scalars come from the table; a step P-1 uses lse_f, h_f
    lse0 = tl.load(rows_row, mask=P > 1, other=0.0)
    lse0 = tl.where(P == 1, lse_f, lse0)
    stop = tl.where(do_stats | write_out, end, start)  # rows with nothing to do read nothing
    # per-row store conditions as element limits (idx < limit), which also sidesteps scalar-vector mask ands
    lim_raw = tl.where(raw_copy, end, 0)
    lim_out = tl.where(write_out & (n > 0), end, 0)

    m_acc = tl.full((), float("-inf"), tl.float32)
    s_acc = tl.zeros((), tl.float32)
    t_acc = tl.zeros((), tl.float32)
    bad = tl.zeros((), tl.int32)
    fin = tl.zeros((), tl.int32)
    row_x = x_ptr + b * stride_x
    row_o = out_ptr + b * stride_o
    for off in range(start, stop, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        msk = idx < end
        xr = tl.load(row_x + idx, mask=msk, other=float("-inf"))
        z0 = xr.to(tl.float32)
        z = z0
        mom = tl.zeros([BLOCK], tl.float32)
        vel = tl.zeros([BLOCK], tl.float32)
        p0 = z0
        if HAS_KL:
            p0 = tl.exp(z0 - lse0)
        b1p = tl.full((), 1.0, tl.float64)
        b2p = tl.full((), 1.0, tl.float64)
        for j in range(0, n_mem):
            lse_j = tl.load(rows_row + j * 2 + 0)
            h_j = tl.load(rows_row + j * 2 + 1)
            b1p, b2p, step_size, bc2_sqrt = _step_constants(b1p, b2p, lr)
            z, mom, vel = _adam_step(z, mom, vel, p0, lse_j, h_j, step_size, bc2_sqrt, kl_weight, HAS_KL)
        for j in range(n_mem, n):
            b1p, b2p, step_size, bc2_sqrt = _step_constants(b1p, b2p, lr)
            z, mom, vel = _adam_step(z, mom, vel, p0, lse_f, h_f, step_size, bc2_sqrt, kl_weight, HAS_KL)
        if P == 0:
            bad, fin = flags_update(bad, fin, z0)
        m_acc, s_acc, t_acc = stats_update(m_acc, s_acc, t_acc, z)
        tl.store(row_o + idx, xr, mask=idx < lim_raw)
        tl.store(row_o + idx, to_dtype_rne(z, out_ptr.dtype.element_ty), mask=idx < lim_out)
    rec = part_row + (P * NSPLIT + k) * 4
    tl.store(rec + 0, m_acc, mask=do_stats != 0)
    tl.store(rec + 1, s_acc, mask=do_stats != 0)
    tl.store(rec + 2, t_acc, mask=do_stats != 0)
    tl.store(rec + 3, (bad + 2 * fin).to(tl.float32), mask=do_stats != 0)


PASS = KernelLaunch(
    em_inf_pass_kernel, num_warps=NUM_WARPS,
    pointers={"x_ptr": LOGITS, "out_ptr": LOGITS, "valid_ptr": "i8", "part_ptr": "fp32", "rows_ptr": "fp32",
              "prm_ptr": "fp64"},
    scalars={"lr_bits": "i64", "kl_weight": "fp32", "threshold": "fp32"},
    constexprs={"BLOCK": (BLOCK,), "NSPLIT_P2": POW2_SPLITS, "HAS_KL": (False, True), "PER_ROW": (False, True)},
    sizes=("NSPLIT_P2",),
)


def em_inf(
    logits: torch.Tensor,
    lr,
    steps,
    kl_weight,
    threshold,
    num_splits: int | None = None,
    *,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    max_steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, V] any float dtype -> (logits' same dtype, valid [B] bool). Launches bound + 1 passes, no host sync
    except for a per-row ``steps`` tensor without ``max_steps`` (its maximum is read: the launch count).

    Hyper-parameters: Python scalars, or [B] tensors of per-row values (then, or with ``rows``, the kernel reads a
    [B, NPRM] float64 record per row, built here by device ops). out: where to write, may be the logits themselves:
    pass P re-reads z0 only for rows still running, and the pass that writes a row's output is the last to read
    it (in the same program, element by element), so in place is safe.
    """
    x = as_rows(logits)
    batch, vocab = x.shape
    per_row = rows is not None or any(isinstance(v, torch.Tensor) for v in (lr, steps, kl_weight, threshold))
    high = int(params.EM_INF.param("steps").high)
    if isinstance(steps, torch.Tensor):
        bound = max_steps if max_steps is not None else int(steps.max().clamp(0, high))  # host sync
    else:
        bound = steps if max_steps is None else min(steps, max_steps)
    bound = min(bound, high)
    if batch == 0 or bound == 0:
        return reference.pass_through(logits, out, rows)
    nsplit, chunk = split_geometry(batch, vocab, BLOCK, x.device, num_splits)
    out = torch.empty_like(x) if out is None else out
    part = torch.empty(batch, bound, nsplit, 4, dtype=torch.float32, device=x.device)
    table = torch.empty(batch, bound, 2, dtype=torch.float32, device=x.device)
    if per_row:
        valid = torch.ones(batch, dtype=torch.int8, device=x.device)  # rows left out stay valid
        prm = row_records(batch, x.device, (lr, steps, kl_weight, threshold), rows, int_cols={1: (0, bound)})
        scalars = (0, 0.0, 0.0)
        has_kl = isinstance(kl_weight, torch.Tensor) or kl_weight != 0.0
    else:
        valid = torch.empty(batch, dtype=torch.int8, device=x.device)
        prm = torch.empty(1, dtype=torch.float64, device=x.device)  # not read
        scalars = (f64_bits(lr), float(kl_weight), float(threshold))
        has_kl = kl_weight != 0.0
    for p in range(bound + 1):
        PASS[(batch, nsplit)](
            x, out, valid, part, table, prm, x.stride(0), out.stride(0), vocab, chunk, nsplit, p, bound, *scalars,
            BLOCK=BLOCK, NSPLIT_P2=next_pow2(nsplit), HAS_KL=has_kl, PER_ROW=per_row,
        )
    return out, valid.view(torch.bool)

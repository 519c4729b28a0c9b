"""Adaptive temperature: per row, the authors' bisection on T in [tmin, tmax] for H(softmax(z / T)) ~ target.

Exactness. The reference (kernels.reference._adaptive_temperature_row) evaluates
  H_eps(T) = -sum p log(p + 1e-9),  p = softmax(z / fl32(mid))  (fp32 maths)
at float64 midpoints mid = (lo + hi) / 2 and branches on |H_eps - target| < tol and H_eps < target in float64, with
target = max(threshold, ratio * H_eps(1)). Here the midpoints are computed in float64 by the same recurrences
(tmin, tmax, tol, ... are passed bit-exact as float64) and z / T uses a correctly rounded fp32 division like torch
on CPU.

Brackets instead of H_eps. H_eps needs the row's normaliser S(T) inside the log, so evaluating it directly costs an
S sweep and then an H sweep per temperature. Instead, one online sweep gives (max, sum e, sum e * (y - max)) of
y = z / T, hence the exact-form entropy H = log s - t / s (no eps), and since 0 <= p log(1 + eps / p) <= eps,
  H - 1e-9 * V  <=  H_eps  <=  H.
Widened on both sides by a rounding margin (see `bracket_params`: it covers the fp32 error of this H and of a
direct fp32 evaluation of H_eps, with a safety factor), the bracket contains the H_eps that a direct evaluation
would compute. The target gets the same treatment: the T = 1 lane's bracket for H_eps(1) gives the threshold test
(H_eps(1) > threshold) and an interval for the target. A decision is taken from brackets when it is the same for
every H_eps and every target in them (the comparisons are done in float64 on the interval ends; rounding is
monotone, so the ends bound every value in between). When any decision on a row's path inside a group is not
determined that way (H_eps within ~1e-9 * V + margin of target - tol, target or target + tol, or H_eps(1) of the
threshold), that row alone does an exact sweep: -sum p log(p + 1e-9) for the group's 7 midpoints and T = 1 with
p = exp(y - max) / s, s from the bracket sweep, and the group is decided from those values exactly as before (the
target becomes exact too). The exact values are fp32 evaluations of the same expression as the previous version
of this kernel; their normaliser s comes from the online sweep, so its last bits can differ from that version's
fixed-shift sum. Only a row with an H_eps within fp32 rounding of a boundary could tell the difference, and such a
row is decided by rounding against the reference as well.

Lanes. Each sweep works on NC = 8 lanes: the 2^LEVELS - 1 = 7 midpoints of the next LEVELS = 3 bisection levels
(the whole subtree under the current bracket, heap order; all known before any of its decisions) and T = 1 in
lane 7. The first sweep of a row therefore also gives its validity (no NaN / +inf, something finite), its max and
the bracket of H_eps(1): the target needs no sweep of its own. A group's decisions walk the 3 levels through the
7 lanes. Early exits (convergence, max_iter, and a bracket that can no longer move in float64, after which every
further midpoint is the same number) are per row inside the kernels.

Pass structure (row sweeps; each reads the logits once in the input dtype):
  per group of 3 levels one online sweep (the first one also takes the validity flags and the T = 1 lane), plus
  one exact sweep for a group whose decisions the brackets leave open, then one write sweep (reads z, writes
  z / T). A row that runs L >= 1 bisection levels without an open decision costs ceil(L / 3) + 1 sweeps (the
  previous version, commit a927a45: 2 * ceil(L / 3) + 2). A row with T = 1 from the threshold test (or
  max_iter = 0) costs 2: the first sweep is needed to know it. Finished rows skip their sweeps (they read
  nothing). Open groups are rare with the scripts' tol = 0.1 (none in the tests' random rows); with a tol near the
  brackets' width (~1e-4 nats at V = 4096, wider at larger V) the path converges into it and some groups open: at
  tol = 3e-4 about a third of the tests' random rows paid one or two extra sweeps.
Small batches split the row across programs and exchange per-row partials and state between launches: one stats
launch, then per group a decide launch (brackets; exact partials for open rows) and, between groups, a resolve
launch (takes the exact result where needed, runs the next group's sweep): 2 * G + 2 launches with the output,
for G = min(ceil(max_iter / 3), 4) groups. Rows still unfinished after 12 levels are finished by a
one-program-per-row kernel that runs the remaining levels in an in-kernel loop. Large batches (one program per row
fills the GPU) run the whole algorithm in that single kernel: one launch. No path synchronises with the host.

On a GPU. The compiled code (PTX for sm_90, kernels._triton.aot) computes exp as ex2.approx.f32 of x * log2(e)
(relative error about 2^-22 + |x| 2^-24: under 12 ulps for the terms that carry the sums, |y - max| <= 20), log
through libdevice's polynomial (about 1 ulp), `/` as div.full.f32 (2 ulps), and the midpoints, brackets and
decisions in float64 (add/mul/div.rn/setp .f64), as the interpreter does. Those per-element errors stay inside the
64-ulp allowance of `bracket_params`, so a bracket decision is still the reference's. The exact sweep of an open row
is no longer bit-identical to torch's expf/logf, though, so on a GPU a row whose decision lies within a few fp32 ulps
of a boundary can get a different T than the reference (the CUDA tests allow batch // 32 such rows). `sweep_counts`
(an optional int32 [B] output) reports each row's sweeps as the kernels count them, and tests check the bound above
with it. The kernels ran once on an H100 (bench/results/h100-first-run.md: 0.46 ms at [64, 151936] fp32, 6% of HBM
bandwidth, so bound by compute). Their CUDA parity tests have not yet completed on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import params
from kernels._triton._common import (
    as_rows,
    f64_arg,
    f64_bits,
    flags_update,
    next_pow2,
    row_records,
    split_geometry,
    to_dtype_rne,
)
from kernels._triton.launch import LOGITS, POW2_SPLITS, KernelLaunch

LEVELS = 3
NC = 1 << LEVELS  # 7 candidate midpoints + T = 1 in the last lane
BLOCK = 512  # [BLOCK, NC] fp32 tiles: 16 values per thread at 8 warps
NUM_WARPS = 8
OUT_BLOCK = 4096
SPLIT_GROUPS = 4  # groups of LEVELS levels run split across programs before the per-row finisher takes over
REC = 2 + 2 * NC  # split partial record: max, validity code, s[NC], t[NC]
SF = 8  # float64 fields of a state record: lo, hi, t, target_lo, target_hi
SI = 8  # int32 fields of a state record: it, done, valid, sweeps, open (undecided by the brackets)
ADAPTIVE_EPS = 1e-9
NPRM = tl.constexpr(7)  # per-row parameter record (float64): tmin, tmax, max_iter, tol, target_ratio, threshold, active
# float64 hyper-parameters passed as their bits: per-request values, so never value-specialised (see _common)
_F64_ARGS = ("tmin_bits", "tmax_bits", "tol_bits", "ratio_bits", "thr_bits", "epsv_bits", "rel_bits")


def bracket_params(vocab: int) -> tuple[float, float]:
    """(eps_width, rel_err): the bracket of H_eps around the exact-form H is
    [H - eps_width - rel_err * (1 + |H|), H + rel_err * (1 + |H|)].

    eps_width = 1e-9 * V bounds sum p log(1 + eps / p). rel_err bounds (twice over) the fp32 error of H from the
    online sums plus that of a direct fp32 H_eps, both relative to 1 + H (all terms of either sum have one sign):
    per block one sequential add and at most one rescale of the running sums (a few roundings each), plus the
    in-block tree, exp, log and division roundings.
    """
    nblk = triton.cdiv(max(vocab, 1), BLOCK)
    return ADAPTIVE_EPS * vocab, (4 * nblk + 64) * 2.0**-23


@triton.jit
def _candidates(lo, hi, LEVELS: tl.constexpr, NC: tl.constexpr):
    """float64 midpoints of the subtree of depth LEVELS under [lo, hi], heap order (children 2k+1: hi = mid,
    2k+2: lo = mid), each computed by the reference's own recurrence mid = (lo + hi) / 2 along its path."""
    n = tl.arange(0, NC) + 1  # heap index + 1: a leading 1 followed by the path bits (1 = lo moves up)
    depth = tl.zeros([NC], tl.int32)
    for kk in tl.static_range(1, LEVELS + 1):
        depth += (n >= (1 << kk)).to(tl.int32)
    lo_v = tl.zeros([NC], tl.float64) + lo
    hi_v = tl.zeros([NC], tl.float64) + hi
    for s in tl.static_range(LEVELS):
        apply = s < depth
        bit = (n >> tl.maximum(depth - 1 - s, 0)) & 1
        mid = (lo_v + hi_v) * 0.5
        lo_v = tl.where(apply & (bit == 1), mid, lo_v)
        hi_v = tl.where(apply & (bit == 0), mid, hi_v)
    return (lo_v + hi_v) * 0.5


@triton.jit
def _lane_temps(lo, hi, LEVELS: tl.constexpr, NC: tl.constexpr):
    """The group's lane temperatures: 7 midpoints and T = 1 in lane NC - 1 (the walk never reaches that lane)."""
    tc = _candidates(lo, hi, LEVELS, NC)
    tc = tl.where(tl.arange(0, NC) == NC - 1, 1.0, tc)
    return tc, tc.to(tl.float32)


@triton.jit
def _sweep_stats(row, start, end, t32, FLAGS: tl.constexpr, BLOCK: tl.constexpr, NC: tl.constexpr):
    """One pass over row[start:end]: per lane c, online (max, s, t) of y = fl(z / T_c), s = sum exp(y - max_c),
    t = sum exp(y - max_c) * (y - max_c), max_c = fl(max z / T_c) (division is monotone). FLAGS: validity too."""
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros([NC], tl.float32)
    t = tl.zeros([NC], tl.float32)
    bad = tl.zeros((), tl.int32)
    fin = tl.zeros((), tl.int32)
    tt = t32[None, :] + tl.zeros([BLOCK, 1], tl.float32)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        z = tl.load(row + idx, mask=idx < end, other=float("-inf")).to(tl.float32)
        if FLAGS:
            bad, fin = flags_update(bad, fin, z)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        m_old_c = tl.math.div_rn(tl.zeros([NC], tl.float32) + m, t32)
        ms = tl.math.div_rn(tl.zeros([NC], tl.float32) + m_new, t32)
        # nothing finite yet: shift by 0 so that exp(-inf - (-inf)) never makes a NaN (the sums are 0 then)
        ms = tl.where(ms == float("-inf"), 0.0, ms)
        scale = tl.exp(m_old_c - ms)
        y = tl.math.div_rn(z[:, None] + tl.zeros([1, NC], tl.float32), tt)  # fl(z / T) as torch on CPU
        d = y - ms[None, :]
        e = tl.exp(d)
        et = tl.where(e > 0, e * d, 0.0)  # e * (-inf) would be NaN for masked entries
        t = scale * (t + tl.where(s > 0, (m_old_c - ms) * s, 0.0)) + tl.sum(et, axis=0)
        s = s * scale + tl.sum(e, axis=0)
        m = m_new
    return m, s, t, bad, fin


@triton.jit
def _sweep_eps(row, start, end, t32, mt, inv_s, BLOCK: tl.constexpr, NC: tl.constexpr):
    """One pass over row[start:end]: per lane, sum p log(p + eps), p = exp(fl(z / T_c) - mt_c) * inv_s_c, the
    reference's H_eps (negated) evaluated directly. (-inf entries give p = 0 and contribute 0.)"""
    acc = tl.zeros([NC], tl.float32)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        z = tl.load(row + idx, mask=idx < end, other=float("-inf")).to(tl.float32)
        zz = z[:, None] + tl.zeros([1, NC], tl.float32)
        y = tl.math.div_rn(zz, t32[None, :] + tl.zeros([BLOCK, 1], tl.float32))
        e = tl.exp(y - mt[None, :])
        p = e * inv_s[None, :]
        acc += tl.sum(p * tl.log(p + 1e-9), axis=0)
    return acc


@triton.jit
def _brackets(s, t, eps_v, rel):
    """[NC] float64 bracket ends of H_eps from the online sums (see bracket_params)."""
    h = tl.log(s).to(tl.float64) - t.to(tl.float64) / s.to(tl.float64)
    err = rel * (1.0 + tl.abs(h))
    return h - eps_v - err, h + err


@triton.jit
def _lane(x, lane, NC: tl.constexpr):
    return tl.sum(tl.where(tl.arange(0, NC) == lane, x, 0.0), axis=0)


@triton.jit
def _row_params(prm_ptr, b, tmin_bits, tmax_bits, tol_bits, ratio_bits, thr_bits, max_iter, PER_ROW: tl.constexpr):
    """Row b's (tmin, tmax, max_iter, tol, target_ratio, threshold, active): the scalar arguments, or with PER_ROW
    its float64 record (max_iter clamped to [0, bound] by the launcher; any float value keeps every loop finite)."""
    if PER_ROW:
        p = prm_ptr + b * NPRM
        tmin = tl.load(p + 0)
        tmax = tl.load(p + 1)
        mi = tl.load(p + 2).to(tl.int32)
        tol = tl.load(p + 3)
        ratio = tl.load(p + 4)
        thr = tl.load(p + 5)
        active = tl.load(p + 6) != 0.0
    else:
        tmin = f64_arg(tmin_bits)
        tmax = f64_arg(tmax_bits)
        mi = tl.zeros((), tl.int32) + max_iter
        tol = f64_arg(tol_bits)
        ratio = f64_arg(ratio_bits)
        thr = f64_arg(thr_bits)
        active = mi >= 0  # every row (a tensor bool)
    return tmin, tmax, mi, tol, ratio, thr, active


@triton.jit
def _decide(lo, hi, t, it, done, tg_lo, tg_hi, first, exact, hl, hh, tc, tol, thr, ratio, max_iter,
            LEVELS: tl.constexpr, NC: tl.constexpr):
    """One group's decisions from H_eps brackets hl <= H_eps <= hh per lane (exact: hl == hh, the value itself).

    first: the row's first group, whose lane NC - 1 (T = 1) gives the threshold test and the target (also taken
    from lane NC - 1 whenever exact, so an exact group leaves an exact target behind). A decision is taken when it
    holds over the whole bracket of H_eps and of the target; `open` reports a live one that does not (never with
    exact values, unless they are NaN, for which the result equals the reference's branch all the same). A row is
    done when it converged, used max_iter midpoints, or its midpoint equals a bracket end (then every later
    midpoint is that same number, so the reference would return it).
    """
    h0_lo = _lane(hl, NC - 1, NC)
    h0_hi = _lane(hh, NC - 1, NC)
    live0 = first & (done == 0)
    thr_yes = h0_lo > thr
    thr_no = h0_hi <= thr
    open_ = (live0 & (thr_yes == 0) & (thr_no == 0)).to(tl.int32)
    done = tl.where(live0 & thr_no, 1, done)
    a = ratio * h0_lo
    b = ratio * h0_hi
    upd = first | exact
    tg_lo = tl.where(upd, tl.maximum(thr, tl.minimum(a, b)), tg_lo)
    tg_hi = tl.where(upd, tl.maximum(thr, tl.maximum(a, b)), tg_hi)
    lanes = tl.arange(0, NC)
    node = tl.zeros((), tl.int32)
    for _ in tl.static_range(LEVELS):
        live = (done == 0) & (it < max_iter)
        mid = tl.sum(tl.where(lanes == node, tc, 0.0), axis=0)
        h_lo = tl.sum(tl.where(lanes == node, hl, 0.0), axis=0)
        h_hi = tl.sum(tl.where(lanes == node, hh, 0.0), axis=0)
        t = tl.where(live, mid, t)
        it = it + live.to(tl.int32)
        # fl(h - target) is monotone in both, so the interval ends bound it over the brackets
        d_lo = h_lo - tg_hi
        d_hi = h_hi - tg_lo
        conv = (d_lo > -tol) & (d_hi < tol)  # |h - target| < tol for all
        far = (d_lo >= tol) | (d_hi <= -tol)  # for none
        up = h_hi < tg_lo  # too cold (raise the lower bound) for all
        down = h_lo >= tg_hi  # for none
        known = conv | (far & (up | down))
        open_ = tl.where(live & (known == 0), 1, open_)
        stuck = (mid == lo) | (mid == hi)
        lo = tl.where(live & (conv == 0) & up, mid, lo)
        hi = tl.where(live & (conv == 0) & (up == 0), mid, hi)
        done = tl.where(live & (conv | stuck | (it >= max_iter)), 1, done)
        node = tl.where(up, 2 * node + 2, 2 * node + 1)
    return lo, hi, t, it, done, tg_lo, tg_hi, open_


@triton.jit
def _exact_where_open(open_, he, lo, hi, t, it, done, tg_lo, tg_hi, first, tc, tol, thr, ratio, max_iter,
                      b_lo, b_hi, b_t, b_it, b_done, b_tgl, b_tgh, LEVELS: tl.constexpr, NC: tl.constexpr):
    """The bracket decision (b_*), except for a row it left open: there the exact decision from the exact H_eps
    `he` and the group's start state (lo ... tg_hi)."""
    e_lo, e_hi, e_t, e_it, e_done, e_tgl, e_tgh, _ = _decide(
        lo, hi, t, it, done, tg_lo, tg_hi, first, True, he, he, tc, tol, thr, ratio, max_iter, LEVELS, NC)
    o = open_ != 0
    return (tl.where(o, e_lo, b_lo), tl.where(o, e_hi, b_hi), tl.where(o, e_t, b_t), tl.where(o, e_it, b_it),
            tl.where(o, e_done, b_done), tl.where(o, e_tgl, b_tgl), tl.where(o, e_tgh, b_tgh))


@triton.jit
def _row_group(row, V, m, s, ts, tc, t32, lo, hi, t, it, done, tg_lo, tg_hi, first, tol, thr, ratio, eps_v, rel,
               max_iter, BLOCK: tl.constexpr, LEVELS: tl.constexpr, NC: tl.constexpr):
    """A whole-row program's group: decide from brackets; an open row does the exact sweep and decides again."""
    hl, hh = _brackets(s, ts, eps_v, rel)
    b_lo, b_hi, b_t, b_it, b_done, b_tgl, b_tgh, open_ = _decide(
        lo, hi, t, it, done, tg_lo, tg_hi, first, False, hl, hh, tc, tol, thr, ratio, max_iter, LEVELS, NC)
    mt = tl.math.div_rn(tl.zeros([NC], tl.float32) + m, t32)
    acc = _sweep_eps(row, 0, tl.where(open_ != 0, V, 0), t32, mt, 1.0 / s, BLOCK, NC)
    lo, hi, t, it, done, tg_lo, tg_hi = _exact_where_open(
        open_, (-acc).to(tl.float64), lo, hi, t, it, done, tg_lo, tg_hi, first, tc, tol, thr, ratio, max_iter,
        b_lo, b_hi, b_t, b_it, b_done, b_tgl, b_tgh, LEVELS, NC)
    return lo, hi, t, it, done, tg_lo, tg_hi, open_


@triton.jit
def _state_ptrs(sf_ptr, si_ptr, slot, b, B, SF: tl.constexpr, SI: tl.constexpr):
    base = slot * B + b
    return sf_ptr + base * SF, si_ptr + base * SI


@triton.jit
def _load_state(sf, si):
    return (tl.load(sf + 0), tl.load(sf + 1), tl.load(sf + 2), tl.load(sf + 3), tl.load(sf + 4),
            tl.load(si + 0), tl.load(si + 1), tl.load(si + 2), tl.load(si + 3), tl.load(si + 4))


@triton.jit
def _resolve(pf, pi, hc_row, NSPLIT, lo, hi, t, it, done, tg_lo, tg_hi, first, tol, thr, ratio, max_iter,
             NSPLIT_P2: tl.constexpr, LEVELS: tl.constexpr, NC: tl.constexpr):
    """The state after a split group: the bracket decision stored at (pf, pi), or for a row left open there the
    exact decision from the group's start state (lo ... tg_hi) and the exact H_eps partials at hc_row [NSPLIT, NC].
    Also returns the sweep count stored with the bracket decision."""
    p_lo, p_hi, p_t, p_tgl, p_tgh, p_it, p_done, _, p_cnt, p_open = _load_state(pf, pi)
    tc, _ = _lane_temps(lo, hi, LEVELS, NC)
    splits = tl.arange(0, NSPLIT_P2)
    acc = tl.sum(tl.load(hc_row + splits[:, None] * NC + tl.arange(0, NC)[None, :],
                         mask=(splits < NSPLIT)[:, None], other=0.0), axis=0)
    lo, hi, t, it, done, tg_lo, tg_hi = _exact_where_open(
        p_open, (-acc).to(tl.float64), lo, hi, t, it, done, tg_lo, tg_hi, first, tc, tol, thr, ratio, max_iter,
        p_lo, p_hi, p_t, p_it, p_done, p_tgl, p_tgh, LEVELS, NC)
    return lo, hi, t, it, done, tg_lo, tg_hi, p_cnt


@triton.jit
def _store_state(sf, si, lo, hi, t, tg_lo, tg_hi, it, done, valid, cnt, open_, ok):
    okv = ok != 0
    tl.store(sf + 0, lo, mask=okv)
    tl.store(sf + 1, hi, mask=okv)
    tl.store(sf + 2, t, mask=okv)
    tl.store(sf + 3, tg_lo, mask=okv)
    tl.store(sf + 4, tg_hi, mask=okv)
    tl.store(si + 0, it, mask=okv)
    tl.store(si + 1, done, mask=okv)
    tl.store(si + 2, valid.to(tl.int32), mask=okv)
    tl.store(si + 3, cnt, mask=okv)
    tl.store(si + 4, open_, mask=okv)


@triton.jit
def _merge_stats(base, t32, NSPLIT, NSPLIT_P2: tl.constexpr, REC: tl.constexpr, NC: tl.constexpr):
    """Merge the split records of one row into (max z, s [NC], t [NC], valid), s and t relative to each lane's
    max fl(max z / T_c). Every program that merges the same records gets the same bits."""
    k = tl.arange(0, NSPLIT_P2)
    lanes = tl.arange(0, NC)
    msk = k < NSPLIT
    pm = tl.load(base + k * REC, mask=msk, other=float("-inf"))
    code = tl.load(base + k * REC + 1, mask=msk, other=0.0).to(tl.int32)
    ps = tl.load(base + k[:, None] * REC + 2 + lanes[None, :], mask=msk[:, None], other=0.0)
    pt = tl.load(base + k[:, None] * REC + 2 + NC + lanes[None, :], mask=msk[:, None], other=0.0)
    big_m = tl.max(pm, axis=0)
    mc = tl.math.div_rn(tl.zeros([NC], tl.float32) + big_m, t32)
    mc = tl.where(mc == float("-inf"), 0.0, mc)
    pmc = tl.math.div_rn(pm[:, None] + tl.zeros([1, NC], tl.float32), t32[None, :] + tl.zeros([NSPLIT_P2, 1],
                                                                                              tl.float32))
    sc = tl.exp(pmc - mc[None, :])
    s = tl.sum(ps * sc, axis=0)
    t = tl.sum(tl.where(ps > 0, sc * (pt + (pmc - mc[None, :]) * ps), 0.0), axis=0)
    valid = (tl.max(code & 1, axis=0) == 0) & (tl.max((code >> 1) & 1, axis=0) == 1)
    return big_m, s, t, valid


@triton.jit(do_not_specialize=["NSPLIT", "tmin_bits", "tmax_bits"])
def at_stats_kernel(x_ptr, part_ptr, prm_ptr, stride_x, V, CHUNK, NSPLIT, tmin_bits, tmax_bits,
                    BLOCK: tl.constexpr, LEVELS: tl.constexpr, NC: tl.constexpr, REC: tl.constexpr,
                    PER_ROW: tl.constexpr):
    """Sweep 1 (split): validity, max, and the online sums of the first group's 7 midpoints and of T = 1 (known
    before any decision: they depend on tmin and tmax only). A row left out (PER_ROW) reads nothing."""
    b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    start = k * CHUNK
    end = tl.minimum(start + CHUNK, V)
    tmin, tmax, _, _, _, _, active = _row_params(prm_ptr, b, tmin_bits, tmax_bits, 0, 0, 0, 0, PER_ROW)
    _, t32 = _lane_temps(tmin, tmax, LEVELS, NC)
    m, s, t, bad, fin = _sweep_stats(x_ptr + b * stride_x, start, tl.where(active, end, start), t32, True, BLOCK, NC)
    rec = part_ptr + (b * NSPLIT + k) * REC
    lanes = tl.arange(0, NC)
    tl.store(rec + 0, m)
    tl.store(rec + 1, (bad + 2 * fin).to(tl.float32))
    tl.store(rec + 2 + lanes, s)
    tl.store(rec + 2 + NC + lanes, t)


@triton.jit(do_not_specialize=["NSPLIT", "B", "GI", *_F64_ARGS, "max_iter"])
def at_group_kernel(x_ptr, part_ptr, hc_ptr, sf_ptr, si_ptr, prm_ptr, stride_x, V, CHUNK, NSPLIT, B, GI,
                    tmin_bits, tmax_bits, tol_bits, ratio_bits, thr_bits, epsv_bits, rel_bits, max_iter,
                    NSPLIT_P2: tl.constexpr, BLOCK: tl.constexpr, LEVELS: tl.constexpr, NC: tl.constexpr,
                    REC: tl.constexpr, SF: tl.constexpr, SI: tl.constexpr, RESOLVE: tl.constexpr,
                    PER_ROW: tl.constexpr):
    """Group GI split across programs. State records: slot GI % 2 holds the state at the start of group GI, slot
    2 the bracket decision of the group in flight; program 0 of a row stores, every program computes the same.

    not RESOLVE (decide): merge the group's online partials, decide from brackets, store that decision in slot 2;
    open rows sweep their chunk for the exact H_eps partials. At GI = 0 the start state comes from the merged
    validity and is stored in slot 0. RESOLVE: take slot 2's decision, or for an open row the exact decision from
    the start state and the exact partials; store it as the start of group GI + 1 and sweep that group's online
    partials.
    """
    b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    start = k * CHUNK
    end = tl.minimum(start + CHUNK, V)
    row = x_ptr + b * stride_x
    gi = tl.zeros((), tl.int32) + GI
    first = gi == 0
    tmin, tmax, max_iter, tol, ratio, thr, active = _row_params(prm_ptr, b, tmin_bits, tmax_bits, tol_bits,
                                                                ratio_bits, thr_bits, max_iter, PER_ROW)
    lanes = tl.arange(0, NC)
    sf, si = _state_ptrs(sf_ptr, si_ptr, gi % 2, b, B, SF, SI)
    lo, hi, t, tg_lo, tg_hi, it, done, valid, cnt, _ = _load_state(sf, si)
    pf, pi = _state_ptrs(sf_ptr, si_ptr, 2, b, B, SF, SI)
    if RESOLVE:
        lo, hi, t, it, done, tg_lo, tg_hi, p_cnt = _resolve(
            pf, pi, hc_ptr + b * NSPLIT * NC, NSPLIT, lo, hi, t, it, done, tg_lo, tg_hi, first, tol, thr, ratio,
            max_iter, NSPLIT_P2, LEVELS, NC)
        cnt = p_cnt + (done == 0).to(tl.int32)
        sf, si = _state_ptrs(sf_ptr, si_ptr, (gi + 1) % 2, b, B, SF, SI)
        _store_state(sf, si, lo, hi, t, tg_lo, tg_hi, it, done, valid, cnt, 0, k == 0)
        _, t32 = _lane_temps(lo, hi, LEVELS, NC)
        m, s, ts, _, _ = _sweep_stats(row, start, tl.where(done == 0, end, start), t32, False, BLOCK, NC)
        rec = part_ptr + (b * NSPLIT + k) * REC
        tl.store(rec + 0, m)
        tl.store(rec + 1, 0.0)
        tl.store(rec + 2 + lanes, s)
        tl.store(rec + 2 + NC + lanes, ts)
    else:
        lo = tl.where(first, tmin, lo)
        hi = tl.where(first, tmax, hi)
        tc, t32 = _lane_temps(lo, hi, LEVELS, NC)
        m, s, ts, valid_m = _merge_stats(part_ptr + b * NSPLIT * REC, t32, NSPLIT, NSPLIT_P2, REC, NC)
        # a row left out: valid, T = 1, done before it starts
        valid = tl.where(first, (valid_m | (active == 0)).to(tl.int32), valid)
        done = tl.where(first, ((valid_m == 0) | (max_iter == 0) | (active == 0)).to(tl.int32), done)
        t = tl.where(first, 1.0, t)
        it = tl.where(first, 0, it)
        tg_lo = tl.where(first, 0.0, tg_lo)
        tg_hi = tl.where(first, 0.0, tg_hi)
        cnt = tl.where(first, 1, cnt)
        _store_state(sf, si, lo, hi, t, tg_lo, tg_hi, it, done, valid, cnt, 0, first & (k == 0))
        hl, hh = _brackets(s, ts, f64_arg(epsv_bits), f64_arg(rel_bits))
        b_lo, b_hi, b_t, b_it, b_done, b_tgl, b_tgh, open_ = _decide(
            lo, hi, t, it, done, tg_lo, tg_hi, first, False, hl, hh, tc, tol, thr, ratio, max_iter, LEVELS, NC)
        _store_state(pf, pi, b_lo, b_hi, b_t, b_tgl, b_tgh, b_it, b_done, valid, cnt + open_, open_, k == 0)
        mt = tl.math.div_rn(tl.zeros([NC], tl.float32) + m, t32)
        acc = _sweep_eps(row, start, tl.where(open_ != 0, end, start), t32, mt, 1.0 / s, BLOCK, NC)
        tl.store(hc_ptr + (b * NSPLIT + k) * NC + lanes, acc)


@triton.jit(do_not_specialize=["NSPLIT", "B", "G", *_F64_ARGS, "max_iter"])
def at_row_kernel(x_ptr, out_ptr, hc_ptr, sf_ptr, si_ptr, temps_ptr, valid_ptr, cnt_ptr, prm_ptr, stride_x,
                  stride_o, V, NSPLIT, B, G, tmin_bits, tmax_bits, tol_bits, ratio_bits, thr_bits, epsv_bits,
                  rel_bits, max_iter, NSPLIT_P2: tl.constexpr, BLOCK: tl.constexpr, LEVELS: tl.constexpr,
                  NC: tl.constexpr, SF: tl.constexpr, SI: tl.constexpr, FULL: tl.constexpr, OUT_BLOCK: tl.constexpr,
                  COUNT: tl.constexpr, PER_ROW: tl.constexpr):
    """One program per row. FULL: the whole algorithm (first sweep, all groups, output) in this program.
    Else: resolve split group G - 1 (as at_group_kernel's RESOLVE), then run any remaining levels here; the output
    is written by at_out_kernel."""
    b = tl.program_id(0).to(tl.int64)
    row = x_ptr + b * stride_x
    tmin, tmax, max_iter, tol, ratio, thr, active = _row_params(prm_ptr, b, tmin_bits, tmax_bits, tol_bits,
                                                                ratio_bits, thr_bits, max_iter, PER_ROW)
    eps_v = f64_arg(epsv_bits)
    rel = f64_arg(rel_bits)
    not_first = tl.zeros((), tl.int32) != 0
    if FULL:
        lo = tmin
        hi = tmax
        tc, t32 = _lane_temps(lo, hi, LEVELS, NC)
        m, s, ts, bad, fin = _sweep_stats(row, 0, tl.where(active, V, 0), t32, True, BLOCK, NC)
        valid = ((bad == 0) & (fin == 1)) | (active == 0)  # a row left out: valid, T = 1, nothing read or written
        done = ((valid == 0) | (max_iter == 0) | (active == 0)).to(tl.int32)
        t = tl.full((), 1.0, tl.float64)
        it = tl.zeros((), tl.int32)
        tg_lo = tl.zeros((), tl.float64)
        tg_hi = tl.zeros((), tl.float64)
        lo, hi, t, it, done, tg_lo, tg_hi, open_ = _row_group(
            row, V, m, s, ts, tc, t32, lo, hi, t, it, done, tg_lo, tg_hi, not_first == 0, tol, thr, ratio, eps_v,
            rel, max_iter, BLOCK, LEVELS, NC)
        cnt = 1 + open_
    else:
        gi = tl.zeros((), tl.int32) + G - 1
        sf, si = _state_ptrs(sf_ptr, si_ptr, gi % 2, b, B, SF, SI)
        lo, hi, t, tg_lo, tg_hi, it, done, valid, _, _ = _load_state(sf, si)
        pf, pi = _state_ptrs(sf_ptr, si_ptr, 2, b, B, SF, SI)
        lo, hi, t, it, done, tg_lo, tg_hi, cnt = _resolve(
            pf, pi, hc_ptr + b * NSPLIT * NC, NSPLIT, lo, hi, t, it, done, tg_lo, tg_hi, gi == 0, tol, thr, ratio,
            max_iter, NSPLIT_P2, LEVELS, NC)
        valid = valid != 0
    while done == 0:
        tc, t32 = _lane_temps(lo, hi, LEVELS, NC)
        m, s, ts, _, _ = _sweep_stats(row, 0, V, t32, False, BLOCK, NC)
        lo, hi, t, it, done, tg_lo, tg_hi, open_ = _row_group(
            row, V, m, s, ts, tc, t32, lo, hi, t, it, done, tg_lo, tg_hi, not_first, tol, thr, ratio, eps_v,
            rel, max_iter, BLOCK, LEVELS, NC)
        cnt += 1 + open_
    t32_final = t.to(tl.float32)
    tl.store(temps_ptr + b, t32_final)
    tl.store(valid_ptr + b, valid.to(tl.int8))
    if COUNT:
        tl.store(cnt_ptr + b, cnt + 1)  # + the output sweep
    if FULL:
        _write_out(row, out_ptr + b * stride_o, 0, tl.where(active, V, 0), t32_final, valid, OUT_BLOCK)


@triton.jit
def _write_out(row, orow, start, end, t32, valid, OUT_BLOCK: tl.constexpr):
    lim_div = tl.where(valid, end, 0)
    lim_raw = tl.where(valid, 0, end)
    for off in range(start, end, OUT_BLOCK):
        idx = off + tl.arange(0, OUT_BLOCK)
        xr = tl.load(row + idx, mask=idx < end)
        y = tl.math.div_rn(xr.to(tl.float32), tl.zeros([OUT_BLOCK], tl.float32) + t32)
        tl.store(orow + idx, to_dtype_rne(y, orow.dtype.element_ty), mask=idx < lim_div)
        tl.store(orow + idx, xr, mask=idx < lim_raw)  # invalid rows: the input bits, untouched


@triton.jit
def at_out_kernel(x_ptr, out_ptr, temps_ptr, valid_ptr, prm_ptr, stride_x, stride_o, V, CHUNK,
                  OUT_BLOCK: tl.constexpr, PER_ROW: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    start = k * CHUNK
    end = tl.minimum(start + CHUNK, V)
    if PER_ROW:
        end = tl.where(tl.load(prm_ptr + b * NPRM + 6) != 0.0, end, start)  # a row left out is not written
    valid = tl.load(valid_ptr + b) != 0
    _write_out(x_ptr + b * stride_x, out_ptr + b * stride_o, start, end, tl.load(temps_ptr + b), valid, OUT_BLOCK)


_BITS = {name: "i64" for name in _F64_ARGS}
_SHAPE = {"BLOCK": (BLOCK,), "LEVELS": (LEVELS,), "NC": (NC,)}
_STATE = {"sf_ptr": "fp64", "si_ptr": "i32"}
_PER_ROW = {"PER_ROW": (False, True)}
STATS = KernelLaunch(at_stats_kernel, num_warps=NUM_WARPS,
                     pointers={"x_ptr": LOGITS, "part_ptr": "fp32", "prm_ptr": "fp64"},
                     scalars={"tmin_bits": "i64", "tmax_bits": "i64"}, constexprs={**_SHAPE, "REC": (REC,), **_PER_ROW})
GROUP = KernelLaunch(at_group_kernel, num_warps=NUM_WARPS,
                     pointers={"x_ptr": LOGITS, "part_ptr": "fp32", "hc_ptr": "fp32", **_STATE, "prm_ptr": "fp64"},
                     scalars=_BITS,
                     constexprs={**_SHAPE, "NSPLIT_P2": POW2_SPLITS[1:], "REC": (REC,), "SF": (SF,), "SI": (SI,),
                                 "RESOLVE": (False, True), **_PER_ROW}, sizes=("NSPLIT_P2",))
ROW = KernelLaunch(at_row_kernel, num_warps=NUM_WARPS,
                   pointers={"x_ptr": LOGITS, "out_ptr": LOGITS, "hc_ptr": "fp32", **_STATE, "temps_ptr": "fp32",
                             "valid_ptr": "i8", "cnt_ptr": "i32", "prm_ptr": "fp64"}, scalars=_BITS,
                   constexprs={**_SHAPE, "NSPLIT_P2": POW2_SPLITS, "SF": (SF,), "SI": (SI,), "FULL": (False, True),
                               "OUT_BLOCK": (OUT_BLOCK,), "COUNT": (False, True), **_PER_ROW}, sizes=("NSPLIT_P2",))
OUT = KernelLaunch(at_out_kernel, num_warps=NUM_WARPS,
                   pointers={"x_ptr": LOGITS, "out_ptr": LOGITS, "temps_ptr": "fp32", "valid_ptr": "i8",
                             "prm_ptr": "fp64"},
                   constexprs={"OUT_BLOCK": (OUT_BLOCK,), **_PER_ROW})


def adaptive_temperature(
    logits: torch.Tensor,
    tmin,
    tmax,
    max_iter,
    tol,
    target_ratio,
    threshold,
    num_splits: int | None = None,
    sweep_counts: torch.Tensor | None = None,
    *,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    max_iter_bound: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, V] any float dtype -> (logits / T same dtype, T [B] fp32, valid [B] bool), T exactly the reference's.

    Hyper-parameters: Python scalars, or [B] tensors of per-row values (then, or with ``rows``, the kernels read a
    [B, NPRM] float64 record per row built here by device ops; max_iter clamped to [0, 10000] and to
    max_iter_bound). The launch count never needs a per-row max_iter's value: it is at most 2 * SPLIT_GROUPS + 2,
    rows finishing in the one-program-per-row kernel's loop, so without max_iter_bound no host sync happens either.
    out: where to write, may be the logits (the output sweep reads and writes each element once, after every other
    sweep of its row). sweep_counts: optional int32 [B] tensor on the logits' device; the kernels write each row's
    number of sweeps over the row into it (the output write included).
    """
    x = as_rows(logits)
    batch, vocab = x.shape
    dev = x.device
    out = torch.empty_like(x) if out is None else out
    temps = torch.empty(batch, dtype=torch.float32, device=dev)
    valid = torch.empty(batch, dtype=torch.int8, device=dev)
    if batch == 0:
        return out, temps, valid.view(torch.bool)
    count = sweep_counts is not None
    if count:
        assert sweep_counts.dtype == torch.int32 and sweep_counts.shape == (batch,) and sweep_counts.device == dev
    # pointers the kernels do not touch in this configuration: one element of the described type (not a null pointer)
    cnt = sweep_counts if count else torch.empty(1, dtype=torch.int32, device=dev)
    values = (tmin, tmax, max_iter, tol, target_ratio, threshold)
    per_row = rows is not None or any(isinstance(v, torch.Tensor) for v in values)
    high = int(params.ADAPTIVE_TEMPERATURE.param("max_iter").high)
    bound = high if max_iter_bound is None else min(high, max_iter_bound)
    if per_row:
        prm = row_records(batch, dev, values, rows, int_cols={2: (0, bound)})
        tmin = tmax = tol = target_ratio = threshold = 0.0  # not read
        max_iter_launch = bound if isinstance(max_iter, torch.Tensor) else min(max_iter, bound)
        max_iter = 0
    else:
        prm = torch.empty(1, dtype=torch.float64, device=dev)  # not read
        max_iter_launch = max_iter
    eps_v, rel = bracket_params(vocab)
    bits = dict(
        tmin_bits=f64_bits(tmin),
        tmax_bits=f64_bits(tmax),
        tol_bits=f64_bits(tol),
        ratio_bits=f64_bits(target_ratio),
        thr_bits=f64_bits(threshold),
        epsv_bits=f64_bits(eps_v),
        rel_bits=f64_bits(rel),
    )
    nsplit, chunk = split_geometry(batch, vocab, BLOCK, dev, num_splits)
    consts = dict(BLOCK=BLOCK, LEVELS=LEVELS, NC=NC)
    if nsplit == 1:
        no_state = (torch.empty(1, dtype=torch.float64, device=dev), torch.empty(1, dtype=torch.int32, device=dev))
        ROW[(batch,)](
            x, out, temps, *no_state, temps, valid, cnt, prm, x.stride(0), out.stride(0), vocab, 1, batch, 0,
            **bits, max_iter=max_iter, NSPLIT_P2=1, SF=SF, SI=SI, FULL=True, OUT_BLOCK=OUT_BLOCK, COUNT=count,
            PER_ROW=per_row, **consts,
        )
        return out, temps, valid.view(torch.bool)

    p2 = next_pow2(nsplit)
    state_f = torch.empty(3, batch, SF, dtype=torch.float64, device=dev)
    state_i = torch.empty(3, batch, SI, dtype=torch.int32, device=dev)
    part = torch.empty(batch, nsplit, REC, dtype=torch.float32, device=dev)
    h_part = torch.empty(batch, nsplit, NC, dtype=torch.float32, device=dev)
    grid = (batch, nsplit)
    STATS[grid](x, part, prm, x.stride(0), vocab, chunk, nsplit, bits["tmin_bits"], bits["tmax_bits"], REC=REC,
                PER_ROW=per_row, **consts)
    groups = max(1, min(triton.cdiv(max_iter_launch, LEVELS), SPLIT_GROUPS))
    common = (x, part, h_part, state_f, state_i, prm, x.stride(0), vocab, chunk, nsplit, batch)
    for g in range(groups):
        for resolve in (False, True) if g + 1 < groups else (False,):
            GROUP[grid](
                *common, g, **bits, max_iter=max_iter, NSPLIT_P2=p2, REC=REC, SF=SF, SI=SI, RESOLVE=resolve,
                PER_ROW=per_row, **consts,
            )
    ROW[(batch,)](
        x, out, h_part, state_f, state_i, temps, valid, cnt, prm, x.stride(0), out.stride(0), vocab, nsplit, batch,
        groups, **bits, max_iter=max_iter, NSPLIT_P2=p2, SF=SF, SI=SI, FULL=False, OUT_BLOCK=OUT_BLOCK,
        COUNT=count, PER_ROW=per_row, **consts,
    )
    out_nsplit, out_chunk = split_geometry(batch, vocab, OUT_BLOCK, dev, nsplit)
    OUT[(batch, out_nsplit)](x, out, temps, valid, prm, x.stride(0), out.stride(0), vocab, out_chunk,
                             OUT_BLOCK=OUT_BLOCK, PER_ROW=per_row)
    return out, temps, valid.view(torch.bool)

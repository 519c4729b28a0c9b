"""Parity of the C++ CPU kernels (kernels._cpu over kernels._C, csrc/cpu) with the torch oracle kernels.reference.

Rows are mixed in every batch: typical logits, -inf-masked logits, near-uniform, near-one-hot and exactly one-hot
rows, so that each batch holds rows on both sides of the EM-INF threshold. Comparisons:
- entropy: against fp64 truth, relative 1e-5 (the reference's own fp32 result is farther off on peaked rows);
- EM-INF: against the reference's own loop run in fp64 (the exact computation; the fp32 oracle is compared with it
  too): by distribution (entropy, KL, top-k sets) and per element, with a handful of outliers allowed: Adam's first
  step is ~lr * sign(g), and g is ~0 where log q sits at -H, so a last-bit difference there flips the step of that
  one element (design note in /work/shared/DESIGN.md). The kernel may not have more such elements than the fp32
  oracle has, plus a handful;
- adaptive temperature: T bit-equal to the reference on every row whose bisection path keeps its entropies away
  from the decision boundaries (replayed in fp64), and then the output bit-equal too.

Each kernel test runs twice (the `cpu` fixture): on the installed extension (-march=native: AVX-512 on the machines
here) and on a copy of csrc/cpu JIT-built with AVX-512 turned off (the `avx2_ext` fixture of conftest.py), which
selects simd.h's AVX2 path (W = 8) that AVX2-only CPUs (AMD Zen 2/3, Intel client cores) get from their own
-march=native build.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels import _cpu, reference

pytestmark = pytest.mark.skipif(not _cpu.available(), reason=f"kernels._C not built: {_cpu.load_error()}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KINDS = ["typical", "masked", "near_uniform", "near_one_hot", "one_hot", "peaked"]

@pytest.fixture(scope="module", params=["native", "avx2"])
def cpu(request):
    """The backend under test: the installed extension, or the AVX2 build (built on first use)."""
    return _cpu if request.param == "native" else request.getfixturevalue("avx2_ext")


def make_rows(batch: int, vocab: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """[batch, vocab] logits cycling through KINDS, rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        kind = KINDS[b % len(KINDS)]
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
    return torch.stack(rows).to(dtype)


def with_bad_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Copy of x with rows 1, 2, 3 made invalid: a NaN, a +inf, all -inf (needs batch >= 5)."""
    x = x.clone()
    v = x.shape[1]
    x[1, v // 2] = float("nan")
    x[2, v - 1] = float("inf")
    x[3] = float("-inf")
    return x, [1, 2, 3]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype])


def entropy64(x: torch.Tensor) -> torch.Tensor:
    """fp64 entropy per row, written so that tiny entropies keep their relative precision: H = log S - T / S with
    S = (count at the max) + (sum of the rest), T = sum exp(d) d, d = z - max. (lse - sum p z cancels to ~1e-15,
    which is all of H for a one-hot row.) NaN for invalid rows."""
    z = x.double()
    d = z - z.max(-1, keepdim=True).values
    e = torch.exp(d)
    at_max = (d == 0).sum(-1).double()
    rest = torch.where(d < 0, e, torch.zeros_like(e)).sum(-1)
    t = torch.where(e > 0, e * d, torch.zeros_like(e)).sum(-1)
    h = torch.log(at_max) + torch.log1p(rest / at_max) - t / (at_max + rest)
    return torch.where(reference.valid_rows(x), h, torch.full_like(h, float("nan")))


# ------------------------------------------------------------------------------------------------ entropy

@pytest.mark.parametrize("dtype", DTYPES)
# 1001: a tail vector for every SIMD width (1000 and the larger vocabularies are multiples of 8)
@pytest.mark.parametrize(
    "batch, vocab", [(1, 7), (3, 1000), (3, 1001), (64, 1000), (3, 32000), (1, 151936), (8, 151936)]
)
def test_entropy_matches_fp64_truth(cpu, batch, vocab, dtype):
    x = make_rows(batch, vocab, dtype, seed=batch * 7 + vocab)
    h = cpu.entropy(x)
    truth = entropy64(x)
    assert h.dtype == torch.float32 and h.shape == (batch,)
    assert torch.allclose(h.double(), truth, rtol=1e-5, atol=1e-7), (h, truth)
    # masked entries contribute 0; an exactly one-hot row has H == 0
    for b in range(batch):
        if KINDS[b % len(KINDS)] == "one_hot":
            assert h[b] == 0.0


def test_entropy_near_one_hot_keeps_the_tail(cpu):
    # The tail mass (~1e-8 per row) is below fp32's resolution next to the max's 1.0: the kernel counts the entries
    # at the max exactly instead of adding them into the same fp32 sum.
    vocab = 151936
    x = torch.zeros(4, vocab)
    x[:, 0] = torch.tensor([20.0, 25.0, 30.0, 14.0]) + math.log(vocab)
    truth = entropy64(x)
    h = cpu.entropy(x)
    assert torch.allclose(h.double(), truth, rtol=1e-5, atol=0), (h, truth)


@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_invalid_rows_are_nan_and_others_unaffected(cpu, dtype):
    x, bad = with_bad_rows(make_rows(6, 5000, dtype, seed=3))
    h = cpu.entropy(x)
    good = [b for b in range(6) if b not in bad]
    assert torch.isnan(h[bad]).all()
    assert torch.equal(h[good], cpu.entropy(x[good]))


def test_entropy_nan_hidden_in_a_fully_masked_block(cpu):
    # A 2048-wide block with nothing finite but a NaN: its max is -inf, the NaN must still flag the row.
    x = torch.randn(2, 5000)
    x[0, :2048] = float("-inf")
    x[0, 100] = float("nan")
    h = cpu.entropy(x)
    assert torch.isnan(h[0]) and torch.isfinite(h[1])
    _, valid = cpu.em_inf(x, 0.1, 3, 0.05, 0.0)
    assert valid.tolist() == [False, True]


def test_empty_batch(cpu):
    for dtype in DTYPES:
        x = torch.empty(0, 100, dtype=dtype)
        assert cpu.entropy(x).shape == (0,)
        out, valid = cpu.em_inf(x, 0.1, 3, 0.05, 0.3)
        assert out.shape == (0, 100) and out.dtype == dtype and valid.shape == (0,) and valid.dtype == torch.bool
        out, temps, valid = cpu.adaptive_temperature(x, 0.01, 1.0, 100, 0.1, 0.85, 1e-5)
        assert out.shape == (0, 100) and temps.shape == (0,) and valid.shape == (0,)


# ------------------------------------------------------------------------------------------------ EM-INF

def em_inf_fp64(x: torch.Tensor, lr: float, steps: int, kl_weight: float, threshold: float) -> torch.Tensor:
    """The reference's own loop (torch Adam on the authors' loss) run in fp64: the exact computation both fp32
    implementations approximate. Invalid rows are left as they are."""
    out = x.double().clone()
    with torch.enable_grad():
        for b in torch.nonzero(reference.valid_rows(x)).flatten().tolist():
            out[b] = reference._em_inf_row(x[b].double(), lr, steps, kl_weight, threshold)
    return out


def _assert_em_inf_close(out: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor, x: torch.Tensor,
                         lr: float, steps: int, max_outliers: int) -> None:
    """Row-wise against the fp64 run `exact`: the kernel must be no less accurate than the fp32 oracle `ref`.

    Elements off by more than rounding: at most `max_outliers` more than the oracle has on that row. Where g ~ 0
    (log q at -H on the first step, or entropy and KL gradients balancing later) Adam's normalised step turns a
    last-bit difference into a different step, so any fp32 implementation has a few such elements; on flat rows the
    oracle has hundreds (its log q + H cancels), a correct kernel far fewer. A flipped element still moves by at most
    2 * lr per step. Then the distribution: KL(exact || ours), entropy and top-k set."""
    # One output ulp of slack: both sides round to the dtype, and an fp32 difference of 1e-7 next to a rounding
    # midpoint changes the rounded value by one ulp.
    ulp = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[x.dtype]
    o, r, e = out.double(), ref.double(), exact
    e_out = exact.to(x.dtype).double()  # what an exact kernel would return in this dtype
    for b in range(x.shape[0]):
        finite = torch.isfinite(e[b])
        assert torch.equal(torch.isfinite(o[b]), finite), "masked entries must stay -inf, others finite"
        assert torch.equal(o[b][~finite], e[b][~finite])
        tol = 2e-5 + 2e-6 * e[b].abs() + ulp * e[b].abs()
        err_o = torch.where(finite, (o[b] - e[b]).abs(), torch.zeros_like(e[b]))
        err_r = torch.where(finite, (r[b] - e[b]).abs(), torch.zeros_like(e[b]))
        n_o, n_r = int((err_o > tol).sum()), int((err_r > tol).sum())
        assert n_o <= max_outliers + n_r, f"row {b}: {n_o} elements off (fp32 oracle: {n_r})"
        assert float(err_o.max()) <= 2 * lr * steps + 1e-3, f"row {b}: an element off by {float(err_o.max())}"
        lp, lq = torch.log_softmax(e_out[b], -1), torch.log_softmax(o[b], -1)
        p = lp.exp()
        kl = float(torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum())
        assert kl < 1e-6, f"row {b}: KL(exact || ours) = {kl}"
        h_e, h_o = float(entropy64(e_out[b : b + 1])), float(entropy64(o[b : b + 1]))
        assert abs(h_e - h_o) < 1e-4 * (1 + h_e), (h_e, h_o)
        k = min(10, int(finite.sum()))
        top_o = set(torch.topk(o[b], k).indices.tolist())
        kth = torch.topk(e[b], k).values[-1]
        # ours' top-k may differ only by entries tied with the k-th value (within rounding to the dtype)
        near = set(torch.nonzero(e[b] >= kth - 1e-3 - ulp * abs(float(kth))).flatten().tolist())
        assert top_o <= near, f"row {b}: top-{k} differs"


@pytest.mark.parametrize(
    "batch, vocab, dtype, steps",
    [
        (1, 7, torch.float32, 3), (3, 7, torch.float32, 10), (64, 7, torch.float32, 3),
        (64, 7, torch.bfloat16, 3), (64, 7, torch.float16, 3),
        (3, 1000, torch.float32, 3), (64, 1000, torch.float32, 3), (3, 1000, torch.bfloat16, 10),
        (3, 1000, torch.float16, 3), (3, 1001, torch.bfloat16, 3),
        (1, 32000, torch.float32, 3), (3, 32000, torch.float32, 10), (3, 32000, torch.bfloat16, 3),
        (1, 151936, torch.float32, 3), (3, 151936, torch.float32, 3), (1, 151936, torch.bfloat16, 3),
        (1, 151936, torch.float16, 10),
    ],
)
def test_em_inf_matches_reference(cpu, batch, vocab, dtype, steps):
    x = make_rows(batch, vocab, dtype, seed=batch + vocab + steps)
    out, valid = cpu.em_inf(x, 0.1, steps, 0.05, 0.3)
    ref, ref_valid = reference.em_inf(x, 0.1, steps, 0.05, 0.3)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(valid, ref_valid) and bool(valid.all())
    exact = em_inf_fp64(x, 0.1, steps, 0.05, 0.3)
    _assert_em_inf_close(out, ref, exact, x, 0.1, steps, max_outliers=max(2, vocab // 5000))
    for b in range(batch):  # rows under the threshold are untouched, bit for bit
        if float(entropy64(x[b : b + 1].float())) < 0.25:
            assert torch.equal(bits(out[b]), bits(x[b]))


@pytest.mark.parametrize("kl_weight, lr", [(0.0, 0.1), (1.0, 0.05), (0.05, 0.5)])
def test_em_inf_hyper_parameters(cpu, kl_weight, lr):
    x = make_rows(6, 4000, seed=11)
    out, _ = cpu.em_inf(x, lr, 5, kl_weight, 0.0)
    ref, _ = reference.em_inf(x, lr, 5, kl_weight, 0.0)
    _assert_em_inf_close(out, ref, em_inf_fp64(x, lr, 5, kl_weight, 0.0), x, lr, 5, max_outliers=2)


def test_em_inf_threshold_stops_between_steps(cpu):
    # A threshold between H before and after the first step: the reference makes exactly one step on that row.
    x = make_rows(6, 3000, seed=5)
    row = x[0:1]
    h0 = float(entropy64(row))
    one, _ = reference.em_inf(row, 0.1, 1, 0.05, 0.0)
    h1 = float(entropy64(one))
    assert h1 < h0 - 0.01
    thr = (h0 + h1) / 2
    out, _ = cpu.em_inf(x, 0.1, 6, 0.05, thr)
    ref, _ = reference.em_inf(x, 0.1, 6, 0.05, thr)
    _assert_em_inf_close(out, ref, em_inf_fp64(x, 0.1, 6, 0.05, thr), x, 0.1, 6, max_outliers=2)
    _assert_em_inf_close(out[0:1], one, em_inf_fp64(row, 0.1, 1, 0.05, 0.0), row, 0.1, 1, max_outliers=2)
    full, _ = cpu.em_inf(row, 0.1, 6, 0.05, 0.0)
    assert float(entropy64(full)) < h1 - 0.01  # without the threshold it does go on


@pytest.mark.parametrize("dtype", DTYPES)
def test_em_inf_invalid_rows_unchanged_and_others_correct(cpu, dtype):
    x, bad = with_bad_rows(make_rows(7, 2500, dtype, seed=8))
    out, valid = cpu.em_inf(x, 0.1, 3, 0.05, 0.3)
    assert valid.tolist() == [b not in bad for b in range(7)]
    for b in bad:
        assert torch.equal(bits(out[b]), bits(x[b]))
    good = [b for b in range(7) if b not in bad]
    ref, _ = reference.em_inf(x[good], 0.1, 3, 0.05, 0.3)
    _assert_em_inf_close(out[good], ref, em_inf_fp64(x[good], 0.1, 3, 0.05, 0.3), x[good], 0.1, 3, max_outliers=2)
    alone, _ = cpu.em_inf(x[good].contiguous(), 0.1, 3, 0.05, 0.3)
    assert torch.equal(bits(out[good]), bits(alone))


def test_em_inf_zero_steps_is_identity(cpu):
    x, bad = with_bad_rows(make_rows(6, 300, seed=2))
    out, valid = cpu.em_inf(x, 0.1, 0, 0.05, 0.0)
    assert torch.equal(bits(out), bits(x)) and valid.tolist() == [b not in bad for b in range(6)]


# ------------------------------------------------------------------------------------------------ adaptive T

def _replay_margin(z: torch.Tensor, tmin, tmax, max_iter, tol, ratio, threshold, t_ref: float) -> float:
    """Replays the reference's bisection path (the one that ends at t_ref) with fp64 entropies and returns the
    smallest distance of any entropy on it to the boundary it was compared with (threshold for H0; target - tol,
    target, target + tol for the others). Far from every boundary the outcome cannot depend on rounding, so a
    correct kernel gives the same T bit for bit; only a near-boundary row may legitimately differ."""
    z = z.double()

    def h_eps(t: float) -> float:
        p = torch.softmax(z / t, -1)
        return float(-(p * torch.log(p + 1e-9)).sum())

    h0 = h_eps(1.0)
    margin = abs(h0 - threshold)
    if h0 <= threshold or max_iter == 0:
        return margin
    target = max(threshold, ratio * h0)
    lo, hi = tmin, tmax
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        h = h_eps(mid)
        margin = min(margin, abs(h - (target - tol)), abs(h - target), abs(h - (target + tol)))
        if torch.tensor(mid, dtype=torch.float32) == t_ref:  # the reference stopped here
            break
        # every later midpoint lies on t_ref's side of this one
        if t_ref > mid:
            lo = mid
        else:
            hi = mid
    return margin


@pytest.mark.parametrize(
    "batch, vocab, dtype",
    [
        (1, 7, torch.float32), (64, 7, torch.float32), (3, 1000, torch.bfloat16), (64, 1000, torch.float32),
        (64, 1000, torch.float16), (3, 1001, torch.float16), (3, 32000, torch.float32), (1, 151936, torch.float32),
        (3, 151936, torch.bfloat16), (8, 151936, torch.float16),
    ],
)
def test_adaptive_temperature_matches_reference(cpu, batch, vocab, dtype):
    args = (0.01, 1.0, 100, 0.1, 0.85, 1e-5)
    x = make_rows(batch, vocab, dtype, seed=batch * 3 + vocab)
    out, temps, valid = cpu.adaptive_temperature(x, *args)
    ref, ref_temps, ref_valid = reference.adaptive_temperature(x, *args)
    assert out.dtype == dtype and temps.dtype == torch.float32 and torch.equal(valid, ref_valid)
    mismatched = 0
    for b in range(batch):
        if temps[b] == ref_temps[b]:
            assert torch.equal(bits(out[b]), bits(ref[b])), f"row {b}: same T, different output"
            continue
        mismatched += 1
        margin = _replay_margin(x[b].float(), *args, t_ref=float(ref_temps[b]))
        assert margin < 1e-4, f"row {b}: T {float(temps[b])} != {float(ref_temps[b])} away from any boundary"
    assert mismatched <= max(1, batch // 20)


@pytest.mark.parametrize(
    "args",
    [
        (0.01, 1.0, 3, 0.1, 0.85, 1e-5),  # never converges in 3 iterations: the last midpoint
        (0.01, 1.0, 100, 1e-4, 0.5, 1e-5),  # tight tolerance: long bisections
        (0.05, 0.7, 100, 0.05, 0.3, 1e-3),
        (0.01, 1.0, 100, 0.1, 0.85, 50.0),  # threshold above every H0: T = 1, output unchanged
        (0.01, 1.0, 0, 0.1, 0.85, 1e-5),  # max_iter 0: the loop never runs, T = 1
    ],
)
def test_adaptive_temperature_hyper_parameters(cpu, args):
    x = make_rows(12, 3000, seed=21)
    out, temps, _ = cpu.adaptive_temperature(x, *args)
    ref, ref_temps, _ = reference.adaptive_temperature(x, *args)
    for b in range(12):
        if temps[b] != ref_temps[b]:
            assert _replay_margin(x[b], *args, t_ref=float(ref_temps[b])) < 1e-4, f"row {b}"
        else:
            assert torch.equal(bits(out[b]), bits(ref[b]))
    assert int((temps != ref_temps).sum()) <= 1
    if args[5] == 50.0 or args[2] == 0:
        assert bool((temps == 1).all()) and torch.equal(bits(out), bits(x))


@pytest.mark.parametrize("case", ["threshold_above", "threshold_below", "tol_converges", "tol_misses",
                                  "target_4th_midpoint"])
def test_adaptive_temperature_decisions_inside_the_brackets(cpu, case, near_boundary_args):
    # Row 0 gets a decision whose H_eps lies `gap` from its boundary (see tests/kernels/conftest.py): inside the
    # bracket that the exact-form entropy gives (1e-9 V plus the rounding margin), yet ~70 fp32 ulps away, so the
    # reference's outcome is clear; on the "above" side the eps-free entropy (H_eps + ~1e-9 V) lies across the
    # boundary, so dropping the eps fails. The kernel cannot settle it from brackets and must take an exact eps
    # sweep (at T = 1 for the threshold and the target, at the midpoint for its H_eps); T must still be the
    # reference's, and the other rows unaffected.
    vocab, gap = 151936, 7e-5
    z = torch.randn(3, vocab, generator=torch.Generator().manual_seed(5))
    z[1] *= 3.0
    z[2] *= 0.5
    h0 = reference._entropy_eps(z[0])
    assert gap < 2e-5 * (1 + h0) and gap > 70 * 2.0**-24 * (1 + h0)  # inside our bracket, far from rounding
    p = torch.softmax(z[0].double(), -1)
    assert float(-(p * p.log()).sum()) - h0 > 1.5 * gap  # the eps-free entropy is across an "above" boundary
    args = near_boundary_args(z[0], case, gap)
    out, temps, valid = cpu.adaptive_temperature(z, *args)
    ref, ref_temps, ref_valid = reference.adaptive_temperature(z, *args)
    assert torch.equal(temps, ref_temps) and torch.equal(valid, ref_valid)
    assert torch.equal(bits(out), bits(ref))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_temperature_invalid_rows(cpu, dtype):
    x, bad = with_bad_rows(make_rows(6, 4000, dtype, seed=4))
    out, temps, valid = cpu.adaptive_temperature(x, 0.01, 1.0, 100, 0.1, 0.85, 1e-5)
    assert valid.tolist() == [b not in bad for b in range(6)]
    for b in bad:
        assert torch.equal(bits(out[b]), bits(x[b])) and temps[b] == 1.0
    good = [b for b in range(6) if b not in bad]
    ref, ref_temps, _ = reference.adaptive_temperature(x[good], 0.01, 1.0, 100, 0.1, 0.85, 1e-5)
    assert torch.equal(temps[good], ref_temps) and torch.equal(bits(out[good]), bits(ref))


# ------------------------------------------------------------------------------------------------ determinism

def test_results_do_not_depend_on_threads_or_batch(cpu):
    # Fixed vocabulary blocks merged in order: a row gives the same bits alone (blocks spread over threads),
    # inside a batch (one thread per row), and with one thread.
    x = make_rows(4, 70000, seed=9)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n_threads in (threads, 1):
            torch.set_num_threads(n_threads)
            for rows in (x, x[1:2].contiguous()):
                runs.append(
                    (
                        cpu.entropy(rows),
                        cpu.em_inf(rows, 0.1, 3, 0.05, 0.0)[0],
                        cpu.adaptive_temperature(rows, 0.01, 1.0, 100, 0.01, 0.85, 1e-5)[:2],
                    )
                )
    finally:
        torch.set_num_threads(threads)
    batch0, alone0 = runs[0], runs[1]
    for batch, alone in ((runs[0], runs[1]), (runs[2], runs[3])):
        assert torch.equal(batch[0][1:2], alone[0])
        assert torch.equal(bits(batch[1][1:2]), bits(alone[1]))
        assert torch.equal(batch[2][1][1:2], alone[2][1]) and torch.equal(bits(batch[2][0][1:2]), bits(alone[2][0]))
    assert torch.equal(bits(batch0[1]), bits(runs[2][1])) and torch.equal(alone0[0], runs[3][0])


def test_public_ops_dispatch_to_the_extension():
    import kernels

    x = make_rows(3, 500, seed=1).t().contiguous().t()  # non-contiguous: the wrapper makes it contiguous
    assert not x.is_contiguous()
    assert torch.equal(kernels.entropy(x), _cpu.entropy(x.contiguous()))
    assert torch.equal(kernels.em_inf(x), _cpu.em_inf(x.contiguous(), 0.1, 3, 0.05, 0.3)[0])

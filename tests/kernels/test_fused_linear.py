"""fused_linear_entropy against the unfused fp32 torch reference: values, gradients, edge cases, bounded memory."""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import sys

import pytest
import torch

from kernels import fused_linear_entropy
from kernels.reference_fused import IGNORE_INDEX
from kernels.reference_fused import fused_linear_entropy as reference


def _inputs(n, v, d, dtype=torch.float32, seed=0, targets=True):
    g = torch.Generator().manual_seed(seed)
    # Logit scale ~3 gives peaked and flat rows alike, so the entropy and its gradient are both non-trivial.
    hidden = (torch.randn(n, d, generator=g) * 1.5).to(dtype)
    weight = (torch.randn(v, d, generator=g) * 2.0 / d**0.5).to(dtype)
    tgt = torch.randint(0, v, (n,), generator=g) if targets else None
    return hidden, weight, tgt


def _fwd_bwd(op, hidden, weight, targets, temperature, g_ent, g_lp, **kw):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    ent, lp = op(h, w, targets, temperature, **kw)
    loss = (ent * g_ent).sum() + ((lp * g_lp).sum() if targets is not None else 0)
    loss.backward()
    return ent.detach(), lp.detach(), h.grad, w.grad


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("chunks", [(7, 100), (64, 4096), (1024, 8192)])
def test_fp32_values_and_gradients_match_unfused(temperature, chunks):
    n, v, d = 45, 1003, 24  # sizes that chunk unevenly
    hidden, weight, tgt = _inputs(n, v, d)
    tgt[5] = IGNORE_INDEX
    g = torch.Generator().manual_seed(1)
    g_ent, g_lp = torch.randn(n, generator=g), torch.randn(n, generator=g)
    out = _fwd_bwd(fused_linear_entropy, hidden, weight, tgt, temperature, g_ent, g_lp,
                   chunk_tokens=chunks[0], chunk_vocab=chunks[1])
    ref = _fwd_bwd(reference, hidden.double(), weight.double(), tgt, temperature, g_ent.double(), g_lp.double())
    names = ["entropy", "logprob", "grad_hidden", "grad_weight"]
    for name, a, b in zip(names, out, ref):
        assert a.dtype == (torch.float32 if name in ("entropy", "logprob") else hidden.dtype)
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-4, msg=name)
    assert out[1][5] == 0  # ignored target: logprob 0
    assert (out[0] > 0).all() and (out[0] <= torch.log(torch.tensor(float(v))) + 1e-4).all()


def test_bf16_within_tolerance_of_fp32_reference():
    # bf16 matmuls round the logits to ~3 significant digits (as HF's bf16 lm_head does); stats stay fp32.
    n, v, d = 64, 2048, 64
    hidden, weight, tgt = _inputs(n, v, d, dtype=torch.bfloat16)
    g_ent, g_lp = torch.full((n,), 1.0 / n), torch.full((n,), 1.0 / n)
    out = _fwd_bwd(fused_linear_entropy, hidden, weight, tgt, 1.0, g_ent, g_lp, chunk_tokens=16, chunk_vocab=500)
    ref = _fwd_bwd(reference, hidden.float(), weight.float(), tgt, 1.0, g_ent, g_lp)
    assert out[2].dtype == torch.bfloat16 and out[3].dtype == torch.bfloat16
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0.05)  # entropy, nats
    torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0.1)  # logprob, nats
    for a, b in zip(out[2:], ref[2:]):
        rel = (a.float() - b).norm() / b.norm()
        assert rel < 2e-2, float(rel)


def test_targets_none_gives_entropy_and_zero_logprob():
    n, v, d = 30, 700, 16
    hidden, weight, _ = _inputs(n, v, d, targets=False)
    g_ent = torch.randn(n, generator=torch.Generator().manual_seed(2))
    out = _fwd_bwd(fused_linear_entropy, hidden, weight, None, 0.8, g_ent, None, chunk_vocab=256)
    ref = _fwd_bwd(reference, hidden, weight, None, 0.8, g_ent, None)
    assert torch.equal(out[1], torch.zeros(n))
    for a, b in zip([out[0], out[2], out[3]], [ref[0], ref[2], ref[3]]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


def test_only_logprob_used_gets_logprob_gradient():
    n, v, d = 20, 500, 8
    hidden, weight, tgt = _inputs(n, v, d)
    h = hidden.clone().requires_grad_()
    _, lp = fused_linear_entropy(h, weight, tgt, chunk_vocab=128)
    lp.sum().backward()
    h2 = hidden.clone().requires_grad_()
    _, lp2 = reference(h2, weight, tgt)
    lp2.sum().backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-5)


def test_zero_tokens():
    hidden, weight, _ = _inputs(0, 300, 8)
    h, w = hidden.requires_grad_(), weight.clone().requires_grad_()
    ent, lp = fused_linear_entropy(h, w, torch.zeros(0, dtype=torch.long))
    assert ent.shape == (0,) and lp.shape == (0,) and ent.dtype == torch.float32
    (ent.sum() + lp.sum()).backward()
    assert h.grad.shape == (0, 8) and torch.equal(w.grad, torch.zeros_like(w))


def test_grads_only_for_inputs_that_require_them():
    hidden, weight, tgt = _inputs(10, 200, 8)
    h = hidden.clone().requires_grad_()
    ent, _ = fused_linear_entropy(h, weight, tgt)  # weight frozen
    ent.sum().backward()
    assert h.grad is not None and weight.grad is None


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(hidden=torch.zeros(4)), "hidden"),
        (dict(weight=torch.zeros(10, 9)), "share D"),
        (dict(weight=torch.zeros(10, 8, dtype=torch.float64)), "dtype"),
        (dict(hidden=torch.zeros(4, 8, dtype=torch.long)), "hidden"),
        (dict(weight=torch.zeros(0, 8)), "weight"),
        (dict(targets=torch.zeros(3, dtype=torch.long)), "targets"),
        (dict(targets=torch.zeros(4)), "targets"),
        (dict(targets=torch.tensor([0, 1, 10, 2])), "targets"),
        (dict(targets=torch.tensor([0, 1, -1, 2])), "targets"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(chunk_tokens=0), "chunk_tokens"),
        (dict(chunk_vocab=2.5), "chunk_vocab"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 8), targets=None, temperature=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        fused_linear_entropy(**args)


def _rss(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024


def _peak_bytes(fn):
    """Peak resident memory above the start level while fn runs (Linux: VmHWM reset through clear_refs)."""
    try:  # glibc: serve every block >= 256 KiB by mmap, so freed tensors leave RSS at once and the peak is exact
        ctypes.CDLL("libc.so.6").mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss("VmRSS")
    fn()
    return _rss("VmHWM") - base


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS accounting reads /proc")
def test_peak_memory_grows_with_chunk_not_with_n_times_v():
    v, d = 32768, 16
    chunk = dict(chunk_tokens=128, chunk_vocab=2048)  # one fp32 chunk: 1 MiB

    def run(op, n, **kw):
        hidden, weight, tgt = _inputs(n, v, d)
        h, w = hidden.requires_grad_(), weight.requires_grad_()

        def fn():
            ent, lp = op(h, w, tgt, 1.0, **kw)
            (ent.mean() + lp.mean()).backward()

        return _peak_bytes(fn)

    run(fused_linear_entropy, 512, **chunk)  # warm-up: thread pools and allocator arenas
    logits_bytes = {n: n * v * 4 for n in (512, 2048)}
    fused = {n: run(fused_linear_entropy, n, **chunk) for n in logits_bytes}
    unfused = run(reference, 512)
    # The meter must see the unfused [N, V] tensors, or the bounds below would prove nothing.
    assert unfused > 2 * logits_bytes[512], (unfused, logits_bytes[512])
    # Fused: a few chunk buffers + grad_weight [V, D] + O(N D) terms; 4x more tokens must not cost 4x the logits.
    for n, peak in fused.items():
        assert peak < logits_bytes[n] / 8, (n, peak, logits_bytes[n])
    assert fused[2048] - fused[512] < (logits_bytes[2048] - logits_bytes[512]) / 16, fused
    print({"fused_peak": fused, "unfused_peak_512": unfused, "logits_bytes": logits_bytes})



# --- Triton path (kernels._triton.k_fused_linear) ---------------------------------------------------------------
# Without a GPU it runs on CPU tensors through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), called
# with backend="triton" since "auto" picks chunked torch for CPU tensors. The `cuda` tests run the public op on GPU
# tensors at real sizes and are skipped here.

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_CHUNKS = dict(chunk_tokens=16, chunk_vocab=384)  # N=37 -> 3 token chunks, V=1000 -> 3 uneven vocab chunks


def _triton(hidden, weight, targets, temperature, **kw):
    return fused_linear_entropy(hidden, weight, targets, temperature, backend="triton", **{**TRITON_CHUNKS, **kw})


def _grad_outputs(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g), torch.randn(n, generator=g)


def _rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


class TestTritonInterpreted:
    pytestmark = [
        pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed"),
        pytest.mark.skipif(not INTERPRETED, reason="CPU tensors need TRITON_INTERPRET=1 (no GPU here)"),
        # masked lanes compute e * (-inf) before tl.where drops them; numpy warns about the discarded NaN
        pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    ]

    @pytest.mark.parametrize("d", [8, 64])
    @pytest.mark.parametrize("v", [7, 100, 1000])
    @pytest.mark.parametrize("n", [1, 5, 37])
    def test_fp32_values_and_gradients_match_unfused(self, n, v, d):
        temperature = {1: 1.0, 5: 0.6, 37: 1.7}[n]
        hidden, weight, tgt = _inputs(n, v, d, seed=n * v + d)
        if n > 1:
            tgt[n // 2] = IGNORE_INDEX
        g_ent, g_lp = _grad_outputs(n)
        out = _fwd_bwd(_triton, hidden, weight, tgt, temperature, g_ent, g_lp)
        ref = _fwd_bwd(reference, hidden.double(), weight.double(), tgt, temperature, g_ent.double(), g_lp.double())
        for name, a, b in zip(["entropy", "logprob", "grad_hidden", "grad_weight"], out, ref):
            assert a.dtype == torch.float32, name
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-4, msg=name)
        if n > 1:
            assert out[1][n // 2] == 0

    def test_fp32_agrees_with_chunked_torch_path(self):
        n, v, d = 37, 1000, 64
        hidden, weight, tgt = _inputs(n, v, d, seed=3)
        tgt[0] = IGNORE_INDEX
        g_ent, g_lp = _grad_outputs(n)
        out = _fwd_bwd(_triton, hidden, weight, tgt, 0.8, g_ent, g_lp)
        torch_path = _fwd_bwd(fused_linear_entropy, hidden, weight, tgt, 0.8, g_ent, g_lp, backend="torch",
                              **TRITON_CHUNKS)
        for name, a, b in zip(["entropy", "logprob", "grad_hidden", "grad_weight"], out, torch_path):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5, msg=name)

    def test_targets_none_gives_entropy_and_zero_logprob(self):
        n, v, d = 37, 1000, 8
        hidden, weight, _ = _inputs(n, v, d, targets=False)
        g_ent, _ = _grad_outputs(n, seed=2)
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        ent, lp = _triton(h, w, None, 0.8)
        assert torch.equal(lp, torch.zeros(n)) and not lp.requires_grad
        (ent * g_ent).sum().backward()
        ref = _fwd_bwd(reference, hidden, weight, None, 0.8, g_ent, None)
        for a, b in zip([ent.detach(), h.grad, w.grad], [ref[0], ref[2], ref[3]]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_half_precision_within_tolerance_of_fp32_reference(self, dtype):
        # Tolerance stated as for the torch path: the logits are rounded once to the matmul dtype (~3 significant
        # digits in bf16) and dL/dz once more before the gradient matmuls; every statistic stays fp32.
        # entropy within 0.05 nats, logprob within 0.1 nats, gradients within 2% relative (Frobenius norm).
        n, v, d = 37, 1000, 64
        hidden, weight, tgt = _inputs(n, v, d, dtype=dtype, seed=4)
        tgt[3] = IGNORE_INDEX
        g_ent, g_lp = torch.full((n,), 1.0 / n), torch.full((n,), 1.0 / n)
        out = _fwd_bwd(_triton, hidden, weight, tgt, 1.3, g_ent, g_lp)
        ref = _fwd_bwd(reference, hidden.float(), weight.float(), tgt, 1.3, g_ent, g_lp)
        assert out[0].dtype == torch.float32 and out[2].dtype == dtype and out[3].dtype == dtype
        torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0.05)
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0.1)
        for a, b in zip(out[2:], ref[2:]):
            assert _rel_err(a, b) < 2e-2

    def test_only_logprob_used_and_frozen_weight(self):
        n, v, d = 5, 100, 8
        hidden, weight, tgt = _inputs(n, v, d)
        h = hidden.clone().requires_grad_()
        _, lp = _triton(h, weight, tgt, 1.0)
        lp.sum().backward()
        assert weight.grad is None
        h2 = hidden.clone().requires_grad_()
        _, lp2 = reference(h2, weight, tgt)
        lp2.sum().backward()
        torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-5)

    def test_zero_tokens(self):
        hidden, weight, _ = _inputs(0, 300, 8)
        h, w = hidden.requires_grad_(), weight.clone().requires_grad_()
        ent, lp = _triton(h, w, torch.zeros(0, dtype=torch.long), 1.0)
        assert ent.shape == (0,) and lp.shape == (0,)
        (ent.sum() + lp.sum()).backward()
        assert h.grad.shape == (0, 8) and torch.equal(w.grad, torch.zeros_like(w))

    def test_strided_inputs_and_int32_targets(self):
        n, v, d = 5, 100, 8
        hidden, weight, tgt = _inputs(n, v, 2 * d)
        hidden, weight = hidden[:, ::2], weight[:, 1::2]  # non-contiguous rows
        tgt = tgt.int()[::1]
        ent, lp = _triton(hidden, weight, tgt, 1.0)
        ref_ent, ref_lp = reference(hidden, weight, tgt.long())
        torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)


def test_backend_argument_is_validated():
    hidden, weight, _ = _inputs(4, 10, 8)
    with pytest.raises(ValueError, match="backend"):
        fused_linear_entropy(hidden, weight, backend="cuda")
    with pytest.raises(ValueError, match="backend 'triton'"):
        fused_linear_entropy(hidden.double(), weight.double(), backend="triton")


# --- CUDA: the public op (auto -> Triton) at real sizes; skipped without a GPU -----------------------------------

cuda_only = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cuda_inputs(n, v, d, dtype, seed=0):
    hidden, weight, tgt = _inputs(n, v, d, seed=seed)
    tgt[::7] = IGNORE_INDEX
    return hidden.to("cuda", dtype), weight.to("cuda", dtype), tgt.cuda()


class TestCuda:
    pytestmark = cuda_only

    @pytest.mark.parametrize("temperature", [1.0, 0.7])
    def test_fp32_matches_unfused_at_qwen_vocab(self, temperature):
        n, v, d = 1024, 151936, 896
        hidden, weight, tgt = _cuda_inputs(n, v, d, torch.float32)
        g_ent, g_lp = (x.cuda() for x in _grad_outputs(n))
        # the unfused reference in fp64 would need several GiB of [N, V] fp64; fp32 with TF32 off is exact enough
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            out = _fwd_bwd(fused_linear_entropy, hidden, weight, tgt, temperature, g_ent, g_lp)
            ref = _fwd_bwd(reference, hidden, weight, tgt, temperature, g_ent, g_lp)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        for name, a, b in zip(["entropy", "logprob", "grad_hidden", "grad_weight"], out, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)

    def test_auto_dispatches_to_triton(self):
        hidden, weight, tgt = _cuda_inputs(300, 20000, 64, torch.float32)
        auto = fused_linear_entropy(hidden, weight, tgt)
        forced = fused_linear_entropy(hidden, weight, tgt, backend="triton")
        for a, b in zip(auto, forced):
            assert torch.equal(a, b)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_half_precision_within_tolerance(self, dtype):
        n, v, d = 2048, 151936, 896
        hidden, weight, tgt = _cuda_inputs(n, v, d, dtype, seed=5)
        g = torch.full((n,), 1.0 / n, device="cuda")
        out = _fwd_bwd(fused_linear_entropy, hidden, weight, tgt, 1.0, g, g)
        ref = _fwd_bwd(reference, hidden.float(), weight.float(), tgt, 1.0, g, g)
        torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0.05)
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0.1)
        for a, b in zip(out[2:], ref[2:]):
            assert a.dtype == dtype and _rel_err(a, b) < 2e-2

    def test_peak_memory_grows_with_chunk_not_with_n_times_v(self):
        v, d = 151936, 896
        chunk = dict(chunk_tokens=512, chunk_vocab=8192)

        def peak(op, n, **kw):
            hidden, weight, tgt = _cuda_inputs(n, v, d, torch.bfloat16)
            h, w = hidden.requires_grad_(), weight.requires_grad_()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ent, lp = op(h, w, tgt, 1.0, **kw)
            (ent.mean() + lp.mean()).backward()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base

        logits_bytes = {n: n * v * 4 for n in (2048, 8192)}
        fused = {n: peak(fused_linear_entropy, n, **chunk) for n in logits_bytes}
        unfused = peak(reference, 2048)
        assert unfused > 2 * logits_bytes[2048]
        assert fused[2048] < unfused / 8, (fused, unfused)
        # Beyond grad_weight itself ([V, D] bf16, ~272 MiB, the same for any N): chunk buffers and O(N D) terms.
        grad_w_bytes = v * d * 2
        for n, p in fused.items():
            assert p - grad_w_bytes < logits_bytes[n] / 8, (n, p)
        assert fused[8192] - fused[2048] < (logits_bytes[8192] - logits_bytes[2048]) / 16, fused

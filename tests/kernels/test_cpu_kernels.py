"""The C++ CPU kernels (kernels._cpu over kernels._C, csrc/cpu) beyond parity: results independent of the thread
count and of the batch, and the public ops dispatching to the extension.

Parity with the oracle lives in the per-op modules (test_entropy.py, test_em_inf.py, test_adaptive_temperature.py),
parametrised over the backends. The tests here run twice (the `cpu` fixture): on the installed extension
(-march=native: AVX-512 on the machines here) and on a copy of csrc/cpu JIT-built with AVX-512 turned off (the
`avx2_ext` fixture of conftest.py), which selects simd.h's AVX2 path (W = 8).
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import bits
from kernel_cases import mixed_rows as make_rows

from kernels import _cpu

pytestmark = pytest.mark.skipif(not _cpu.available(), reason=f"kernels._C not built: {_cpu.load_error()}")


@pytest.fixture(scope="module", params=["native", "avx2"])
def cpu(request):
    """The backend under test: the installed extension, or the AVX2 build (built on first use)."""
    return _cpu if request.param == "native" else request.getfixturevalue("avx2_ext")


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


# ------------------------------------------------------------------------------------------------ placement

def _at_page_offset(x: torch.Tensor, offset_bytes: int) -> torch.Tensor:
    """A contiguous copy of x whose data starts ``offset_bytes`` into a page."""
    item = x.element_size()
    buf = torch.empty(x.numel() + 8192 // item, dtype=x.dtype)
    shift = ((offset_bytes - buf.data_ptr() % 4096) % 4096) // item
    out = buf.narrow(0, shift, x.numel()).view(x.shape)
    out.copy_(x)
    assert out.data_ptr() % 4096 == offset_bytes
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_new_outputs_start_half_a_page_from_the_input(cpu, dtype):
    # 4K aliasing (csrc/cpu/rowpass.h): a new output is placed half a page away from the input's page offset.
    for offset in (0, 64, 2048, 4032):
        x = _at_page_offset(make_rows(3, 5000, seed=2).to(dtype), offset)
        for out in (cpu.em_inf(x, 0.1, 3, 0.05, 0.0)[0], cpu.adaptive_temperature(x, 0.01, 1.0, 100, 0.01, 0.85, 0.0)[0]):
            assert out.is_contiguous() and out.shape == x.shape and out.dtype == dtype
            assert (out.data_ptr() - x.data_ptr()) % 4096 == 2048


@pytest.mark.parametrize("vocab", [4096, 5000, 32768])
def test_results_do_not_depend_on_where_the_rows_lie(cpu, vocab):
    # The scratch arrays move with the input's page offset (place_scratch) and a new output is placed by the
    # kernel; neither may change a bit of the result, in place or not, fp32 or bf16 (z in scratch).
    base = make_rows(2, vocab, seed=5)
    for dtype in (torch.float32, torch.bfloat16):
        ref_out = ref_in_place = None
        for offset in (0, 64, 1024, 2048, 4032):
            x = _at_page_offset(base.to(dtype), offset)
            got = bits(cpu.em_inf(x, 0.1, 3, 0.05, 0.0)[0])
            cpu.em_inf(x, 0.1, 3, 0.05, 0.0, out=x)
            in_place = bits(x)
            if ref_out is None:
                ref_out, ref_in_place = got, in_place
            assert torch.equal(got, ref_out) and torch.equal(in_place, ref_in_place)
        assert torch.equal(ref_out, ref_in_place)

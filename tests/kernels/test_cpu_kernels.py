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

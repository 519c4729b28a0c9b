"""The Triton backend (kernels._triton) beyond parity: the CUDA pass count of adaptive temperature.

Parity with the oracle (interpreter on CPU tensors, and compiled on a GPU) lives in the per-op modules
(test_entropy.py, test_em_inf.py, test_adaptive_temperature.py), parametrised over the backends; the interpreter's
split geometry and sweep counts are tested there too, beside the parity they come with.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import kind_rows as make_rows
from kernel_cases import reference_path

from kernels import _triton, reference

pytestmark = pytest.mark.skipif(not _triton.available(), reason="triton is not installed")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    @pytest.mark.parametrize("splits", [None, 1])  # the split launches at B = 64, and the one-kernel path
    def test_adaptive_temperature_sweep_count(self, splits):
        # The GPU half of the pass-count target: a row with L bisection levels reads the logits 1 + ceil(L / 3)
        # times (2 for a T = 1 row), here at the bench's shape and with the GPU's own exp/log deciding the brackets.
        from kernels._triton import k_adaptive_temperature

        batch, args = 64, (0.01, 1.0, 100, 0.1, 0.85, 1e-5)
        z = make_rows(batch, 151936, "randn", torch.float32, device="cuda")
        z = z * torch.linspace(0.2, 4.0, batch, device="cuda")[:, None]  # a spread of entropies and path lengths
        counts = torch.zeros(batch, dtype=torch.int32, device="cuda")
        _, temps, _ = k_adaptive_temperature.adaptive_temperature(z, *args, splits, sweep_counts=counts)
        _, ref_t, _ = reference.adaptive_temperature(z, *args)
        levels = [len(reference_path(z[b], *args)[1]) for b in range(batch)]
        bound = torch.tensor([1 + -(-n // k_adaptive_temperature.LEVELS) if n else 2 for n in levels])
        same = (temps == ref_t).cpu()
        assert (~same).sum() <= batch // 32, (temps, ref_t)
        assert (counts.cpu()[same] <= bound[same]).all(), (counts, bound)
        assert max(levels) >= 4  # several groups ran

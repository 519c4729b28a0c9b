"""bench.kernel_tuning: the geometry swap runs the op's own launcher at another BLOCK / num_warps and puts the
defaults back; the sweep's rows agree with the default geometry. On CPU the kernels run in Triton's interpreter
(timings there mean nothing, so the sweep gets a timer that counts calls instead)."""

import pytest
import torch

from bench import kernel_tuning as kt
from kernels import reference
from kernels._triton import k_em_inf, k_entropy

# without a GPU, tests/conftest.py runs the Triton kernels through the interpreter on CPU tensors
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_geometry_swaps_block_and_warps_and_restores_them():
    block, launch = k_entropy.BLOCK, k_entropy.ROW_STATS
    with kt.geometry("entropy", 1024, 4):
        assert k_entropy.BLOCK == 1024 and k_entropy.ROW_STATS.num_warps == 4
        assert k_entropy.ROW_STATS.constexprs["BLOCK"] == (1024,)
        x = torch.randn(3, 5000, device=DEVICE) * 2
        torch.testing.assert_close(kt.op_call("entropy", x, None, 2)(), reference.entropy(x), rtol=1e-5, atol=1e-5)
    assert k_entropy.BLOCK == block and k_entropy.ROW_STATS is launch
    with pytest.raises(RuntimeError), kt.geometry("em_inf", 512, 8):
        assert k_em_inf.BLOCK == 512
        raise RuntimeError("inside")
    assert k_em_inf.BLOCK == 2048 and k_em_inf.PASS.num_warps == 8  # restored after an exception too


def test_geometry_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"em_inf takes block in \(512, 1024, 2048\)"), kt.geometry("em_inf", 4096, 8):
        pass


def test_sweep_rows_match_the_default_geometry(tmp_path):
    calls = []
    result = kt.sweep(DEVICE, tmp_path / "tune.json", timer=lambda fn: calls.append(fn) or 1.0, vocab=5000,
                      batches={"entropy": (2,), "em_inf": (2,)})
    rows = result["rows"]
    geoms = {op: len(b) * len(w) for op, (_, _, b, w) in kt.GEOMETRIES.items()}
    assert len(rows) == sum(geoms.values()) + 2 * len(kt.SPLIT_FACTORS) == len(calls)
    assert not [r for r in rows if "error" in r]
    assert sum(r["default"] for r in rows) == 2
    for r in rows:
        assert r["max_abs_diff"] < 1e-4, r  # the same op: only the order of the row's sums differs
    assert {r["programs_per_row"] for r in rows if r["op"] == "entropy"} != {1}
    assert (tmp_path / "tune.json").exists()
    assert "| em_inf (default) | 2 | 2048 | 8 |" in kt.markdown(result)

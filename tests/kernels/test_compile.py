"""The compiler's verdict on the Triton kernels, without a GPU: every configuration the launchers can reach compiles
for sm_80 and sm_90, with no spills and shared memory within the limit (kernels._triton.aot), and no kernel is
launched around its launch description (kernels._triton.launch), which is where that list of configurations comes
from."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels._triton import aot, k_entropy
from kernels._triton.launch import KernelLaunch

REPO = Path(__file__).resolve().parents[2]
KERNELS = REPO / "kernels"


def _is_triton_kernel(obj) -> bool:
    # a JITFunction, or an InterpretedFunction under TRITON_INTERPRET=1 (how this suite runs without a GPU)
    return type(obj).__name__ in ("JITFunction", "InterpretedFunction")


def _launched_names(tree: ast.AST) -> list[tuple[str, int]]:
    """Names used as `name[grid](...)` in a module: Triton's launch syntax."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
            base = node.func.value
            if isinstance(base, ast.Name):
                found.append((base.id, node.lineno))
    return found


def test_every_kernel_launch_goes_through_its_description():
    checked = 0
    for path in sorted(KERNELS.rglob("*.py")):
        module_name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        source = path.read_text()
        launched = _launched_names(ast.parse(source))
        if not launched:
            continue
        module = importlib.import_module(module_name)
        for name, line in launched:
            obj = getattr(module, name, None)
            assert not _is_triton_kernel(obj), (
                f"{path.relative_to(REPO)}:{line} launches the Triton kernel {name} directly: launch it through a "
                f"KernelLaunch description (kernels/_triton/launch.py), so the compile check covers it")
            checked += isinstance(obj, KernelLaunch)
    assert checked >= 8  # the ops' launch sites were found (guards against a scan that sees nothing)


def test_every_described_kernel_is_in_the_compile_list():
    # a kernel module that defines descriptions but is missing from aot.KERNEL_MODULES would go unchecked
    compiled = set(aot.KERNEL_MODULES)
    for path in sorted((KERNELS / "_triton").glob("*.py")):
        module = importlib.import_module(f"kernels._triton.{path.stem}")
        if any(isinstance(v, KernelLaunch) for v in vars(module).values()):
            assert module in compiled, f"{path.name} has launch descriptions but is not in aot.KERNEL_MODULES"
    described = {launch.name for launch in aot.all_launches().values()}
    jobs = aot.configurations((90,))
    assert {j["kernel"] for j in jobs} == described
    # each logits dtype and each branch of a boolean constexpr is a job
    em = [j for j in jobs if j["launch"] == "k_em_inf.PASS"]
    assert {j["constexprs"]["HAS_KL"] for j in em} == {False, True}
    assert {j["signature"]["x_ptr"] for j in em} == {"*fp32", "*bf16", "*fp16"}


def test_a_launch_outside_its_description_is_refused():
    z = torch.randn(2, 64)
    h = torch.empty(2)
    with pytest.raises(ValueError, match="BLOCK=1024 is outside its launch description"):
        k_entropy.ROW_STATS[(2, 1)](z, h, h, z.stride(0), 64, 1024, 1, BLOCK=1024, DIRECT=True)


def test_a_description_must_name_the_kernels_own_arguments():
    with pytest.raises(TypeError, match="not the kernel's"):
        KernelLaunch(k_entropy.merge_kernel, num_warps=1, pointers={"nope_ptr": "fp32"},
                     constexprs={"NSPLIT_P2": (1,)})
    with pytest.raises(TypeError, match="no declared values"):
        KernelLaunch(k_entropy.merge_kernel, num_warps=1, pointers={}, constexprs={})


@pytest.mark.slow
def test_every_configuration_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels._triton.aot", "--arch", "80,90", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    result = json.loads(out.read_text())
    failing = [r for r in result["rows"] if r["problems"]]
    assert proc.returncode == 0 and not failing, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert result["configurations"] == len(aot.configurations((80, 90)))
    for row in result["rows"]:
        assert row["registers"] and row["registers"] <= 255 and row["occupancy"] > 0

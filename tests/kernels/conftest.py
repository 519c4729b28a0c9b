"""Helpers shared by the kernel test modules (fixtures, since the test modules are not importable packages), and the
loader of kernel_cases.py (the rows and float64 truths of the parity tests, imported as `kernel_cases`)."""

import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from kernels import reference


def _load_kernel_cases() -> ModuleType:
    """kernel_cases.py (the rows and float64 truths of the parity tests) as the module `kernel_cases`: the test
    modules are not importable packages, and conftest.py is imported before any test module of this folder."""
    if "kernel_cases" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kernel_cases", Path(__file__).with_name("kernel_cases.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["kernel_cases"] = module
        spec.loader.exec_module(module)
    return sys.modules["kernel_cases"]


_load_kernel_cases()


def _near_boundary_args(z0, case: str, gap: float) -> tuple:
    """adaptive_temperature arguments that put one decision of row z0's bisection `gap` nats from its boundary:
    threshold_*: H_eps(T=1) next to the threshold; tol_*: the first midpoint's H_eps next to target + tol or
    target - tol (converging there or not); target_4th_midpoint: the 4th midpoint's H_eps next to the target."""
    h_eps = reference._entropy_eps
    h0 = h_eps(z0)
    args = (0.01, 1.0, 100, 0.1, 0.85, 1e-5)
    if case.startswith("threshold"):
        return args[:5] + (h0 + (gap if case == "threshold_above" else -gap),)
    if case.startswith("tol"):
        d = abs(h_eps(z0 / 0.505) - 0.85 * h0)
        return (0.01, 1.0, 100, d + (gap if case == "tol_converges" else -gap), 0.85, 1e-5)
    assert case == "target_4th_midpoint", case
    lo, hi = 0.01, 1.0
    for _ in range(4):  # the path towards T = 0.3: its 4th midpoint
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < 0.3 else (lo, mid)
    return (0.01, 1.0, 9, 1e-6, (h_eps(z0 / mid) + gap) / h0, 1e-5)


@pytest.fixture
def near_boundary_args():
    return _near_boundary_args


@pytest.fixture
def sm90_exp(monkeypatch):
    """Triton's interpreter computing fp32 exp as the compiled sm_90 code does (kernels._triton.aot's PTX):
    ex2.approx.f32 of fp32(x * log2 e). Rounding the argument costs up to |x| 2^-24 relative, more than ex2.approx's
    own ~2^-22 for |x| > 4, so the emulation is the exact 2^y of the rounded argument. Lets the interpreter tests see
    the GPU's exp error, a few ulps where numpy's is under one."""
    import numpy as np
    from triton.runtime import interpreter

    log2e = np.float32(1.4426950408889634)

    def exp(x):
        if x.dtype != np.float32:
            return np.exp(x)
        return np.exp2((x * log2e).astype(np.float32).astype(np.float64)).astype(np.float32)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_exp", lambda self, arg: self.unary_op(arg, exp))


# --- the C++ extension built for AVX2 (simd.h's W = 8 path) -------------------------------------------------------

CSRC = Path(__file__).resolve().parents[2] / "csrc" / "cpu"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _avx2_unsupported() -> str | None:
    """Why this machine cannot run the AVX2 build, or None when it can."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration) as exc:
        reason = f"cannot read the CPU flags from /proc/cpuinfo ({exc!r})"
        if _in_ci():  # unknown is not absent: CI must not lose these tests to it
            pytest.fail(reason)
        return reason
    missing = sorted({"avx2", "fma", "f16c"} - set(flags))
    return f"the CPU lacks {', '.join(missing)}" if missing else None


class CpuBuild:
    """The ops of a compiled kernels extension, called as kernels._cpu calls kernels._C (same wrappers)."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        return self.module.entropy(logits.contiguous())

    def em_inf(self, logits: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        from kernels import _cpu

        return _cpu.em_inf(logits, *args, module=self.module, **kwargs)

    def adaptive_temperature(self, logits: torch.Tensor, *args, **kwargs):
        from kernels import _cpu

        return _cpu.adaptive_temperature(logits, *args, module=self.module, **kwargs)


@pytest.fixture(scope="session")
def avx2_ext(request, tmp_path_factory) -> CpuBuild:
    """csrc/cpu built as setup.py builds it, with -mno-avx512f after -march=native: simd.h's AVX2 path. The build
    directory lives in pytest's cache, so ninja recompiles (~1 min) only when csrc/cpu or the flags changed. A failed
    build is an error, never a skip."""
    from kernels import _cpu

    if not _cpu.available():
        pytest.skip(f"kernels._C not built: {_cpu.load_error()}")
    reason = _avx2_unsupported()
    if reason:
        pytest.skip(f"AVX2 build of csrc/cpu not testable here: {reason}")
    from torch.utils.cpp_extension import load

    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    build_dir = cache.mkdir("csrc_cpu_avx2") if cache is not None else tmp_path_factory.mktemp("csrc_cpu_avx2")
    with pytest.MonkeyPatch.context() as mp:
        if shutil.which("ninja") is None:  # the dev extra's ninja, in an environment run without activating it
            mp.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        module = load(
            name="emk_avx2_C",
            sources=[str(CSRC / "ops.cpp")],
            extra_include_paths=[str(CSRC)],
            extra_cflags=["-O3", "-fopenmp", "-ffp-contract=fast", "-march=native", "-mno-avx512f"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
        )
    assert module.simd_width == 8, f"the AVX2 build selected W = {module.simd_width}, not simd.h's AVX2 path"
    return CpuBuild(module)


# --- the backends of an op, for the per-op test modules ----------------------------------------------------------

class Backend:
    """One backend of the ops with the signature of kernels.reference (per-row parameters, rows, out, bounds):
    `name`, the `device` its tensors live on, and `splits` (Triton only: programs per row, None = its choice)."""

    def __init__(self, name: str, module, device: str, splits: int | None = None) -> None:
        self.name, self.module, self.device, self.splits = name, module, device, splits

    def __repr__(self) -> str:
        return self.name

    @property
    def interpreted(self) -> bool:
        """Triton through its interpreter on CPU tensors."""
        return self.name.startswith("triton")

    def split(self, splits: int | None) -> "Backend":
        """This backend with `splits` programs per row (None: the kernel's choice) on the Triton interpreter, for a
        test case that names its split geometry; every other backend as it is."""
        return Backend(self.name, self.module, self.device, splits) if self.interpreted else self

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        if self.name.startswith("triton") or self.name == "cuda":
            return self.module.entropy(logits, self.splits)
        return self.module.entropy(logits)

    def em_inf(self, logits, lr, steps, kl_weight, threshold, **kwargs):
        if self.name.startswith("triton") or self.name == "cuda":
            return self.module.em_inf(logits, lr, steps, kl_weight, threshold, self.splits, **kwargs)
        return self.module.em_inf(logits, lr, steps, kl_weight, threshold, **kwargs)

    def adaptive_temperature(self, logits, tmin, tmax, max_iter, tol, target_ratio, threshold, **kwargs):
        args = (logits, tmin, tmax, max_iter, tol, target_ratio, threshold)
        if self.name.startswith("triton") or self.name == "cuda":
            return self.module.adaptive_temperature(*args, self.splits, **kwargs)
        return self.module.adaptive_temperature(*args, **kwargs)


BACKENDS = [
    "reference",
    "cpu",
    "cpu_avx2",
    "triton",  # one program per row
    "triton_split",  # rows split across programs (partials merged between launches)
    pytest.param("cuda", marks=pytest.mark.cuda),
]


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    """Each backend of the ops: the torch reference, the C++ extension (native and AVX2 builds), Triton through its
    interpreter on CPU tensors (no GPU needed), and Triton compiled on a CUDA GPU."""
    from kernels import _cpu, _triton, reference

    name = request.param
    if name == "reference":
        return Backend(name, reference, "cpu")
    if name == "cpu":
        if not _cpu.available():
            pytest.skip(f"kernels._C not built: {_cpu.load_error()}")
        return Backend(name, _cpu, "cpu")
    if name == "cpu_avx2":
        return Backend(name, request.getfixturevalue("avx2_ext"), "cpu")
    if not _triton.available():
        pytest.skip("triton is not installed")
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        return Backend(name, _triton, "cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors need TRITON_INTERPRET=1 (no GPU here)")
    return Backend(name, _triton, "cpu", splits=1 if name == "triton" else 2)

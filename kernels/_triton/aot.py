"""Ahead-of-time compilation of every Triton kernel configuration the launchers can reach, on a machine without a
GPU: Triton's own compiler and the ptxas it bundles, for sm_80 (A100), sm_90 (H100/H200) and sm_100 (B200).

    python -m kernels._triton.aot [--arch 80,90] [--workers 2] [--json PATH]

The configurations come from the launch descriptions (kernels._triton.launch.KernelLaunch) in the kernel modules:
every logits dtype, every constexpr branch, the size constexprs at their extremes, the launcher's num_warps. Each is
compiled as real launches specialise it on the common path: 16-byte aligned pointers and the integer arguments
Triton specialises (vocabulary, strides, chunk lengths) divisible by 16, as they are for Qwen's V = 151936.
Per configuration: registers per thread, spill stores/loads and stack frame (ptxas -v, as Triton invokes it),
shared memory (Triton's metadata), and the occupancy these allow. A configuration fails the check on a compile
error, on any spill, or on shared memory over the architecture's per-block limit.

The compiling runs in spawned worker processes without TRITON_INTERPRET, so this works from a test session
(which sets it) as well.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from kernels._triton import k_adaptive_temperature, k_em_inf, k_entropy, k_fused_linear
from kernels._triton.launch import KernelLaunch

KERNEL_MODULES = (k_entropy, k_em_inf, k_adaptive_temperature, k_fused_linear)
# per architecture: max shared memory per block, shared memory per SM (bytes), registers per SM, warps per SM
ARCHS = {
    80: {"name": "A100", "smem_block": 163 * 1024, "smem_sm": 164 * 1024, "regs_sm": 65536, "warps_sm": 64},
    90: {"name": "H100/H200", "smem_block": 227 * 1024, "smem_sm": 228 * 1024, "regs_sm": 65536, "warps_sm": 64},
    100: {"name": "B200", "smem_block": 227 * 1024, "smem_sm": 228 * 1024, "regs_sm": 65536, "warps_sm": 64},
}
DEFAULT_ARCHS = (80, 90)


def all_launches() -> dict[str, KernelLaunch]:
    """Every launch description in the kernel modules, by "module.NAME"."""
    found = {}
    for module in KERNEL_MODULES:
        for name, value in vars(module).items():
            if isinstance(value, KernelLaunch):
                found[f"{module.__name__.rsplit('.', 1)[1]}.{name}"] = value
    return found


def configurations(archs: tuple[int, ...] = DEFAULT_ARCHS) -> list[dict]:
    """The jobs: one per (launch, signature, constexprs, arch)."""
    jobs = []
    for key, launch in all_launches().items():
        for signature, constexprs in launch.configurations():
            for arch in archs:
                jobs.append({"launch": key, "kernel": launch.name, "signature": signature, "constexprs": constexprs,
                             "sizes": list(launch.sizes), "num_warps": launch.num_warps, "arch": arch})
    return jobs


def _attrs(kernel, signature: dict[str, str]) -> dict:
    """Divisibility by 16 for pointers and for the integer arguments Triton specialises (the common case)."""
    params = getattr(kernel, "params", None) or []
    no_spec = {p.name for p in params if getattr(p, "do_not_specialize", False)}
    attrs = {}
    for i, (name, ty) in enumerate(signature.items()):
        if ty.startswith("*") or (ty in ("i32", "i64") and name not in no_spec):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack_frame": re.compile(r"(\d+) bytes stack frame"),
}


def compile_one(job: dict) -> dict:
    """Compile one configuration; the job dict plus its resources, or plus "error"."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    launch = all_launches()[job["launch"]]
    row = {k: v for k, v in job.items() if k != "signature"}
    row["pointer_types"] = sorted({t for t in job["signature"].values() if t.startswith("*")})
    src = ASTSource(fn=launch.kernel, signature=job["signature"], constexprs=job["constexprs"],
                    attrs=_attrs(launch.kernel, job["signature"]))
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v as Triton runs it, printed to stdout
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32),
                                      options={"num_warps": job["num_warps"]})
    except Exception as exc:  # noqa: BLE001  (any compiler error is this configuration's result)
        row["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        return row
    row["compile_seconds"] = round(time.perf_counter() - t0, 2)
    text = log.getvalue()
    for key, pattern in _PTXAS.items():
        values = [int(v) for v in pattern.findall(text)]
        row[key] = max(values) if values else None
    row["shared_bytes"] = int(getattr(compiled.metadata, "shared", 0))
    if row["registers"]:
        row.update(occupancy(row["registers"], row["num_warps"], row["shared_bytes"], ARCHS[job["arch"]]))
    row["problems"] = problems(row)
    return row


def occupancy(registers: int, num_warps: int, shared_bytes: int, arch: dict) -> dict:
    """Blocks and the fraction of warp slots per SM that a kernel's registers and shared memory allow, as the CUDA
    occupancy calculator counts them. arch: regs_sm, smem_sm, warps_sm (ARCHS, or read off a device)."""
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256  # allocated per warp in units of 256
    by_regs = arch["regs_sm"] // (regs_per_warp * num_warps)
    by_smem = arch["smem_sm"] // shared_bytes if shared_bytes else 32
    blocks = min(by_regs, by_smem, arch["warps_sm"] // num_warps, 32)
    return {"blocks_per_sm": blocks, "occupancy": round(blocks * num_warps / arch["warps_sm"], 3)}


def problems(row: dict) -> list[str]:
    """Why this configuration fails the check (empty: it passes)."""
    if "error" in row:
        return ["compile error"]
    out = []
    if row.get("registers") is None:
        out.append("no ptxas report")
    if (row.get("spill_stores") or 0) or (row.get("spill_loads") or 0):
        out.append(f"spills {row['spill_stores']} B stored, {row['spill_loads']} B loaded")
    limit = ARCHS[row["arch"]]["smem_block"]
    if row["shared_bytes"] > limit:
        out.append(f"shared memory {row['shared_bytes']} B over sm_{row['arch']}'s {limit} B")
    return out


def available_archs() -> tuple[int, ...]:
    """The architectures of ARCHS that the ptxas bundled with this Triton can target (it lists them in --help)."""
    from triton.backends.nvidia.compiler import get_ptxas

    found = []
    for arch in ARCHS:
        try:
            ptxas = get_ptxas(arch)
            text = subprocess.run([getattr(ptxas, "path", ptxas), "--help"], capture_output=True, text=True).stdout
        except Exception:  # noqa: BLE001  (no ptxas for this architecture in this Triton)
            continue
        if re.search(rf"\bsm_{arch}\b", text):
            found.append(arch)
    return tuple(found)


def _init_worker(cache_dir: str) -> None:
    # a fresh cache: a cached kernel is returned without running ptxas, so it would report nothing
    os.environ["TRITON_CACHE_DIR"] = cache_dir


def compile_all(archs: tuple[int, ...] = DEFAULT_ARCHS, workers: int | None = None, progress: bool = False) -> dict:
    """Compile every configuration; {"rows": [...], "triton": version, "archs": [...], "seconds": ...}."""
    import triton

    jobs = configurations(archs)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    t0 = time.perf_counter()
    # Spawned workers: the caller's Triton cache stays untouched, and a CUDA context the caller may hold is never
    # forked. They start without TRITON_INTERPRET (a test session sets it), or their kernels would not compile.
    interpret = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with tempfile.TemporaryDirectory(prefix="em-aot-") as cache, ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(cache,)
        ) as pool:
            rows = list(tqdm(pool.map(compile_one, jobs, chunksize=4), total=len(jobs), desc="compile",
                             disable=not progress))
    finally:
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret
    failing = [r for r in rows if r["problems"]]
    return {"triton": triton.__version__, "archs": list(archs), "rows": rows, "failing": len(failing),
            "configurations": len(rows), "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels._triton.aot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=",".join(map(str, DEFAULT_ARCHS)),
                   help=f"comma-separated compute capabilities from {sorted(ARCHS)} (default: 80,90)")
    p.add_argument("--workers", type=int, default=None, help="compile processes (default: one per core)")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    try:
        archs = tuple(int(a) for a in args.arch.split(","))
    except ValueError:
        p.error(f"--arch must be integers such as 80,90, got {args.arch!r}")
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown:
        p.error(f"--arch: unknown {unknown}; choose from {sorted(ARCHS)}")
    result = compile_all(archs, args.workers, progress=sys.stderr.isatty())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    for r in result["rows"]:
        if r["problems"]:
            print(f"FAIL sm_{r['arch']} {r['launch']} {r['pointer_types']} {r['constexprs']}: "
                  f"{'; '.join(r['problems'])} {r.get('error', '')[:500]}")
    print(f"{result['configurations']} configurations compiled for sm_{', sm_'.join(map(str, archs))} with triton "
          f"{result['triton']} in {result['seconds']} s: {result['failing']} failing")
    return 1 if result["failing"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Launch-geometry sweep of the Triton ops, for choosing their defaults on GPU measurements (gpu-check's `tune` step).

Each kernel's launch description (kernels._triton.launch) fixes one BLOCK and one num_warps, and the compile check
covers exactly those. The first H100 run measured EM-INF (3 steps) at 18-26x the entropy kernel's time, at 5-6% of
the HBM bandwidth: bound by latency, not bytes. Its pass kernel holds 118 registers a thread at BLOCK 2048 and 8 warps
(fp32, sm_90, ahead-of-time compile), 2 blocks an SM; at BLOCK 512, 76 registers and 3 blocks. Which geometry is
fastest is a question only the GPU answers, so this times the ops at other geometries and at other program counts
per row, each against the default on the same input.

`geometry(op, block, num_warps)` swaps the kernel module's BLOCK and launch description for the length of a `with`,
in this process only (gpu-check runs each step in a process of its own), so the op's own launcher runs unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bench.timing import gpu_seconds
from kernels._triton import em_inf as triton_em_inf
from kernels._triton import entropy as triton_entropy
from kernels._triton import k_em_inf, k_entropy
from kernels._triton._common import split_geometry, target_programs
from kernels.params import EM_INF

VOCAB = 151936
# op -> (kernel module, its launch description's name, BLOCK values, num_warps values); each module's own BLOCK and
# NUM_WARPS are among them, so the default is timed in the same sweep. EM-INF first: it is the furthest from its
# target, and a sweep cut short at its time budget keeps the rows done.
GEOMETRIES = {
    "em_inf": (k_em_inf, "PASS", (512, 1024, 2048), (4, 8)),
    "entropy": (k_entropy, "ROW_STATS", (1024, 2048, 4096, 8192), (4, 8, 16)),
}
BATCHES = {"em_inf": (64,), "entropy": (64, 256)}  # em_inf compiles slowly: its target batch only
SPLIT_FACTORS = (0.5, 2.0, 4.0)  # programs per row against the default's, at the default geometry
EM_INF_STEPS = 3


@contextlib.contextmanager
def geometry(op: str, block: int, num_warps: int) -> Iterator[None]:
    """Run `op`'s Triton launcher at BLOCK=block and num_warps inside the `with` (this process only)."""
    module, name, blocks, warps = GEOMETRIES[op]
    if block not in blocks or num_warps not in warps:
        raise ValueError(f"geometry: {op} takes block in {blocks} and num_warps in {warps}, got {block}, {num_warps}")
    launch = getattr(module, name)
    old_block = module.BLOCK
    module.BLOCK = block
    setattr(module, name, dataclasses.replace(launch, num_warps=num_warps,
                                              constexprs={**launch.constexprs, "BLOCK": (block,)}))
    try:
        yield
    finally:
        module.BLOCK = old_block
        setattr(module, name, launch)


def default_geometry(op: str) -> tuple[int, int]:
    module, name, _, _ = GEOMETRIES[op]
    return module.BLOCK, getattr(module, name).num_warps


def op_call(op: str, x: torch.Tensor, out: torch.Tensor | None,
            num_splits: int | None = None) -> Callable[[], torch.Tensor]:
    """The op on x as the engine calls it (EM-INF at its schema defaults with 3 steps, written into out)."""
    if op == "entropy":
        return lambda: triton_entropy(x, num_splits)
    p = {**EM_INF.defaults(), "steps": EM_INF_STEPS}
    return lambda: triton_em_inf(x, p["lr"], p["steps"], p["kl_weight"], p["threshold"], num_splits, out=out)[0]


def sweep(device: torch.device, out_path: Path | None = None,
          timer: Callable[[Callable[[], object]], float] | None = None, vocab: int = VOCAB,
          batches: dict[str, tuple[int, ...]] = BATCHES) -> dict:
    """Time every geometry of every op (and the default geometry at other program counts per row) on [B, V] fp32
    logits; each row also gives the largest difference from the default's output on the same input. The results
    so far are written to out_path after every row, so a step cut short keeps them. timer: seconds of a call
    (default: bench.timing.gpu_seconds on device)."""
    timer = timer or (lambda fn: gpu_seconds(fn, device))
    rows: list[dict] = []
    result = {"vocab": vocab, "em_inf_steps": EM_INF_STEPS, "rows": rows}
    for op, (_, _, blocks, warps) in GEOMETRIES.items():
        default = default_geometry(op)
        for batch in batches[op]:
            g = torch.Generator(device="cpu").manual_seed(0)
            x = (torch.randn(batch, vocab, generator=g) * 2.0).to(device)
            out = torch.empty_like(x)
            base_splits = -(-target_programs(device) // batch)
            configs = [(default, None)]
            configs += [((b, w), None) for b in blocks for w in warps if (b, w) != default]
            configs += [(default, max(1, round(base_splits * f))) for f in SPLIT_FACTORS]
            with geometry(op, *default):
                expected = op_call(op, x, out)().clone()
            for (block, num_warps), splits in configs:
                row = {"op": op, "B": batch, "block": block, "num_warps": num_warps,
                       "programs_per_row": split_geometry(batch, vocab, block, device, splits)[0],
                       "default": (block, num_warps) == default and not splits}
                try:
                    with geometry(op, block, num_warps):
                        call = op_call(op, x, out, splits)
                        row["max_abs_diff"] = float((call() - expected).abs().nan_to_num(0.0).max())
                        row["seconds"] = timer(call)
                except Exception as exc:  # noqa: BLE001  (a geometry that fails to compile or run is its result)
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                rows.append(row)
                if out_path is not None:
                    out_path.write_text(json.dumps(result, indent=1))
    for r in rows:
        base = next(d for d in rows if d["op"] == r["op"] and d["B"] == r["B"] and d["default"])
        if "seconds" in r and "seconds" in base:
            r["speedup_vs_default"] = base["seconds"] / r["seconds"]
    return result


def markdown(result: dict) -> str:
    head = (f"Launch geometry sweep, [B, {result['vocab']}] fp32 (EM-INF {result['em_inf_steps']} steps); GPU time "
            "per call from a cold L2; x default: the default geometry's time over this one's.")
    lines = [head, "", "| op | B | BLOCK | warps | programs/row | ms | x default | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mark = " (default)" if r["default"] else ""
        if "error" in r:
            lines.append(f"| {r['op']} | {r['B']} | {r['block']} | {r['num_warps']} | {r['programs_per_row']} | error: "
                         f"{r['error'][:80]} | | |")
            continue
        lines.append(f"| {r['op']}{mark} | {r['B']} | {r['block']} | {r['num_warps']} | {r['programs_per_row']} "
                     f"| {r['seconds'] * 1e3:.4f} | {r.get('speedup_vs_default', float('nan')):.2f} "
                     f"| {r['max_abs_diff']:.2g} |")
    return "\n".join(lines)

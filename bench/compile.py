"""Compile section: the compiler's verdict on every Triton kernel configuration, on any machine (no GPU needed).

kernels._triton.aot compiles each configuration the launch descriptions allow (logits dtype x constexpr branches,
sizes at their extremes) with Triton's compiler and its bundled ptxas, for sm_80 and sm_90 (--quick: sm_90 only)
and sm_100 where that ptxas supports it. Rows: kernel, configuration, architecture, registers per thread, spill
bytes, stack frame, shared memory, and the occupancy these allow (blocks and warps per SM). Targets: every
configuration compiles, none spills, none exceeds the shared memory limit.
"""

from __future__ import annotations

import torch

from kernels._triton.aot import DEFAULT_ARCHS, available_archs, compile_all

# constexprs every configuration of a kernel shares (block shapes): left out of the table's configuration column
# unless the kernel's description lists them as a size that varies
_FIXED = {"BLOCK", "LEVELS", "NC", "REC", "SF", "SI", "OUT_BLOCK", "IGNORE"}


def run(device: torch.device, quick: bool = False, progress: bool = True) -> dict:
    """The table is the same on every machine with the same Triton: `device` only names where it was made."""
    archs = (90,) if quick else tuple(sorted(set(DEFAULT_ARCHS) | set(available_archs())))
    result = compile_all(archs, progress=progress)
    rows = result["rows"]
    # one target per kind of problem kernels._triton.aot.problems reports, per architecture
    kinds = (("compile errors", "compile error"), ("configurations without a ptxas report", "no ptxas report"),
             ("configurations with spills", "spills"),
             ("configurations over the shared-memory limit", "shared memory"))
    targets = []
    for arch in archs:
        for what, prefix in kinds:
            n = sum(1 for r in rows if r["arch"] == arch and any(p.startswith(prefix) for p in r["problems"]))
            targets.append({"target": f"sm_{arch} {what}", "value": n, "goal": 0, "met": n == 0})
    return {"triton": result["triton"], "archs": list(archs), "configurations": result["configurations"],
            "compile_seconds": result["seconds"], "rows": rows, "targets": targets}


def _config(row: dict) -> str:
    dtypes = "/".join(t.lstrip("*") for t in row["pointer_types"] if t in ("*fp32", "*bf16", "*fp16"))
    flags = ", ".join(f"{k}={v}" for k, v in row["constexprs"].items() if k not in _FIXED or k in row["sizes"])
    return f"{dtypes} {flags}".strip()


def markdown(section: dict) -> str:
    lines = [f"{section['configurations']} configurations compiled with triton {section['triton']} for "
             f"{', '.join(f'sm_{a}' for a in section['archs'])} in {section['compile_seconds']} s (this machine).",
             "", "| kernel | configuration | arch | regs | spill B (st/ld) | stack B | smem B | blocks/SM | occupancy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(section["rows"], key=lambda r: (r["launch"], r["arch"], _config(r))):
        if "error" in r:
            lines.append(f"| {r['kernel']} | {_config(r)} | sm_{r['arch']} | error: {r['error'][:120]} | | | | | |")
            continue
        lines.append(f"| {r['kernel']} | {_config(r)} | sm_{r['arch']} | {r['registers']} "
                     f"| {r['spill_stores']}/{r['spill_loads']} | {r['stack_frame']} | {r['shared_bytes']} "
                     f"| {r.get('blocks_per_sm', '')} | {r.get('occupancy', 0):.2f} |")
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in section["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def plot(section: dict, path: str) -> None:
    """Per kernel and architecture: the most registers any of its configurations needs, and the lowest occupancy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in section["rows"] if r.get("registers")]
    kernels = sorted({r["kernel"] for r in rows})
    archs = section["archs"]
    fig, (ax_r, ax_o) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(archs), 1)
    for j, arch in enumerate(archs):
        xs = [i + (j - (len(archs) - 1) / 2) * width for i in range(len(kernels))]
        regs = [max((r["registers"] for r in rows if r["kernel"] == k and r["arch"] == arch), default=0)
                for k in kernels]
        occ = [min((r["occupancy"] for r in rows if r["kernel"] == k and r["arch"] == arch), default=0)
               for k in kernels]
        ax_r.bar(xs, regs, width=width, label=f"sm_{arch}")
        ax_o.bar(xs, occ, width=width, label=f"sm_{arch}")
    for ax, title in ((ax_r, "most registers per thread"), (ax_o, "lowest occupancy (warps / max warps per SM)")):
        ax.set_xticks(range(len(kernels)), kernels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"Triton kernels compiled ahead of time (triton {section['triton']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

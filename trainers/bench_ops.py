"""Training-op benchmark: fused linear+entropy+logprob against the unfused torch computation, side by side.

``run_fused_linear_benchmark`` is what the bench suite calls for its training section. Both variants run the same
fwd+bwd (loss = mean entropy + mean target log-probability, gradients w.r.t. hidden and the lm_head weight) on the
same inputs in one process, one after the other; the ratio is what to quote. Peak memory is measured above the
inputs: on CUDA through the caching allocator's peak counter, on CPU (Linux) through the process's peak resident set
(VmHWM, reset through /proc/self/clear_refs before each variant, after glibc has returned its freed heap pages to
the OS so that reused blocks count), so it includes allocator overhead and is what a user would see.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable

import torch

from kernels.fused_linear import fused_linear_entropy

# Bytes of [N, V] fp32 tensors the unfused fwd+bwd keeps alive at its peak (logits, log-softmax, softmax, p*z,
# and their gradients overlap in backward); used only to refuse a run that would not fit in memory.
_UNFUSED_COPIES = 6


def _unfused(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
    # What a trainer does without a fused op: full logits in the model dtype, upcast, softmax statistics in fp32.
    z = (hidden @ weight.t()).float() / temperature
    logp = torch.log_softmax(z, dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1)
    return ent, logp.gather(1, targets.unsqueeze(1)).squeeze(1)


def _read_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


def _release_free_heap() -> None:
    # Freed memory that glibc keeps resident (its heap grows once earlier large tensors raise the dynamic mmap
    # threshold) would be reused without raising RSS, so a variant's peak would read low or zero depending on what
    # ran before it in the process. malloc_trim returns those pages to the OS; other allocators lack it.
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    return 0


class _PeakMeter:
    """Peak bytes allocated above the level at ``start()``, on CUDA or on CPU (Linux RSS high-water mark)."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = _read_status_kb("VmRSS")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _read_status_kb("VmHWM") - self.base


def _measure(fn: Callable[[], None], device: torch.device) -> tuple[float, int]:
    meter = _PeakMeter(device)
    meter.start()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return seconds, meter.peak()


def _free_bytes(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _available_bytes()


def unfused_needs_bytes(N: int, V: int) -> int:
    """Estimated peak bytes of the unfused fwd+bwd (measured on CPU: the peak is ~5 [N, V] fp32 copies)."""
    return _UNFUSED_COPIES * N * V * 4


def unfused_fits(N: int, V: int, device: str | torch.device) -> bool:
    return unfused_needs_bytes(N, V) <= 0.9 * _free_bytes(torch.device(device))


def run_fused_linear_benchmark(
    N: int,
    V: int,
    D: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    temperature: float = 1.0,
    run_unfused: bool = True,
    seed: int = 0,
    repeats: int = 1,
    fused: Callable = fused_linear_entropy,
    baselines: dict[str, Callable] | None = None,
) -> dict:
    """Time and peak memory of one fwd+bwd of the fused op and of unfused torch, measured in this run.

    N tokens, vocabulary V, hidden size D. Returns a dict with sizes, device, dtype, ``fused`` and ``unfused``
    entries ({seconds, peak_bytes} each; unfused is {"skipped": reason} when its estimated N x V footprint does not
    fit in the free memory or run_unfused is False), the ratios ``time_ratio`` (fused / unfused) and
    ``memory_ratio`` (fused peak / unfused peak), and the largest gradient difference between the two. ``repeats``
    interleaved runs of each: the fastest time and the highest peak are reported, every time in ``runs_seconds``.
    ``fused``: the op timed as "fused" (hidden, weight, targets, temperature) -> (entropy, logprob). ``baselines``:
    further variants timed alongside, each under its own name with ``time_ratio_vs_<name>``,
    ``memory_ratio_vs_<name>`` and ``max_abs_grad_diff_vs_<name>`` (fused against it).
    """
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    baselines = dict(baselines or {})
    reserved = {"fused", "unfused"} & set(baselines)
    if reserved:
        raise ValueError(f"baselines must not be named {sorted(reserved)}")
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(N, D, generator=gen) * 0.5).to(device=device, dtype=dtype)
    weight = (torch.randn(V, D, generator=gen) * D**-0.5).to(device=device, dtype=dtype)
    targets = torch.randint(0, V, (N,), generator=gen).to(device)
    result: dict = {"N": N, "V": V, "D": D, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                    "temperature": temperature, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
        result["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32

    ops: dict[str, Callable] = {"fused": fused, **baselines}
    if not run_unfused:
        result["unfused"] = {"skipped": "run_unfused=False"}
    elif not unfused_fits(N, V, device):
        result["unfused"] = {"skipped": f"needs about {unfused_needs_bytes(N, V) / 2**30:.1f} GiB, "
                                        f"{_free_bytes(device) / 2**30:.1f} GiB free"}
    else:
        ops["unfused"] = _unfused

    grads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def make(name: str, op: Callable) -> Callable[[], None]:
        def fn() -> None:
            h = hidden.detach().requires_grad_()
            w = weight.detach().requires_grad_()
            ent, lp = op(h, w, targets, temperature)
            (ent.mean() + lp.mean()).backward()
            grads[name] = (h.grad, w.grad)

        return fn

    variants = {name: make(name, op) for name, op in ops.items()}
    # Warm-up so one-time costs stay out of the timings: thread pools and kernel selection at a small size on CPU;
    # on CUDA one full-size run each (Triton compiles per shape-dependent constexpr, cuBLAS picks its algorithms).
    if device.type == "cuda":
        for fn in variants.values():
            fn()
    else:
        h_small = hidden[: min(N, 64)].detach().requires_grad_()
        w_small = weight[: min(V, 4096)].detach().requires_grad_()
        for op in ops.values():
            e, lp = op(h_small, w_small, targets[: h_small.shape[0]] % w_small.shape[0], temperature)
            (e.mean() + lp.mean()).backward()
        del h_small, w_small, e, lp

    # Interleaved repeats, fastest run kept: a shared machine's slow spells then hit every variant alike.
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            runs[name].append(_measure(fn, device))
    for name, measured in runs.items():
        result[name] = {"seconds": min(t for t, _ in measured), "peak_bytes": max(p for _, p in measured),
                        "runs_seconds": [t for t, _ in measured]}
    gf = grads["fused"]
    for name in variants:
        if name == "fused":
            continue
        suffix = "" if name == "unfused" else f"_vs_{name}"
        result["time_ratio" + suffix] = result["fused"]["seconds"] / result[name]["seconds"]
        result["memory_ratio" + suffix] = result["fused"]["peak_bytes"] / max(result[name]["peak_bytes"], 1)
        gu = grads[name]
        result["max_abs_grad_diff" + suffix] = {
            "hidden": float((gf[0].float() - gu[0].float()).abs().max()),
            "weight": float((gf[1].float() - gu[1].float()).abs().max()),
        }
    return result


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="fused vs unfused linear+entropy fwd+bwd")
    parser.add_argument("--N", type=int, default=1024)
    parser.add_argument("--V", type=int, default=151936)
    parser.add_argument("--D", type=int, default=896)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-unfused", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of each; the fastest is reported")
    args = parser.parse_args()
    out = run_fused_linear_benchmark(args.N, args.V, args.D, args.device, getattr(torch, args.dtype),
                                     run_unfused=not args.no_unfused, repeats=args.repeats)
    print(json.dumps(out, indent=2))

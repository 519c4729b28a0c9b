"""Timing and machine-limit measurements shared by the bench sections."""

from __future__ import annotations

import functools
import platform
import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, min_seconds: float = 0.3,
            max_iters: int = 50, min_iters: int = 3, best: bool = False) -> float:
    """Median (or, with best, minimum) wall seconds of fn() over repeated runs (at least min_iters, until
    min_seconds or max_iters)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or (time.perf_counter() - start < min_seconds and len(times) < max_iters):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times) if best else statistics.median(times)


def measure_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int = 1,
                        min_seconds: float = 0.5, max_rounds: int = 20, min_rounds: int = 3) -> dict[str, float]:
    """Fastest wall seconds of each fn, the fns called in turns (one round calls each once; at least min_rounds,
    until min_seconds or max_rounds). Speed-ups between them are then not skewed by which one ran while a shared
    machine was busy, and the fastest run is the measure comparable with the bandwidth probe's."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    best = {name: float("inf") for name in fns}
    rounds, start = 0, time.perf_counter()
    while rounds < min_rounds or (time.perf_counter() - start < min_seconds and rounds < max_rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


CACHE_STATE = ("warm: each backend is timed in its own block of back-to-back calls (blocks alternate between "
               "backends, fastest call of all rounds); before a block the previous backend's temporaries are freed, "
               "the input is re-read and one untimed call warms the caches, so every backend starts from the same "
               "state")
GPU_CACHE_STATE = ("cold L2, GPU time: before each call a 256 MiB buffer is zeroed (flushing the L2) and the stream is "
                   "held busy while the host launches the call, so \"ms\" is the call's time on the GPU between two "
                   "CUDA events, without launch overhead or a warm L2 (the fastest of up to 20 calls); \"host ms\" is the "
                   "same call timed on the host and synchronised, launch overhead included")


def cache_state(device: torch.device) -> str:
    """How a kernel row's time was taken on this device, in words for the reports."""
    return GPU_CACHE_STATE if device.type == "cuda" else CACHE_STATE


# Zeroed before each timed GPU call: larger than the L2 of any current GPU (H100 50 MB, H200 60 MB, B200 126 MB),
# as triton.testing.do_bench does, so an input that fits the L2 is still read from HBM.
L2_FLUSH_BYTES = 256 << 20
# Longest spin before a timed GPU call: a host-bound call slower than half of it has the rest of its host time counted.
MAX_HOLD_SECONDS = 0.02


@functools.cache
def _sleep_cycles_per_second(index: int) -> float:
    """Rate of torch.cuda._sleep's spin loop (clock cycles per second) on GPU `index`, measured once."""
    with torch.cuda.device(index):
        torch.cuda._sleep(1000)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(10_000_000)  # ~5 ms at 2 GHz
        end.record()
        end.synchronize()
        return 10_000_000 / (start.elapsed_time(end) / 1e3)


def gpu_seconds(fn: Callable[[], object], device: torch.device, *, iters: int = 20, warmup: int = 2,
                best: bool = True) -> float:
    """GPU time of one call of fn on the current stream (the fastest of `iters`, or the median), cold L2.

    Timing a short kernel on the host (launch, then synchronize) adds Python's launch overhead and the
    synchronisation to it: at tens of microseconds (a read of [64, 151936] fp32 logits is ~14 us at 2.8 TB/s) they
    are of the kernel's own order. Here each call is timed between two CUDA events, after the L2 is flushed
    (L2_FLUSH_BYTES zeroed) and after a spin kernel (torch.cuda._sleep) that keeps the stream busy for twice the
    host's launch time of fn, so every kernel of the call is already queued when the first one starts and the
    events see the GPU work only. A call that synchronises inside (.item()) still pays its host time after that
    point: it is part of what the call costs the stream.
    """
    if device.type != "cuda":
        raise ValueError(f"gpu_seconds: device must be a CUDA device, got {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        launch = time.perf_counter() - t0
        torch.cuda.synchronize()
        # A slow host-bound call (the torch reference's row loops) gets a hold of at most MAX_HOLD_SECONDS, its host
        # time beyond that counted in, and fewer calls, so that timing it takes about a second at most.
        hold = int(min(max(2 * launch, 50e-6), MAX_HOLD_SECONDS) * _sleep_cycles_per_second(index))
        iters = max(3, min(iters, int(0.3 / max(launch, 1e-9))))
        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start, end in zip(starts, ends):
            flush.zero_()
            torch.cuda._sleep(hold)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
    times = [start.elapsed_time(end) / 1e3 for start, end in zip(starts, ends)]
    return min(times) if best else statistics.median(times)


def measure_blocks(fns: dict[str, Callable[[], object]], device: torch.device, touch: Callable[[], object], *,
                   rounds: int = 3, block_seconds: float = 0.1, block_max_iters: int = 50,
                   block_min_iters: int = 2) -> dict[str, float]:
    """Fastest wall seconds of each fn, every backend starting from the same (warm) cache state.

    Calling a fast kernel right after a slow reference (interleaving call by call) times the kernel on a cache the
    reference's large temporaries have just evicted: the row then measures the reference's footprint. Here each fn
    runs in a block of its own calls; before each block the garbage of the previous one is collected, ``touch()``
    re-reads the input and one untimed call warms what the fn itself uses. Blocks alternate between the fns for
    ``rounds`` rounds, so a busy spell of a shared machine does not land on one backend only (CACHE_STATE says this
    in words for the reports)."""
    import gc

    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            gc.collect()
            touch()
            fn()
            synchronize(device)
            n, start = 0, time.perf_counter()
            while n < block_min_iters or (time.perf_counter() - start < block_seconds and n < block_max_iters):
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                best[name] = min(best[name], time.perf_counter() - t0)
                n += 1
    return best


def memory_bandwidth(device: torch.device, nbytes: int = 256 << 20) -> dict[str, float]:
    """The machine's memory bandwidth in GB/s as this run sees it: a plain read (sum) and a plain copy.

    Read: the best of torch.sum and torch.amax over an fp32 buffer larger than the last-level cache (bytes read).
    Copy: dst.copy_(src), counting bytes read plus bytes written. Each is the fastest of its runs: the machine's
    limit as reached in this run, so that kernel rows quoted as a % of it are not flattered by a slow probe.
    """
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    if device.type == "cuda":  # timed as the kernel rows are (gpu_seconds), so their % of it compares like with like
        def timed(fn):
            return gpu_seconds(fn, device, iters=10)
    else:
        def timed(fn):
            return measure(fn, device, best=True, min_iters=10)
    t_sum = timed(lambda: src.sum())
    t_max = timed(lambda: src.amax())
    t_copy = timed(lambda: dst.copy_(src))
    return {
        "read_gbps": nbytes / min(t_sum, t_max) / 1e9,
        "copy_gbps": 2 * nbytes / t_copy / 1e9,
        "buffer_mib": nbytes / 2**20,
    }


def describe_device(device: torch.device) -> dict[str, object]:
    """What the numbers were measured on: quoted with every absolute time."""
    info: dict[str, object] = {"type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        from engine.cpu import BF16_FLAGS, cpu_flags

        info.update(name=name, threads=torch.get_num_threads(), machine=platform.machine(),
                    bf16_flags=sorted(f for f in (*BF16_FLAGS, "amx_tile", "avx512f") if f in cpu_flags()))
    return info

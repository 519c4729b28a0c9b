"""The authors' own EM-INF sampler step, bugs included (shared/reference/em_pt_semantics.md sections 1.2, 1.3, 9):
test oracles and the baseline of the bench's "ours vs the authors'" figure, kept beside the exact per-row reference
(``kernels.reference``), which is what our ops reproduce row by row.

With batch size 1 (the authors' setting) ``authors_em_inf_step`` equals ``kernels.em_inf``; with B > 1 it differs,
because the authors summed entropy and KL over the whole batch (bug 9.1), and on rows where an fp32 probability
underflows to exactly 0 it returns NaN where ours stays finite (bug 13; kernels/SEMANTICS.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels.params import EM_INF
from kernels.reference import EM_INF_EPS

AUTHORS_PROB_CLAMP = 1e-9  # the authors clamp softmax probabilities to [1e-9, 1] before torch.multinomial


def authors_em_inf_step(logits: torch.Tensor, lr: float, steps: int, kl_weight: float,
                        threshold: float) -> torch.Tensor:
    """The authors' EM-INF optimisation (``ent_sample``), bugs included: returns z_final [B, V] fp32.

    One ``torch.nn.Parameter`` holds the whole [B, V] logits; entropy ``-sum q log(q + 1e-12)`` is summed over the
    WHOLE tensor (batch and vocabulary) and compared with ``threshold`` before each step; KL is ``kl_div(log q, p0,
    'batchmean')``; ``torch.optim.Adam(lr)`` with torch defaults. Runs under ``enable_grad`` (generate is no_grad).
    """
    # inference_mode(False): generate() may run under inference mode, whose tensors cannot enter autograd.
    with torch.inference_mode(False), torch.enable_grad():
        z0 = logits.detach().float().clone()
        p0 = F.softmax(z0, dim=-1).detach()
        z = torch.nn.Parameter(z0.clone())
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            q = F.softmax(z, dim=-1)
            h = -torch.sum(q * torch.log(q + EM_INF_EPS))
            if h < threshold:
                break
            # their input is probs.log(): -inf where an fp32 probability underflowed to 0, and kl_div then evaluates
            # 0 * inf = NaN for the whole tensor (em_pt_semantics.md, bug 13); our ops use log_softmax and stay finite
            kl = F.kl_div(q.log(), p0, reduction="batchmean")
            loss = h + kl_weight * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
    return z.detach()


def authors_sampler_step(
    logits: torch.Tensor,
    input_ids: torch.LongTensor,
    logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    lr: float | None = None,
    steps: int | None = None,
    kl_weight: float | None = None,
    threshold: float | None = None,
    do_sample: bool = True,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """One decoding step of the authors' sampler: EM step, their processor list, softmax, clamp 1e-9, multinomial.

    logits: [B, V] last-position model logits; input_ids: [B, S] the sequences so far (for repetition penalty).
    ``logits_processor``: their processor list (``engine.hf_processors.authors_logits_processor``). EM
    hyper-parameters left as None take the schema's defaults, which are the authors'. Returns next tokens [B].
    ``generator`` None draws from the global RNG, as they did.
    """
    given = {"lr": lr, "steps": steps, "kl_weight": kl_weight, "threshold": threshold}
    z_final = authors_em_inf_step(logits, **EM_INF.check({k: v for k, v in given.items() if v is not None}))
    scores = logits_processor(input_ids, z_final)
    if not do_sample:
        return torch.argmax(scores, dim=-1)
    probs = F.softmax(scores, dim=-1).clamp(AUTHORS_PROB_CLAMP, 1.0)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)

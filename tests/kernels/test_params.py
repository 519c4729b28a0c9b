"""kernels.params, the one schema of the EM hyper-parameters: request parsing never raises anything but ValueError
(property test over JSON-like extra_args), errors name the user's key, operator caps, and a default changed in the
schema reaches every consumer (ops' HF processors, the vLLM plugin's parser, the CLIs)."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import params
from kernels.params import ADAPTIVE_TEMPERATURE, ALL_KEYS, CAPS, EM_INF, MODE_KEY, MODES, operator_caps, parse_request

# ------------------------------------------------------------------------------------------------- property tests

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=True),
    st.text(max_size=80),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "1e-400", "0x10", "1_000", " 3 ", "3.0",
                     "2.5", "-1", "0", "1e3", "１", "٣", "em_inf", "adaptive_temperature", "9" * 100]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3)), max_leaves=6)
our_keys = st.sampled_from([MODE_KEY, *ALL_KEYS, "em_typo", "at_other", "unrelated"])
modes = st.one_of(st.sampled_from(list(MODES)), json_values)
extra_args = st.dictionaries(st.one_of(our_keys, st.text(max_size=12)), json_values, max_size=6)


def _valid_setting(result) -> None:
    mode, values = result
    assert mode in MODES.values()
    assert set(values) == set(mode.names)
    for p in mode.params:
        v = values[p.name]
        assert type(v) is p.kind and not isinstance(v, bool)
        assert (v > p.low if p.low_open else v >= p.low) and v <= p.high
        assert math.isfinite(v)
    if mode is ADAPTIVE_TEMPERATURE:
        assert values["tmax"] >= values["tmin"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra_args, modes)
def test_parse_request_returns_a_valid_setting_or_raises_value_error(args, mode):
    if MODE_KEY in args or mode is not None:
        args = {**args, MODE_KEY: mode}
    caps = {"em_steps": 10, "at_max_iter": 100}
    try:
        result = parse_request(args, caps)
    except ValueError as exc:
        assert str(exc)  # never an empty message (the HTTP 400 body)
        return
    if result is not None:
        _valid_setting(result)
        mode_, values = result
        if mode_ is EM_INF:
            assert values["steps"] <= 10
        else:
            assert values["max_iter"] <= 100


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(ALL_KEYS.values())), json_values)
def test_every_key_accepts_or_names_itself(param, value):
    mode = next(m for m in MODES.values() if param.key in m.keys)
    try:
        result = parse_request({MODE_KEY: mode.name, param.key: value})
    except ValueError as exc:
        assert param.key in str(exc) or "at_tmin" in str(exc)  # tmax below tmin names both keys
        return
    _valid_setting(result)


def test_numbers_as_strings_and_integral_floats():
    assert parse_request({MODE_KEY: "em_inf", "em_steps": "4", "em_lr": " 0.2 "})[1] == {
        **EM_INF.defaults(), "steps": 4, "lr": 0.2}
    assert parse_request({MODE_KEY: "adaptive_temperature", "at_max_iter": 7.0})[1]["max_iter"] == 7
    assert parse_request({MODE_KEY: "adaptive_temperature", "at_max_iter": "1e3"})[1]["max_iter"] == 1000


@pytest.mark.parametrize(("args", "match"), [
    ({MODE_KEY: ["em_inf"]}, "em_mode must be one of"),
    ({MODE_KEY: {"a": 1}}, "em_mode must be one of"),
    ({MODE_KEY: "em_inf", "em_steps": True}, "em_steps must be an integer"),
    ({MODE_KEY: "em_inf", "em_lr": "NaN"}, "em_lr must be a finite number in \\(0, 100\\]"),
    ({MODE_KEY: "em_inf", "em_lr": "-inf"}, "em_lr"),
    ({MODE_KEY: "em_inf", "em_steps": "3.5"}, "em_steps must be an integer in \\[0, 1000\\]"),
    ({MODE_KEY: "em_inf", "em_steps": 10**400}, "em_steps"),
    ({MODE_KEY: "em_inf", "em_lr": 10**400}, "em_lr"),
    ({MODE_KEY: "em_inf", "em_lr": "é"}, "em_lr"),
    ({MODE_KEY: "adaptive_temperature", "em_steps": 3}, "belongs to em_mode='em_inf'"),
    ({"em_steps": 3}, "need 'em_mode'"),
])
def test_bad_values_name_the_key_and_range(args, match):
    with pytest.raises(ValueError, match=match):
        parse_request(args)


def test_non_mapping_extra_args_is_a_value_error():
    with pytest.raises(ValueError, match="extra_args must be a mapping"):
        parse_request(["em_mode", "em_inf"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- operator caps

def test_caps_from_environment_and_their_errors():
    assert operator_caps({}) == {c.key: c.default for c in CAPS}
    assert operator_caps({"EM_MAX_STEPS": "5", "EM_AT_MAX_ITER": "60"}) == {"em_steps": 5, "at_max_iter": 60}
    with pytest.raises(ValueError, match="EM_MAX_STEPS must be an integer"):
        operator_caps({"EM_MAX_STEPS": "five"})
    with pytest.raises(ValueError, match="EM_AT_MAX_ITER"):
        operator_caps({"EM_AT_MAX_ITER": "-1"})
    caps = operator_caps({"EM_MAX_STEPS": "5"})
    assert parse_request({MODE_KEY: "em_inf", "em_steps": 5}, caps)[1]["steps"] == 5
    with pytest.raises(ValueError, match="em_steps=6 is above this server's cap of 5 \\(set by --em-max-steps"):
        parse_request({MODE_KEY: "em_inf", "em_steps": 6}, caps)
    with pytest.raises(ValueError, match="at_max_iter=101 is above this server's cap of 100"):
        parse_request({MODE_KEY: "adaptive_temperature", "at_max_iter": 101}, caps)


def test_default_caps_admit_the_defaults():
    caps = operator_caps({})
    for mode in MODES.values():
        assert parse_request({MODE_KEY: mode.name}, caps)[1] == mode.defaults()


def test_a_cap_below_a_default_lowers_the_default_of_requests_that_do_not_send_the_key():
    caps = operator_caps({"EM_AT_MAX_ITER": "80", "EM_MAX_STEPS": "2"})
    assert parse_request({MODE_KEY: "adaptive_temperature"}, caps)[1]["max_iter"] == 80
    assert parse_request({MODE_KEY: "em_inf"}, caps)[1]["steps"] == 2
    with pytest.raises(ValueError, match="at_max_iter=100 is above this server's cap of 80"):
        parse_request({MODE_KEY: "adaptive_temperature", "at_max_iter": 100}, caps)


# ------------------------------------------------------------------------------------ one place for each default

def test_a_default_changed_in_the_schema_reaches_every_consumer(monkeypatch):
    from engine.hf_processors import AdaptiveTemperatureLogitsProcessor, EMInfLogitsProcessor
    from engine.strategies import resolve_mode_params

    monkeypatch.setattr(EM_INF.param("steps"), "default", 7)
    monkeypatch.setattr(ADAPTIVE_TEMPERATURE.param("target_ratio"), "default", 0.5)
    # the request parser (what the vLLM plugin and validate_params run)
    assert parse_request({MODE_KEY: "em_inf"})[1]["steps"] == 7
    assert parse_request({MODE_KEY: "adaptive_temperature"})[1]["target_ratio"] == 0.5
    # the HF processors and the strategies' flat parameters
    assert EMInfLogitsProcessor().params["steps"] == 7
    assert AdaptiveTemperatureLogitsProcessor().params["target_ratio"] == 0.5
    assert resolve_mode_params("em_inf", {})[1]["em_steps"] == 7
    # the CLIs' help text
    parser = argparse.ArgumentParser()
    params.add_cli_flags(parser)
    help_text = parser.format_help()
    assert "default 7" in help_text and "default 0.5" in help_text
    assert params.cli_values(parser.parse_args(["--em-lr", "0.3"])) == {"em_lr": 0.3}


def test_cli_flags_are_the_request_keys():
    parser = argparse.ArgumentParser()
    params.add_cli_flags(parser)
    args = parser.parse_args(["--em-steps", "4", "--at-target-ratio", "0.7"])
    assert params.cli_values(args) == {"em_steps": 4, "at_target_ratio": 0.7}
    assert {p.flag for p in ALL_KEYS.values()} == {"--" + k.replace("_", "-") for k in ALL_KEYS}

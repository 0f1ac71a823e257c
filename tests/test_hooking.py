"""The hook bases of :mod:`workbench.models.hooking` always leave the model as they found it.

For both mechanisms (torch hooks, nnsight) and both directions (reading sites: capture's
``RoutingTap``; writing sites: the interventions' ``LayerEditor``), an exception raised inside the
context (in the ``with`` body, or by a site during the forward pass) leaves no hooks, no nnsight
instrumentation (instance attributes) and unchanged parameters and buffers, and the model then
computes exactly its baseline. Each test first checks that the sites really were installed and
fired, so a base that installed nothing could not pass. A failure halfway through attaching is
rolled back, and the capture backends built on the bases restore the model too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
import torch
from torch import nn

from workbench.capture.backends import make_backend
from workbench.capture.backends.recording import RecordingBackend
from workbench.capture.batching import Batch, make_batch
from workbench.interventions.apply import _text_config
from workbench.interventions.editor import LayerEditor
from workbench.interventions.plan import make_plans
from workbench.interventions.specs import Reroute, Scale
from workbench.models.discovery import MoELayer, find_moe_layers
from workbench.models.forward import model_forward
from workbench.models.hooking import MECHANISMS, HookBase, TorchHooks, mechanism
from workbench.models.tap import RoutingTap
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt

pytestmark = pytest.mark.integration

#: qwen2_moe reads its selection from the experts' arguments; llama4 from the router, and its Scale
#: acts on the experts' output: between them every hook point of a site is used.
ARCHS = ["qwen2_moe", "llama4"]
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.inference_mode():
        yield


def _batch() -> Batch:
    texts = ["The quick brown fox jumps over the lazy dog.", "2 + 2 = 4"]
    prompts = [Prompt(i, text, "demo") for i, text in enumerate(texts)]
    return make_batch(prompts, byte_tokenizer(), max_length=None, padding_side="right")


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Parameters and buffers (cloned), each module's instance attribute names and hook dicts."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "keys": {name: sorted(vars(m)) for name, m in model.named_modules()},
        "hooks": {
            name: {d: list(getattr(m, d, {}).items()) for d in _HOOK_DICTS}
            for name, m in model.named_modules()
        },
    }


def n_hooks(model: nn.Module) -> int:
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)


def n_hooks_before(before: dict[str, Any]) -> int:
    return sum(len(hooks) for per_module in before["hooks"].values() for hooks in per_module.values())


def n_added_attrs(model: nn.Module, before: dict[str, Any]) -> int:
    return sum(len(set(vars(m)) - set(before["keys"][name])) for name, m in model.named_modules())


def assert_restored(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"], "hooks left on the model"
    assert after["keys"] == before["keys"], "instance attributes (nnsight wrappers) left on the model"
    assert after["state"].keys() == before["state"].keys()
    for key, tensor in before["state"].items():
        assert torch.equal(after["state"][key], tensor), f"{key} changed"


def _sites(direction: str, model: nn.Module, layers: list[MoELayer]) -> list[Any]:
    if direction == "read":
        return [RoutingTap(layer, want_logits=True, want_input=True) for layer in layers]
    first, last = layers[0].layer, layers[-1].layer
    plans = make_plans([Reroute({first: [0, 1]}), Scale({last: [2, 3]}, s=3.0)], layers)
    return [LayerEditor(plan, _text_config(model)) for plan in plans]


def _fired(direction: str, sites: list[Any]) -> bool:
    if direction == "read":
        return all(tap.indices is not None and tap.hidden is not None for tap in sites)
    return all(editor.edits is not None for editor in sites)


def _cleared(direction: str, sites: list[Any]) -> bool:
    if direction == "read":
        return all(tap.indices is None and tap.logits is None and tap.hidden is None for tap in sites)
    return all(editor.edits is None and editor.logits is None for editor in sites)


class _Boom:
    """A site that delegates to ``inner`` and raises once the router's output reaches it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.layer = inner.layer
        self.writes = inner.writes
        self.reads_block_input = inner.reads_block_input
        self.reads_experts_input = inner.reads_experts_input
        self.reads_experts_output = inner.reads_experts_output

    def reset(self) -> None:
        self.inner.reset()

    def on_block_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.inner.on_block_input(args, kwargs)

    def on_router_output(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        raise RuntimeError("boom in the forward pass")

    def on_experts_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.inner.on_experts_input(args, kwargs)

    def on_experts_output(self, output: Any) -> Any:
        return self.inner.on_experts_output(output)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("direction", ["read", "write"])
@pytest.mark.parametrize("name", MECHANISMS)
def test_restored_after_an_exception_in_the_block(name: str, direction: str, arch: str) -> None:
    model = tiny_model(arch)
    layers = find_moe_layers(model)
    batch = _batch()
    baseline = model_forward(model, batch)
    before = snapshot(model)
    sites = _sites(direction, model, layers)
    with pytest.raises(RuntimeError, match="boom"), mechanism(name)(model, sites) as hooks:
        if name == "hooks":
            assert n_hooks(model) > n_hooks_before(before)
        else:
            assert n_added_attrs(model, before) > 0  # nnsight instrumented the modules
        out = hooks.call(functools.partial(model_forward, model), batch)
        assert _fired(direction, sites)
        if direction == "read":
            assert torch.equal(out, baseline)  # reading sites never change the output
        else:
            assert not torch.equal(out, baseline)  # the edits took effect
        raise RuntimeError("boom")
    assert hooks.closed
    assert _cleared(direction, sites)
    assert_restored(model, before)
    assert torch.equal(model_forward(model, batch), baseline)


@pytest.mark.parametrize("direction", ["read", "write"])
@pytest.mark.parametrize("name", MECHANISMS)
def test_restored_after_a_site_raises_during_the_forward(name: str, direction: str) -> None:
    model = tiny_model("qwen2_moe")
    layers = find_moe_layers(model)
    batch = _batch()
    baseline = model_forward(model, batch)
    before = snapshot(model)
    sites = _sites(direction, model, layers)
    boom = _Boom(sites[-1])
    hooks = mechanism(name)(model, [*sites[:-1], boom])
    assert n_hooks(model) > n_hooks_before(before) or n_added_attrs(model, before) > 0
    with pytest.raises(Exception, match="boom in the forward pass"), hooks:
        hooks.forward(input_ids=batch.input_ids, attention_mask=batch.mask)
    assert hooks.closed
    assert_restored(model, before)
    assert torch.equal(model_forward(model, batch), baseline)


@pytest.mark.parametrize("direction", ["read", "write"])
def test_torch_hooks_roll_back_a_failed_attach(direction: str) -> None:
    model = tiny_model("qwen2_moe")
    layers = find_moe_layers(model)
    before = snapshot(model)
    sites = _sites(direction, model, layers)
    broken = sites[-1]
    broken.layer = dataclasses.replace(broken.layer, experts=None)  # no module to hook: fails mid-way
    assert broken.reads_experts_input  # so the first hooks of this site are registered before it fails
    with pytest.raises(AttributeError):
        TorchHooks(model, sites)
    assert_restored(model, before)


def test_nnsight_rolls_back_a_failed_attach() -> None:
    model = tiny_model("qwen2_moe")
    other = find_moe_layers(tiny_model("qwen2_moe"))  # modules of another model: no envoys here
    before = snapshot(model)
    with pytest.raises(ValueError, match="not a submodule of the model handed to nnsight"):
        mechanism("nnsight")(model, [RoutingTap(layer, True, False) for layer in other])
    assert_restored(model, before)


@pytest.mark.parametrize("name", MECHANISMS)
def test_capture_backends_restore_the_model(name: str) -> None:
    model = tiny_model("qwen2_moe")
    layers = find_moe_layers(model)
    batch = _batch()
    before = snapshot(model)
    backend = make_backend(name, model, layers, expert_stats=True)
    assert isinstance(backend, RecordingBackend) and isinstance(backend.attached, HookBase)
    with pytest.raises(RuntimeError, match="boom"), closing(backend):
        capture = backend.run(batch)
        assert sorted(capture.routing) == [x.layer for x in layers] and capture.stats
        raise RuntimeError("boom")
    assert_restored(model, before)


def test_writing_hooks_run_before_reading_ones() -> None:
    """Capture opened first still records the intervened routing: writers are prepended."""
    model = tiny_model("qwen2_moe")
    layers = find_moe_layers(model)
    batch = _batch()
    taps = [RoutingTap(layer, want_logits=False, want_input=False) for layer in layers]
    with TorchHooks(model, taps) as reading:
        reading.call(functools.partial(model_forward, model), batch)
        assert bool((taps[0].routing().indices == 0).any())
        with TorchHooks(model, _sites("write", model, layers)):
            reading.call(functools.partial(model_forward, model), batch)
            assert not bool(torch.isin(taps[0].routing().indices, torch.tensor([0, 1])).any())

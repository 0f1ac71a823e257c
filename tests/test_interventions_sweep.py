"""Sweep: ``Reroute`` of expert 0 in every MoE layer, on every architecture that passes the capture sweep.

For each architecture the conformance sweep passes (the session's ``sweep_results``, tests/conftest.py),
the same tiny model is built again and run on the sweep's two prompts through the hooks capture
backend, without and with the intervention. Under it, expert 0 is never selected in any layer and
every token still routes to k experts; the model's output changes; after the block the model is
restored bit-for-bit (parameters, buffers, simple module attributes, hook dicts) and reproduces
the baseline exactly.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from workbench.capture.backends.hooks import HooksBackend
from workbench.conformance.supported import SWEEP_OVERRIDES, Result, sweep_batch
from workbench.interventions import Reroute, intervene
from workbench.models.discovery import find_moe_layers
from workbench.models.forward import model_forward
from workbench.models.tiny import tiny_model

pytestmark = pytest.mark.integration

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_SIMPLE = (int, float, str, bool, type(None), torch.dtype)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything an intervention could leave behind: tensors, simple attributes, hooks."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "attrs": {
            name: {k: v for k, v in vars(m).items() if isinstance(v, _SIMPLE)}
            for name, m in model.named_modules()
        },
        "keys": {name: sorted(vars(m)) for name, m in model.named_modules()},
        "hooks": {
            name: {d: list(getattr(m, d, {}).items()) for d in _HOOK_DICTS}
            for name, m in model.named_modules()
        },
    }


def assert_restored(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, tensor in before["state"].items():
        assert torch.equal(after["state"][key], tensor), f"{key} changed"
    assert after["attrs"] == before["attrs"]
    assert after["keys"] == before["keys"]
    assert after["hooks"] == before["hooks"]


@pytest.fixture
def passing(sweep_results: dict[str, Result]) -> list[str]:
    """The architectures the session's conformance sweep passes, in sweep order."""
    return [mt for mt, r in sweep_results.items() if r.status == "pass"]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN (positions with no next token) equal to NaN."""
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))


def reroute_expert_zero(model_type: str) -> str:
    """'' when rerouting expert 0 everywhere behaves as specified on ``model_type``, else why not."""
    model = tiny_model(model_type, **SWEEP_OVERRIDES.get(model_type, {}))
    layers = find_moe_layers(model)
    batch = sweep_batch()
    with torch.inference_mode():
        model_forward(model, batch)  # some routers set attributes on their first call (NLLB capacity)
    before = snapshot(model)
    backend = HooksBackend(model, layers, want_logits=False)
    try:
        with torch.inference_mode():
            base = backend.run(batch)
            with intervene(model, Reroute({x.layer: [0] for x in layers})):
                under = backend.run(batch)
            after = backend.run(batch)
    finally:
        backend.close()
    for x in layers:
        idx = under.routing[x.layer].indices
        if bool((idx == 0).any()):
            return f"layer {x.layer}: expert 0 still selected on {int((idx == 0).any(-1).sum())} tokens"
        if idx.shape[1] != x.top_k:
            return f"layer {x.layer}: {idx.shape[1]} experts per token, expected {x.top_k}"
    if same(base.nll, under.nll):
        return "the output did not change"
    if not same(base.nll, after.nll):
        return "the output after the block differs from the baseline"
    try:
        assert_restored(model, before)
    except AssertionError as exc:
        return f"not restored: {exc}"
    return ""


def test_reroute_expert_zero_on_every_passing_architecture(passing: list[str]) -> None:
    assert len(passing) >= 55
    failures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_type in passing:
            try:
                why = reroute_expert_zero(model_type)
            except Exception as exc:  # every failure is a row of the report
                why = f"{type(exc).__name__}: {exc}"
            if why:
                failures[model_type] = why
    print(f"\nreroute expert 0: {len(passing) - len(failures)}/{len(passing)} architectures pass")
    for model_type, why in failures.items():
        print(f"{model_type:30s} {why}")
    assert not failures, sorted(failures)

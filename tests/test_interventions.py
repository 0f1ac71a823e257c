"""Intervention semantics (docs/methods.md §8) on tiny models, observed through the hooks capture backend.

Each semantics is checked exactly: rerouted experts are never selected and k is kept; forced
experts always are; a zeroed expert keeps its slot and the MoE block's output loses exactly its
weighted contribution (recomputed by hand from the expert's weights); a large bias selects; TopK
changes the count; Scale(1) is the identity and Scale(0) equals Zero; Prune keeps only the kept
set. The model is restored bit-for-bit afterwards, also after an exception, and the hooks and
nnsight backends give identical logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from test_interventions_sweep import assert_restored, snapshot
from torch import nn

from workbench.capture.backends.hooks import HooksBackend
from workbench.conformance.supported import sweep_batch as _batch
from workbench.interventions import (
    Ablate,
    Bias,
    Force,
    Intervention,
    InterventionSpecError,
    Prune,
    Reroute,
    Scale,
    TopK,
    TopP,
    UnsupportedIntervention,
    Zero,
    intervene,
    specs_from_json,
    specs_to_json,
)
from workbench.models.decode import experts_selection, router_logits
from workbench.models.discovery import MoELayer, find_moe_layers
from workbench.models.expert_math import fused_hidden, fused_output
from workbench.models.forward import model_forward
from workbench.models.tiny import tiny_model

pytestmark = pytest.mark.integration

FAMILIES = ["qwen2_moe", "mixtral", "deepseek_v3", "llama4", "gemma4_text", "phimoe"]


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.inference_mode():
        yield


def build(model_type: str) -> tuple[nn.Module, list[MoELayer]]:
    model = tiny_model(model_type)
    return model, find_moe_layers(model)


def routing(model: nn.Module, layers: list[MoELayer], top_k: int | None = None) -> dict[int, Any]:
    """Per layer: the captured Routing (indices/weights [N,k]) of the shared batch."""
    seen = [dataclasses.replace(x, top_k=top_k) for x in layers] if top_k else layers
    backend = HooksBackend(model, seen, want_logits=False)
    try:
        return backend.run(_batch()).routing
    finally:
        backend.close()


def logits(model: nn.Module) -> torch.Tensor:
    return model_forward(model, _batch())


def rare_expert(route: Any) -> int:
    """The expert selected least often (so forcing it changes something)."""
    counts = torch.bincount(route.indices.reshape(-1), minlength=8)
    return int(counts.argmin())


@pytest.mark.parametrize("model_type", FAMILIES)
def test_reroute_never_selects_and_keeps_k(model_type: str) -> None:
    model, layers = build(model_type)
    first = layers[0]
    base = routing(model, layers)[first.layer]
    busy = int(torch.bincount(base.indices.reshape(-1)).argmax())
    with intervene(model, Reroute({first.layer: [busy]})):
        under = routing(model, layers)[first.layer]
    assert not bool((under.indices == busy).any())
    assert under.indices.shape == base.indices.shape
    assert bool((under.weights > 0).all())  # the next expert really fills the slot


@pytest.mark.parametrize("model_type", FAMILIES)
def test_force_always_selects(model_type: str) -> None:
    model, layers = build(model_type)
    first = layers[0]
    rare = rare_expert(routing(model, layers)[first.layer])
    with intervene(model, Force({first.layer: [rare]})):
        under = routing(model, layers)[first.layer]
    assert bool((under.indices == rare).any(dim=-1).all())
    assert under.indices.shape[1] == first.top_k


@pytest.mark.parametrize("model_type", ["qwen2_moe", "mixtral", "gemma4_text"])
def test_large_bias_selects(model_type: str) -> None:
    model, layers = build(model_type)
    first = layers[0]
    rare = rare_expert(routing(model, layers)[first.layer])
    with intervene(model, Bias({first.layer: [rare]}, delta=50.0)):
        under = routing(model, layers)[first.layer]
    assert bool((under.indices == rare).any(dim=-1).all())


def _block_output(model: nn.Module, layer: MoELayer, specs: list[Intervention]) -> tuple[Any, Any]:
    """(MoE block input, output) of ``layer`` on the shared batch under ``specs``."""
    seen: dict[str, Any] = {}

    def hook(_m: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        seen["x"], seen["y"] = args[0], output[0] if isinstance(output, tuple) else output

    handle = layer.block.register_forward_hook(hook)
    try:
        with intervene(model, specs):
            logits(model)
    finally:
        handle.remove()
    return seen["x"], seen["y"]


def test_zero_removes_exactly_the_weighted_expert_output() -> None:
    model, layers = build("qwen2_moe")
    first = layers[0]
    base = routing(model, layers)[first.layer]
    e = int(base.indices[0, 0])
    with intervene(model, Zero({first.layer: [e]})):
        under = routing(model, layers)[first.layer]
    assert torch.equal(under.indices.sort(-1).values, base.indices.sort(-1).values)  # slots kept
    assert bool((under.weights[under.indices == e] == 0).all())
    x, y_base = _block_output(model, first, [])
    _, y_zero = _block_output(model, first, [Zero({first.layer: [e]})])
    flat = x.reshape(-1, x.shape[-1])
    w_e = (base.weights * (base.indices == e)).sum(-1, keepdim=True)
    contribution = w_e * fused_output(first.experts, e, fused_hidden(first.experts, e, flat))
    torch.testing.assert_close(y_base.reshape(flat.shape) - y_zero.reshape(flat.shape), contribution)


def test_zero_with_renorm_keeps_each_tokens_total() -> None:
    model, layers = build("qwen2_moe")
    first = layers[0]
    base = routing(model, layers)[first.layer]
    e = int(base.indices[0, 0])
    with intervene(model, Zero({first.layer: [e]}, renorm=True)):
        under = routing(model, layers)[first.layer]
    torch.testing.assert_close(under.weights.sum(-1), base.weights.sum(-1))
    assert bool((under.weights[under.indices == e] == 0).all())


@pytest.mark.parametrize("model_type", ["qwen2_moe", "llama4", "switch_transformers"])
def test_scale_one_is_identity_and_scale_zero_equals_zero(model_type: str) -> None:
    model, layers = build(model_type)
    everywhere = {x.layer: [0, 1] for x in layers}
    base = logits(model)
    with intervene(model, Scale(everywhere, s=1.0)):
        assert torch.equal(logits(model), base)
    with intervene(model, Scale(everywhere, s=0.0)):
        scaled = logits(model)
    with intervene(model, Zero(everywhere)):
        zeroed = logits(model)
    torch.testing.assert_close(scaled, zeroed, rtol=0, atol=1e-6)
    assert not torch.equal(scaled, base)


def test_scale_is_linear_in_the_expert_output() -> None:
    model, layers = build("qwen2_moe")
    first = layers[0]
    _, y_base = _block_output(model, first, [])
    _, y_zero = _block_output(model, first, [Zero({first.layer: [2]})])
    _, y_two = _block_output(model, first, [Scale({first.layer: [2]}, s=2.0)])
    torch.testing.assert_close(y_two - y_base, y_base - y_zero, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("model_type", "k"), [("qwen2_moe", 1), ("qwen2_moe", 4), ("deepseek_v3", 3)])
def test_topk_changes_the_selection_count(model_type: str, k: int) -> None:
    model, layers = build(model_type)
    with intervene(model, TopK(k)):
        under = routing(model, layers, top_k=k)
    for route in under.values():
        assert route.indices.shape[1] == k
        assert bool((route.weights > 0).all())
        assert bool((route.indices.sort(-1).values.diff(dim=-1) != 0).all())  # k distinct experts


def _applied(model: nn.Module, layer: MoELayer, spec: Intervention) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights) the experts module of ``layer`` received under ``spec`` (any width)."""
    seen: dict[str, Any] = {}

    def tap(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["sel"] = experts_selection(layer.family, args, kwargs)

    handle = layer.experts.register_forward_pre_hook(tap, with_kwargs=True)
    try:
        with intervene(model, spec):
            logits(model)
    finally:
        handle.remove()
    return seen["sel"]


def test_topp_routes_to_the_cumulative_share() -> None:
    model, layers = build("mixtral")
    first = layers[0]
    idx, w = _applied(model, first, TopP(1.0, layers=[first.layer]))
    assert idx.shape[1] == first.n_experts and bool((w > 0).all())  # p = 1: every expert
    idx, w = _applied(model, first, TopP(0.3, layers=[first.layer]))
    used = (w > 0).sum(-1)
    assert int(used.min()) >= 1 and int(used.max()) < first.n_experts
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0]))  # Mixtral renormalises the chosen
    scores = torch.softmax(_router_logits(model, first), dim=-1)
    top = scores.sort(dim=-1, descending=True).values
    share_before_last = top.cumsum(-1).gather(1, (used - 2).clamp(min=0)[:, None]).squeeze(1)
    assert bool((top.cumsum(-1).gather(1, (used - 1)[:, None]).squeeze(1) >= 0.3 - 1e-6).all())
    assert bool((share_before_last[used > 1] < 0.3).all())  # the fewest experts reaching p


def _router_logits(model: nn.Module, layer: MoELayer) -> torch.Tensor:
    seen: dict[str, Any] = {}
    handle = layer.router.register_forward_hook(lambda _m, _a, out: seen.update(out=out))
    try:
        logits(model)
    finally:
        handle.remove()
    return router_logits(layer.family, seen["out"], layer.n_experts).float()


def test_prune_selects_only_kept_experts() -> None:
    model, layers = build("deepseek_v3")
    keep = {x.layer: [1, 4, 6] for x in layers}
    with intervene(model, Prune(keep)):
        under = routing(model, layers)
    for route in under.values():
        assert set(route.indices.unique().tolist()) <= {1, 4, 6}


def test_span_restricts_the_intervention_to_positions() -> None:
    model, layers = build("qwen2_moe")
    first = layers[0]
    base = routing(model, layers)[first.layer]
    busy = int(torch.bincount(base.indices.reshape(-1)).argmax())
    batch = _batch()
    b, t = batch.input_ids.shape
    with intervene(model, Ablate({first.layer: [busy]}, mode="reroute", span=[0, 1])):
        under = routing(model, layers)[first.layer]
    pos = torch.arange(t).repeat(b)
    inside = pos < 2
    assert not bool((under.indices[inside] == busy).any())
    assert torch.equal(under.indices[~inside], base.indices[~inside])
    mask = torch.zeros((b, t), dtype=torch.bool)
    mask[0, 3] = True
    with intervene(model, Reroute({first.layer: [busy]}, span=mask)):
        masked = routing(model, layers)[first.layer]
    assert torch.equal(masked.indices[1:], base.indices[1:])


@pytest.mark.parametrize("backend", ["hooks", "nnsight"])
def test_model_is_restored_bit_for_bit_even_after_an_exception(backend: str) -> None:
    model, layers = build("deepseek_v3")
    logits(model)
    before = snapshot(model)
    base = logits(model)
    specs = [
        Bias({layers[0].layer: [1]}, delta=1.0),
        Reroute({layers[0].layer: [2]}),
        TopK(3),
        Scale({layers[-1].layer: [0]}, s=3.0),
    ]
    with pytest.raises(RuntimeError, match="boom"), intervene(model, specs, backend=backend) as run:
        changed = run(**{"input_ids": _batch().input_ids})
        assert changed is not None
        raise RuntimeError("boom")
    assert_restored(model, before)
    assert torch.equal(logits(model), base)


SEMANTICS: list[Any] = [
    lambda L: Zero({L: [0, 3]}),
    lambda L: Zero({L: [0, 3]}, renorm=True),
    lambda L: Reroute({L: [0, 3]}),
    lambda L: Force({L: [5]}),
    lambda L: Bias({L: [2]}, delta=2.5),
    lambda L: TopK(1),
    lambda L: TopP(0.6),
    lambda L: Scale({L: [1]}, s=1.7),
    lambda L: Prune({L: [0, 2, 4, 6]}),
]


@pytest.mark.parametrize("model_type", ["qwen2_moe", "deepseek_v3", "llama4", "switch_transformers"])
def test_hooks_and_nnsight_give_identical_logits(model_type: str) -> None:
    model, layers = build(model_type)
    batch = _batch()
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.mask}
    if getattr(model.config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = batch.input_ids
    checked = 0
    for make in SEMANTICS:
        spec = make(layers[-1].layer)
        outs = []
        for backend in ("hooks", "nnsight"):
            try:
                with intervene(model, spec, backend=backend) as run:
                    outs.append(run(**kwargs).logits)
            except UnsupportedIntervention:
                continue
        if outs:
            assert len(outs) == 2, spec
            assert torch.equal(outs[0], outs[1]), spec
            checked += 1
    assert checked >= 7


def test_unsupported_semantics_raise_naming_the_family() -> None:
    model, _ = build("switch_transformers")
    with pytest.raises(UnsupportedIntervention, match="switch-top1-capacity"), intervene(model, TopK(2)):
        logits(model)


def test_specs_round_trip_through_json() -> None:
    specs: list[Intervention] = [
        Ablate({12: [3, 7]}, mode="reroute"),
        Ablate({1: [0]}, renorm=True),
        Force({2: [1]}, span=[0, -1]),
        Bias({3: (4,)}, delta=-1.5),
        TopK(1, layers=[2, 3]),
        TopP(0.8),
        Scale({5: [1, 2]}, s=0.5, span=[[True, False], [False, True]]),
        Prune(keep={6: [0, 1]}),
    ]
    text = specs_to_json(specs)
    assert specs_from_json(text) == specs
    assert specs[0] == Reroute({12: [7, 3]})
    assert specs_from_json(specs[3].to_json()) == [specs[3]]


def test_unknown_layers_and_experts_are_clear_errors() -> None:
    model, layers = build("qwen2_moe")
    with (
        pytest.raises(InterventionSpecError, match=r"no MoE layer 7; its MoE layers are 0 \(8 experts"),
        intervene(model, Reroute({7: [0]})),
    ):
        pass
    with (
        pytest.raises(InterventionSpecError, match=r"experts 0\.\.7; no expert 9"),
        intervene(model, Zero({layers[0].layer: [9]})),
    ):
        pass
    with (
        pytest.raises(InterventionSpecError, match="only 1 experts remain"),
        intervene(model, Prune({layers[0].layer: [3]})),
    ):
        pass
    with pytest.raises(InterventionSpecError, match="mode must be"):
        Ablate({0: [1]}, mode="off")  # type: ignore[arg-type]

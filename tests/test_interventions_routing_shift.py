"""Routing shift (:mod:`workbench.interventions.routing_shift`): where an intervention sends the tokens.

Known answers on ``planted_model()`` (tests/planted.py), whose layer-0 expert 5 takes every "early"
token: rerouting it empties its share and moves its slots to other experts (k per token stays);
zeroing it keeps its slots but removes its weight; the model is left without hooks.
"""

from __future__ import annotations

from typing import Any

import pytest
from planted import PLANT_EXPERT, PLANT_LAYER, planted_model, prompts

from workbench.interventions import Reroute, Zero
from workbench.interventions.routing_shift import routing_shift

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def planted() -> Any:
    return planted_model()


def _hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_reroute_moves_the_planted_experts_slots_elsewhere(planted: Any) -> None:
    hooks = _hook_count(planted.model)
    early = [p for p in prompts(n=4, length=16) if p.label == "early"]
    shift = routing_shift(planted, early, Reroute({PLANT_LAYER: [PLANT_EXPERT]}))
    layer = next(x for x in planted.layers if x.layer == PLANT_LAYER)
    assert shift["layer"].unique().to_list() == [PLANT_LAYER]  # only the touched layer
    assert shift["expert"].to_list() == list(range(layer.n_experts))
    row = shift.filter(shift["expert"] == PLANT_EXPERT).row(0, named=True)
    assert row["share_base"] > 0.9 and row["share_int"] == 0.0 and row["weight_int"] == 0.0
    # slots move, k per token stays: both sides sum to top-k over the layer's experts
    assert shift["share_base"].sum() == pytest.approx(layer.top_k, abs=1e-5)
    assert shift["share_int"].sum() == pytest.approx(layer.top_k, abs=1e-5)
    assert (shift["share_delta"] - (shift["share_int"] - shift["share_base"])).abs().max() < 1e-12
    assert shift.filter(shift["expert"] != PLANT_EXPERT)["share_delta"].max() > 0.0
    assert _hook_count(planted.model) == hooks  # capture and intervention hooks are gone


def test_zero_keeps_the_slot_and_removes_the_weight(planted: Any) -> None:
    early = [p for p in prompts(n=4, length=16) if p.label == "early"]
    shift = routing_shift(planted, early, Zero({PLANT_LAYER: [PLANT_EXPERT]}))
    row = shift.filter(shift["expert"] == PLANT_EXPERT).row(0, named=True)
    assert row["share_int"] == pytest.approx(row["share_base"]) and row["share_base"] > 0.9
    assert row["weight_base"] > 0.0 and row["weight_int"] == 0.0


def test_a_spec_on_no_layer_of_the_model_is_refused(planted: Any) -> None:
    with pytest.raises(ValueError, match="no MoE layer"):
        routing_shift(planted, prompts(n=1, length=8), Reroute({99: [0]}))

"""Per-position effects of an intervention (the lab's per-token view), against an independent computation.

On ``planted_model()`` (tests/planted.py) only the first half of the alphabet routes to layer 0 expert
5, so rerouting that expert changes the layer-0 expert set at exactly the positions holding such a
letter, and nothing at a position before the first one (the model is causal). The table is checked
against each prompt run alone, without padding or batching: log-probabilities from ``model(...)``,
KL from ``torch.nn.functional.kl_div``, and the top-k sets from the router logits the model itself
returns (``output_router_logits``), with the rerouted expert masked at its own layer.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
import torch
from planted import EARLY, PLANT_EXPERT, PLANT_LAYER, planted_model

from workbench.interventions import Reroute, Scale, Zero, intervene
from workbench.interventions.effects import generation_diff
from workbench.interventions.position_effects import SUMMARY_SCHEMA, position_effects, position_summary
from workbench.probefile import Prompt

pytestmark = pytest.mark.integration

MIXED = "nopqrs" + "b" + "nopq" + "c"  # early letters at positions 7 and 12 (position 0 is <bos>)
PROMPTS = [
    Prompt(prompt_id=10, text=MIXED, label="mixed"),
    Prompt(prompt_id=11, text="abcnop", label="mixed"),
    Prompt(prompt_id=12, text="nopqrstuvw", label="late"),
    Prompt(prompt_id=13, text="zyx", label="late"),
]
SPEC = Reroute({PLANT_LAYER: [PLANT_EXPERT]})


@pytest.fixture(scope="module")
def planted() -> Any:
    return planted_model()


@pytest.fixture(scope="module")
def table(planted: Any) -> pl.DataFrame:
    return position_effects(planted, PROMPTS, SPEC, batch_size=3)  # two batches, padded rows in each


@torch.inference_mode()
def _alone(planted: Any, text: str) -> dict[str, Any]:
    """One prompt run by itself, both ways: log-probs [T, V] and each layer's router logits [T, E]."""
    ids = torch.tensor([planted.tokenizer(text)["input_ids"]])
    base = planted.model(input_ids=ids, output_router_logits=True)
    with intervene(planted, SPEC):
        alt = planted.model(input_ids=ids, output_router_logits=True)
    return {
        "ids": ids[0].tolist(),
        "base": base.logits[0].float().log_softmax(-1),
        "alt": alt.logits[0].float().log_softmax(-1),
        "router_base": [r.float() for r in base.router_logits],
        "router_alt": [r.float() for r in alt.router_logits],
    }


def _sets(logits: torch.Tensor, k: int) -> list[set[int]]:
    return [set(row) for row in logits.topk(k, dim=-1).indices.tolist()]


def test_rows_match_each_prompt_run_alone(planted: Any, table: pl.DataFrame) -> None:
    assert table.height == sum(len(planted.tokenizer(p.text)["input_ids"]) for p in PROMPTS)
    for prompt in PROMPTS:
        rows = table.filter(pl.col("prompt_id") == prompt.prompt_id).sort("position")
        ref = _alone(planted, prompt.text)
        assert rows["position"].to_list() == list(range(len(ref["ids"])))
        assert rows["token_id"].to_list() == ref["ids"] and set(rows["label"]) == {prompt.label}
        top1 = ref["base"].argmax(-1)
        assert rows["top1_base"].to_list() == top1.tolist()
        assert rows["top1_int"].to_list() == ref["alt"].argmax(-1).tolist()
        expect_lp = ref["base"].gather(-1, top1[:, None])[:, 0]
        expect_lp_int = ref["alt"].gather(-1, top1[:, None])[:, 0]
        assert rows["logp_base"].to_numpy() == pytest.approx(expect_lp.numpy(), abs=1e-4)
        assert rows["logp_int"].to_numpy() == pytest.approx(expect_lp_int.numpy(), abs=1e-4)
        kl = torch.nn.functional.kl_div(ref["alt"], ref["base"], log_target=True, reduction="none").sum(-1)
        assert rows["kl"].to_numpy() == pytest.approx(kl.clamp_min(0).numpy(), abs=1e-5)
        # routing: layer 0 by the semantics of reroute (the expert masked out), later layers as the model chose
        expected: list[list[int]] = [[] for _ in ref["ids"]]
        for i, layer in enumerate(planted.layers):
            k = layer.top_k
            base_sets = _sets(ref["router_base"][i], k)
            alt_logits = ref["router_alt"][i].clone()
            if layer.layer == PLANT_LAYER:
                alt_logits[:, PLANT_EXPERT] = -torch.inf
            for pos, (a, b) in enumerate(zip(base_sets, _sets(alt_logits, k), strict=True)):
                if a != b:
                    expected[pos].append(layer.layer)
        assert rows["changed_layers"].to_list() == expected


def test_the_planted_expert_changes_known_positions_only(table: pl.DataFrame) -> None:
    mixed = table.filter(pl.col("prompt_id") == 10).sort("position")
    early_positions = [i + 1 for i, ch in enumerate(MIXED) if ch in EARLY]  # +1: <bos> is position 0
    assert early_positions == [7, 12]
    at_layer0 = [r["position"] for r in mixed.iter_rows(named=True) if PLANT_LAYER in r["changed_layers"]]
    assert at_layer0 == early_positions
    before = mixed.filter(pl.col("position") < early_positions[0])
    assert before["kl"].to_list() == [0.0] * before.height  # nothing before the first planted token moves
    assert (before["logp_base"] == before["logp_int"]).all() and (
        before["top1_base"] == before["top1_int"]
    ).all()
    assert before["changed_layers"].list.len().sum() == 0
    assert mixed.filter(pl.col("position") == 7)["kl"][0] > 1e-4  # the planted token itself moves
    late = table.filter(pl.col("label") == "late")  # never routed to the planted expert: nothing changes
    assert late["kl"].max() == 0.0 and late["changed_layers"].list.len().sum() == 0
    assert (late["top1_base"] == late["top1_int"]).all()


def test_summary_counts_the_table(table: pl.DataFrame) -> None:
    summary = position_summary(table)
    assert summary["prompt_id"].to_list() == [10, 11, 12, 13]  # the prompts' order
    for row in summary.iter_rows(named=True):
        rows = table.filter(pl.col("prompt_id") == row["prompt_id"])
        assert row["n_positions"] == rows.height
        assert row["top1_changed"] == int((rows["top1_base"] != rows["top1_int"]).sum())
        assert row["routing_changed"] == sum(1 for x in rows["changed_layers"].to_list() if x)
        assert row["max_kl"] == rows["kl"].max()
    by_id = {r["prompt_id"]: r for r in summary.iter_rows(named=True)}
    assert by_id[10]["routing_changed"] >= 2 and by_id[12]["routing_changed"] == 0
    assert position_summary(table.head(0)).schema == pl.Schema(SUMMARY_SCHEMA)


def test_a_no_op_changes_nothing(planted: Any) -> None:
    same = position_effects(planted, PROMPTS[:2], Scale({PLANT_LAYER: [PLANT_EXPERT]}, s=1.0))
    summary = position_summary(same)
    assert summary["top1_changed"].sum() == 0 and summary["routing_changed"].sum() == 0
    assert same["kl"].max() == 0.0 and (same["logp_base"] == same["logp_int"]).all()


def test_zero_keeps_the_set_at_its_own_layer(planted: Any) -> None:
    """What the lab's text says: a zeroed expert keeps its slot, so no set changes at its layer (KL still moves)."""
    zeroed = position_effects(planted, PROMPTS[:2], Zero({PLANT_LAYER: [PLANT_EXPERT]}))
    assert not any(PLANT_LAYER in layers for layers in zeroed["changed_layers"].to_list())
    assert zeroed["kl"].max() > 1e-4


def test_batched_generations_equal_one_at_a_time(planted: Any) -> None:
    texts = [p.text for p in PROMPTS]
    one = generation_diff(planted, texts, SPEC, max_new_tokens=3)
    batched = generation_diff(planted, texts, SPEC, max_new_tokens=3, batch_size=3)
    assert batched.equals(one)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        generation_diff(planted, texts, SPEC, batch_size=0)

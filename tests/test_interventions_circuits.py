"""Circuits (docs/methods.md §9) on the planted tiny MoE: the planted expert is in one label's circuit only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import torch
from planted import PLANT_EXPERT, PLANT_LAYER, planted_model, prompts

from workbench.interventions import Zero, intervene
from workbench.interventions.circuits import compare_circuits, extract_circuit
from workbench.interventions.metrics import gold_logprob
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def planted() -> LoadedModel:
    return planted_model()


def _promoted_token(model: LoadedModel, items: list[Prompt]) -> str:
    """The token the planted expert pushes up most at the last position of ``items`` (the known answer)."""
    enc = model.tokenizer([p.text for p in items], return_tensors="pt", padding=True)
    with torch.no_grad():
        base = model.model(**enc).logits[:, -1].log_softmax(-1)
        with intervene(model, Zero({PLANT_LAYER: [PLANT_EXPERT]})):
            ablated = model.model(**enc).logits[:, -1].log_softmax(-1)
    token = int((base - ablated).mean(0).argmax())
    return str(model.tokenizer.decode([token]))


@pytest.fixture(scope="module")
def halves(planted: LoadedModel) -> tuple[list[Prompt], list[Prompt]]:
    """Both labels must answer with the token the planted expert promotes; only early text routes to it."""
    items = prompts(6, seed=4)
    early = [p for p in items if p.label == "early"]
    gold = _promoted_token(planted, early)
    items = [replace(p, meta={"gold": gold}) for p in items]
    return [p for p in items if p.label == "early"], [p for p in items if p.label == "late"]


def test_planted_expert_is_in_the_early_circuit_only(planted: LoadedModel, halves: tuple) -> None:
    early, late = halves
    comparison = compare_circuits(planted, early, late, gold_logprob(planted), n_boot=200)
    a, b = comparison.a, comparison.b
    assert (PLANT_LAYER, PLANT_EXPERT) in a.experts
    assert (PLANT_LAYER, PLANT_EXPERT) not in b.experts
    assert a.share >= 0.8 or a.full_drop == 0
    # no late token ever selects the planted expert: its single ablation leaves late prompts untouched
    plant = b.importance.filter(
        (b.importance["layer"] == PLANT_LAYER) & (b.importance["expert"] == PLANT_EXPERT)
    )
    assert plant["effect"][0] == 0.0
    assert 0.0 <= comparison.iou <= 1.0 and 0.0 <= comparison.overlap <= 1.0
    lo, hi = comparison.spearman_ci
    assert lo <= hi
    summary = comparison.summary()
    assert summary["labels"] == ["early", "late"] and len(summary["cross_ablation"]) == 4


def test_circuit_is_the_shortest_prefix_reaching_the_share(planted: LoadedModel, halves: tuple) -> None:
    early, _ = halves
    circuit = extract_circuit(planted, early, gold_logprob(planted), "early", share=0.8, n_boot=0)
    support = circuit.importance.filter(circuit.importance["effect"] < 0).sort("effect")
    order = list(zip(support["layer"].to_list(), support["expert"].to_list(), strict=True))
    assert circuit.experts == order[: len(circuit.experts)]  # greedy by importance
    assert circuit.drop <= 0.8 * circuit.full_drop + 1e-9


def test_prompts_without_gold_are_refused(planted: LoadedModel) -> None:
    with pytest.raises(ValueError, match=r"meta\.gold"):
        extract_circuit(planted, prompts(1), gold_logprob(planted), "early", n_boot=0)


@pytest.mark.timeout(300)
def test_circuits_cli_on_tiny_ref(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from workbench.cli import app

    out = tmp_path / "circuits.json"
    args = ["circuits", "--compare", "brackets", "arithmetic", "--prompts", "6", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["labels"] == ["brackets", "arithmetic"] and "iou" in data and len(data["cross_ablation"]) == 4
    bad = CliRunner().invoke(app, ["circuits", "--compare", "brackets", "poetry", "--prompts", "2"])
    assert bad.exit_code == 2 and "poetry" in bad.output


def test_split_prompts_is_disjoint_by_pair_and_deterministic() -> None:
    """Selection and evaluation share no prompt, pair or text; the split depends only on the seed."""
    from workbench.interventions.circuits import split_prompts

    items = [
        Prompt(prompt_id=i, text=f"t{i}", label="x", pair_id=f"p{i // 3}") for i in range(21)
    ]  # 7 triples
    items += [Prompt(prompt_id=100 + i, text="same text", label="x") for i in range(3)]  # one text, thrice
    items += [Prompt(prompt_id=200 + i, text=f"solo {i}", label="x") for i in range(5)]
    select, evaluate = split_prompts(items, seed=3)
    ids_s, ids_e = {p.prompt_id for p in select}, {p.prompt_id for p in evaluate}
    assert not ids_s & ids_e and ids_s | ids_e == {p.prompt_id for p in items}
    assert not {p.pair_id for p in select if p.pair_id} & {p.pair_id for p in evaluate if p.pair_id}
    assert not {p.text for p in select} & {p.text for p in evaluate}
    assert (
        abs(len({(p.pair_id or p.text) for p in select}) - len({(p.pair_id or p.text) for p in evaluate}))
        <= 1
    )
    assert split_prompts(items, seed=3) == (select, evaluate)
    assert any(split_prompts(items, seed=s)[0] != select for s in range(4, 10))


def test_circuit_is_chosen_on_selection_and_judged_on_evaluation_only(
    planted: LoadedModel, halves: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No evaluation prompt reaches the expert choice; every reported effect is recomputable from evaluation alone."""
    import numpy as np

    from workbench.interventions import circuits
    from workbench.interventions.metrics import metric_values

    early, late = halves
    seen: dict[str, list[int]] = {}
    real = circuits.extract_circuit

    def spy(loaded, prompts, metric, label, **kw):  # type: ignore[no-untyped-def]
        seen[label] = [p.prompt_id for p in prompts]
        return real(loaded, prompts, metric, label, **kw)

    monkeypatch.setattr(circuits, "extract_circuit", spy)
    metric = gold_logprob(planted)
    comparison = circuits.compare_circuits(planted, early, late, metric, n_boot=50, seed=1)
    assert seen == comparison.selection
    for label, items in (("early", early), ("late", late)):
        assert not set(comparison.selection[label]) & set(comparison.evaluation[label])
        assert set(comparison.selection[label]) | set(comparison.evaluation[label]) == {
            p.prompt_id for p in items
        }
    summary = comparison.summary()
    assert summary["prompts"] == {"selection": comparison.selection, "evaluation": comparison.evaluation}
    by_id = {p.prompt_id: p for p in early + late}
    ev_early = [by_id[i] for i in comparison.evaluation["early"]]
    sel_early = [by_id[i] for i in comparison.selection["early"]]

    def effect(prompts: list[Prompt]) -> float:
        base = metric_values(planted, prompts, metric)
        layers: dict[int, list[int]] = {}
        for layer, expert in comparison.a.experts:
            layers.setdefault(layer, []).append(expert)
        with intervene(planted, Zero(layers)):
            return float(np.mean(metric_values(planted, prompts, metric) - base))

    row = comparison.cross.filter(
        (pl.col("ablated") == "circuit(early)") & (pl.col("evaluated_on") == "early")
    ).row(0, named=True)
    assert row["n"] == len(ev_early)
    assert row["effect"] == pytest.approx(effect(ev_early), abs=1e-6)
    assert row["effect"] != pytest.approx(effect(sel_early), abs=1e-6)  # not the in-sample number
    held = comparison.held_out.filter(pl.col("label") == "early").row(0, named=True)
    assert held["drop"] == pytest.approx(effect(ev_early), abs=1e-6) and held["n"] == len(ev_early)


def test_circuit_rank_correlations_carry_interval_and_p(planted: LoadedModel, halves: tuple) -> None:
    early, late = halves
    comparison = compare_circuits(planted, early, late, gold_logprob(planted), n_boot=50)
    assert 1 / 1000 <= comparison.spearman_p <= 1.0
    for row in comparison.importance_agreement.iter_rows(named=True):
        if row["spearman"] == row["spearman"]:
            assert row["ci_low"] <= row["spearman"] <= row["ci_high"] and row["p_floor"] <= row["p"] <= 1

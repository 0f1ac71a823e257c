"""Causal resonance and attribution (docs/methods.md §5, §9) on the planted tiny MoE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from planted import PLANT_EXPERT, PLANT_LAYER, planted_model, prompts

import workbench as wb
from workbench.behaviour.registry import Behaviour
from workbench.interventions.causal import attribution, behaviour_margins, causal_resonance, rank_agreement
from workbench.models.loading import LoadedModel

pytestmark = pytest.mark.integration

#: "Does the model continue with 'a' rather than 'z'?" on raw text: a margin without a chat format.
A_OVER_Z = Behaviour(
    name="a-over-z", ask=lambda text: text, judge=lambda text: text.startswith("a"), yes="a", no="z"
)


@pytest.fixture(scope="module")
def planted() -> LoadedModel:
    return planted_model()


@pytest.fixture(scope="module")
def early() -> list:
    return [p for p in prompts(8, seed=2) if p.label == "early"]


def test_margins_match_a_manual_computation(planted: LoadedModel, early: list) -> None:
    margins = behaviour_margins(planted, early[:2], A_OVER_Z)
    tok = planted.tokenizer
    a, z = (tok(c, add_special_tokens=False)["input_ids"][0] for c in "az")
    for prompt, m in zip(early[:2], margins, strict=True):
        with torch.no_grad():
            last = planted.model(**tok([prompt.text], return_tensors="pt")).logits[0, -1].log_softmax(-1)
        assert m == pytest.approx(float(last[a] - last[z]), abs=1e-5)


def test_causal_map_ranks_the_planted_expert_first(planted: LoadedModel, early: list) -> None:
    causal = causal_resonance(planted, early, A_OVER_Z, n_boot=200, n_perm=200)
    assert causal.height == sum(layer.n_experts for layer in planted.layers)
    top = causal.sort(pl.col("effect").abs(), descending=True).row(0, named=True)
    assert (top["layer"], top["expert"]) == (PLANT_LAYER, PLANT_EXPERT)
    assert top["ci_low"] > 0 or top["ci_high"] < 0  # its CI excludes 0


def test_attribution_agrees_with_true_ablation(planted: LoadedModel, early: list) -> None:
    attr = attribution(planted, early, A_OVER_Z)
    causal = causal_resonance(planted, early, A_OVER_Z, mode="zero", n_boot=0, n_perm=0)
    both = causal.join(attr, on=["layer", "expert"])
    top = both.sort(pl.col("attribution").abs(), descending=True).row(0, named=True)
    assert (top["layer"], top["expert"]) == (PLANT_LAYER, PLANT_EXPERT)
    agree = rank_agreement(both, scores=("attribution",))
    assert agree["spearman"][0] > 0.5
    # first order: for the planted expert the estimate has the sign of the true zero-ablation effect
    assert np.sign(top["attribution"]) == np.sign(top["effect"])


def test_bad_inputs(planted: LoadedModel) -> None:
    with pytest.raises(ValueError, match="target prompts"):
        causal_resonance(planted, [], A_OVER_Z)
    same = Behaviour(name="same", ask=str, judge=bool, yes="a", no="a")
    with pytest.raises(ValueError, match="different first tokens"):
        behaviour_margins(planted, prompts(1), same)


@pytest.mark.timeout(300)
def test_resonate_cli_causal_on_tiny_ref(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.data.suites import suite_path
    from workbench.probefile import read_probe_file
    from workbench.store import Store

    pool = read_probe_file(suite_path("refusal"))[:24]  # 12 harmful/benign pairs
    db = tmp_path / "refusal.duckdb"
    run = wb.capture_routing("tiny-ref", pool, db, progress=False)
    out = tmp_path / "causal.csv"
    args = ["resonate", "--db", str(db), "--run", run, "--target", "harmful", "--control", "benign"]
    result = CliRunner().invoke(app, [*args, "--method", "causal", "--model", "tiny-ref", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rank agreement with the causal effect" in result.output
    table = pl.read_csv(out)
    assert {"rd", "ftri", "effect", "attribution", "ci_low", "ci_high", "q"} <= set(table.columns)
    assert table.height == 4 * 8 and table["effect"].null_count() == 0
    with Store(db, read_only=True) as st:
        stored = st.resonance(run_id=run)
    assert stored["effect"].null_count() == 0 and set(stored["method"]) == {"causal"}
    missing = CliRunner().invoke(app, [*args, "--method", "causal"])
    assert missing.exit_code == 2 and "--model" in missing.output


def test_greedy_joint_ablation_starts_with_the_planted_expert(planted: LoadedModel, early: list) -> None:
    from workbench.interventions.causal import greedy_ablation

    order = greedy_ablation(planted, early, A_OVER_Z, 3)
    assert order["rank"].to_list() == [1, 2, 3]
    first = order.row(0, named=True)
    base = float(behaviour_margins(planted, early, A_OVER_Z).mean())
    single = causal_resonance(planted, early, A_OVER_Z, n_boot=0, n_perm=0)
    best_single = single.sort("effect").row(0, named=True)
    # round 1 of the greedy search is the best single ablation, and it lowers the margin by exactly that effect
    assert (first["layer"], first["expert"]) == (best_single["layer"], best_single["expert"])
    assert first["margin"] == pytest.approx(base + best_single["effect"], abs=1e-4)
    assert order["margin"].to_list() == sorted(order["margin"].to_list(), reverse=True)


def test_unplanted_model_has_no_significant_expert() -> None:
    """Null: a random tiny MoE has no behaviour to find; no expert's ablation effect survives BH."""
    from workbench.models.loading import load_model
    from workbench.models.tiny import byte_tokenizer, tiny_model

    null = load_model(tiny_model("qwen2_moe", seed=3), byte_tokenizer())
    items = [p for p in prompts(8, seed=2) if p.label == "early"]
    causal = causal_resonance(null, items, A_OVER_Z, n_boot=200, n_perm=999)
    assert (causal["q"] > 0.05).all()
    assert causal["effect"].abs().max() < 0.01  # effects exist but are tiny and inconsistent across prompts

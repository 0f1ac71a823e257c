"""Every catalogued analysis and its figure at a realistic expert count (E = 256, top-8).

Real MoEs route over 128-256 experts (Qwen3-30B-A3B, DeepSeek-V3); the tiny test models have 8. At
E = 256 expert ids pass 127 (an int8 would wrap), co-activation is 256 × 256, and the layer × expert
grids are wide: a random-init model with small hidden sizes is enough to show each analysis still
runs, covers every expert, and draws a figure.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from workbench.capture.engine import capture
from workbench.catalog import ANALYSES, figure_for, run_analysis
from workbench.models.loading import load_model
from workbench.models.tiny import byte_tokenizer, model_class, randomise_routers, tiny_config
from workbench.probefile import Prompt, iter_probe_file
from workbench.store import Store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
N_EXPERTS, TOP_K, N_LAYERS = 256, 8, 4
#: needs these tests do not provide (a second run, the model, a target/control contrast)
SKIP_NEEDS = {"compare", "model", "contrast"}


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    config = tiny_config(
        "qwen2_moe",
        num_experts=N_EXPERTS,
        num_experts_per_tok=TOP_K,
        num_hidden_layers=N_LAYERS,
        hidden_size=32,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=16,
        intermediate_size=16,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = model_class(config)(config)
    randomise_routers(model, 0)
    rows = list(iter_probe_file(ROOT / "probes" / "domains.jsonl"))
    by_label = {
        label: list(group)
        for label, group in itertools.groupby(
            sorted(rows, key=lambda p: p.label or ""), key=lambda p: p.label
        )
    }
    picked = [p for group in by_label.values() for p in group[:12]]
    prompts = [Prompt(i, p.text, p.label) for i, p in enumerate(picked)]
    db = tmp_path_factory.mktemp("wide") / "wide.duckdb"
    run = capture(load_model(model.eval(), byte_tokenizer()), prompts, db, expert_stats=True, progress=False)
    return db, run


def _runnable() -> list[str]:
    return sorted(name for name, spec in ANALYSES.items() if not SKIP_NEEDS & set(spec.needs))


def test_the_capture_holds_ids_above_127(wide_run: tuple[Path, str]) -> None:
    db, run = wide_run
    with Store(db, read_only=True) as store:
        top = store.sql(
            "SELECT max(list_max(experts)) AS m, max(len(experts)) AS k FROM routing WHERE run_id = ?", [run]
        )
    assert 200 < int(top["m"][0]) < N_EXPERTS and int(top["k"][0]) == TOP_K


@pytest.mark.parametrize("name", _runnable())
def test_every_analysis_and_figure_at_256_experts(wide_run: tuple[Path, str], name: str) -> None:
    db, run = wide_run
    with Store(db, read_only=True) as store:
        table = run_analysis(name, store, run)
    assert table.height > 0, name
    for column in ("expert", "a", "b"):  # per-expert tables and pair tables reach the high ids
        if column in table.columns and table.height >= N_EXPERTS:
            assert int(table[column].max()) >= 200, f"{name}: no {column} above 200"  # type: ignore[arg-type]
    figure = figure_for(name, table)
    assert len(figure.data) > 0, name

"""Every catalogued analysis and its figure at a realistic expert count (E = 256, top-8).

Real MoEs route over 128-256 experts (Qwen3-30B-A3B, DeepSeek-V3); the tiny test models have 8. At
E = 256 expert ids pass 127 (an int8 would wrap), co-activation is 256 × 256, and the layer × expert
grids are wide: a random-init model with small hidden sizes (built in ``wide_support.py``) is enough
to show each analysis still runs, covers every expert, and draws a figure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from wide_support import N_EXPERTS, TOP_K, capture_wide_run, wide_model, wide_prompts

from workbench.catalog import ANALYSES, figure_for, run_analysis
from workbench.store import Store

pytestmark = pytest.mark.integration

#: needs these tests do not provide (a second run, the model, a target/control contrast)
SKIP_NEEDS = {"compare", "model", "contrast"}


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The E = 256 run of :mod:`wide_support` in a store of its own: (store path, run id)."""
    db = tmp_path_factory.mktemp("wide") / "wide.duckdb"
    return db, capture_wide_run(db)


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


DEEP_LAYERS = 58
"""DeepSeek-V3's MoE depth: 58 MoE layers × 256 experts."""


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same E = 256 model with 58 layers, on every third prompt of the wide run (24, 4 of each label)."""
    db = tmp_path_factory.mktemp("deep") / "deep.duckdb"
    prompts = [p for p in wide_prompts() if p.prompt_id % 3 == 0]
    return db, capture_wide_run(db, model=wide_model(DEEP_LAYERS), prompts=prompts)


def test_every_analysis_and_figure_at_58_layers_of_256_experts(deep_run: tuple[Path, str]) -> None:
    """Each analysis reaches the last of 58 layers (where its table has a layer column) and draws a figure."""
    db, run = deep_run
    names = _runnable()
    with Store(db, read_only=True) as store:
        assert store.layers(run)["layer"].to_list() == list(range(DEEP_LAYERS))
        for name in names:
            table = run_analysis(name, store, run)
            assert table.height > 0, name
            for column in ("layer", "layer_to"):
                if column in table.columns:
                    assert int(table[column].max()) == DEEP_LAYERS - 1, f"{name}: {column} stops before 57"  # type: ignore[arg-type]
            assert len(figure_for(name, table).data) > 0, name

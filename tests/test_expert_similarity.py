"""Known-answer tests for expert similarity (docs/methods.md §7): weight cosine and output angular similarity.

Planted tiny models: two experts with identical weights (weight cosine 1, output angular 1, first
merge candidates), an expert whose down projection is its twin's negated (outputs point the
opposite way: angular 0), and a shared expert copied from a routed one (qwen2_moe: pseudo-expert
``n_experts + 0``). Fused experts (qwen3_moe) and module experts (switch_transformers'
ModuleDict) both go through the same code. An independent numpy computation checks the per-token
average on a few tokens, and the model's own experts forward checks the recomputed outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from synthetic import save_run, skeleton
from typer.testing import CliRunner

from workbench.catalog import ANALYSES, run_analysis
from workbench.cli import app
from workbench.interventions import expert_similarity as es
from workbench.interventions.expert_similarity import (
    MERGE_MIN_ANGULAR,
    OUTPUT_SIMILARITY_COLUMNS,
    SIMILARITY_COLUMNS,
    expert_output_similarity,
    expert_outputs,
    expert_similarity,
)
from workbench.models.discovery import MoELayer, find_moe_layers
from workbench.models.expert_math import ExpertStatsUnsupported
from workbench.models.loading import LoadedModel, load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.store import Store

pytestmark = pytest.mark.integration

TWIN_A, TWIN_B = 2, 5  # identical weights
NEG_A, NEG_B = 3, 6  # same gate_up, negated down projection
TEXTS = [
    "def f(x):\n    return x + 1",
    "The cat sat on the mat.",
    "12 + 30 = 42",
    "Le chat est sur le tapis.",
    "import os; os.listdir('.')",
    "It rained all day in the valley.",
]


def _plant_fused(model: torch.nn.Module) -> torch.nn.Module:
    """Plant the twins and the negated pair in every MoE layer of a fused-experts model."""
    with torch.no_grad():
        for layer in find_moe_layers(model):
            ex = layer.experts
            ex.gate_up_proj[TWIN_B] = ex.gate_up_proj[TWIN_A]  # type: ignore[index]
            ex.down_proj[TWIN_B] = ex.down_proj[TWIN_A]  # type: ignore[index]
            ex.gate_up_proj[NEG_B] = ex.gate_up_proj[NEG_A]  # type: ignore[index]
            ex.down_proj[NEG_B] = -ex.down_proj[NEG_A]  # type: ignore[index]
    return model


@pytest.fixture(scope="module")
def fused() -> LoadedModel:
    return load_model(_plant_fused(tiny_model("qwen3_moe")), byte_tokenizer(), name="planted-qwen3_moe")


def _pair(df: pl.DataFrame, layer: int, a: int, b: int) -> dict[str, object]:
    return df.filter((pl.col("layer") == layer) & (pl.col("expert_a") == a) & (pl.col("expert_b") == b)).row(
        0, named=True
    )


def test_planted_twins_and_opposites_fused(fused: LoadedModel) -> None:
    df = expert_output_similarity(fused, TEXTS, n_boot=200)
    assert df.columns == list(OUTPUT_SIMILARITY_COLUMNS)
    assert set(df["layer"].to_list()) == {0, 1}
    assert df.height == 2 * 28  # C(8, 2) pairs per layer, no shared experts
    n_tokens = sum(len(byte_tokenizer()(t)["input_ids"]) for t in TEXTS)
    for layer in (0, 1):
        twins = _pair(df, layer, TWIN_A, TWIN_B)
        assert twins["output_angular"] == pytest.approx(1.0, abs=1e-6)
        assert twins["output_cos"] == pytest.approx(1.0, abs=1e-9)
        assert twins["ci_low"] == pytest.approx(1.0, abs=1e-6)
        opposite = _pair(df, layer, NEG_A, NEG_B)
        assert opposite["output_angular"] == pytest.approx(0.0, abs=1e-6)
        assert opposite["output_cos"] == pytest.approx(-1.0, abs=1e-9)
        assert twins["n_tokens"] == n_tokens and twins["n_prompts"] == len(TEXTS)
    # Random experts: neither identical nor opposite, CI brackets the estimate.
    rest = df.filter(~pl.col("expert_a").is_in([TWIN_A, NEG_A]) | ~pl.col("expert_b").is_in([TWIN_B, NEG_B]))
    assert rest["output_angular"].max() < 0.95 and rest["output_angular"].min() > 0.05  # type: ignore[operator]
    assert (rest["ci_low"] <= rest["output_angular"]).all() and (
        rest["output_angular"] <= rest["ci_high"]
    ).all()


def _block_inputs(loaded: LoadedModel, texts: list[str]) -> dict[int, torch.Tensor]:
    """Each MoE block's input hidden states on ``texts`` (one prompt at a time, no padding)."""
    seen: dict[int, list[torch.Tensor]] = {layer.layer: [] for layer in loaded.layers}

    def tap(index: int) -> object:
        def hook(
            _m: torch.nn.Module, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]
        ) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[index].append(hidden.reshape(-1, hidden.shape[-1]))

        return hook

    handles = [
        layer.block.register_forward_pre_hook(tap(layer.layer), with_kwargs=True)  # type: ignore[arg-type]
        for layer in loaded.layers
    ]
    try:
        with torch.no_grad():
            for text in texts:
                ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
                loaded.model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(v) for i, v in seen.items()}


def test_independent_numpy_computation(fused: LoadedModel) -> None:
    texts = TEXTS[:2]
    df = expert_output_similarity(fused, texts, layers=[1], n_boot=0)
    x = _block_inputs(fused, texts)[1].double().numpy()
    ex = next(layer for layer in fused.layers if layer.layer == 1).experts
    gate_up = ex.gate_up_proj.detach().double().numpy()  # type: ignore[union-attr]
    down = ex.down_proj.detach().double().numpy()  # type: ignore[union-attr]
    n_inter = down.shape[-1]
    outs = []
    for e in range(gate_up.shape[0]):
        g, u = x @ gate_up[e, :n_inter].T, x @ gate_up[e, n_inter:].T
        outs.append(((g / (1.0 + np.exp(-g))) * u) @ down[e].T)
    y = np.stack(outs, axis=1)  # [tokens, E, H]
    unit = y / np.linalg.norm(y, axis=-1, keepdims=True)
    for a, b in [(0, 1), (TWIN_A, TWIN_B), (NEG_A, NEG_B), (4, 7)]:
        cos = np.clip((unit[:, a] * unit[:, b]).sum(-1), -1, 1)
        row = _pair(df, 1, a, b)
        assert row["output_angular"] == pytest.approx(float(np.mean(1 - np.arccos(cos) / math.pi)), abs=1e-5)
        assert row["output_cos"] == pytest.approx(float(cos.mean()), abs=1e-5)
        assert row["n_tokens"] == x.shape[0]
        assert math.isnan(row["ci_low"])  # type: ignore[arg-type]


def test_recomputed_outputs_match_the_models_own_experts(fused: LoadedModel) -> None:
    layer = fused.layers[0]
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = expert_outputs(layer, x)
        for e in range(layer.n_experts):
            theirs = layer.experts(x, torch.full((5, 1), e), torch.ones(5, 1))
            torch.testing.assert_close(ours[:, e], theirs, rtol=1e-5, atol=1e-6)


def test_streaming_chunks_and_token_cap_do_not_change_the_answer(
    fused: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = expert_output_similarity(fused, TEXTS, n_boot=50, batch_size=8)
    monkeypatch.setattr(es, "_CHUNK_ELEMENTS", 1)  # one token per chunk
    pieces = expert_output_similarity(fused, TEXTS, n_boot=50, batch_size=2)
    for col in ("output_cos", "output_angular", "ci_low", "ci_high"):
        np.testing.assert_allclose(
            whole[col].to_numpy(), pieces[col].to_numpy(), rtol=0, atol=1e-6
        )  # float32 forward: batch shape
    capped = expert_output_similarity(fused, TEXTS, n_boot=0, max_tokens=20)
    assert set(capped["n_tokens"].to_list()) == {20}


def test_shared_expert_is_a_pseudo_expert_qwen2_moe() -> None:
    model = tiny_model("qwen2_moe")
    layers = find_moe_layers(model)
    with torch.no_grad():
        for layer in layers:  # copy routed expert 1 into the shared expert
            shared, ex = layer.shared[0], layer.experts
            n_inter = ex.down_proj.shape[-1]  # type: ignore[union-attr,index]
            shared.gate_proj.weight.copy_(ex.gate_up_proj[1, :n_inter])  # type: ignore[union-attr,index]
            shared.up_proj.weight.copy_(ex.gate_up_proj[1, n_inter:])  # type: ignore[union-attr,index]
            shared.down_proj.weight.copy_(ex.down_proj[1])  # type: ignore[union-attr,index]
    loaded = load_model(model, byte_tokenizer())
    df = expert_output_similarity(loaded, TEXTS[:3], n_boot=0)
    assert df.height == 2 * 36  # C(8 routed + 1 shared, 2)
    shared_rows = df.filter(pl.col("shared"))
    assert set(shared_rows["expert_b"].to_list()) == {8} and shared_rows.height == 2 * 8
    for layer in (0, 1):
        assert _pair(df, layer, 1, 8)["output_angular"] == pytest.approx(1.0, abs=1e-6)
        assert _pair(df, layer, 0, 8)["output_angular"] < 0.95  # type: ignore[operator]
    routed_only = expert_output_similarity(loaded, TEXTS[:3], n_boot=0, include_shared=False)
    assert routed_only.height == 2 * 28 and not routed_only["shared"].any()


def test_module_experts_switch_transformers() -> None:
    model = tiny_model("switch_transformers")
    layers = find_moe_layers(model)
    modules = list(layers[0].experts.values())  # type: ignore[operator]
    modules[TWIN_B].load_state_dict(modules[TWIN_A].state_dict())
    loaded = load_model(model, byte_tokenizer())
    df = expert_output_similarity(loaded, TEXTS[:3], layers=[layers[0].layer], n_boot=0)
    assert set(df["layer"].to_list()) == {layers[0].layer}
    assert _pair(df, layers[0].layer, TWIN_A, TWIN_B)["output_angular"] == pytest.approx(1.0, abs=1e-6)
    weights = es.expert_weight_similarity(layers[0].experts)
    twin = weights.filter((pl.col("a") == TWIN_A) & (pl.col("b") == TWIN_B))["cosine"][0]
    assert twin == pytest.approx(1.0)


def test_unknown_expert_layout_raises_clearly() -> None:
    class Opaque(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    layer = MoELayer(
        layer=0, path="m.0.mlp", block=torch.nn.Identity(), router=torch.nn.Identity(), experts=Opaque(),
        shared=[], shared_gate=None, family=None, n_experts=4, top_k=1, stack="",  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(ExpertStatsUnsupported, match="expert output similarity is not available for Opaque"):
        expert_outputs(layer, torch.zeros(2, 4))


@pytest.fixture(scope="module")
def run_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("similarity") / "runs.duckdb"
    labels = ["code", "prose", "math"] * 2
    lengths = np.full(len(labels), 4)
    sk = skeleton(labels, lengths, (0, 1))
    rng = np.random.default_rng(0)
    experts = np.argsort(rng.random((sk.n_rows, 8)), axis=1)[:, :2].astype(np.int16)
    weights = np.tile(np.array([0.6, 0.4], np.float32), (sk.n_rows, 1))
    run = save_run(path, sk, experts=experts, weights=weights, n_experts=8, top_k=2, run_id="r8")
    other = save_run(path, sk, experts=experts % 4, weights=weights, n_experts=4, top_k=2, run_id="r4")
    return path, run, other


def test_registered_analysis_ranks_the_twins_first(run_db: tuple[Path, str, str], fused: LoadedModel) -> None:
    path, run, other = run_db
    spec = ANALYSES["expert-similarity"]
    assert "model" in spec.needs and spec.section == "§7"
    with Store(path, read_only=True) as st:
        with pytest.raises(ValueError, match="needs the model: give --model M"):
            run_analysis("expert-similarity", st, run)
        df = run_analysis("expert-similarity", st, run, model=fused, n_boot=100)
        direct = expert_similarity(st, run, model=fused, n_boot=100)
        with pytest.raises(ValueError, match="does not match run"):
            run_analysis("expert-similarity", st, other, model=fused)
        # other analyses ignore a model they do not need
        assert run_analysis("load", st, run, model=fused).height > 0
    assert df.columns == list(SIMILARITY_COLUMNS)
    assert df.equals(direct)
    for layer in (0, 1):
        first = df.filter((pl.col("layer") == layer) & (pl.col("merge_rank") == 1)).row(0, named=True)
        assert (first["expert_a"], first["expert_b"]) == (TWIN_A, TWIN_B)
        assert first["weight_cos"] == pytest.approx(1.0) and first["output_angular"] == pytest.approx(
            1.0, abs=1e-6
        )
        ranks = df.filter(pl.col("layer") == layer)["merge_rank"].sort().to_list()
        assert ranks == list(range(1, 29))
        last = df.filter(pl.col("layer") == layer).sort("merge_rank").row(-1, named=True)
        assert (last["expert_a"], last["expert_b"]) == (NEG_A, NEG_B)
        neg = _pair(df, layer, NEG_A, NEG_B)
        assert neg["weight_cos"] < 1  # type: ignore[operator]
        # a merge candidate must clear the threshold with its CI; the rank alone proposes nothing
        assert first["merge_candidate"] and first["ci_low"] >= MERGE_MIN_ANGULAR
        assert not neg["merge_candidate"]
        part = df.filter(pl.col("layer") == layer)
        assert part.filter(pl.col("merge_candidate"))["ci_low"].min() >= MERGE_MIN_ANGULAR  # type: ignore[operator]
        assert not part.filter(pl.col("ci_low") < MERGE_MIN_ANGULAR)["merge_candidate"].any()
    assert df["n_prompts"].max() == 6


def test_registered_analysis_with_shared_experts(run_db: tuple[Path, str, str]) -> None:
    path, run, _ = run_db
    loaded = load_model("tiny:qwen2_moe")
    with Store(path, read_only=True) as st:
        df = run_analysis("expert-similarity", st, run, model=loaded, n_boot=0, max_prompts=2)
    shared = df.filter(pl.col("shared"))
    assert shared.height == 2 * 8
    assert shared["weight_cos"].is_nan().all() and shared["merge_rank"].is_null().all()
    assert df.filter(~pl.col("shared"))["merge_rank"].null_count() == 0
    assert not df["merge_candidate"].any()  # n_boot=0: no CI, so no pair is proposed (not enough data)
    assert df["n_prompts"].max() == 2


def test_cli_model_option(run_db: tuple[Path, str, str], tmp_path: Path) -> None:
    path, run, _ = run_db
    runner = CliRunner()
    missing = runner.invoke(app, ["analyse", "expert-similarity", "--db", str(path), "--run", run])
    assert missing.exit_code != 0 and "needs the model" in missing.output
    out = tmp_path / "sim.csv"
    ok = runner.invoke(
        app,
        ["analyse", "expert-similarity", "--db", str(path), "--run", run, "--model", "tiny:qwen3_moe",
         "--device", "cpu", "--out", str(out)],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    table = pl.read_csv(out)
    assert table.columns == list(SIMILARITY_COLUMNS) and table.height == 2 * 28

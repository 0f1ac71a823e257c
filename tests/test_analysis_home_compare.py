"""Known-answer tests for expert health (docs/methods.md §3, HoME) and run comparison (§7).

Plants: an expert whose hidden units are mostly zero (collapse), a shared expert used by one
label only (degradation), a data-sparse label whose specialists get little gate mass
(underfitting) with its null run, identical experts (weight similarity). Output similarity
has its own file, tests/test_expert_similarity.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
from synthetic import lists, plant_first, prompt_tables, save_run, skeleton, uniform_topk

from workbench.analysis.compare import routing_drift
from workbench.analysis.home import UNDERFITTING_COLUMNS, expert_collapse, expert_degradation, underfitting
from workbench.interventions.expert_weights import (
    MERGE_MIN_COSINE,
    expert_weight_similarity,
    merge_candidates,
)
from workbench.store import Store

pytestmark = pytest.mark.unit

E, K = 8, 2
LABELS = ("A", "B", "C")
COLLAPSED = 3


def _write_run(
    path: Path,
    run_id: str,
    *,
    seed: int,
    stats: bool = True,
    pid_offset: int = 0,
    n_per_label: int = 8,
    text: str = "prompt",
) -> str:
    """Uniform random top-2 routing on one layer; expert 3 mostly zero; shared expert E only active on A."""
    rng = np.random.default_rng(seed)
    labels = [lab for lab in LABELS for _ in range(n_per_label)]
    lengths = np.full(len(labels), 10)
    prompts, tokens, pid, pos = prompt_tables(labels, lengths, pid_offset=pid_offset)
    prompts = prompts.set_column(1, "text", pa.array([f"{text} {i}" for i in range(len(labels))]))
    lay = np.zeros(pid.size, np.int32)
    experts = np.argsort(rng.random((pid.size, E)), axis=1)[:, :K].astype(np.int16)
    weights = np.tile(np.array([0.7, 0.3], np.float32), (pid.size, 1))
    routing = pa.table({
        "prompt_id": pid, "position": pos, "layer": lay,
        "experts": lists(experts), "weights": lists(weights),
        "logits": pa.nulls(pid.size, pa.list_(pa.float32())),
    })  # fmt: skip
    expert_stats = None
    if stats:
        # Routed rows for each selection, plus the shared pseudo-expert E on every token.
        ids = np.concatenate([experts, np.full((pid.size, 1), E, np.int16)], axis=1)
        s_pid, s_pos = np.repeat(pid, K + 1), np.repeat(pos, K + 1)
        flat = ids.ravel()
        zero = np.where(flat == COLLAPSED, 0.9, rng.uniform(0.0, 0.2, flat.size))
        is_a = np.asarray(labels)[s_pid - pid_offset] == "A"
        norm = np.where(flat == E, np.where(is_a, 1.0, 0.0), rng.uniform(0.5, 1.5, flat.size))
        expert_stats = pa.table({
            "prompt_id": s_pid, "position": s_pos, "layer": np.zeros(flat.size, np.int32),
            "expert": flat, "out_norm": norm.astype(np.float32), "zero_frac": zero.astype(np.float32),
        })  # fmt: skip
    with Store(path) as st:
        run = st.create_run(
            model="synthetic", architecture="Synthetic", probe="domains", n_experts=E, top_k=K, config={},
            layers=[{"layer": 0, "module_path": "m.0", "n_experts": E, "top_k": K, "n_shared": 1}],
            run_id=run_id,
        )  # fmt: skip
        st.write_batch(run, prompts=prompts, tokens=tokens, routing=routing, expert_stats=expert_stats)
        st.set_status(run, "complete")
    return run


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("home") / "runs.duckdb"
    _write_run(path, "a", seed=1)
    _write_run(path, "a-copy", seed=1)
    _write_run(path, "b", seed=2)
    _write_run(path, "disjoint", seed=3, pid_offset=1000)
    _write_run(path, "nostats", seed=4, stats=False)
    _write_run(path, "other-suite", seed=5, n_per_label=5, text="other")
    return path


def test_mostly_zero_expert_is_top_collapse(store_path: Path) -> None:
    with Store(store_path, read_only=True) as st:
        df = expert_collapse(st, "a")
    assert df.height == E + 1
    top = df.sort("mean_zero_frac", descending=True).row(0, named=True)
    assert top["expert"] == COLLAPSED and top["mean_zero_frac"] == pytest.approx(0.9)
    assert df.filter(pl.col("shared"))["expert"].to_list() == [E]
    row = df.row(0, named=True)
    assert row["out_norm_max_min"] >= 1 and 0 < row["out_norm_cv"] < 0.5
    assert 0.1 <= row["routing_collapse"] < 0.3  # one expert of 8, uniform ≈ 1/8


def test_collapse_needs_expert_stats(store_path: Path) -> None:
    with Store(store_path, read_only=True) as st, pytest.raises(ValueError, match="--expert-stats"):
        expert_collapse(st, "nostats")


def test_shared_expert_used_by_one_label_is_degraded(store_path: Path) -> None:
    with Store(store_path, read_only=True) as st:
        df = expert_degradation(st, "a")
    shared = df.filter(pl.col("shared")).row(0, named=True)
    assert (shared["expert"], shared["dominant_label"], shared["degraded"]) == (E, "A", True)
    assert shared["concentration"] == pytest.approx(1.0)
    routed = df.filter(~pl.col("shared"))
    assert routed.height == E and not routed["degraded"].any()
    assert routed["load"].sum() == pytest.approx(1.0)


def test_underfitting_columns(store_path: Path) -> None:
    with Store(store_path, read_only=True) as st:
        df = underfitting(st, "a", n_perm=99, n_boot=200)
    assert df.columns == list(UNDERFITTING_COLUMNS)
    assert df["label"].to_list() == list(LABELS)
    # Shared norm only on A tokens.
    assert df.filter(pl.col("label") == "B")["shared_norm_share"][0] == 0
    assert df.filter(pl.col("label") == "A")["shared_norm_share"][0] > 0
    mass = df["specialist_gate_mass"].to_numpy()
    assert np.all((mass > 0) & (mass < 1))
    assert np.all((df["ci_low"].to_numpy() <= mass) & (mass <= df["ci_high"].to_numpy()))
    median = np.median(mass)
    expected = (mass < median) & (df["ci_high"].to_numpy() < median)
    assert df["underfit"].to_list() == list(expected)
    with Store(store_path, read_only=True) as st:  # no CI: not enough evidence, nothing is flagged
        bare = underfitting(st, "a", n_perm=99, n_boot=0)
    assert bare["ci_high"].is_nan().all() and not bare["underfit"].any()
    assert (mass < median).any()  # the bare below-the-median rule would have flagged some


UF_E, UF_K, UF_LAYERS = 8, 2, (0, 1)


def _underfit_run(path: Path, run_id: str, *, seed: int, planted: bool) -> str:
    """Labels A, B, C (12 prompts each) and data-sparse D (3 prompts), 20 tokens each.

    Planted: label j of A/B/C puts its specialist expert j in slot 0 (gate 0.7) on 85% of its
    tokens; D's tokens are routed uniformly (its "specialists" get only chance gate mass).
    Null (``planted=False``): every token is routed uniformly.
    """
    rng = np.random.default_rng(seed)
    labels = [lab for lab in "ABC" for _ in range(12)] + ["D"] * 3
    sk = skeleton(labels, np.full(len(labels), 20), UF_LAYERS)
    experts = uniform_topk(rng, sk.n_rows, UF_E, UF_K)
    if planted:
        label_of_row = np.asarray(labels)[sk.pid]
        for j, lab in enumerate("ABC"):
            experts = plant_first(rng, experts, np.flatnonzero(label_of_row == lab), j, 0.85)
    weights = np.tile(np.array([0.7, 0.3], np.float32), (sk.n_rows, 1))
    return save_run(path, sk, experts=experts, weights=weights, n_experts=UF_E, top_k=UF_K, run_id=run_id)


def test_underfitting_flags_the_data_sparse_label(tmp_path: Path) -> None:
    path = tmp_path / "underfit.duckdb"
    run = _underfit_run(path, "planted", seed=0, planted=True)
    with Store(path, read_only=True) as st:
        df = underfitting(st, run, n_perm=199, n_boot=500)
    by_label = {r["label"]: r for r in df.iter_rows(named=True)}
    assert [lab for lab, r in by_label.items() if r["underfit"]] == ["D"]
    median = float(np.median(df["specialist_gate_mass"].to_numpy()))
    assert by_label["D"]["specialist_gate_mass"] < 0.5 * median
    assert by_label["D"]["ci_high"] < median
    for lab in "ABC":
        assert by_label[lab]["specialist_gate_mass"] > 0.5
    assert by_label["D"]["n_tokens"] == 3 * 20 * len(UF_LAYERS)


def test_underfitting_is_quiet_on_null_routing(tmp_path: Path) -> None:
    path = tmp_path / "null.duckdb"
    flagged = 0
    for seed in range(5):
        run = _underfit_run(path, f"null-{seed}", seed=100 + seed, planted=False)
        with Store(path, read_only=True) as st:
            df = underfitting(st, run, n_perm=199, n_boot=500)
        flagged += int(df["underfit"].sum())
    # 5 runs × 4 labels: the bare median rule would flag 10; chance level here is ≲ 1.
    assert flagged <= 1


def test_routing_drift(store_path: Path) -> None:
    with Store(store_path, read_only=True) as st:
        same = routing_drift(st, "a", "a-copy", n_boot=200)
        other = routing_drift(st, "a", "b", n_boot=200)
        # same texts and token ids under other prompt ids: matched by content, not by id
        moved = routing_drift(st, "a", "disjoint", n_boot=200)
        with pytest.raises(ValueError, match="share no prompts"):
            routing_drift(st, "a", "other-suite")
    assert same["overlap"][0] == pytest.approx(1.0)
    assert moved["n_shared"][0] == 24 and moved["n_prompts"][0] == 24
    row = other.row(0, named=True)
    assert row["chance"] == pytest.approx(K / E)
    assert abs(row["overlap"] - K / E) < 0.08
    assert row["ci_low"] <= row["overlap"] <= row["ci_high"]
    assert row["n_tokens"] == 10 * 8 * len(LABELS)


class _Fused(torch.nn.Module):
    def __init__(self, n: int = 6, hidden: int = 8, inter: int = 4) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        gate_up = torch.randn(n, 2 * inter, hidden, generator=gen)
        down = torch.randn(n, hidden, inter, generator=gen)
        gate_up[4] = gate_up[1]
        down[4] = down[1]
        self.gate_up_proj = torch.nn.Parameter(gate_up)
        self.down_proj = torch.nn.Parameter(down)


def test_weight_similarity_fused_and_list() -> None:
    sim = expert_weight_similarity(_Fused())
    assert sim.height == 36
    pair = sim.filter((pl.col("a") == 1) & (pl.col("b") == 4))["cosine"][0]
    assert pair == pytest.approx(1.0)
    top = merge_candidates(sim, top=3)
    # only the twins clear the threshold: the next most similar (random, near-orthogonal) pairs are not proposed
    assert top.height == 1 and top.row(0)[:2] == (1, 4)
    rest = sim.filter((pl.col("a") < pl.col("b")) & ~((pl.col("a") == 1) & (pl.col("b") == 4)))
    assert rest["cosine"].abs().max() < MERGE_MIN_COSINE  # type: ignore[operator]
    assert merge_candidates(sim, top=3, min_cosine=-1.0).height == 3  # the bare ranking, when asked for
    torch.manual_seed(0)
    experts = torch.nn.ModuleList([torch.nn.Linear(4, 3) for _ in range(4)])
    experts[2].load_state_dict(experts[0].state_dict())
    listed = merge_candidates(expert_weight_similarity(experts), top=1)
    assert listed.row(0)[:2] == (0, 2) and listed["cosine"][0] == pytest.approx(1.0)

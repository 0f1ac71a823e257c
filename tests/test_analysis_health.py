"""Known-answer tests for load and router health (docs/methods.md §1)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from synthetic import lists, prompt_tables

from workbench.analysis.health import expert_load, load_balance, router_confidence, super_experts
from workbench.store import Store

pytestmark = pytest.mark.unit


def _index(lengths: list[int], layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt_id, position, layer) of the routing rows, in store order."""
    pid_tok = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    pos_tok = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    return (
        np.repeat(pid_tok, len(layers)),
        np.repeat(pos_tok, len(layers)),
        np.tile(np.asarray(layers, np.int32), pid_tok.size),
    )


def _write_run(
    path: Path,
    run_id: str,
    *,
    lengths: list[int],
    layers: tuple[int, ...],
    n_experts: int,
    top_k: int,
    experts: np.ndarray,
    logits: np.ndarray | None = None,
    score_fns: dict[int, str] | None = None,
    n_shared: int = 0,
    expert_stats: pa.Table | None = None,
) -> str:
    """A synthetic run with the given routing rows (ordered as :func:`_index`)."""
    prompts, tokens, _, _ = prompt_tables(["x"] * len(lengths), lengths)
    pid, pos, lay = _index(lengths, layers)
    n_rows = pid.size
    weights = np.full((n_rows, top_k), 1.0 / top_k, np.float32)
    routing = pa.table({
        "prompt_id": pid, "position": pos, "layer": lay,
        "experts": lists(experts.astype(np.int16)), "weights": lists(weights),
        "logits": pa.nulls(n_rows, pa.list_(pa.float32())) if logits is None
        else lists(logits.astype(np.float32)),
    })  # fmt: skip
    fns = score_fns or {}
    layer_rows = [
        {"layer": x, "module_path": f"m.{x}", "n_experts": n_experts, "top_k": top_k,
         "n_shared": n_shared, "score_fn": fns.get(x, "softmax")}
        for x in layers
    ]  # fmt: skip
    with Store(path) as st:
        run = st.create_run(
            model="synthetic", architecture="Synthetic", probe="health", n_experts=n_experts, top_k=top_k,
            config={}, layers=layer_rows, run_id=run_id,
        )  # fmt: skip
        st.write_batch(run, prompts=prompts, tokens=tokens, routing=routing, expert_stats=expert_stats)
        st.set_status(run, "complete")
    return run


def test_planted_dead_expert_is_flagged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    E, K = 8, 2
    lengths = list(rng.integers(10, 21, size=30))
    layers = (0, 1)
    _, _, lay = _index(lengths, layers)
    experts = np.argsort(rng.random((lay.size, E)), axis=1)[:, :K]
    # Layer 1 never picks expert 7: draw its top-2 from experts 0..6.
    alive = np.argsort(rng.random((lay.size, E - 1)), axis=1)[:, :K]
    experts[lay == 1] = alive[lay == 1]
    path = tmp_path / "dead.duckdb"
    run = _write_run(path, "dead", lengths=lengths, layers=layers, n_experts=E, top_k=K, experts=experts)
    with Store(path, read_only=True) as st:
        load = expert_load(st, run, n_boot=200)
        balance = load_balance(st, run)
    assert load.columns == ["layer", "expert", "n_selected", "f", "utilisation", "ci_low", "ci_high", "dead"]
    assert load.height == 2 * E
    dead = load.filter(pl.col("dead"))
    assert dead.select("layer", "expert").rows() == [(1, 7)]
    for layer in layers:
        assert load.filter(pl.col("layer") == layer)["f"].sum() == pytest.approx(1.0)
    ok = load.filter(~pl.col("dead"))
    assert ((ok["ci_low"] <= ok["f"]) & (ok["f"] <= ok["ci_high"])).all()
    assert ((ok["utilisation"] > 0.7) & (ok["utilisation"] < 1.4)).all()
    assert balance["n_dead"].to_list() == [0, 1]


def test_balance_matches_hand_computation(tmp_path: Path) -> None:
    # One layer, E=4, k=1, two prompts; expert counts [5, 3, 2, 0] over 10 tokens.
    experts = np.array([0, 0, 0, 1, 2, 0, 0, 1, 1, 2])[:, None]
    path = tmp_path / "tiny.duckdb"
    run = _write_run(path, "tiny", lengths=[5, 5], layers=(3,), n_experts=4, top_k=1, experts=experts)
    with Store(path, read_only=True) as st:
        load = expert_load(st, run, n_boot=50)
        bal = load_balance(st, run)
    assert load["f"].to_list() == pytest.approx([0.5, 0.3, 0.2, 0.0])
    assert load["utilisation"].to_list() == pytest.approx([2.0, 1.2, 0.8, 0.0])
    assert load["dead"].to_list() == [False, False, False, True]
    row = bal.row(0, named=True)
    assert (row["layer"], row["n_experts"], row["top_k"], row["n_tokens"]) == (3, 4, 1, 10)
    assert row["cv"] == pytest.approx(math.sqrt(0.0325) / 0.25)
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert row["entropy_norm"] == pytest.approx(entropy / math.log(4))
    assert row["balancedness"] == pytest.approx(0.5)
    assert row["n_dead"] == 1
    assert row["top10_share"] == pytest.approx(0.5)  # ceil(0.4) = 1 expert takes half


def _confidence_reference(z: np.ndarray, k: int, score_fn: str) -> tuple[float, float]:
    if score_fn == "softmax":
        pi = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    elif score_fn == "sigmoid":
        pi = 1.0 / (1.0 + np.exp(-z))
    else:
        pi = z
    p = pi / pi.sum(axis=1, keepdims=True)
    entropy = float(np.mean([-sum(v * math.log(v) for v in row if v > 0) for row in p]))
    ranked = np.sort(pi, axis=1)[:, ::-1]
    return entropy, float(np.mean(ranked[:, k - 1] - ranked[:, k]))


def test_router_confidence_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    E, K = 6, 2
    lengths = [20] * 15
    layers = (0, 1, 2)
    fns = {0: "softmax", 1: "sigmoid", 2: "probs"}
    _, _, lay = _index(lengths, layers)
    logits = rng.normal(0.0, 2.0, size=(lay.size, E))
    # Layer 2 holds probabilities: half the rows tie the 2nd and 3rd score (flip w.p. 1/2
    # under the perturbation), half have a wide gap (never flip).
    tied = rng.random(lay.size) < 0.5
    probs = np.where(tied[:, None], [0.4, 0.3, 0.3, 0.0, 0.0, 0.0], [0.6, 0.3, 0.1, 0.0, 0.0, 0.0])
    logits[lay == 2] = probs[lay == 2]
    logits = logits.astype(np.float32)
    experts = np.argsort(-logits, axis=1, kind="stable")[:, :K]
    path = tmp_path / "conf.duckdb"
    run = _write_run(
        path, "conf", lengths=lengths, layers=layers, n_experts=E, top_k=K,
        experts=experts, logits=logits, score_fns=fns,
    )  # fmt: skip
    with Store(path, read_only=True) as st:
        df = router_confidence(st, run, batch_rows=257)
        again = router_confidence(st, run, batch_rows=257)
        exact = router_confidence(st, run, noise=0.0)
    assert df.columns == ["layer", "n_tokens", "entropy", "entropy_norm", "margin", "fragility"]
    assert df.equals(again)
    assert exact["fragility"].to_list() == [0.0, 0.0, 0.0]
    for layer, fn in fns.items():
        row = df.filter(pl.col("layer") == layer).row(0, named=True)
        z = logits[lay == layer].astype(np.float64)
        entropy, margin = _confidence_reference(z, K, fn)
        assert row["n_tokens"] == z.shape[0]
        assert row["entropy"] == pytest.approx(entropy, rel=1e-6)
        assert row["entropy_norm"] == pytest.approx(entropy / math.log(E), rel=1e-6)
        assert row["margin"] == pytest.approx(margin, rel=1e-6, abs=1e-9)
    frag = df.filter(pl.col("layer") == 2)["fragility"][0]
    expected = 0.5 * tied[lay == 2].mean()
    assert abs(frag - expected) < 0.1


def test_missing_logits_is_a_clear_error(tmp_path: Path) -> None:
    experts = np.array([[0], [1], [2], [3]])
    path = tmp_path / "nologits.duckdb"
    run = _write_run(path, "nolog", lengths=[4], layers=(0,), n_experts=4, top_k=1, experts=experts)
    with Store(path, read_only=True) as st:
        with pytest.raises(ValueError, match=r"--logits fp16 or --logits fp32"):
            router_confidence(st, run)
        with pytest.raises(ValueError, match=r"--expert-stats"):
            super_experts(st, run)


def test_planted_super_expert_is_flagged_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    E, K = 8, 2
    lengths = [12] * 10
    layers = (0, 1)
    pid, pos, lay = _index(lengths, layers)
    experts = np.argsort(rng.random((lay.size, E)), axis=1)[:, :K]
    # expert_stats for every (token, layer, expert), including one shared pseudo-expert (id E).
    n_ids = E + 1
    ids = np.tile(np.arange(n_ids, dtype=np.int16), pid.size)
    norms = rng.uniform(0.5, 1.5, size=ids.size)
    s_lay = np.repeat(lay, n_ids)
    norms[(s_lay == 1) & (ids == 3)] *= 50.0
    stats = pa.table({
        "prompt_id": np.repeat(pid, n_ids), "position": np.repeat(pos, n_ids), "layer": s_lay,
        "expert": ids, "out_norm": norms.astype(np.float32),
        "zero_frac": np.zeros(ids.size, np.float32),
    })  # fmt: skip
    path = tmp_path / "super.duckdb"
    run = _write_run(
        path, "super", lengths=lengths, layers=layers, n_experts=E, top_k=K,
        experts=experts, n_shared=1, expert_stats=stats,
    )  # fmt: skip
    with Store(path, read_only=True) as st:
        df = super_experts(st, run)
    assert df.columns == ["layer", "expert", "shared", "max_out_norm", "n_tokens", "super"]
    assert df.height == 2 * n_ids
    assert df.filter(pl.col("super")).select("layer", "expert").rows() == [(1, 3)]
    assert df.filter(pl.col("shared"))["expert"].to_list() == [E, E]
    assert df.filter(pl.col("super"))["max_out_norm"][0] > 50

"""Known-answer tests for co-activation, pathways, fixed partners (docs/methods.md §4) and dynamic k (§6)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import permutations
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from synthetic import lists, prompt_tables

from workbench.analysis.coactivation import coactivation, fixed_partners, pathways
from workbench.analysis.dynamic import dynamic_k
from workbench.analysis.rank import fisher_interval, fisher_p
from workbench.store import Store

pytestmark = pytest.mark.unit

E, K = 8, 3
LAYERS = (0, 1, 3)  # non-contiguous: "next MoE layer" of 1 is 3
PAIR = (2, 5)
#: layer l+1's experts are SIGMA applied to layer l's, so top-1 transitions are deterministic.
SIGMA = np.array([3, 0, 6, 1, 7, 4, 2, 5], np.int16)


def _write(
    path: Path,
    run_id: str,
    experts: np.ndarray,
    layers: tuple[int, ...],
    *,
    logits: np.ndarray | None = None,
    nll: np.ndarray | None = None,
    score_fns: tuple[str, ...] | None = None,
    n_prompts: int = 10,
) -> str:
    """Write ``experts`` ((tokens, layers, K)) as a run of ``n_prompts`` equal-length prompts."""
    n_tok, n_lay, k = experts.shape
    per = n_tok // n_prompts
    labels = ["hard" if i % 2 else "easy" for i in range(n_prompts)]
    prompts, tokens, pid_tok, pos_tok = prompt_tables(labels, np.full(n_prompts, per), nll=nll)
    n_rows = n_tok * n_lay
    weights = np.tile(np.linspace(0.5, 0.1, k, dtype=np.float32), (n_rows, 1))
    routing = pa.table({
        "prompt_id": np.repeat(pid_tok, n_lay), "position": np.repeat(pos_tok, n_lay),
        "layer": np.tile(np.asarray(layers, np.int32), n_tok),
        "experts": lists(experts.reshape(n_rows, k).astype(np.int16)), "weights": lists(weights),
        "logits": pa.nulls(n_rows, pa.list_(pa.float32())) if logits is None
        else lists(logits.reshape(n_rows, -1).astype(np.float32)),
    })  # fmt: skip
    fns = score_fns or ("softmax",) * n_lay
    layer_rows = [
        {"layer": lay, "module_path": f"m.{lay}", "n_experts": E, "top_k": k, "score_fn": fn}
        for lay, fn in zip(layers, fns, strict=True)
    ]
    with Store(path) as st:
        run = st.create_run(
            model="synthetic", architecture="Synthetic", probe="domains", n_experts=E, top_k=k,
            config={}, layers=layer_rows, run_id=run_id,
        )  # fmt: skip
        st.write_batch(run, prompts=prompts, tokens=tokens, routing=routing)
        st.set_status(run, "complete")
    return run


def _planted_experts(rng: np.random.Generator, n_tok: int) -> np.ndarray:
    """(n_tok, len(LAYERS), K): experts 2 and 5 co-activate always (30% of tokens), in any ranks."""
    others = np.array([e for e in range(E) if e not in PAIR])
    layer0 = np.empty((n_tok, K), np.int16)
    for i in range(n_tok):
        if rng.random() < 0.3:
            row = [*PAIR, int(rng.choice(others))]
        else:
            row = [int(x) for x in rng.choice(others, K, replace=False)]
        layer0[i] = rng.permutation(row)
    out = [layer0]
    for _ in LAYERS[1:]:
        out.append(SIGMA[out[-1]])
    return np.stack(out, axis=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str, np.ndarray]]:
    path = tmp_path_factory.mktemp("coact") / "planted.duckdb"
    experts = _planted_experts(np.random.default_rng(0), 400)
    run = _write(path, "run-coact", experts, LAYERS)
    store = Store(path, read_only=True)
    yield store, run, experts
    store.close()


def _pair_counts(sets: np.ndarray, adjacent_only: bool) -> Counter[tuple[int, int]]:
    counts: Counter[tuple[int, int]] = Counter()
    for row in sets.tolist():
        if adjacent_only:
            pairs = [(row[r], row[r + 1]) for r in range(len(row) - 1)]
            pairs += [(b, a) for a, b in pairs]
        else:
            pairs = list(permutations(row, 2))
        counts.update(pairs)
    return counts


def test_planted_pair_has_p1_and_highest_lift(planted: tuple[Store, str, np.ndarray]) -> None:
    store, run, _ = planted
    df = coactivation(store, run, layers=[0])
    row = df.filter((pl.col("a") == PAIR[0]) & (pl.col("b") == PAIR[1])).row(0, named=True)
    assert row["p_b_given_a"] == pytest.approx(1.0)
    back = df.filter((pl.col("a") == PAIR[1]) & (pl.col("b") == PAIR[0])).row(0, named=True)
    assert back["p_b_given_a"] == pytest.approx(1.0)
    top = df.sort("lift", descending=True).head(2)
    assert {(a, b) for a, b in top.select("a", "b").iter_rows()} == {PAIR, PAIR[::-1]}
    assert row["lift"] == pytest.approx(row["n_tokens"] / row["n_b"])


def test_counts_match_all_pairs_not_adjacent(planted: tuple[Store, str, np.ndarray]) -> None:
    store, run, experts = planted
    df = coactivation(store, run)
    assert set(df["layer"].unique().to_list()) == set(LAYERS)
    for li, layer in enumerate(LAYERS):
        sets = experts[:, li, :]
        expected = _pair_counts(sets, adjacent_only=False)
        got = {
            (a, b): n for a, b, n in df.filter(pl.col("layer") == layer).select("a", "b", "n_ab").iter_rows()
        }
        assert got == dict(expected)
        assert got != dict(_pair_counts(sets, adjacent_only=True))
        singles = Counter(sets.ravel().tolist())
        for a, n_a in df.filter(pl.col("layer") == layer).select("a", "n_a").unique().iter_rows():
            assert n_a == singles[a]
    assert (df["n_tokens"] == experts.shape[0]).all()


def test_pathways_deterministic_mapping(planted: tuple[Store, str, np.ndarray]) -> None:
    store, run, experts = planted
    df = pathways(store, run, top=None)
    assert sorted(set(df.select("layer_from", "layer_to").iter_rows())) == [(0, 1), (1, 3)]
    assert np.allclose(df["p"].to_numpy(), 1.0)
    for ef, et in df.select("expert_from", "expert_to").iter_rows():
        assert SIGMA[ef] == et
    first = df.filter(pl.col("layer_from") == 0)
    assert first["n"].sum() == experts.shape[0]
    assert pathways(store, run, top=2).group_by("layer_from").len()["len"].max() == 2


def test_fixed_partners_planted_pair(planted: tuple[Store, str, np.ndarray]) -> None:
    store, run, _ = planted
    df = fixed_partners(store, run, coverage=0.5)
    for expert in PAIR:
        row = df.filter((pl.col("layer") == 0) & (pl.col("expert") == expert)).row(0, named=True)
        assert row["n_partners"] == 1
    other = df.filter((pl.col("layer") == 0) & (pl.col("expert") == 0)).row(0, named=True)
    assert other["n_partners"] > 1
    layer0 = df.filter(pl.col("layer") == 0)
    assert layer0["layer_mean"][0] == pytest.approx(layer0["n_partners"].mean())


def _dynamic_run(path: Path) -> tuple[str, np.ndarray]:
    """Logits whose spread shrinks as NLL grows: hard tokens have flat router scores."""
    rng = np.random.default_rng(1)
    n_tok = 300
    nll = rng.uniform(0.0, 5.0, n_tok)
    scale = 6.0 / (1.0 + nll)
    logits = rng.normal(size=(n_tok, 2, E)) * scale[:, None, None]
    experts = np.argsort(-logits, axis=2)[:, :, :K]
    run = _write(path, "run-dyn", experts, (0, 1), logits=logits, nll=nll, score_fns=("softmax", "sigmoid"))
    return run, logits


def _k_reference(logit_row: np.ndarray, fn: str, p: float) -> int:
    z = logit_row.astype(np.float32).astype(np.float64)  # stored as fp32
    s = np.exp(z - z.max()) if fn == "softmax" else 1.0 / (1.0 + np.exp(-z))
    pi = sorted((s / s.sum()).tolist(), reverse=True)
    total = 0.0
    for i, v in enumerate(pi, start=1):
        total += v
        if total >= p - 1e-9:
            return i
    return len(pi)


def test_dynamic_k_matches_reference_and_correlates_with_nll(tmp_path: Path) -> None:
    path = tmp_path / "dyn.duckdb"
    run, logits = _dynamic_run(path)
    with Store(path, read_only=True) as st:
        df = dynamic_k(st, run, (0.5, 0.9))
    assert df.columns == [
        "layer", "label", "p", "mean_k", "k_counts", "n_tokens", "spearman_nll", "n_nll",
        "spearman_ci_low", "spearman_ci_high", "spearman_p", "n_prompts_nll",
    ]  # fmt: skip
    assert df.height == 2 * 2 * 2
    is_hard = (np.repeat(np.arange(10), 30) % 2).astype(bool)
    for li, fn in enumerate(("softmax", "sigmoid")):
        for p in (0.5, 0.9):
            ref = np.array([_k_reference(logits[i, li], fn, p) for i in range(logits.shape[0])])
            for label, mask in (("hard", is_hard), ("easy", ~is_hard)):
                row = df.filter(
                    (pl.col("layer") == li) & (pl.col("label") == label) & (pl.col("p") == p)
                ).row(0, named=True)
                assert row["mean_k"] == pytest.approx(ref[mask].mean())
                assert row["k_counts"] == np.bincount(ref[mask] - 1, minlength=E).tolist()
                assert row["n_tokens"] == row["n_nll"] == int(mask.sum())
                assert row["spearman_nll"] > 0.3
                # CI and p treat the 5 prompts of the label as the units, not its 150 tokens (issue 12 item 7)
                rho = row["spearman_nll"]
                assert row["n_prompts_nll"] == 5
                assert (row["spearman_ci_low"], row["spearman_ci_high"]) == pytest.approx(
                    fisher_interval(rho, 5)
                )
                assert row["spearman_ci_low"] < rho < row["spearman_ci_high"]
                assert row["spearman_p"] == pytest.approx(fisher_p(rho, 5))
                assert row["spearman_p"] > fisher_p(rho, row["n_nll"])  # tokens would overstate the evidence
    wide = df.pivot(on="p", index=["layer", "label"], values="mean_k")
    assert (wide["0.9"] >= wide["0.5"]).all()


def test_dynamic_k_needs_logits(planted: tuple[Store, str, np.ndarray]) -> None:
    store, run, _ = planted
    with pytest.raises(ValueError, match="--logits fp16"):
        dynamic_k(store, run)

"""Routing drift's shard scan (analysis/drift_scan.py) gives the previous in-step scan's answer.

Planted runs: two captures of the same prompts whose shards come in other orders (B written in
batches in reverse prompt order), captured in the same batches (key chunks byte-identical, so
only A's keys are decoded), with top-3 sets (float rounding only), with lists of any length,
duplicate ids, empty lists and ids past 64 (several mask words), with a row missing from one run
(the scan gives up and SQL answers), with shard statistics that do not cover the rows (it gives
up), and through a segment view (never read from the shards).
Then the shared bootstrap draws: the same CIs as one draw per layer within Monte-Carlo error, and
still covering the planted overlap.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from workbench.analysis import compare, drift_scan
from workbench.analysis.compare import routing_drift
from workbench.analysis.drift_scan import shard_overlap
from workbench.analysis.stats import cluster_bootstrap
from workbench.store import Store, queries
from workbench.store.shard_reader import ShardPiece, run_pieces, same_encoding

pytestmark = pytest.mark.unit

LAYERS = (0, 3, 5)


def _lists(rows: list[list[int]]) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array([i for r in rows for i in r], pa.int16()))


def _write(
    st: Store, run_id: str, experts: list[list[int]], n_tok: list[int], batches: list[list[int]], e: int
) -> None:
    """Write a run of ``len(n_tok)`` prompts in ``batches`` (lists of prompt ids, in writing order)."""
    k = max(1, min(e, max(len(r) for r in experts)))
    st.create_run(
        model="synthetic", architecture="Synthetic", probe="p", n_experts=e, top_k=k, config={}, run_id=run_id,
        layers=[{"layer": x, "module_path": f"m.{x}", "n_experts": e, "top_k": k, "n_shared": 0} for x in LAYERS],
    )  # fmt: skip
    first_row = np.concatenate([[0], np.cumsum(n_tok)]) * len(LAYERS)
    for batch in batches:
        pid_tok = np.concatenate([np.full(n_tok[p], p, np.int32) for p in batch])
        pos_tok = np.concatenate([np.arange(n_tok[p], dtype=np.int32) for p in batch])
        rows = [r for p in batch for r in range(first_row[p], first_row[p + 1])]
        st.write_batch(
            run_id,
            prompts=pa.table({
                "prompt_id": pa.array(batch, pa.int32()), "text": [f"prompt {p}" for p in batch],
                "n_tokens": pa.array([n_tok[p] for p in batch], pa.int32()),
            }),
            tokens=pa.table({"prompt_id": pid_tok, "position": pos_tok, "token_id": pid_tok * 100 + pos_tok,
                             "token": [f"t{p}.{q}" for p, q in zip(pid_tok, pos_tok, strict=True)]}),
            routing=pa.table({
                "prompt_id": np.repeat(pid_tok, len(LAYERS)), "position": np.repeat(pos_tok, len(LAYERS)),
                "layer": np.tile(np.asarray(LAYERS, np.int32), pid_tok.size),
                "experts": _lists([experts[r] for r in rows]),
                "weights": _lists([[1] * len(experts[r]) for r in rows]).cast(pa.list_(pa.float32())),
            }),
        )  # fmt: skip
    st.set_status(run_id, "complete")


def _top_k(rng: np.random.Generator, n_rows: int, e: int, k: int) -> list[list[int]]:
    return np.argsort(rng.random((n_rows, e)), axis=1)[:, :k].tolist()


def _previous(st: Store, run_a: str, run_b: str, layers: list[int] | None = None) -> pl.DataFrame:
    """The in-step scan before the shard scan: DuckDB's sorted prompt ranges."""
    found = compare._aligned_overlap(st, run_a, run_b, layers, ordered=True)
    assert found is not None
    return found


N_TOK = [5 + (3 * p) % 7 for p in range(12)]
N_ROWS = sum(N_TOK) * len(LAYERS)


def test_other_shard_order_gives_the_previous_answer(st: Store) -> None:
    rng = np.random.default_rng(0)
    everything = [list(range(12))]
    _write(st, "a", _top_k(rng, N_ROWS, 8, 2), N_TOK, everything, 8)
    _write(st, "b", _top_k(rng, N_ROWS, 8, 2), N_TOK, [[9, 10, 11], [4, 5, 6, 7, 8], [0, 1, 2, 3]], 8)
    _write(st, "a2", _top_k(rng, N_ROWS, 8, 2), N_TOK, everything, 8)
    pieces_a, pieces_b = run_pieces(st, "a"), run_pieces(st, "b")
    assert pieces_a is not None and pieces_b is not None
    assert [p.prompt_min for p in pieces_b] == [0, 4, 9]  # written last-first, read in prompt order
    assert not same_encoding(pieces_a[0], pieces_b[0], ["prompt_id", "position", "layer"])
    pieces_a2 = run_pieces(st, "a2")
    assert pieces_a2 is not None and same_encoding(
        pieces_a[0], pieces_a2[0], ["prompt_id", "position", "layer"]
    )
    assert not same_encoding(pieces_a[0], pieces_a2[0], ["experts"])  # other sets, other bytes
    for other in ("b", "a2"):  # keys compared row by row, then keys found identical by their bytes
        fast = shard_overlap(st, "a", other, None, 8)
        assert fast is not None
        assert_frame_equal(fast, _previous(st, "a", other))  # top-2: halves, so bit for bit
        assert_frame_equal(shard_overlap(st, "a", other, [3, 5], 8), _previous(st, "a", other, [3, 5]))
    itself = shard_overlap(st, "a", "a", None, 8)
    assert itself is not None and itself["overlap"].to_list() == [float(n) for n in N_TOK] * len(LAYERS)
    none = shard_overlap(st, "a", "b", [7], 8)
    assert none is not None and none.height == 0
    with pytest.raises(ValueError, match="share 12 prompts but no routed tokens in the selected layers"):
        routing_drift(st, "a", "b", [7])


def test_top_three_differs_by_float_rounding_only(st: Store) -> None:
    rng = np.random.default_rng(1)
    _write(st, "a", _top_k(rng, N_ROWS, 8, 3), N_TOK, [list(range(12))], 8)
    _write(st, "b", _top_k(rng, N_ROWS, 8, 3), N_TOK, [list(range(6)), list(range(6, 12))], 8)
    fast, old = shard_overlap(st, "a", "b", None, 8), _previous(st, "a", "b")
    assert fast is not None
    assert_frame_equal(fast, old, check_exact=False, rel_tol=1e-12, abs_tol=0.0)
    # thirds: the sum of the common counts divided once is the correctly rounded value
    exact = old.with_columns((pl.col("overlap") * 3).round(0).alias("common"))["common"].to_numpy()
    assert fast["overlap"].to_list() == (exact / 3).tolist()


def test_ragged_lists_duplicates_and_wide_ids(st: Store) -> None:
    rng = np.random.default_rng(2)
    e = 150  # ids up to 149: three 64-bit words

    def ragged() -> list[list[int]]:
        out = []
        for _ in range(N_ROWS):
            size = int(rng.integers(0, 5))
            ids = rng.integers(0, e, size).tolist()
            if size and rng.random() < 0.2:
                ids.append(ids[0])  # a duplicate id: counted in the length, once in the intersection
            out.append(ids)
        return out

    _write(st, "a", ragged(), N_TOK, [list(range(12))], e)
    _write(st, "b", ragged(), N_TOK, [list(range(7)), list(range(7, 12))], e)
    fast = shard_overlap(st, "a", "b", None, e)
    assert fast is not None
    assert_frame_equal(fast, _previous(st, "a", "b"), check_exact=False, rel_tol=1e-12, abs_tol=0.0)
    assert fast["overlap"].sum() > 0  # some sets do overlap: the comparison is not vacuous


def test_a_missing_row_gives_up_and_sql_answers(st: Store) -> None:
    rng = np.random.default_rng(3)
    experts = _top_k(rng, N_ROWS, 8, 2)
    _write(st, "a", experts, N_TOK, [list(range(12))], 8)
    _write(st, "b", _top_k(rng, N_ROWS, 8, 2), N_TOK, [list(range(12))], 8)
    rows = st.routing("b", logits=False).filter(~((pl.col("prompt_id") == 4) & (pl.col("position") == 2)))
    st.create_run(
        model="synthetic", architecture="Synthetic", probe="p", n_experts=8, top_k=2, config={}, run_id="gap",
        layers=[{"layer": x, "module_path": f"m.{x}", "n_experts": 8, "top_k": 2, "n_shared": 0} for x in LAYERS],
    )  # fmt: skip
    st.write_batch(
        "gap",
        prompts=st.prompts("b").select("prompt_id", "text", "n_tokens").to_arrow(),
        tokens=st.tokens("b").select("prompt_id", "position", "token_id", "token").to_arrow(),
        routing=rows.select("prompt_id", "position", "layer", "experts", "weights").to_arrow(),
    )
    st.set_status("gap", "complete")
    assert st.match_prompts("a", "gap").identical
    assert shard_overlap(st, "a", "gap", None, 8) is None
    df = routing_drift(st, "a", "gap", n_boot=50)
    sql = queries.matched_overlap(st, "a", "gap")
    assert (
        df["n_tokens"].to_list() == sql.group_by("layer").agg(pl.col("n").sum()).sort("layer")["n"].to_list()
    )
    assert df["n_tokens"].to_list() == [sum(N_TOK) - 1] * len(LAYERS)


def test_a_segment_view_is_never_read_from_the_shards(st: Store) -> None:
    rng = np.random.default_rng(4)
    _write(st, "a", _top_k(rng, N_ROWS, 8, 2), N_TOK, [list(range(12))], 8)
    assert run_pieces(st, "a") is not None
    with st.segment_view("prompt") as view:
        assert run_pieces(view, "a") is None
        assert shard_overlap(view, "a", "a", None, 8) is None


# -- the bootstrap: layers over the same prompts share their draws ---------------------------------------
def _planted(rng: np.random.Generator, truth: dict[int, float], n_prompts: int = 60) -> pl.DataFrame:
    """Per (layer, prompt): n tokens of top-2 sets whose common count is Binomial(2, truth) per token."""
    frames = []
    for layer, p in truth.items():
        n = rng.integers(20, 60, n_prompts)
        common = np.array([rng.binomial(2, p, m).sum() for m in n])
        frames.append(pl.DataFrame({
            "layer": np.full(n_prompts, layer, np.int32), "prompt_id": np.arange(n_prompts, dtype=np.int32),
            "n": n.astype(np.int64), "overlap": common / 2.0,
        }))  # fmt: skip
    return pl.concat(frames)


def _one_draw_per_layer(per_prompt: pl.DataFrame, n_boot: int, seed: int) -> dict[int, tuple[float, float]]:
    """The previous method: one cluster bootstrap per layer, layers drawing in turn from one generator."""
    rng = np.random.default_rng(seed)
    out = {}
    for (layer,), part in per_prompt.group_by(["layer"], maintain_order=True):
        _, low, high = cluster_bootstrap(
            part["overlap"].to_numpy(), part["n"].to_numpy(), n_boot=n_boot, seed=rng
        )
        out[int(layer)] = (float(low[0]), float(high[0]))
    return out


def test_shared_draws_agree_with_one_draw_per_layer_and_cover_the_truth() -> None:
    truth = {0: 0.9, 3: 0.5, 5: 0.2}
    info = pl.DataFrame({"layer": list(truth), "n_experts": [8] * 3, "top_k": [2] * 3})
    rng = np.random.default_rng(5)
    covered = {layer: 0 for layer in truth}
    n_sets = 40
    for seed in range(n_sets):
        per_prompt = _planted(rng, truth)
        new = compare._drift_rows(per_prompt, info, n_boot=400, seed=seed)
        old = _one_draw_per_layer(per_prompt, n_boot=400, seed=seed)
        for row in new.iter_rows(named=True):
            low, high = old[row["layer"]]
            width = high - low
            # the same interval up to Monte-Carlo error of the 2.5% / 97.5% quantiles of 400 replicates
            assert abs(row["ci_low"] - low) < 0.2 * width and abs(row["ci_high"] - high) < 0.2 * width
            if row["layer"] == 0:  # the first group draws first from the fresh generator: the same draws
                assert (row["ci_low"], row["ci_high"]) == (low, high)
            covered[row["layer"]] += row["ci_low"] <= truth[row["layer"]] <= row["ci_high"]
    # nominal 95%: over 40 data sets, 34 or more covered (P(fewer) < 1% at 95% coverage)
    assert min(covered.values()) >= 34, covered


def test_layers_over_other_prompts_draw_apart() -> None:
    per_prompt = _planted(np.random.default_rng(6), {0: 0.7, 1: 0.7})
    per_prompt = per_prompt.filter(
        (pl.col("layer") == 0) | (pl.col("prompt_id") < 40)
    )  # layer 1 lacks 20 prompts
    info = pl.DataFrame({"layer": [0, 1], "n_experts": [8, 8], "top_k": [2, 2]})
    new = compare._drift_rows(per_prompt, info, n_boot=300, seed=7)
    old = _one_draw_per_layer(per_prompt, n_boot=300, seed=7)
    parts = {int(layer): part for (layer,), part in per_prompt.group_by(["layer"], maintain_order=True)}
    assert compare._same_prompts(parts) == [[0], [1]]
    # two groups drawing in layer order from one generator: exactly the previous draws
    assert [(r["ci_low"], r["ci_high"]) for r in new.iter_rows(named=True)] == [old[0], old[1]]
    assert new["n_prompts"].to_list() == [60, 40]


def test_statistics_that_do_not_cover_the_rows_give_up(st: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    _write(st, "a", _top_k(rng, N_ROWS, 8, 2), N_TOK, [list(range(12))], 8)
    _write(st, "b", _top_k(rng, N_ROWS, 8, 2), N_TOK, [list(range(12))], 8)
    assert shard_overlap(st, "a", "b", None, 8) is not None
    honest = drift_scan.run_pieces
    for shift in (1, -1):  # the grid starts past the first prompt, or ends before the last

        def lying(store: Store, run_id: str, shift: int = shift) -> list[ShardPiece] | None:
            pieces = honest(store, run_id) or []
            if shift > 0:
                return [replace(p, prompt_min=p.prompt_min + shift) for p in pieces]
            return [replace(p, prompt_max=p.prompt_max + shift) for p in pieces]

        monkeypatch.setattr(drift_scan, "run_pieces", lying)
        assert shard_overlap(st, "a", "b", None, 8) is None

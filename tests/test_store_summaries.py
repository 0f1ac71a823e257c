"""Per-prompt summaries (schema v5): every analysis that reads them gives the row path's result.

The planted store is ``benchmarks/analysis_data.py``'s synthetic pair of runs at a small size (label
specialists, a vocabulary preference, co-activated experts, a super expert, per-prompt random
effects, 1 prompt in 50 unlabelled, fp16 logits, expert stats); the v3 fixture adds a real capture of
tiny-ref with shared experts, fp32 logits and a run without logits. Each analysis runs once on the
summaries and once inside ``summaries.row_path()`` (the original code, kept as the independent
computation); integers must be equal and floats within 1e-12 relative, bootstrap draws included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal
from store_support import make_batch, new_run, schema_upto, unpack_v3_store

from benchmarks.analysis_data import RUN_A, RUN_B, Workload, build
from workbench.analysis import summaries as analysis_summaries
from workbench.analysis.relevance import expert_top_tokens
from workbench.analysis.summaries import build_vocab_summaries, prompt_ranges
from workbench.catalog import ANALYSES, run_analysis
from workbench.store import SCHEMA_VERSION, SchemaVersionError, Store, StoreError, copy_store, summaries
from workbench.store import schema as schema_mod
from workbench.store import tables as tables_mod

pytestmark = pytest.mark.integration

#: The analyses that read the summaries (the others stay on the token rows; docs/methods.md says why).
SUMMARISED = (
    "load", "balance", "router-confidence", "super-experts", "specialisation", "esft", "tcess",
    "agreement", "mutual-information", "probe", "collapse", "degradation", "underfitting",
    "coactivation", "fixed-partners", "pathways", "vocab", "dynamic-k",
)  # fmt: skip
ALL_PARTS = set(summaries.PART_TABLES)
#: Every catalogued analysis this synthetic store can feed.
RUNNABLE = sorted(n for n, s in ANALYSES.items() if "model" not in s.needs and "contrast" not in s.needs)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("summaries") / "planted.duckdb"
    build(Workload(tokens=12_000, prompt_len=150, seed=3), path)  # 80 prompts, 8 layers × 16 experts
    return path


#: Analyses whose summaries hold integers and exact half-integer rank sums: equal bit for bit.
EXACT = ("vocab", "dynamic-k")


def _same(fast: pl.DataFrame, slow: pl.DataFrame, exact: bool = False) -> None:
    """Equal frames: same columns, dtypes and row order; integers exact, floats to 1e-12 relative (or exact)."""
    assert fast.height > 0
    assert_frame_equal(fast, slow, check_exact=exact, rel_tol=1e-12, abs_tol=0.0)


def _both(st: Store, name: str, run_id: str, **options: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    compare = RUN_B if ANALYSES[name].is_compare else None
    fast = run_analysis(name, st, run_id, compare=compare, **options)
    with summaries.row_path():
        slow = run_analysis(name, st, run_id, compare=compare, **options)
    return fast, slow


def test_complete_runs_get_summaries_that_match_their_rows(planted: Path) -> None:
    with Store(planted, read_only=True) as st:
        for run_id in (RUN_A, RUN_B):
            parts = summaries.valid_parts(st.con, run_id)
            assert parts == ALL_PARTS, (run_id, parts)
        total = st.sql(
            "SELECT CAST(sum(n_tokens) AS BIGINT) AS n FROM summary_tokens WHERE run_id = ?", [RUN_A]
        )
        rows = st.sql("SELECT count(*) AS n FROM routing WHERE run_id = ?", [RUN_A])
        assert total["n"][0] == rows["n"][0] == 12_000 * 8
        # run B has no logits: its logits part is built, empty, and the logit analyses still refuse
        assert st.sql("SELECT count(*) AS n FROM summary_confidence WHERE run_id = ?", [RUN_B])["n"][0] == 0
        with pytest.raises(ValueError, match="no router logits"):
            run_analysis("router-confidence", st, RUN_B)
        with summaries.row_path():
            assert not summaries.usable(st, RUN_A)
        assert summaries.usable(st, RUN_A)


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_analysis_gives_the_row_paths_result(planted: Path, name: str) -> None:
    with Store(planted, read_only=True) as st:
        fast, slow = _both(st, name, RUN_A)
    _same(fast, slow, exact=name in EXACT)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("load", {"layers": [1, 5], "seed": 7}),
        ("specialisation", {"layers": [2]}),
        ("router-confidence", {"noise": 0.05}),  # not the summarised perturbation: the row path runs
        ("router-confidence", {"seed": 3}),
        ("router-confidence", {"layers": [0, 7]}),
        ("tcess", {"r": 0.1}),  # thresholded: the row path runs
        ("tcess", {"layers": [3]}),
        ("underfitting", {"layers": [0, 1], "n_boot": 200}),
        ("degradation", {"layers": [4]}),
        ("coactivation", {"layers": [2, 6]}),
        ("fixed-partners", {"layers": [1], "coverage": 0.8}),
        ("pathways", {"top": None}),
        ("vocab", {"layers": [3], "min_count": 20}),
        ("dynamic-k", {"p_levels": (0.5, 0.8)}),  # 0.8 is not summarised: the row path runs
        ("dynamic-k", {"layers": [1, 6], "p_levels": (0.9,)}),
    ],
)
def test_options_give_the_row_paths_result(planted: Path, name: str, options: dict[str, Any]) -> None:
    with Store(planted, read_only=True) as st:
        fast, slow = _both(st, name, RUN_A, **options)
    _same(fast, slow, exact=name in EXACT)


def test_the_summarised_analyses_never_read_a_token_row(planted: Path, tmp_path: Path) -> None:
    """With ``routing`` and ``expert_stats`` made unreadable, the summarised analyses still run, unchanged."""
    expected = {}
    with Store(planted, read_only=True) as st:
        for name in SUMMARISED:
            expected[name] = run_analysis(name, st, RUN_A)
    path = copy_store(planted, tmp_path / "no-rows.duckdb")
    with Store(path) as st:
        # every column is computed from a value that fails when read, so no filter can skip the scan
        boom = "CAST('token rows were read ' || range AS INTEGER)"
        cols = ", ".join(
            f"CAST({'[' + boom + ']' if t.endswith('[]') else boom} AS {t}) AS {c}"
            for c, t in tables_mod.TABLES["routing"]
        )
        st.con.execute(f"CREATE OR REPLACE VIEW routing AS SELECT {cols} FROM range(1)")
        st.con.execute("ALTER TABLE expert_stats RENAME TO expert_stats_hidden")
        cols = ", ".join(f"CAST({boom} AS {t}) AS {c}" for c, t in tables_mod.TABLES["expert_stats"])
        st.con.execute(f"CREATE VIEW expert_stats AS SELECT {cols} FROM range(1)")
    with Store(path, read_only=True) as st:
        with pytest.raises(duckdb.Error, match="token rows were read"), summaries.row_path():
            run_analysis("load", st, RUN_A)
        with pytest.raises(duckdb.Error, match="token rows were read"), summaries.row_path():
            run_analysis("collapse", st, RUN_A)
        for name in SUMMARISED:
            _same(run_analysis(name, st, RUN_A), expected[name])


def test_expert_top_tokens_reads_the_vocab_summary_bit_for_bit(planted: Path) -> None:
    with Store(planted, read_only=True) as st:
        assert summaries.VOCAB in summaries.valid_parts(st.con, RUN_A)
        fast = expert_top_tokens(st, RUN_A, 2, 5, min_count=3)
        with summaries.row_path():
            slow = expert_top_tokens(st, RUN_A, 2, 5, min_count=3)
    assert fast.height > 0
    assert_frame_equal(fast, slow, check_exact=True)


def test_the_vocab_build_counts_a_range_of_prompts_at_a_time(
    planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its memory is bounded by the chunk; the counts added over chunks are the one-query counts."""
    assert prompt_ranges(np.array([0, 1, 2, 5, 6]), np.array([3, 3, 3, 9, 1]), 6) == [(0, 1), (2, 5), (6, 6)]
    assert prompt_ranges(np.array([4]), np.array([100]), 6) == [(4, 4)]
    assert prompt_ranges(np.zeros(0, np.int64), np.zeros(0, np.int64), 6) == []
    with Store(planted, read_only=True) as st:
        whole = pl.from_arrow(build_vocab_summaries(st, RUN_A)["summary_vocab"])
        monkeypatch.setattr(analysis_summaries, "_VOCAB_CHUNK_ROWS", 24_000)  # 20 prompts a query, 4 queries
        chunked = pl.from_arrow(build_vocab_summaries(st, RUN_A)["summary_vocab"])
    keys = ["layer", "token_id", "expert"]
    assert isinstance(whole, pl.DataFrame) and isinstance(chunked, pl.DataFrame)
    assert whole.height > 0 and int(whole["n"].sum()) == 12_000 * 8
    assert_frame_equal(whole.sort(keys), chunked.sort(keys), check_exact=True)


def test_a_v6_store_gets_the_vocab_and_dynamic_parts_at_its_migration_to_v7(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "older.duckdb"
    later = {summaries.VOCAB, summaries.DYNAMIC}
    with monkeypatch.context() as m, schema_upto(6):  # the v6 release: no such parts, no tables
        m.setattr(summaries, "_BUILDERS", {k: v for k, v in summaries.registered().items() if k not in later})
        with Store(path) as st:
            run_id = new_run(st)
            st.write_batch(run_id, **make_batch([0, 1, 2]))
            st.set_status(run_id, "complete")
            assert summaries.valid_parts(st.con, run_id) == ALL_PARTS - later
            assert not st.sql(
                "SELECT * FROM duckdb_tables() WHERE table_name IN ('summary_vocab', 'summary_dynamic_k')"
            ).height
    with pytest.raises(SchemaVersionError, match="Open it writable once"):
        Store(path, read_only=True)
    with Store(path) as st:  # the migration adds the tables; the writable open builds the missing parts
        assert st.schema_version == SCHEMA_VERSION
        assert summaries.valid_parts(st.con, run_id) == ALL_PARTS
        for name in ("vocab", "dynamic-k"):
            with summaries.row_path():
                slow = run_analysis(name, st, run_id)
            _same(run_analysis(name, st, run_id), slow, exact=True)


def test_a_summary_is_never_used_once_the_run_changed(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    with Store(path) as st:
        run_id = new_run(st)
        st.write_batch(run_id, **make_batch([0, 1]))
        st.set_status(run_id, "complete")
        assert summaries.valid_parts(st.con, run_id) == ALL_PARTS
        before = run_analysis("load", st, run_id, n_boot=50)
        st.set_status(run_id, "running")  # a resume writes more prompts
        st.write_batch(run_id, **make_batch([2, 3]))
        assert summaries.valid_parts(st.con, run_id) == set()  # stale: the rows win
        after = run_analysis("load", st, run_id, n_boot=50)
        with summaries.row_path():
            _same(after, run_analysis("load", st, run_id, n_boot=50))
        assert int(after["n_selected"].sum()) == 2 * int(before["n_selected"].sum())
        st.set_status(run_id, "complete")  # completing it again rebuilds them
        assert summaries.valid_parts(st.con, run_id) == ALL_PARTS
        _same(run_analysis("load", st, run_id, n_boot=50), after)
        st.delete_run(run_id)
        for table in ("summary_builds", *(t for tables in summaries.PART_TABLES.values() for t in tables)):
            assert st.sql(f"SELECT count(*) AS n FROM {table}")["n"][0] == 0, table


def test_a_failed_build_warns_and_leaves_the_analyses_on_the_rows(tmp_path: Path) -> None:
    with Store(tmp_path / "bad.duckdb") as st:
        run_id = new_run(st)
        batch = make_batch([0, 1])
        n = batch["routing"].num_rows
        short = pa.ListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int32) * 5), pa.array(np.zeros(5 * n, np.float32))
        )
        batch["routing"] = batch["routing"].set_column(5, "logits", short)  # 5 logits a row at E = 8
        st.write_batch(run_id, **batch)
        with pytest.warns(
            UserWarning,
            match=rf"run '{run_id}': its summary part 'logits' was not built \(ValueError: layer 3: logits rows must have length n_experts=8\); the analyses that read it read the token rows instead",
        ):
            st.set_status(run_id, "complete")
        assert summaries.valid_parts(st.con, run_id) == ALL_PARTS - {summaries.LOGITS}
        with pytest.raises(ValueError, match="logits rows must have length n_experts=8"):
            run_analysis("router-confidence", st, run_id)
        fast, slow = _both(st, "load", run_id)
        _same(fast, slow)


def test_a_process_without_the_analyses_builds_counts_and_the_next_writable_open_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cli.duckdb"
    with monkeypatch.context() as m:
        m.setattr(summaries, "_BUILDERS", {})  # what `moe-workbench capture` registers: nothing
        with Store(path) as st:
            run_id = new_run(st)
            st.write_batch(run_id, **make_batch([0, 1, 2]))
            st.set_status(run_id, "complete")
            assert summaries.valid_parts(st.con, run_id) == {summaries.COUNTS}
            fast, slow = _both(st, "router-confidence", run_id)  # no logits part: the rows, same result
            _same(fast, slow)
    with Store(path, read_only=True) as st:  # a read-only open builds nothing
        assert summaries.valid_parts(st.con, run_id) == {summaries.COUNTS}
    with Store(path) as st:
        assert summaries.valid_parts(st.con, run_id) == ALL_PARTS
        fast, slow = _both(st, "router-confidence", run_id)
        _same(fast, slow)


def test_building_needs_a_writable_v5_store(planted: Path) -> None:
    with Store(planted, read_only=True) as st, pytest.raises(StoreError, match="read-only"):
        st.build_summaries(RUN_A)


def test_registering_an_unknown_part_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown summary part 'nope'; registrable parts: \['dynamic', 'logits', 'pairs', 'transitions', 'vocab'\]",
    ):
        summaries.register("nope", lambda st, run_id: {})


@pytest.fixture
def v3_store(tmp_path: Path) -> Path:
    return unpack_v3_store(tmp_path)


def test_a_v3_store_migrates_to_the_current_schema_and_its_complete_runs_get_summaries(
    v3_store: Path,
) -> None:
    with Store(v3_store) as st:
        assert st.schema_version == schema_mod.SCHEMA_VERSION == 7
        runs = st.runs()["run_id"].to_list()
        for run_id in runs:
            assert summaries.valid_parts(st.con, run_id) == ALL_PARTS
    with Store(v3_store, read_only=True) as st:
        for run_id in runs:
            for name in RUNNABLE:
                if ANALYSES[name].is_compare:
                    continue
                try:
                    with summaries.row_path():
                        slow = run_analysis(name, st, run_id)
                except ValueError as exc:  # the run lacks what it needs: the summary path refuses alike
                    with pytest.raises(ValueError, match=None) as again:
                        run_analysis(name, st, run_id)
                    assert str(again.value) == str(exc)
                    continue
                _same(run_analysis(name, st, run_id), slow)


def test_a_v4_store_migrates_to_v5(tmp_path: Path) -> None:
    path = tmp_path / "v4.duckdb"
    with schema_upto(4), Store(path) as st:  # a store as the v4 release wrote it
        assert st.schema_version == 4
        run_id = new_run(st)
        st.write_batch(run_id, **make_batch([0, 1, 2]))
        st.set_status(run_id, "complete")
        old = run_analysis("load", st, run_id, n_boot=50)
        assert not summaries.has_tables(st.con)
    with Store(path) as st:
        assert st.schema_version == schema_mod.SCHEMA_VERSION
        assert summaries.valid_parts(st.con, run_id) == ALL_PARTS
        _same(run_analysis("load", st, run_id, n_boot=50), old)

"""Schema v4: routing in Parquet shards, read through the ``routing`` view with unchanged results
(the readers, every analysis that needs no model, the HTML report).

``tests/data/store-v3.duckdb.gz`` is a store written by the v3 release (commit 1e4e6f2): tiny-ref
captured on probes/example.jsonl three times, as ``fp16-stats`` (``--logits fp16 --expert-stats``),
``fp32`` (``--logits fp32``) and ``ids-only`` (``--logits none``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal
from store_support import make_batch, new_run, schema_upto, unpack_v3_store

from workbench.catalog import ANALYSES, run_analysis
from workbench.reports.build import build_report
from workbench.store import Store, StoreError, copy_store
from workbench.store import schema as schema_mod
from workbench.store.shards import MANIFEST, shard_table

pytestmark = pytest.mark.integration

RUNS = ("fp16-stats", "fp32", "ids-only")


@pytest.fixture
def v3_store(tmp_path: Path) -> Path:
    return unpack_v3_store(tmp_path)


@pytest.fixture
def as_v3() -> Iterator[None]:
    """This code with the migrations from v4 on unregistered: it reads a v3 store in place, routing as a table."""
    with schema_upto(3):
        yield


@pytest.fixture
def upto_v4() -> Iterator[None]:
    """This code without the migrations from v5 on (the summaries, whose tables would grow the compacted file)."""
    with schema_upto(4):
        yield


def _raw_v3(path: Path) -> dict[str, pl.DataFrame]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT max(version) FROM schema_version").fetchall() == [(3,)]
        out = {}
        for table, order in (("routing", "prompt_id, position, layer"), ("tokens", "prompt_id, position")):
            out[table] = con.sql(f"SELECT * FROM {table} ORDER BY run_id, {order}").pl()
        return out
    finally:
        con.close()


def _shard_files(st: Store, run_id: str) -> list[Path]:
    rows = st.sql(f"SELECT path FROM {MANIFEST} WHERE run_id = ?", [run_id])["path"].to_list()
    return [st.shard_folder / p for p in rows]


def test_v3_store_migrates_to_shards_row_for_row(v3_store: Path, upto_v4: None) -> None:
    raw = _raw_v3(v3_store)
    size_v3 = v3_store.stat().st_size
    with Store(v3_store) as st:
        assert st.schema_version == 4
        assert st.sql("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'routing'")["n"][0] == 0
        assert st.sql("SELECT count(*) AS n FROM duckdb_views() WHERE view_name = 'routing'")["n"][0] == 1
        for run_id in RUNS:
            got = st.routing(run_id)
            want = raw["routing"].filter(pl.col("run_id") == run_id).drop("run_id")
            assert got.height == want.height > 0
            assert got.schema == want.schema  # SMALLINT[], FLOAT[] as before
            for col in got.columns:  # bit for bit: lists compared as Python values, floats exactly
                assert got[col].to_list() == want[col].to_list(), (run_id, col)
            n_tokens = st.sql("SELECT count(*) AS n FROM tokens WHERE run_id = ?", [run_id])["n"][0]
            assert n_tokens == raw["tokens"].filter(pl.col("run_id") == run_id).height
    shard_bytes = sum(p.stat().st_size for p in (v3_store.parent / "v3.duckdb.shards").rglob("*.parquet"))
    assert v3_store.stat().st_size + shard_bytes < size_v3  # the file was compacted after the move
    physical = {}
    with Store(v3_store, read_only=True) as st:  # a migrated store opens read-only
        for run_id in RUNS:
            (path,) = _shard_files(st, run_id)
            physical[run_id] = pq.read_schema(path)
    # fp16-rounded logits become 2-byte floats; fp32 logits and fp32 weights stay 4-byte floats
    assert physical["fp16-stats"].field("logits").type == pa.list_(pa.float16())
    assert physical["fp32"].field("logits").type == pa.list_(pa.float32())
    assert physical["fp16-stats"].field("weights").type == pa.list_(pa.float32())


def _results(st: Store) -> dict[str, Any]:
    """Every catalogued analysis that needs no model, on every run (errors kept: they must not change)."""
    out: dict[str, Any] = {}
    for name, spec in sorted(ANALYSES.items()):
        if "model" in spec.needs:
            continue
        for run_id in RUNS:
            compare = next(r for r in RUNS if r != run_id) if "compare" in spec.needs else None
            try:
                out[f"{name}/{run_id}"] = run_analysis(name, st, run_id, compare=compare)
            except Exception as exc:  # an analysis that refused before must refuse the same way
                out[f"{name}/{run_id}"] = f"{type(exc).__name__}: {exc}"
    return out


def _report(st: Store) -> str:
    """The HTML report of the fp16 run against the fp32 one, with its compute timings and its build time
    (to the minute, which can tick over between the two builds) blanked out."""
    html = build_report(st, "fp16-stats", compare="fp32")
    html = re.sub(r"computed in [0-9.]+ s", "computed in _ s", html)
    return re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "YYYY-MM-DD hh:mm", html)


def test_every_analysis_and_the_report_read_the_same_before_and_after_migration(
    v3_store: Path, tmp_path: Path, as_v3: None
) -> None:
    before_path = tmp_path / "before.duckdb"
    shutil.copyfile(v3_store, before_path)
    with Store(before_path, read_only=True) as st:  # the v3 layout: routing is a DuckDB table
        assert st.schema_version == 3
        before = _results(st)
        before_report = _report(st)
        before_logits = pa.Table.from_batches(list(st.iter_logits("fp32", [0, 1]))).sort_by(
            [("prompt_id", "ascending"), ("position", "ascending"), ("layer", "ascending")]
        )
    schema_mod.MIGRATIONS[4] = schema_mod._routing_to_shards  # what the as_v3 fixture took away
    with Store(v3_store) as st:
        assert st.schema_version == 4
        after = _results(st)
        after_report = _report(st)
        after_logits = pa.Table.from_batches(list(st.iter_logits("fp32", [0, 1]))).sort_by(
            [("prompt_id", "ascending"), ("position", "ascending"), ("layer", "ascending")]
        )
    assert after_logits.num_rows > 0 and after_logits.equals(before_logits)
    assert len(after_report) > 100_000 and after_report == before_report  # every section, figure and table
    assert before.keys() == after.keys()
    ok = [k for k, v in before.items() if isinstance(v, pl.DataFrame)]
    assert len(ok) >= 2 * len(RUNS)  # most analyses ran, not just refused
    for key in before:
        if isinstance(before[key], str):
            assert after[key] == before[key], key
        else:
            assert_frame_equal(after[key], before[key], rtol=1e-9, atol=1e-12, check_exact=False), key


def test_fp16_capture_takes_two_bytes_per_logit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, e = 4096, 64
    logits = rng.standard_normal((n, e)).astype(np.float16)
    offsets = pa.array(np.arange(0, n * e + 1, e, dtype=np.int32))
    routing = pa.table({
        "prompt_id": np.repeat(np.arange(n // 64, dtype=np.int32), 64),
        "position": np.tile(np.arange(64, dtype=np.int32), n // 64),
        "layer": np.zeros(n, np.int32),
        "experts": pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                            pa.array(rng.integers(0, e, 2 * n).astype(np.int16))),
        "weights": pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                            pa.array(rng.random(2 * n).astype(np.float32))),
        "logits": pa.ListArray.from_arrays(offsets, pa.array(logits.reshape(-1))),
    })  # fmt: skip
    table = shard_table("r", routing)
    assert table.schema.field("logits").type == pa.list_(pa.float16())
    assert table.schema.field("weights").type == pa.list_(pa.float32())  # not exact in half: kept
    # a float32 column whose values are all exact in half is narrowed, losslessly
    as32 = routing.set_column(5, "logits", routing.column("logits").cast(pa.list_(pa.float32())))
    assert shard_table("r", as32).column("logits").equals(table.column("logits"))
    with Store(tmp_path / "s.duckdb") as st:
        run = new_run(st)
        prompts = pa.table({"prompt_id": np.arange(n // 64, dtype=np.int32), "text": ["t"] * (n // 64),
                            "n_tokens": np.full(n // 64, 64, np.int32)})  # fmt: skip
        tokens = pa.table({"prompt_id": routing["prompt_id"], "position": routing["position"],
                           "token_id": np.zeros(n, np.int32), "token": ["a"] * n})  # fmt: skip
        st.write_batch(run, prompts=prompts, tokens=tokens, routing=routing)
        (path,) = _shard_files(st, run)
        logits_bytes = sum(
            pq.ParquetFile(path).metadata.row_group(g).column(6).total_compressed_size
            for g in range(pq.ParquetFile(path).metadata.num_row_groups)
        )
        assert logits_bytes <= 2 * n * e * 1.05  # random fp16 does not compress: ~2 bytes each
        back = st.routing(run)["logits"].to_list()
        assert back == [row.astype(np.float32).tolist() for row in logits]


def test_failed_batch_leaves_no_shard_and_a_crash_leftover_is_swept(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    with Store(db) as st:
        run = new_run(st)
        batch = make_batch([0, 1])
        st.write_batch(run, **batch)
        files = sorted(st.shard_folder.rglob("*.parquet"))
        with pytest.raises(StoreError, match="already has prompts"):
            st.write_batch(run, **batch)  # refused before any file is written
        bad = dict(make_batch([2]))
        bad["routing"] = bad["routing"].set_column(
            0, "prompt_id", pa.array([9] * bad["routing"].num_rows, pa.int32())
        )
        with pytest.raises(StoreError):
            st.write_batch(run, **bad)
        assert sorted(st.shard_folder.rglob("*.parquet")) == files
        folder = st.shard_folder
    stray = files[0].with_name("part-stray.parquet")  # a capture killed between file and commit
    shutil.copyfile(files[0], stray)
    with Store(db, read_only=True) as st:  # never read: the view lists only committed shards
        assert st.routing(run).height == make_batch([0, 1])["routing"].num_rows
    with Store(db):
        pass
    assert not stray.exists() and sorted(folder.rglob("*.parquet")) == files


def test_deleting_a_run_removes_its_shards_and_copies_carry_them(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    with Store(db) as st:
        keep, gone = new_run(st, run_id="keep"), new_run(st, run_id="a[/]b 'odd' id")
        st.write_batch(keep, **make_batch([0, 1]))
        st.write_batch(gone, **make_batch([0, 1]))
        gone_files = _shard_files(st, gone)
        st.delete_run(gone)
        assert not any(p.exists() for p in gone_files)
        assert st.sql("SELECT count(*) AS n FROM routing")["n"][0] == st.routing(keep).height > 0
    alone = tmp_path / "alone.duckdb"
    shutil.copyfile(db, alone)  # the file without its shard folder
    with pytest.raises(
        StoreError, match=r"(?s)missing from .*alone.duckdb.shards.*copy or move them together"
    ):
        Store(alone, read_only=True)
    (tmp_path / "sub").mkdir()
    copy = copy_store(db, tmp_path / "sub" / "copy.duckdb")
    with Store(copy, read_only=True) as st, Store(db, read_only=True) as orig:
        assert_frame_equal(st.routing(keep), orig.routing(keep))


def test_in_memory_store_keeps_its_shards_in_a_temporary_folder() -> None:
    st = Store(":memory:")
    run = new_run(st)
    st.write_batch(run, **make_batch([0, 1]))
    folder = st.shard_folder
    assert any(folder.rglob("*.parquet")) and st.routing(run).height == 12
    st.close()
    assert not folder.exists()


def _big_batch(n_prompts: int, n_pos: int) -> dict[str, pa.Table]:
    """One prompt-complete batch of n_prompts × n_pos tokens, one layer, top-2, no logits."""
    n = n_prompts * n_pos
    pid = np.repeat(np.arange(n_prompts, dtype=np.int32), n_pos)
    pos = np.tile(np.arange(n_pos, dtype=np.int32), n_prompts)
    two = pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
    routing = pa.table({
        "prompt_id": pid, "position": pos, "layer": np.zeros(n, np.int32),
        "experts": pa.ListArray.from_arrays(two, pa.array((np.arange(2 * n) % 8).astype(np.int16))),
        "weights": pa.ListArray.from_arrays(two, pa.array(np.tile(np.float32([0.75, 0.25]), n))),
    })  # fmt: skip
    prompts = pa.table({"prompt_id": np.arange(n_prompts, dtype=np.int32), "text": ["t"] * n_prompts,
                        "n_tokens": np.full(n_prompts, n_pos, np.int32)})  # fmt: skip
    tokens = pa.table({"prompt_id": pid, "position": pos, "token_id": pos, "token": pa.nulls(n, pa.string())})
    return {"prompts": prompts, "tokens": tokens, "routing": routing}


def test_a_large_write_is_cut_into_parallel_shards_and_a_failed_part_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.store import shards as shards_mod

    monkeypatch.setattr(shards_mod, "WRITE_THREADS", 3)
    batch = _big_batch(1500, 500)  # 750,000 rows: 3 parts of >= 2 row groups (245,760 rows)
    with Store(tmp_path / "s.duckdb") as st:
        run = new_run(st)
        real = shards_mod.ShardFolder._write_one
        calls: list[int] = []

        def flaky(self: shards_mod.ShardFolder, run_id: str, table: pa.Table) -> shards_mod.Shard:
            calls.append(table.num_rows)
            if len(calls) == 2:
                raise OSError("No space left on device (simulated)")
            return real(self, run_id, table)

        monkeypatch.setattr(shards_mod.ShardFolder, "_write_one", flaky)
        with pytest.raises(StoreError, match=r"rolled back.*No space left"):
            st.write_batch(run, **batch)
        assert list(st.shard_folder.rglob("*.parquet*")) == [] and st.done_prompt_ids(run) == set()
        monkeypatch.setattr(shards_mod.ShardFolder, "_write_one", real)
        st.write_batch(run, **batch)
        assert len(_shard_files(st, run)) == 3
        got = st.routing(run)
        assert got.height == 750_000
        assert got["prompt_id"].to_numpy().tolist() == batch["routing"]["prompt_id"].to_pylist()
        assert got["weights"][749_999].to_list() == [0.75, 0.25]


def test_a_store_in_a_folder_whose_path_has_a_comma_or_quote(tmp_path: Path) -> None:
    """DuckDB's file_search_path is comma-separated: such a folder is reached through a symlink."""
    folder = tmp_path / "runs, O'Brien"
    folder.mkdir()
    with Store(folder / "s.duckdb") as st:
        run = new_run(st)
        st.write_batch(run, **make_batch([0, 1]))
    with Store(folder / "s.duckdb", read_only=True) as st:
        assert st.routing(run).height == make_batch([0, 1])["routing"].num_rows


def test_a_rank_store_is_absorbed_whole_with_its_shards_linked_or_in_chunks_when_partly_there(
    tmp_path: Path,
) -> None:
    from workbench.capture.rank_stores import absorb_rank_stores, rank_store_dir

    db = tmp_path / "main.duckdb"
    folder = rank_store_dir(db, "dp")
    folder.mkdir(parents=True)
    for rank, ids in ((0, [0, 2, 4]), (1, [1, 3, 5])):
        with Store(folder / f"rank-{rank}.duckdb") as st:
            new_run(st, run_id="dp")
            st.write_batch("dp", **make_batch(ids))
    with Store(db) as main:
        new_run(main, run_id="dp")
        main.write_batch("dp", **make_batch([1]))  # rank 1's first prompt is already here
        with pytest.raises(StoreError, match=r"already holds 1 of the prompts"):
            main.absorb_run(folder / "rank-1.duckdb", "dp")
        assert main.done_prompt_ids("dp") == {1} and len(_shard_files(main, "dp")) == 1  # nothing stayed
        assert absorb_rank_stores(main, db, "dp") == 5
        assert main.done_prompt_ids("dp") == set(range(6))
        got = main.routing("dp")
        stats = main.expert_stats("dp")
    assert not folder.exists()
    parts = [make_batch([0, 2, 4])["routing"], make_batch([1])["routing"], make_batch([1, 3, 5])["routing"]]
    rows = pl.concat([pl.from_arrow(t) for t in parts])  # type: ignore[misc]
    # prompt 1 as main wrote it; rank 1's copy of it was skipped
    want = rows.unique(subset=["prompt_id", "position", "layer"], keep="first", maintain_order=True)
    assert (
        got.sort("prompt_id", "position", "layer").rows()
        == want.sort("prompt_id", "position", "layer").rows()
    )
    assert stats.height == 6 * make_batch([0])["expert_stats"].num_rows

"""Tests for workbench.store: schema contract, migrations, locks, runs and atomic Arrow ingest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from store_support import make_batch, new_run, schema_upto

from workbench import store
from workbench.store import SCHEMA_VERSION, Store, StoreError, StoreLockedError
from workbench.store import schema as schema_mod
from workbench.store.content import prompt_content_hash
from workbench.store.errors import SchemaVersionError, UnknownRunError

pytestmark = pytest.mark.unit

# The contract, written out independently of schema.py so that a silent change fails here.
CONTRACT = {
    "runs": [("run_id", "VARCHAR"), ("model", "VARCHAR"), ("architecture", "VARCHAR"), ("probe", "VARCHAR"),
             ("n_experts", "INTEGER"), ("top_k", "INTEGER"), ("created_at", "TIMESTAMP"),
             ("status", "VARCHAR"), ("config", "JSON"),
             ("pid", "INTEGER"), ("host", "VARCHAR"), ("heartbeat_at", "TIMESTAMP")],  # v6: the capturing process
    "layers": [("run_id", "VARCHAR"), ("layer", "INTEGER"), ("module_path", "VARCHAR"), ("n_experts", "INTEGER"),
               ("top_k", "INTEGER"), ("n_shared", "INTEGER"), ("score_fn", "VARCHAR")],
    "prompts": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("text", "VARCHAR"), ("label", "VARCHAR"),
                ("pair_id", "VARCHAR"), ("split", "VARCHAR"), ("meta", "JSON"), ("n_tokens", "INTEGER"),
                ("content_hash", "VARCHAR")],  # v3
    "tokens": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("position", "INTEGER"), ("token_id", "INTEGER"),
               ("token", "VARCHAR"), ("nll", "FLOAT"), ("segment", "VARCHAR")],  # v6: segment
    "routing": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("position", "INTEGER"), ("layer", "INTEGER"),
                ("experts", "SMALLINT[]"), ("weights", "FLOAT[]"), ("logits", "FLOAT[]")],
    "expert_stats": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("position", "INTEGER"), ("layer", "INTEGER"),
                     ("expert", "SMALLINT"), ("out_norm", "FLOAT"), ("zero_frac", "FLOAT")],
    "interventions": [("intervention_id", "VARCHAR"), ("run_id", "VARCHAR"), ("kind", "VARCHAR"), ("spec", "JSON"),
                      ("created_at", "TIMESTAMP")],
    "evaluations": [("intervention_id", "VARCHAR"), ("label", "VARCHAR"), ("metric", "VARCHAR"), ("value", "DOUBLE"),
                    ("ci_low", "DOUBLE"), ("ci_high", "DOUBLE"), ("n", "INTEGER"), ("meta", "JSON")],
    "schema_version": [("version", "INTEGER"), ("applied_at", "TIMESTAMP")],
    # v2
    "resonance": [("map_id", "VARCHAR"), ("run_id", "VARCHAR"), ("target", "VARCHAR"), ("control", "VARCHAR"),
                  ("span", "VARCHAR"), ("method", "VARCHAR"), ("layer", "INTEGER"), ("expert", "INTEGER"),
                  ("rd", "DOUBLE"), ("ftri", "DOUBLE"), ("effect", "DOUBLE"), ("attribution", "DOUBLE"),
                  ("ci_low", "DOUBLE"), ("ci_high", "DOUBLE"), ("p", "DOUBLE"), ("q", "DOUBLE"),
                  ("n_target", "INTEGER"), ("n_control", "INTEGER"), ("created_at", "TIMESTAMP")],
    # v4: routing is a view over Parquet shards (same columns and types as above); this is their manifest
    "routing_shards": [("run_id", "VARCHAR"), ("path", "VARCHAR"), ("n_rows", "BIGINT"), ("n_bytes", "BIGINT"),
                       ("created_at", "TIMESTAMP")],
    # v5: the per-prompt summaries and what each part was built from
    "summary_builds": [("run_id", "VARCHAR"), ("part", "VARCHAR"), ("n_prompts", "BIGINT"), ("n_shards", "BIGINT"),
                       ("n_rows", "BIGINT"), ("built_at", "TIMESTAMP"), ("build_s", "DOUBLE")],
    "summary_tokens": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("layer", "INTEGER"), ("n_tokens", "BIGINT"),
                       ("n_weights", "BIGINT")],
    "summary_experts": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("layer", "INTEGER"), ("expert", "INTEGER"),
                        ("n", "BIGINT"), ("n_top1", "BIGINT"), ("w_sum", "DOUBLE")],
    "summary_stats": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("layer", "INTEGER"), ("expert", "INTEGER"),
                      ("n", "BIGINT"), ("n_norm", "BIGINT"), ("norm_sum", "DOUBLE"), ("n_zero", "BIGINT"),
                      ("zero_sum", "DOUBLE"), ("norm_absmax", "FLOAT")],
    "summary_confidence": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("layer", "INTEGER"), ("n", "BIGINT"),
                           ("entropy_sum", "DOUBLE"), ("margin_sum", "DOUBLE"), ("n_fragile", "BIGINT")],
    "summary_scores": [("run_id", "VARCHAR"), ("prompt_id", "INTEGER"), ("layer", "INTEGER"), ("expert", "INTEGER"),
                       ("score_sum", "DOUBLE")],
    "summary_pairs": [("run_id", "VARCHAR"), ("layer", "INTEGER"), ("a", "INTEGER"), ("b", "INTEGER"),
                      ("n_ab", "BIGINT"), ("n_a", "BIGINT"), ("n_b", "BIGINT"), ("n_tokens", "BIGINT")],
    "summary_transitions": [("run_id", "VARCHAR"), ("layer_from", "INTEGER"), ("layer_to", "INTEGER"),
                            ("expert_from", "INTEGER"), ("expert_to", "INTEGER"), ("n", "BIGINT")],
    # v7: the vocab and dynamic summary parts
    "summary_vocab": [("run_id", "VARCHAR"), ("layer", "INTEGER"), ("token_id", "INTEGER"), ("expert", "INTEGER"),
                      ("n", "BIGINT")],
    "summary_dynamic_k": [("run_id", "VARCHAR"), ("layer", "INTEGER"), ("label", "VARCHAR"), ("p", "DOUBLE"),
                          ("k", "INTEGER"), ("n", "BIGINT"), ("n_nll", "BIGINT"), ("rank_sum", "DOUBLE")],
    "summary_dynamic_nll": [("run_id", "VARCHAR"), ("layer", "INTEGER"), ("label", "VARCHAR"), ("rank_ss", "DOUBLE"),
                            ("n_prompts", "BIGINT")],
}  # fmt: skip


@pytest.fixture
def restore_migrations() -> Iterator[None]:
    saved = dict(schema_mod.MIGRATIONS)
    yield
    schema_mod.MIGRATIONS.clear()
    schema_mod.MIGRATIONS.update(saved)


# -- schema ------------------------------------------------------------------------------
def test_schema_has_exactly_the_contract_columns(st: Store) -> None:
    rows = st.con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall()
    found: dict[str, list[tuple[str, str]]] = {}
    for table, col, typ in rows:
        found.setdefault(table, []).append((col, typ))
    assert found == CONTRACT
    assert SCHEMA_VERSION == 7 and st.schema_version == 7
    big = ["routing", "tokens", "expert_stats"]
    assert st.con.execute(
        "SELECT count(*) FROM duckdb_indexes() WHERE table_name = ANY(?)", [big]
    ).fetchone() == (0,)
    assert st.con.execute(
        "SELECT count(*) FROM duckdb_constraints() WHERE table_name = ANY(?)", [big]
    ).fetchone() == (0,)


def test_migration_from_empty_db_applies_once(db: Path) -> None:
    for _ in range(2):
        Store(db).close()
    con = duckdb.connect(str(db))
    assert con.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
        (1,),
        (2,),
        (3,),
        (4,),
        (5,),
        (6,),
        (7,),
    ]
    con.close()


def test_v1_store_migrates_to_the_current_version_keeping_its_runs(
    db: Path, restore_migrations: None
) -> None:
    with schema_upto(1), Store(db) as st:  # a store as the v1 release wrote it
        assert st.schema_version == 1
        run_id = new_run(st)
    with pytest.raises(SchemaVersionError, match=r"(?s)v1.*Open it writable once"):
        Store(db, read_only=True)
    with Store(db) as st:
        assert st.schema_version == SCHEMA_VERSION
        assert st.run(run_id)["status"] == "running"
        assert st.sql("SELECT count(*) AS n FROM resonance")["n"][0] == 0


def test_migration_chain_with_registered_migration(
    db: Path, tmp_path: Path, restore_migrations: None
) -> None:
    with Store(db) as st:
        run_id = new_run(st)
    calls: list[int] = []

    nxt = SCHEMA_VERSION + 1  # a release after this one

    @schema_mod.migration(nxt)
    def _add_note(con: duckdb.DuckDBPyConnection, shards: object) -> None:
        calls.append(nxt)
        con.execute("ALTER TABLE runs ADD COLUMN note VARCHAR")

    with pytest.raises(SchemaVersionError, match=rf"(?s)v{SCHEMA_VERSION}.*Open it writable once"):
        Store(db, read_only=True)
    with Store(db) as st:
        assert st.schema_version == nxt
        assert "note" in st.sql("SELECT * FROM runs").columns
        assert st.run(run_id)["status"] == "running"  # data survived
    with Store(db, read_only=True) as st:
        assert st.schema_version == nxt
    # a fresh file walks the whole chain 0 -> 1 -> ... -> nxt, in order
    with Store(tmp_path / "fresh.duckdb") as st:
        assert st.sql("SELECT version FROM schema_version ORDER BY version")["version"].to_list() == list(
            range(1, nxt + 1)
        )
    assert calls == [nxt, nxt]

    @schema_mod.migration(nxt + 1)
    def _broken(con: duckdb.DuckDBPyConnection, shards: object) -> None:
        con.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    with pytest.raises(StoreError, match="boom"):
        Store(db)
    schema_mod.MIGRATIONS.pop(nxt + 1)
    with Store(db) as st:  # the failed migration rolled back completely
        assert st.schema_version == nxt
        assert st.sql("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'half_done'")["n"][0] == 0


def test_duplicate_migration_registration_refused(restore_migrations: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        schema_mod.migration(1)(lambda con, shards: None)


def test_newer_schema_version_is_refused(db: Path) -> None:
    Store(db).close()
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (99, now()::TIMESTAMP)")
    con.close()
    for read_only in (False, True):
        with pytest.raises(SchemaVersionError, match=r"(?s)v99.*[Uu]pgrade moe-workbench"):
            Store(db, read_only=read_only)


# -- open / lock errors -------------------------------------------------------------------
def test_missing_file_read_only(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(StoreError, match="does not exist") as info:
        store.open(missing, read_only=True)
    assert str(missing) in str(info.value)
    assert not missing.exists()


def test_lock_held_by_another_process(db: Path) -> None:
    Store(db).close()
    holder = textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(db)!r})
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for read_only in (False, True):
            with pytest.raises(StoreLockedError) as info:
                Store(db, read_only=read_only)
            msg = str(info.value)
            assert str(db) in msg and "another process" in msg and "--db" in msg
            assert f"PID {proc.pid}" in msg
            assert isinstance(info.value, StoreError)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with Store(db, read_only=True) as st:  # lock released with the process
        assert st.runs().height == 0


def test_read_only_store_refuses_writes(db: Path) -> None:
    with Store(db) as st:
        run_id = new_run(st)
    with Store.open(db, read_only=True) as st:
        assert st.read_only
        with pytest.raises(StoreError, match="read-only"):
            st.set_status(run_id, "complete")
        with pytest.raises(StoreError, match="read-only"):
            st.write_batch(run_id, **make_batch([0]))


def test_closed_store_errors_clearly(db: Path) -> None:
    st = Store(db)
    st.close()
    st.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        st.runs()


# -- runs ----------------------------------------------------------------------------------
def test_create_run_ids_and_duplicates(st: Store) -> None:
    run_id = new_run(st)
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    assert new_run(st, "mine") == "mine"
    with pytest.raises(StoreError, match="already exists"):
        new_run(st, "mine")
    info = st.run(run_id)
    assert info["status"] == "running" and info["error"] is None
    assert info["config"] == {"batch_size": 4, "dtype": "float32"}
    assert info["model"] == "tiny-moe" and info["n_experts"] == 8
    layers = st.layers(run_id)
    assert layers["layer"].to_list() == [3, 7]
    assert layers["module_path"].to_list() == ["model.layers.3.mlp", "model.layers.7.mlp"]
    assert "run_id" not in layers.columns
    assert set(st.runs()["run_id"].to_list()) == {run_id, "mine"}


def test_create_run_rejects_bad_layers(st: Store) -> None:
    with pytest.raises(StoreError, match="module_path"):
        st.create_run(model="m", architecture="a", probe="p", n_experts=8, top_k=2, config={},
                      layers=[{"layer": 0, "n_experts": 8, "top_k": 2}])  # fmt: skip
    assert st.runs().height == 0


def test_unknown_run_lists_existing_runs(st: Store) -> None:
    with pytest.raises(UnknownRunError, match="no runs yet"):
        st.run("ghost")
    new_run(st, "alpha")
    new_run(st, "beta")
    for call in (lambda: st.run("ghost"), lambda: st.routing("ghost"), lambda: st.done_prompt_ids("ghost")):
        with pytest.raises(UnknownRunError) as info:
            call()
        assert "alpha" in str(info.value) and "beta" in str(info.value)


def test_status_transitions(st: Store) -> None:
    run_id = new_run(st)
    st.set_status(run_id, "failed", error="CUDA out of memory")
    info = st.run(run_id)
    assert info["status"] == "failed" and info["error"] == "CUDA out of memory"
    assert info["config"] == {"batch_size": 4, "dtype": "float32"}
    with pytest.raises(StoreError, match="cannot become 'complete'"):
        st.set_status(run_id, "complete")
    with pytest.raises(StoreError, match="'running'"):
        st.write_batch(run_id, **make_batch([0]))
    st.set_status(run_id, "running")
    assert st.run(run_id)["error"] is None
    st.write_batch(run_id, **make_batch([0]))
    st.set_status(run_id, "complete")
    assert st.run(run_id)["status"] == "complete"
    with pytest.raises(StoreError, match="cannot become 'failed'"):
        st.set_status(run_id, "failed", error="late")
    with pytest.raises(StoreError, match="unknown run status"):
        st.set_status(run_id, "done")
    with pytest.raises(StoreError, match="only recorded"):
        st.set_status(run_id, "running", error="x")


# -- ingest ------------------------------------------------------------------------------
def test_round_trip_arrow_in_polars_out(st: Store) -> None:
    run_id = new_run(st)
    batch = make_batch([0, 1, 2])
    st.write_batch(run_id, **batch)

    prompts = st.prompts(run_id)
    assert prompts.columns == [
        "prompt_id",
        "text",
        "label",
        "pair_id",
        "split",
        "meta",
        "n_tokens",
        "content_hash",
    ]
    assert prompts["prompt_id"].to_list() == [0, 1, 2]
    assert prompts["content_hash"].to_list() == [
        prompt_content_hash(f"prompt {p}", [p * 100 + q for q in range(3)]) for p in range(3)
    ]
    assert prompts["meta"].to_list() == batch["prompts"]["meta"].to_pylist()
    assert prompts["meta"][1] is not None and json.loads(prompts["meta"][1]) == {"p": 1}

    tokens = st.tokens(run_id)
    assert tokens.height == 9
    assert tokens["token"].to_list() == batch["tokens"]["token"].to_pylist()
    assert np.allclose(tokens["nll"].to_numpy(), batch["tokens"]["nll"].to_numpy())

    routing = st.routing(run_id)
    assert routing.columns == ["prompt_id", "position", "layer", "experts", "weights", "logits"]
    assert routing.schema["experts"] == pl.List(pl.Int16)
    assert routing.schema["weights"] == pl.List(pl.Float32)
    assert routing.schema["logits"] == pl.List(pl.Float32)
    expected = pl.from_arrow(batch["routing"])
    assert isinstance(expected, pl.DataFrame)
    assert routing["experts"].to_list() == expected["experts"].to_list()
    assert routing["weights"].to_list() == expected["weights"].to_list()
    assert routing["logits"].to_list() == expected["logits"].to_list()
    assert routing["logits"].null_count() == routing.height // 2 > 0
    assert routing.select("prompt_id", "position", "layer").rows() == sorted(
        expected.select("prompt_id", "position", "layer").rows()
    )
    assert "logits" not in st.routing(run_id, logits=False).columns

    stats = st.expert_stats(run_id, layers=[7])
    assert stats.height == 9 and set(stats["layer"].to_list()) == {7}
    assert stats.schema["expert"] == pl.Int16 and "shared" not in stats.columns


def test_write_batch_accepts_polars_and_optional_columns(st: Store) -> None:
    run_id = new_run(st)
    batch = make_batch([5])
    prompts = pl.from_arrow(batch["prompts"]).drop("label", "pair_id", "split", "meta")  # type: ignore[union-attr]
    routing = pl.from_arrow(batch["routing"]).drop("logits")  # type: ignore[union-attr]
    st.write_batch(run_id, prompts=prompts, tokens=batch["tokens"], routing=routing)
    assert st.prompts(run_id)["label"].to_list() == [None]
    assert st.routing(run_id)["logits"].null_count() == 6
    assert st.expert_stats(run_id).height == 0


def test_batch_is_atomic(st: Store) -> None:
    run_id = new_run(st)
    st.write_batch(run_id, **make_batch([0, 1]))
    bad = make_batch([2, 3])
    n = bad["routing"].num_rows
    bad_experts = pa.array([["x", "y"]] * n, pa.list_(pa.string()))  # cannot become SMALLINT[]
    bad["routing"] = bad["routing"].set_column(3, "experts", bad_experts)
    with pytest.raises(StoreError, match="rolled back"):
        st.write_batch(run_id, **bad)
    assert st.done_prompt_ids(run_id) == {0, 1}
    assert set(st.tokens(run_id)["prompt_id"].to_list()) == {0, 1}
    assert st.routing(run_id).height == 12
    assert st.sql("SELECT count(*) AS n FROM prompts WHERE prompt_id >= 2")["n"][0] == 0
    st.write_batch(run_id, **make_batch([2, 3]))  # the connection is usable afterwards
    assert st.done_prompt_ids(run_id) == {0, 1, 2, 3}


def test_batch_validation(st: Store) -> None:
    run_id = new_run(st)
    st.write_batch(run_id, **make_batch([0]))
    with pytest.raises(StoreError, match=r"already has prompts \[0\]"):
        st.write_batch(run_id, **make_batch([0, 1]))
    orphan = make_batch([1])
    orphan["tokens"] = make_batch([9])["tokens"]
    with pytest.raises(StoreError, match="not in this batch"):
        st.write_batch(run_id, **orphan)
    typo = make_batch([1])
    typo["tokens"] = typo["tokens"].rename_columns(["prompt", "position", "token_id", "token", "nll"])
    with pytest.raises(StoreError, match=r"missing columns \['prompt_id'\]"):
        st.write_batch(run_id, **typo)
    assert st.done_prompt_ids(run_id) == {0}


def test_done_prompt_ids(st: Store) -> None:
    run_a, run_b = new_run(st, "a"), new_run(st, "b")
    assert st.done_prompt_ids(run_a) == set()
    st.write_batch(run_a, **make_batch([0, 1, 2]))
    st.write_batch(run_a, **make_batch([10]))
    st.write_batch(run_b, **make_batch([0]))
    assert st.done_prompt_ids(run_a) == {0, 1, 2, 10}
    assert st.done_prompt_ids(run_b) == {0}


def test_v5_store_migrates_to_v6_with_every_token_read_from_a_prompt(db: Path) -> None:
    with schema_upto(5), Store(db) as st:  # a store as the v5 release wrote it
        run_id = new_run(st)
        st.write_batch(run_id, **make_batch([0, 1]))
        assert "segment" not in st.sql("SELECT * FROM tokens").columns
    with Store(db) as st:
        assert st.schema_version == SCHEMA_VERSION
        assert st.tokens(run_id)["segment"].to_list() == ["prompt"] * 6
        assert st.sql("SELECT pid, host, heartbeat_at FROM runs").rows() == [(None, None, None)]
        later = new_run(st)
        batch = make_batch([0])
        batch["tokens"] = batch["tokens"].append_column("segment", pa.array(["prompt", "prompt", "response"]))
        st.write_batch(later, **batch)
        assert st.tokens(later)["segment"].to_list() == ["prompt", "prompt", "response"]

"""Comparisons of two runs match prompts on their content hash (text and token ids), never on row index.

Planted runs: identical prompts (same answer as the in-step scan), disjoint suites (refused),
a partial overlap in a different order under different prompt ids (computed on the shared
prompts only, checked against a filtered store and a plain numpy recomputation), the same text
under another tokenisation (not matched), and a v2 store migrated to v3 (hashes filled in; a
prompt whose tokens are incomplete stays unknown and is refused).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from store_support import schema_upto
from synthetic import lists

from workbench.analysis.compare import drift_coverage, routing_drift
from workbench.store import SCHEMA_VERSION, PromptMismatchError, SchemaVersionError, Store, StoreError
from workbench.store.content import prompt_content_hash

pytestmark = pytest.mark.unit

E, K = 8, 2
LAYERS = (1, 4)
Prompt = tuple[str, list[int]]  # (text, token ids)


def _suite(tag: str, n: int, length: int = 6) -> list[Prompt]:
    return [(f"{tag} prompt {i}", [100 + 7 * i + j for j in range(length + i % 3)]) for i in range(n)]


def _tables(prompts: list[Prompt], pids: list[int], rng: np.random.Generator) -> dict[str, pa.Table]:
    n_tok = [len(ids) for _, ids in prompts]
    pid_tok = np.repeat(np.asarray(pids, np.int32), n_tok)
    pos_tok = np.concatenate([np.arange(n, dtype=np.int32) for n in n_tok])
    token_ids = np.concatenate([np.asarray(ids, np.int32) for _, ids in prompts])
    pid = np.repeat(pid_tok, len(LAYERS))
    pos = np.repeat(pos_tok, len(LAYERS))
    lay = np.tile(np.asarray(LAYERS, np.int32), pid_tok.size)
    experts = np.argsort(rng.random((pid.size, E)), axis=1)[:, :K].astype(np.int16)
    return {
        "prompts": pa.table({
            "prompt_id": pa.array(pids, pa.int32()), "text": [t for t, _ in prompts],
            "label": ["x"] * len(prompts), "n_tokens": pa.array(n_tok, pa.int32()),
        }),
        "tokens": pa.table({
            "prompt_id": pid_tok, "position": pos_tok, "token_id": token_ids,
            "token": [f"t{t}" for t in token_ids],
        }),
        "routing": pa.table({
            "prompt_id": pid, "position": pos, "layer": lay, "experts": lists(experts),
            "weights": lists(np.tile(np.array([0.6, 0.4], np.float32), (pid.size, 1))),
        }),
    }  # fmt: skip


LAYER_ROWS = [
    {"layer": x, "module_path": f"m.{x}", "n_experts": E, "top_k": K, "n_shared": 0} for x in LAYERS
]


def _create(st: Store, run_id: str) -> str:
    return st.create_run(
        model="synthetic", architecture="Synthetic", probe="p", n_experts=E, top_k=K, config={},
        layers=LAYER_ROWS, run_id=run_id,
    )  # fmt: skip


def _save(st: Store, run_id: str, tables: dict[str, pa.Table]) -> str:
    _create(st, run_id)
    st.write_batch(run_id, **tables)
    st.set_status(run_id, "complete")
    return run_id


def _run(st: Store, run_id: str, prompts: list[Prompt], pids: list[int] | None = None, seed: int = 0) -> str:
    pids = list(range(len(prompts))) if pids is None else pids
    return _save(st, run_id, _tables(prompts, pids, np.random.default_rng(seed)))


def _independent_drift(st: Store, run_a: str, run_b: str) -> dict[int, float]:
    """Per-layer mean overlap recomputed in Python: prompts paired by (text, token ids) read back."""

    def content(run: str) -> dict[tuple[str, tuple[int, ...]], int]:
        toks = st.tokens(run)
        out = {}
        for pid, text in st.prompts(run).select("prompt_id", "text").iter_rows():
            ids = tuple(toks.filter(toks["prompt_id"] == pid).sort("position")["token_id"].to_list())
            out[(text, ids)] = pid
        return out

    ca, cb = content(run_a), content(run_b)
    ra = {
        (p, q, la): set(e)
        for p, q, la, e in st.routing(run_a).select("prompt_id", "position", "layer", "experts").iter_rows()
    }
    rb = {
        (p, q, la): set(e)
        for p, q, la, e in st.routing(run_b).select("prompt_id", "position", "layer", "experts").iter_rows()
    }
    sums: dict[int, list[float]] = {}
    for key, pa_ in ca.items():
        if key not in cb:
            continue
        for (p, q, la), s in ra.items():
            if p == pa_ and (cb[key], q, la) in rb:
                t = rb[(cb[key], q, la)]
                sums.setdefault(la, []).append(len(s & t) / max(len(s), len(t), 1))
    return {la: float(np.mean(v)) for la, v in sums.items()}


# -- the hash -----------------------------------------------------------------------------------
def test_store_hash_equals_python_definition_and_capture_hash_is_checked(st: Store) -> None:
    prompts = [("héllo wörld", [5, 6, 7]), ("", []), ("a:b", [1])]
    run = _run(st, "r", prompts)
    stored = dict(st.prompts(run).select("text", "content_hash").iter_rows())
    assert stored == {t: prompt_content_hash(t, ids) for t, ids in prompts}
    assert prompt_content_hash("ab", [1]) != prompt_content_hash("ab", [1, 0])
    assert prompt_content_hash("a", [11]) != prompt_content_hash("a1", [1])
    tables = _tables([("x", [1, 2])], [0], np.random.default_rng(0))
    good = tables["prompts"].append_column("content_hash", pa.array([prompt_content_hash("x", [1, 2])]))
    bad = tables["prompts"].append_column("content_hash", pa.array([prompt_content_hash("x", [2, 1])]))
    _create(st, "w")
    with pytest.raises(StoreError, match=r"content_hash of prompts \[0\].*does not match"):
        st.write_batch("w", prompts=bad, tokens=tables["tokens"], routing=tables["routing"])
    st.write_batch("w", prompts=good, tokens=tables["tokens"], routing=tables["routing"])
    assert st.prompts("w")["content_hash"].to_list() == [prompt_content_hash("x", [1, 2])]


# -- identical, disjoint, partial, re-tokenised ---------------------------------------------------
def test_identical_prompts_give_the_in_step_answer(st: Store) -> None:
    suite = _suite("s", 10)
    _run(st, "a", suite, seed=1)
    _run(st, "b", suite, seed=2)
    match = st.match_prompts("a", "b")
    assert match.identical and match.n_shared == match.n_a == match.n_b == 10
    df = routing_drift(st, "a", "b", n_boot=100)
    expected = _independent_drift(st, "a", "b")
    assert dict(zip(df["layer"].to_list(), df["overlap"].to_list(), strict=True)) == pytest.approx(expected)
    assert set(df["n_shared"].to_list()) == {10} and set(df["n_prompts_a"].to_list()) == {10}
    assert drift_coverage(df, "a", "b").startswith("compared on all 10 prompts")
    assert routing_drift(st, "a", "a", n_boot=100)["overlap"].to_list() == pytest.approx([1.0, 1.0])


def test_disjoint_suites_are_refused(st: Store) -> None:
    _run(st, "domains", _suite("domains", 16))
    _run(st, "refusal", _suite("refusal", 21))
    msg = (
        "runs 'domains' and 'refusal' share no prompts (0 of 16 / 0 of 21 match by text and tokens); "
        "compare two captures of the same probe file"
    )
    for call in (
        lambda: routing_drift(st, "domains", "refusal"),
        lambda: st.match_prompts("domains", "refusal"),
    ):
        with pytest.raises(PromptMismatchError) as info:
            call()
        assert msg in str(info.value)
    assert isinstance(info.value, ValueError)
    assert st.compatible_runs("domains").height == 0
    # same prompt ids and lengths, different prompts: row index would have "matched" all of them
    assert st.match_prompts("domains", "refusal", require=False).n_shared == 0


def test_partial_overlap_is_computed_on_the_shared_prompts_only(st: Store, tmp_path: Path) -> None:
    suite_a = _suite("s", 16)
    shared = [suite_a[i] for i in (15, 0, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14)]  # 12, in another order
    suite_b = _suite("other", 8)[:4] + shared[:6] + _suite("other2", 4) + shared[6:]
    pids_b = [500 + 3 * i for i in range(len(suite_b))]  # different ids: row index cannot line up
    _run(st, "a", suite_a, seed=1)
    _run(st, "b", suite_b, pids_b, seed=2)
    df = routing_drift(st, "a", "b", n_boot=200)
    assert drift_coverage(df, "a", "b").startswith("compared on 12 shared prompts of 16 in a and 20 in b")
    assert df["n_prompts"].to_list() == [12, 12]
    assert df["n_tokens"].to_list() == [sum(len(ids) for _, ids in shared)] * 2
    assert dict(zip(df["layer"].to_list(), df["overlap"].to_list(), strict=True)) == pytest.approx(
        _independent_drift(st, "a", "b")
    )
    # against a filtered store holding only the shared prompts, both under A's prompt ids
    id_in_a = {text: suite_a.index((text, ids)) for text, ids in shared}
    filtered = tmp_path / "filtered.duckdb"
    with Store(filtered) as fs:
        for run in ("a", "b"):
            rows = [r for r in st.prompts(run).iter_rows(named=True) if r["text"] in id_in_a]
            to_a = {r["prompt_id"]: id_in_a[r["text"]] for r in rows}
            toks = st.tokens(run, prompt_ids=list(to_a))
            rout = st.routing(run, prompt_ids=list(to_a), logits=False)
            tables = {
                "prompts": pa.table({
                    "prompt_id": pa.array([to_a[r["prompt_id"]] for r in rows], pa.int32()),
                    "text": [r["text"] for r in rows],
                    "n_tokens": pa.array([r["n_tokens"] for r in rows], pa.int32()),
                }),
                "tokens": toks.with_columns(pl.col("prompt_id").replace_strict(to_a, return_dtype=pl.Int32))
                .select("prompt_id", "position", "token_id", "token").to_arrow(),
                "routing": rout.with_columns(pl.col("prompt_id").replace_strict(to_a, return_dtype=pl.Int32))
                .select("prompt_id", "position", "layer", "experts", "weights").to_arrow(),
            }  # fmt: skip
            _save(fs, run, tables)
        assert fs.match_prompts("a", "b").identical
        ref = routing_drift(fs, "a", "b", n_boot=200)
    for col in ("overlap", "ci_low", "ci_high", "n_tokens", "n_prompts"):
        assert df[col].to_list() == pytest.approx(ref[col].to_list()), col
    compatible = st.compatible_runs("a")
    assert compatible.rows() == [("b", 12, 20)]


def test_same_text_other_tokenisation_is_not_matched(st: Store) -> None:
    suite = _suite("s", 6)
    retok = [(text, [i + 1 for i in ids]) for text, ids in suite]
    _run(st, "a", suite)
    _run(st, "b", retok)
    with pytest.raises(PromptMismatchError, match=r"share no prompts \(0 of 6 / 0 of 6"):
        routing_drift(st, "a", "b")
    half = retok[:3] + suite[3:]
    _run(st, "c", half)
    assert st.match_prompts("a", "c").n_shared == 3
    assert routing_drift(st, "a", "c", n_boot=50)["n_prompts"].to_list() == [3, 3]


def test_duplicate_prompts_pair_occurrence_by_occurrence(st: Store) -> None:
    p = _suite("s", 3)
    _run(st, "a", [p[0], p[0], p[1]])
    _run(st, "b", [p[0], p[2], p[1]])
    match = st.match_prompts("a", "b")
    assert (match.n_shared, match.n_a, match.n_b) == (2, 3, 3)


# -- an old store ---------------------------------------------------------------------------------
def test_v2_store_is_migrated_and_unknown_hashes_refuse(db: Path) -> None:
    with schema_upto(2), Store(db) as st:  # a store as the v2 release wrote it: prompts without content_hash
        assert st.schema_version == 2
        for run_id, suite, broken in (("old-a", _suite("s", 5), False), ("old-b", _suite("s", 5), False),
                                      ("old-c", _suite("s", 5), True)):  # fmt: skip
            _create(st, run_id)
            tables = _tables(suite, list(range(5)), np.random.default_rng(len(run_id) + broken))
            con = st.con
            for name, table in tables.items():
                if broken and name == "tokens":  # prompt 2 lost its last token row
                    keep = [
                        not (p == 2 and q == 5)
                        for p, q in zip(
                            table["prompt_id"].to_pylist(), table["position"].to_pylist(), strict=True
                        )
                    ]
                    table = table.filter(pa.array(keep))
                con.register("v", table)
                cols = ", ".join(table.column_names)
                con.execute(f"INSERT INTO {name} (run_id, {cols}) SELECT ?, {cols} FROM v", [run_id])
                con.unregister("v")
            st.set_status(run_id, "complete")
    with pytest.raises(
        SchemaVersionError,
        match=rf"(?s)v2, older than v{SCHEMA_VERSION}.*import workbench.store as s; s.open\(",
    ):
        Store(db, read_only=True)
    with Store(db) as st:
        assert st.schema_version == SCHEMA_VERSION
        hashes = st.prompts("old-a").select("text", "content_hash").rows()
        assert hashes == [(t, prompt_content_hash(t, ids)) for t, ids in _suite("s", 5)]
        assert st.prompts("old-c")["content_hash"].null_count() == 1
        df = routing_drift(st, "old-a", "old-b", n_boot=50)
        assert df["n_shared"].to_list() == [5, 5]
        with pytest.raises(PromptMismatchError, match=r"(?s)no content hash.*'old-c': 1 of 5.*Re-capture"):
            routing_drift(st, "old-a", "old-c")
    con = duckdb.connect(str(db))
    assert con.execute("SELECT max(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    con.close()


# -- the views: CLI, report, dashboard ------------------------------------------------------------
@pytest.fixture
def three_runs(db: Path) -> Path:
    """``a`` (16 prompts), ``b`` (12 of them + 8 others), ``lone`` (a suite nobody else has)."""
    suite = _suite("s", 16)
    with Store(db) as st:
        _run(st, "a", suite, seed=1)
        _run(st, "b", suite[:12] + _suite("o", 8), [100 + i for i in range(20)], seed=2)
        _run(st, "lone", _suite("lone", 5), seed=3)
    return db


def test_cli_says_how_many_prompts_and_refuses_disjoint(three_runs: Path) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app as cli_app

    runner = CliRunner()
    base = ["analyse", "drift", "--db", str(three_runs), "--run", "a", "--set", "n_boot=50"]
    ok = runner.invoke(cli_app, [*base, "--compare", "b"])
    assert ok.exit_code == 0, ok.output
    assert "compared on 12 shared prompts of 16 in a and 20 in b" in " ".join(ok.output.split())
    bad = runner.invoke(cli_app, [*base, "--compare", "lone"])
    assert bad.exit_code != 0
    text = " ".join(bad.output.split())
    assert "share no prompts (0 of 16 / 0 of 5 match by text and tokens)" in text
    assert "compare two captures of the same probe file" in text


def test_report_compare_section(three_runs: Path) -> None:
    from workbench.reports.build import compute_sections

    with Store(three_runs, read_only=True) as st:
        _, sections = compute_sections(st, "a", compare="b", analyses=["drift"])
        _, refused = compute_sections(st, "a", compare="lone", analyses=["drift"])
    (drift,) = sections
    assert drift.status == "ok"
    assert drift.findings[0].startswith("Compared on 12 shared prompts of 16 in this run and 20 in b")
    (no,) = refused
    assert no.status == "skipped"
    assert "share no prompts (0 of 16 / 0 of 5 match by text and tokens)" in no.reason


def test_dashboard_compare_picker_offers_only_runs_sharing_prompts(three_runs: Path) -> None:
    from dashboards import data
    from dashboards.app import create_app
    from dashboards.components.pickers import compare_options
    from dashboards.views import runs

    data.clear_cache()
    db = str(three_runs)
    assert [o["value"] for o in compare_options(db, "a")] == ["b"]
    assert "12 of 20 prompts shared" in compare_options(db, "a")[0]["label"]
    assert compare_options(db, "lone") == []
    out = runs.run_drift(db, "a", "b")
    assert "Compared on 12 shared prompts of 16 in a and 20 in b" in str(out)
    with pytest.raises(PromptMismatchError, match="share no prompts"):
        runs.run_drift(db, "a", "lone")

    app = create_app(db)
    from dashboards.pages import runs as page

    with app.server.test_request_context():
        options, keep, note = page.update_compare("a", "lone")
        assert [o["value"] for o in options] == ["b"] and keep is None and note is None, (
            options,
            keep,
            str(note),
        )
        assert page.update_compare("a", "b")[1] == "b"
        options, keep, note = page.update_compare("lone", "a")
        assert options == [] and keep is None
        assert "No other run shares a prompt with lone" in str(note)
        (picker,) = [
            c
            for c in page.layout(run="a", compare="lone").children
            if getattr(c, "id", None) == "runs-compare"
        ]
        assert [o["value"] for o in picker.options] == ["b"] and picker.value is None  # incompatible: dropped
    data.clear_cache()


def test_notebook_compare(three_runs: Path) -> None:
    import workbench as wb

    with wb.open(three_runs) as session:
        drift = session.run("a").drift("b", n_boot=50)
        assert drift.options["prompts"].startswith("compared on 12 shared prompts of 16 in a and 20 in b")
        with pytest.raises(PromptMismatchError, match="share no prompts"):
            session.run("a").drift(session.run("lone"))

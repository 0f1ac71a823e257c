"""The notebook API: wb.open(db).run(R).<analysis>(...) returns DataFrames that plot themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest
from synthetic import save_run, skeleton

import workbench as wb
from workbench.catalog import ANALYSES, run_analysis
from workbench.frames import AnalysisFrame
from workbench.session import Run, Session, method_name
from workbench.store import Store, StoreError

pytestmark = pytest.mark.integration

E, K = 8, 2
LABELS = ("code", "math", "prose")


def _run(path: Path, seed: int, run_id: str) -> str:
    """Random top-2 routing with ``code`` planted on expert 5 at layer 1 (80% of its tokens)."""
    rng = np.random.default_rng(seed)
    labels = [lab for lab in LABELS for _ in range(12)]
    sk = skeleton(labels, rng.integers(8, 16, size=len(labels)), (0, 1))
    experts = np.argsort(rng.random((sk.n_rows, E)), axis=1)[:, :K].astype(np.int16)
    hit = (np.asarray(labels)[sk.pid] == "code") & (sk.lay == 1) & (rng.random(sk.n_rows) < 0.8)
    experts[hit, 0] = 5
    experts[hit & (experts[:, 1] == 5), 1] = 6
    logits = rng.normal(size=(sk.n_rows, E)).astype(np.float32)
    weights = np.tile(np.array([0.6, 0.4], np.float32), (sk.n_rows, 1))
    return save_run(
        path, sk, experts=experts, weights=weights, n_experts=E, top_k=K, run_id=run_id, logits=logits
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("session") / "runs.duckdb"
    _run(path, seed=1, run_id="first")
    _run(path, seed=2, run_id="second")
    return path


def test_open_returns_session_with_the_store_readers(db: Path) -> None:
    with wb.open(db) as session:
        assert isinstance(session, Session)
        assert session.runs()["run_id"].to_list() == ["first", "second"]
        routing = session.routing("first", layers=[1])  # Store reader, handed through
        assert set(routing["layer"].unique()) == {1}
        assert "routing" in dir(session) and "specialisation" not in dir(session)
        assert "first" in session._repr_html_()
        with pytest.raises(StoreError):
            session.run("ghost")
    with pytest.raises(StoreError):  # the session closed the store
        session.runs()


def test_run_defaults_to_the_latest_complete_run(db: Path) -> None:
    with wb.open(db) as session:
        assert session.run().id == "second"


def test_specialisation_returns_the_registry_table_and_plots(db: Path) -> None:
    with wb.open(db) as session:
        run = session.run("first")
        spec = run.specialisation(by="label", n_perm=199)
        with Store(db, read_only=True) as st:
            direct = run_analysis("specialisation", st, "first", n_perm=199)
    assert isinstance(spec, pl.DataFrame) and isinstance(spec, AnalysisFrame)
    assert spec.analysis == "specialisation" and spec.options == {"n_perm": 199}
    for col in ("layer", "expert", "label", "share", "lift", "ci_low", "ci_high", "p", "q"):
        assert col in spec.columns
    # Same point estimates as the registry (the bootstrap CIs use the same seed too).
    assert spec.select("layer", "expert", "label", "share", "lift").equals(
        direct.select("layer", "expert", "label", "share", "lift")
    )
    top = spec.sort("lift", descending=True).row(0, named=True)
    assert (top["layer"], top["expert"], top["label"]) == (1, 5, "code")
    fig = spec.plot(label="code")
    assert isinstance(fig, go.Figure) and len(fig.data) >= 1
    assert "<table" in spec._repr_html_() or "<div" in spec._repr_html_()
    # Derived frames are plain polars again.
    assert type(spec.filter(pl.col("label") == "code")) is pl.DataFrame


def test_every_registered_analysis_is_a_method(db: Path) -> None:
    with wb.open(db) as session:
        run = session.run("first")
        names = set(dir(run))
        for name in ANALYSES:
            assert method_name(name) in names
            assert callable(getattr(run, method_name(name)))
        with pytest.raises(AttributeError, match="specialisation"):
            _ = run.specialization  # the error lists what exists


def test_comparison_analysis_takes_the_other_run(db: Path) -> None:
    with wb.open(db) as session:
        first, second = session.run("first"), session.run("second")
        drift = first.drift(second)
        assert drift.options["compare"] == "second"
        assert set(drift["layer"].to_list()) == {0, 1}
        assert all(0.0 <= v <= 1.0 for v in drift["overlap"].to_list())
        assert isinstance(drift.plot(), go.Figure)
        same = first.drift("first")
        assert same["overlap"].to_list() == [1.0, 1.0]


def test_bad_grouping_and_repr(db: Path) -> None:
    with wb.open(db) as session:
        run = session.run("first")
        assert isinstance(run, Run)
        with pytest.raises(ValueError, match="available: label"):
            run.specialisation(by="domain")
        assert "synthetic" in repr(run) and "top-2" in repr(run)
        assert "<table>" in run._repr_html_()
        assert run.layers()["layer"].to_list() == [0, 1]
        assert run.prompts(labels=["math"]).height == 12


def test_frames_derived_by_polars_keep_plotting(db: Path) -> None:
    with wb.open(db) as session:
        load = session.run("first").load()
    # polars builds head()/slice() as type(self) (the derived frame keeps plotting), sort() as a plain frame
    assert type(load.sort("f")) is pl.DataFrame
    head = load.head(4)
    assert isinstance(head, AnalysisFrame)
    assert head.analysis == "load" and head.options == {}
    assert isinstance(head.plot(), go.Figure)
    assert "load (" in repr(load)


def test_wb_capture_routing_is_unaffected_by_importing_the_capture_package(tmp_path: Path) -> None:
    import types

    import workbench.capture
    import workbench.capture.engine
    from workbench.probefile import Prompt

    # the package is a plain module (no callable-module trick), and the function has its own name
    assert type(workbench.capture) is types.ModuleType and not callable(workbench.capture)
    assert wb.capture is workbench.capture
    assert wb.capture_routing.__name__ == "capture_routing" and callable(wb.intervene)
    prompts = [Prompt(prompt_id=i, text=f"hello {i}", label="x") for i in range(2)]
    run_id = wb.capture_routing("tiny:qwen2_moe", prompts, tmp_path / "c.duckdb", progress=False)
    with wb.open(tmp_path / "c.duckdb") as db:
        assert db.run(run_id).info["status"] == "complete"

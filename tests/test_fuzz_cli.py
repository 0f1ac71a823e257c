"""Fuzzing the command line with hypothesis (issue 15, item 7): random run ids, labels, layer choices,
spans, numbers and paths for runs, export, analyse, resonate, report, resume and import-routing.

They run against the synthetic dashboard store (``test_dashboard.dashboard_db``: one run, 2 layers
× 8 experts, labels code/math/prose; no model), built once for the module. The property
(:func:`fuzz_support.clear_outcome`): each command succeeds, or exits 2 with one ``error:`` line
(or click's usage message for a malformed command line); never a traceback, never a hang. A
success is checked for what it claims (the file it says it wrote is there). The ``@example``
inputs are failures these tests found, fixed in the code.
"""

from __future__ import annotations

import json
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzz_support import budget, clear_outcome
from hypothesis import example, given
from hypothesis import strategies as st
from test_dashboard import RUN, dashboard_db
from typer.testing import CliRunner, Result

from workbench.cli import app

pytestmark = pytest.mark.unit

runner = CliRunner()

NAMES = st.one_of(
    st.just(RUN),
    st.sampled_from(["a[/]b", "[link=https://x]click[/link]", "x' OR 1=1; --", "\x1b[31mred", "", " ", "-r"]),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
)
"""Run ids and labels: the run, markup, SQL, control characters, empty, an option-like word, anything."""
LABELS = st.one_of(st.sampled_from(["code", "math", "prose"]), NAMES)
NUMBERS = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["99999999999999999999", "-0", "1e3", "nan", "inf", "0x10", "٣", "", " 1", "1,2", "0-1"]),
)
"""Numbers as typed: small, huge, negative, non-finite, other scripts' digits, lists, ranges, empty."""
FILE_NAME = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/"), min_size=1, max_size=12
).filter(lambda name: name not in (".", ".."))
SUFFIXES = st.sampled_from([".csv", ".parquet", ".json", ".html", ".txt", "", ".CSV"])


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dashboard_db(tmp_path_factory.mktemp("fuzz-cli") / "store.duckdb")


def _out_path(name: str, suffix: str) -> tuple[Path, Callable[[], None]]:
    """A fresh temporary folder holding ``name + suffix`` (a path some commands write), and its cleanup."""
    folder = tempfile.TemporaryDirectory()
    return Path(folder.name) / f"{name}{suffix}", folder.cleanup


def _invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def test_the_store_and_a_warm_cli(db: Path) -> None:
    """The module's store lists its run (the CLI's imports are paid here, not by a fuzz deadline)."""
    result = _invoke("runs", "--db", str(db))
    assert clear_outcome(result) == "ok" and RUN in result.output


@budget(25, 20)
@given(
    kind=st.sampled_from(["store", "missing", "folder", "text file", "nul"]),
    name=FILE_NAME,
    run=NAMES,
    target=FILE_NAME,
)
def test_runs_and_export(db: Path, kind: str, name: str, run: str, target: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = {
            "store": db,
            "missing": Path(tmp) / f"{name}.duckdb",
            "folder": Path(tmp),
            "text file": Path(tmp) / "notes.duckdb",
            "nul": Path(tmp) / f"{name}\x00.duckdb",
        }[kind]
        if kind == "text file":
            store.write_text("not a store\n" * 50)
        listed = _invoke("runs", "--db", str(store))
        assert clear_outcome(listed) == ("ok" if kind == "store" else clear_outcome(listed))
        if kind != "store":
            assert listed.exit_code == 2
        parquet = Path(tmp) / "out" / target
        exported = _invoke("export", "--db", str(store), "--run", run, "--parquet", str(parquet))
        if clear_outcome(exported) == "ok":
            assert kind == "store" and run == RUN
            assert (parquet / "routing.parquet").is_file()  # what it printed it wrote is there
        elif kind == "store" and run == RUN:
            assert "\x00" in target, exported.output  # only a path no file can have refuses the run


@budget(30, 30)
@given(
    name=st.one_of(st.sampled_from(["load", "balance", "specialisation", "drift", "coactivation"]), NAMES),
    run=NAMES,
    compare=st.one_of(st.none(), NAMES),
    settings=st.lists(
        st.one_of(
            st.builds(lambda v: f"layers={v}", NUMBERS),
            st.builds(lambda v: f"seed={v}", NUMBERS),
            st.builds(lambda v: f"n_boot={v}", st.sampled_from(["10", "1", "0", "x"])),
            st.text(max_size=12),
        ),
        max_size=2,
    ),
    out=st.one_of(st.none(), st.tuples(FILE_NAME, SUFFIXES)),
)
@example(
    name="load", run=RUN, compare=None, settings=["layers=99999999999999999999"], out=None
)  # was empty, slow
@example(name="load", run=RUN, compare=None, settings=["layers="], out=None)  # was an empty table
@example(name="load", run=RUN, compare=None, settings=[], out=("x\x00", ".csv"))
def test_analyse(
    db: Path, name: str, run: str, compare: str | None, settings: list[str], out: tuple[str, str] | None
) -> None:
    args = ["analyse", name, "--db", str(db), "--run", run]
    if compare is not None:
        args += ["--compare", compare]
    for pair in settings:
        args += ["--set", pair]
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if out is not None:
        path, cleanup = _out_path(*out)
        args += ["--out", str(path)]
    try:
        result = _invoke(*args)
        if clear_outcome(result) == "ok" and out is not None:
            assert path.is_file() and f"to {path}" in result.output
    finally:
        cleanup()


def test_analyse_refuses_layers_the_run_does_not_have(db: Path) -> None:
    """The two ways a layer choice used to give an empty table (exit 0): both are named now."""
    result = _invoke("analyse", "load", "--db", str(db), "--run", RUN, "--set", "layers=7")
    assert clear_outcome(result) == "error"
    assert f"run '{RUN}' has no MoE layer 7; its MoE layers are [0, 1]" in result.output
    empty = _invoke("analyse", "load", "--db", str(db), "--run", RUN, "--set", "layers=")
    assert clear_outcome(empty) == "error" and "layers is empty" in empty.output
    chosen = _invoke("analyse", "load", "--db", str(db), "--run", RUN, "--set", "layers=1")
    rows = [line.split() for line in chosen.output.splitlines() if line.split()[:1] == ["1"]]
    assert clear_outcome(chosen) == "ok" and len(rows) == 8  # layer 1's 8 experts, one row each


SPANS = st.one_of(
    st.just("all"),
    st.builds(lambda k, n: f"{k}:{n}", st.sampled_from(["last", "first"]), NUMBERS),
    st.builds(lambda a, b: f"positions:{a}-{b}", NUMBERS, NUMBERS),
    st.text(max_size=12),
)


@budget(25, 30)
@given(
    run=st.one_of(st.just(RUN), NAMES),
    target=LABELS,
    control=LABELS,
    span=SPANS,
    method=st.sampled_from(["rd", "ftri", "causal", "x"]),
    drill=st.one_of(st.none(), st.builds(lambda a, b: f"{a}:{b}", NUMBERS, NUMBERS), st.text(max_size=6)),
    out=st.one_of(st.none(), st.tuples(FILE_NAME, SUFFIXES)),
)
@example(run="nope", target="code", control="math", span="all", method="rd", drill=None, out=None)
@example(
    run=RUN,
    target="code",
    control="math",
    span="last:99999999999999999999",
    method="rd",
    drill=None,
    out=None,
)
def test_resonate(
    db: Path,
    run: str,
    target: str,
    control: str,
    span: str,
    method: str,
    drill: str | None,
    out: tuple[str, str] | None,
) -> None:
    args = ["resonate", "--db", str(db), "--run", run, "--target", target, "--control", control]
    args += ["--span", span, "--method", method, "--no-store"]
    if drill is not None:
        args += ["--drill", drill]
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if out is not None:
        path, cleanup = _out_path(*out)
        args += ["--out", str(path)]
    try:
        result = _invoke(*args)
        outcome = clear_outcome(result)
        if outcome == "ok":
            assert run == RUN and target != control
            if out is not None:
                assert path.is_file()
        if run != RUN and outcome == "error":  # an unknown run is named as such, not as missing labels
            assert "no run" in result.output or "--out" in result.output or "--drill" in result.output, (
                result.output
            )
    finally:
        cleanup()


@budget(4, 60)
@given(run=st.one_of(st.just(RUN), NAMES), name=FILE_NAME, suffix=st.sampled_from([".html", ".htm", ".txt"]))
@example(run=RUN, name="\n", suffix=".txt")  # the error quoted a newline: two lines
def test_report(db: Path, run: str, name: str, suffix: str) -> None:
    path, cleanup = _out_path(name, suffix)
    try:
        result = _invoke("report", "--db", str(db), "--run", run, "--out", str(path), "--analysis", "load")
        if clear_outcome(result) == "ok":
            assert path.is_file() and path.stat().st_size > 0
    finally:
        cleanup()


@budget(15, 20)
@given(run=NAMES, missing=st.booleans(), name=FILE_NAME)
def test_resume(db: Path, run: str, missing: bool, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / f"{name}.duckdb" if missing else db
        result = _invoke("resume", "--db", str(store), "--run", run, "-q")
        if clear_outcome(result) == "ok":  # only the synthetic run, complete already: nothing to do
            assert run == RUN and not missing and result.output.strip() == RUN
        if missing:
            assert not store.exists()  # a mistyped --db is named, never created empty


ROUTED = st.lists(st.lists(st.integers(-2, 300), min_size=0, max_size=3), min_size=0, max_size=3)
IMPORT_LINES = st.lists(
    st.one_of(
        st.builds(lambda ids: json.dumps({"routed_experts": [ids]}), ROUTED),
        st.builds(lambda ids: json.dumps({"meta_info": {"routed_experts": ids}}), ROUTED),
        st.text(max_size=30),
    ),
    max_size=3,
)


@budget(25, 20)
@given(
    lines=IMPORT_LINES,
    fmt=st.sampled_from(["vllm", "sglang", "x"]),
    layers=st.one_of(st.none(), NUMBERS, st.sampled_from(["0-99999999999", "5-1", "1,3", "a-b"])),
    numbers=st.fixed_dictionaries(
        {}, optional={o: NUMBERS for o in ("--experts", "--top-k", "--num-layers")}
    ),
)
@example(lines=['{"routed_experts": [[[1, 2]]]}'], fmt="vllm", layers="0-99999999999", numbers={})  # hung
def test_import_routing(lines: list[str], fmt: str, layers: str | None, numbers: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "engine.jsonl"
        source.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8")
        args = ["import-routing", str(source), "--format", fmt, "--db", str(Path(tmp) / "s.duckdb")]
        if layers is not None:
            args += ["--layers", layers]
        for option, value in numbers.items():
            args += [option, value]
        result = _invoke(*args)
        if clear_outcome(result) == "ok":
            assert result.output.strip().splitlines()[-1]  # the run id it imported


@budget(10, 20)
@given(text=st.text(string.printable, max_size=20))
def test_the_analysis_list_and_help_never_fail(text: str) -> None:
    assert clear_outcome(_invoke("analyse", "--list")) == "ok"
    clear_outcome(_invoke(text, "--help"))

"""The bad-input table (issue 15): each bad input the trials tried, and its neighbours, in one test.

Each row is a command line, the fragment its one-line message must hold and the exit code: every
bad input exits 2 with a single ``error:`` line (or click's usage message for a malformed option),
never a traceback. Rows read the synthetic store of ``test_dashboard.py`` (``{db}``: run
``dash-run``, labels code/math/prose, layers 0-1) or probe files written here (``{probe:NAME}``).
Cases that need a model run or a damaged checkpoint or store are in tests/test_bad_inputs.py (they
are listed in docs/reliability.md with this table); none is repeated here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fuzz_support import clear_outcome
from test_dashboard import dashboard_db
from typer.testing import CliRunner

from workbench.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()

PROBES: dict[str, bytes] = {
    "ok.jsonl": b'{"text": "hello", "label": "a"}\n',
    "empty.jsonl": b"\n",
    "bad-json.jsonl": b'{"text": "ok", "label": "a"}\n{"text": "broken", "label": \n',
    "no-label.jsonl": b'{"text": "ok", "label": "a"}\n{"text": "no label"}\n',
    "list-label.jsonl": b'{"text": "ok", "label": ["a"]}\n',
    "deep.jsonl": b'{"text": "ok", "label": "a", "meta": ' + b"[" * 50_000 + b"\n",
    "long-number.jsonl": b'{"text": "ok", "label": ' + b"7" * 5000 + b"}\n",
    "meta-list.jsonl": b'{"text": "x", "label": "a", "meta": [1]}\n',
    "meta-deep.jsonl": b'{"text": "x", "label": "a", "meta": {"k": ' + b"[" * 80 + b"]" * 80 + b"}}\n",
    "not-an-object.jsonl": b"[1, 2]\n",
    "no-text.csv": b"prompt,label\nhello,a\n",
    "empty-text.csv": b"text,label\nhello,a\n,b\n",
    "probe.tsv": b"text\tlabel\nhello\ta\n",
    "latin1.jsonl": b'{"text": "caf\xe9", "label": "a"}\n',
    "broken.parquet": b"PAR1 not really parquet PAR1",
    "engine.jsonl": b'{"routed_experts": [[[1, 2]]]}\n',
    "engine-bad.jsonl": b"{not json\n",
}

CAPTURE = ["capture", "-m", "tiny:qwen2_moe", "--db", "{tmp}/s.duckdb", "-q", "-p"]
ANALYSE = ["analyse", "load", "--db", "{db}", "--run", "dash-run"]
RESONATE = [
    "resonate",
    "--db",
    "{db}",
    "--run",
    "dash-run",
    "--target",
    "code",
    "--control",
    "math",
    "--no-store",
]
REPORT = ["report", "--db", "{db}", "--run", "dash-run"]
IMPORT = ["import-routing", "{probe:engine.jsonl}", "--format", "vllm", "--db", "{tmp}/i.duckdb"]

# (id, command line, fragment of the message, exit code)
TABLE: list[tuple[str, list[str], str, int]] = [
    # capture: the probe file, validated whole before the run starts
    ("capture-probe-missing", [*CAPTURE, "{tmp}/nope.jsonl"], "nope.jsonl: no such probe file", 2),
    ("capture-probe-format", [*CAPTURE, "{probe:probe.tsv}"], "unknown probe format '.tsv'", 2),
    ("capture-probe-empty", [*CAPTURE, "{probe:empty.jsonl}"], "the probe file has no prompts", 2),
    ("capture-probe-bad-json", [*CAPTURE, "{probe:bad-json.jsonl}"], "bad-json.jsonl:2: not valid JSON", 2),
    (
        "capture-probe-no-label",
        [*CAPTURE, "{probe:no-label.jsonl}"],
        ":2: missing required field(s) label",
        2,
    ),
    (
        "capture-probe-list-label",
        [*CAPTURE, "{probe:list-label.jsonl}"],
        "`label` must be a string or a number",
        2,
    ),
    ("capture-probe-deep", [*CAPTURE, "{probe:deep.jsonl}"], ":1: not valid JSON (nested too deeply)", 2),
    ("capture-probe-long-number", [*CAPTURE, "{probe:long-number.jsonl}"], "(4300 digits)", 2),
    (
        "capture-probe-meta-list",
        [*CAPTURE, "{probe:meta-list.jsonl}"],
        "`meta` must be a JSON object, got list",
        2,
    ),
    (
        "capture-probe-meta-deep",
        [*CAPTURE, "{probe:meta-deep.jsonl}"],
        "`meta` nests deeper than 64 levels",
        2,
    ),
    (
        "capture-probe-not-object",
        [*CAPTURE, "{probe:not-an-object.jsonl}"],
        "each line must be a JSON object",
        2,
    ),
    ("capture-probe-csv-no-text", [*CAPTURE, "{probe:no-text.csv}"], ":1: header lacks column(s) text", 2),
    (
        "capture-probe-csv-empty-text",
        [*CAPTURE, "{probe:empty-text.csv}"],
        ":3: missing required field(s) text",
        2,
    ),
    ("capture-probe-latin1", [*CAPTURE, "{probe:latin1.jsonl}"], ":1: not valid UTF-8 (byte 0xe9", 2),
    ("capture-probe-parquet", [*CAPTURE, "{probe:broken.parquet}"], "not a readable Parquet file", 2),
    ("capture-probe-nul", [*CAPTURE, "{tmp}/p\x00.jsonl"], "Invalid value", 2),
    # capture: options
    (
        "capture-model-missing",
        ["capture", "-m", "{tmp}/no-model", "-p", "{probe:ok.jsonl}", "--db", "{tmp}/s.duckdb"],
        "no such model directory",
        2,
    ),
    (
        "capture-model-arch",
        ["capture", "-m", "tiny:no_such_arch", "-p", "{probe:ok.jsonl}", "--db", "{tmp}/s.duckdb"],
        "no_such_arch",
        2,
    ),
    (
        "capture-tp-plan",
        [*CAPTURE, "{probe:ok.jsonl}", "--tp-plan", "auto"],
        "--tp-plan shards the model across torchrun ranks",
        2,
    ),
    (
        "capture-batch-zero",
        [*CAPTURE, "{probe:ok.jsonl}", "--batch-size", "0"],
        "Invalid value for '--batch-size'",
        2,
    ),
    ("capture-logits", [*CAPTURE, "{probe:ok.jsonl}", "--logits", "fp8"], "Invalid value for '--logits'", 2),
    (
        "capture-backend",
        [*CAPTURE, "{probe:ok.jsonl}", "--backend", "magic"],
        "Invalid value for '--backend'",
        2,
    ),
    # resume
    ("resume-store-missing", ["resume", "--db", "{tmp}/none.duckdb", "--run", "r"], "no store at", 2),
    ("resume-run-unknown", ["resume", "--db", "{db}", "--run", "nope"], "no run 'nope'", 2),
    (
        "resume-store-directory",
        ["resume", "--db", "{tmp}", "--run", "r"],
        "is a directory; a store is a single .duckdb file",
        2,
    ),
    # runs, export
    ("runs-store-missing", ["runs", "--db", "{tmp}/none.duckdb"], "no store at", 2),
    (
        "runs-store-directory",
        ["runs", "--db", "{tmp}"],
        "is a directory; a store is a single .duckdb file",
        2,
    ),
    (
        "export-run-unknown",
        ["export", "--db", "{db}", "--run", "nope", "--parquet", "{tmp}/pq"],
        "existing runs: dash-run",
        2,
    ),
    (
        "export-store-missing",
        ["export", "--db", "{tmp}/none.duckdb", "--run", "r", "--parquet", "{tmp}/pq"],
        "no store at",
        2,
    ),
    (
        "export-target-a-file",
        ["export", "--db", "{db}", "--run", "dash-run", "--parquet", "{probe:ok.jsonl}"],
        "ok.jsonl",
        2,
    ),
    # analyse
    ("analyse-no-name", ["analyse", "--db", "{db}", "--run", "dash-run"], "give an analysis NAME", 2),
    ("analyse-no-db", ["analyse", "load", "--run", "dash-run"], "--db and --run are required", 2),
    (
        "analyse-unknown",
        ["analyse", "nope", "--db", "{db}", "--run", "dash-run"],
        "unknown analysis 'nope'; available:",
        2,
    ),
    (
        "analyse-run-unknown",
        ["analyse", "load", "--db", "{db}", "--run", "nope"],
        "no run 'nope' in the store",
        2,
    ),
    (
        "analyse-store-missing",
        ["analyse", "load", "--db", "{tmp}/none.duckdb", "--run", "r"],
        "no store at",
        2,
    ),
    (
        "analyse-out-suffix",
        [*ANALYSE, "--out", "{tmp}/x.txt"],
        "--out must end in .csv, .parquet or .json",
        2,
    ),
    ("analyse-out-unwritable", [*ANALYSE, "--out", "{probe:ok.jsonl}/x.csv"], "cannot be written", 2),
    ("analyse-set-no-equals", [*ANALYSE, "--set", "n_boot"], "--set takes KEY=VALUE", 2),
    ("analyse-set-unknown-key", [*ANALYSE, "--set", "bogus=1"], "load has no option 'bogus'", 2),
    ("analyse-set-not-a-number", [*ANALYSE, "--set", "n_boot=x"], "--set 'n_boot=x'", 2),
    (
        "analyse-set-layer-missing",
        [*ANALYSE, "--set", "layers=7"],
        "has no MoE layer 7; its MoE layers are [0, 1]",
        2,
    ),
    ("analyse-set-layers-empty", [*ANALYSE, "--set", "layers="], "layers is empty", 2),
    (
        "analyse-compare-missing",
        ["analyse", "drift", "--db", "{db}", "--run", "dash-run"],
        "compares two runs",
        2,
    ),
    ("analyse-compare-extra", [*ANALYSE, "--compare", "dash-run"], "reads one run; --compare is only for", 2),
    (
        "analyse-needs-model",
        ["analyse", "expert-similarity", "--db", "{db}", "--run", "dash-run"],
        "needs the model",
        2,
    ),
    # report
    ("report-out-suffix", [*REPORT, "--out", "{tmp}/r.txt"], "--out must end in .html", 2),
    (
        "report-run-unknown",
        ["report", "--db", "{db}", "--run", "nope", "--out", "{tmp}/r.html"],
        "no run 'nope'",
        2,
    ),
    (
        "report-analysis-unknown",
        [*REPORT, "--out", "{tmp}/r.html", "--analysis", "nope"],
        "unknown analysis 'nope'",
        2,
    ),
    (
        "report-store-missing",
        ["report", "--db", "{tmp}/none.duckdb", "--run", "r", "--out", "{tmp}/r.html"],
        "no store at",
        2,
    ),
    ("report-out-newline", [*REPORT, "--out", "{tmp}/a\nb.txt"], "a\\x0ab.txt", 2),
    # resonate
    ("resonate-out-suffix", [*RESONATE, "--out", "{tmp}/m.txt"], "--out must end in .csv or .parquet", 2),
    ("resonate-drill", [*RESONATE, "--drill", "3"], "--drill must be LAYER:EXPERT", 2),
    (
        "resonate-causal-no-model",
        [*RESONATE, "--method", "causal"],
        "--method causal ablates experts in the model",
        2,
    ),
    ("resonate-same-labels", [*RESONATE, "--control", "code"], "target and control are the same label", 2),
    ("resonate-label-unknown", [*RESONATE, "--control", "poetry"], "has no prompts labelled", 2),
    ("resonate-span", [*RESONATE, "--span", "middle:3"], "span 'middle:3' not understood", 2),
    (
        "resonate-span-backwards",
        [*RESONATE, "--span", "positions:5-1"],
        "the end position is before the start",
        2,
    ),
    (
        "resonate-run-unknown",
        ["resonate", "--db", "{db}", "--run", "nope", "--target", "a", "--control", "b"],
        "no run 'nope'",
        2,
    ),
    (
        "resonate-store-missing",
        ["resonate", "--db", "{tmp}/none.duckdb", "--run", "r", "--target", "a", "--control", "b"],
        "no store at",
        2,
    ),
    # import-routing
    ("import-layers-huge", [*IMPORT, "--layers", "0-99999999999"], "names more than 4096 layers", 2),
    ("import-layers-backwards", [*IMPORT, "--layers", "5-1"], "ends before it starts", 2),
    ("import-layers-text", [*IMPORT, "--layers", "a-b"], "is not a layer index or a range a-b", 2),
    ("import-format", [*IMPORT, "--format", "tgi"], "Invalid value for '--format'", 2),
    (
        "import-bad-json",
        ["import-routing", "{probe:engine-bad.jsonl}", "--format", "vllm", "--db", "{tmp}/i.duckdb"],
        "engine-bad.jsonl",
        2,
    ),
    # experiments (refused before any model loads)
    (
        "mote-doses",
        ["experiment", "mote", "--doses", "1,x"],
        "--doses must be integers separated by commas",
        2,
    ),
    ("mote-behaviour", ["experiment", "mote", "--behaviour", "poetry"], "unknown behaviour 'poetry'", 2),
    ("mote-semantics", ["experiment", "mote", "--semantics", "zero,melt"], "unknown semantics ['melt']", 2),
    (
        "prune-keep",
        ["prune", "--task", "arithmetic", "--keep", "half"],
        "--keep must be numbers separated by commas",
        2,
    ),
    ("prune-out", ["prune", "--task", "arithmetic", "--out", "{tmp}/p.txt"], "--out must be a .csv file", 2),
    # serve (refused before the server starts)
    ("serve-store-missing", ["serve", "--db", "{tmp}/none.duckdb"], "no store at", 2),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic store and the probe files of :data:`PROBES`, written once."""
    tmp = tmp_path_factory.mktemp("table")
    found = {"db": dashboard_db(tmp / "store.duckdb")}
    for name, body in PROBES.items():
        (tmp / name).write_bytes(body)
        found[f"probe:{name}"] = tmp / name
    return found


def _filled(args: list[str], files: dict[str, Path], tmp: Path) -> list[str]:
    out = []
    for arg in args:
        for key, path in files.items():
            arg = arg.replace("{" + key + "}", str(path))
        out.append(arg.replace("{tmp}", str(tmp)))
    return out


def test_the_table_has_every_case() -> None:
    """At least the 52 inputs of the trials, each once."""
    ids = [row[0] for row in TABLE]
    assert len(ids) >= 52 and len(set(ids)) == len(ids)
    assert {i.split("-")[0] for i in ids} >= {"capture", "resume", "runs", "export", "analyse", "report"}
    assert json.dumps(TABLE)  # a plain table: docs/reliability.md lists it


@pytest.mark.parametrize(
    ("args", "fragment", "code"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_bad_input(files: dict[str, Path], tmp_path: Path, args: list[str], fragment: str, code: int) -> None:
    command = _filled(args, files, tmp_path)
    result = runner.invoke(app, command)
    assert result.exit_code == code, result.output
    assert clear_outcome(result) in ("error", "usage")
    flat = " ".join(line.strip(" │╭╮╰╯─") for line in result.output.splitlines())  # click boxes usage errors
    assert fragment in result.output or fragment in flat, result.output
    assert not (tmp_path / "none.duckdb").exists()  # a mistyped store is never created empty


@pytest.mark.parametrize(
    ("port", "says"),
    [
        ("99999", "less than or equal to 65535"),
        ("0", "greater than or equal to 1"),
        ("-1", "greater than or equal to 1"),
    ],
)
def test_serve_port_out_of_range(files: dict[str, Path], port: str, says: str) -> None:
    result = runner.invoke(app, ["serve", "--db", str(files["db"]), "--port", port])
    assert clear_outcome(result) == "usage"  # before: Dash's AssertionError for 99999
    assert f"Invalid value for '--port': Input should be {says}" in result.output

"""Names are data, never markup: whatever a user calls a run, a label or a file, the CLI prints it literally.

Rich parses ``[...]`` as markup: before, a run id ``a[/]b`` was written and then crashed ``runs`` for
the whole store (``MarkupError``), and ``[link=...]click[/link]`` printed as a hyperlink.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.cli.app import safe, visible
from workbench.store import Store

pytestmark = pytest.mark.integration

LAYER = {"layer": 0, "module_path": "model.layers.0.mlp", "n_experts": 4, "top_k": 2}

NASTY = [
    "a[/]b",
    "[link=https://example.invalid]click[/link]",
    "[bold red]loud[/]",
    "trailing backslash \\",
    "esc \x1b[2J clears, cr \r overwrites, bell \x07",
    "rtl \u202eevil",
    "x" * 5000,
]


def _store_with_runs(db: Path, ids: list[str]) -> None:
    with Store(db) as store:
        for rid in ids:
            store.create_run(
                run_id=rid, model=f"model {rid}", architecture="[i]Arch[/i]", probe=f"/probes/{rid}.jsonl",
                n_experts=4, top_k=2, config={}, layers=[LAYER],
            )  # fmt: skip


def test_runs_survives_any_run_id_and_prints_it_literally(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _store_with_runs(db, NASTY)
    result = CliRunner().invoke(app, ["runs", "--db", str(db)])
    assert result.exit_code == 0, result.output
    output = result.output
    assert "Traceback" not in output and "MarkupError" not in output
    assert "a[/]b" in output
    assert "[link=https://example.invalid]click[/link]" in output  # printed, not turned into a link
    assert "[bold red]loud[/]" in output and "[i]Arch[/i]" in output
    assert "trailing backslash \\" in output
    # control characters are shown as escapes: nothing reaches the terminal that moves the cursor
    assert "\x1b" not in output and "\r" not in output and "\x07" not in output and "\u202e" not in output
    assert "esc \\x1b[2J clears, cr \\x0d overwrites, bell \\x07" in output and "rtl \\u202eevil" in output
    assert output.count("x") >= 5000  # the 5000-character id is there (folded over lines), not dropped


def test_markup_in_ids_and_messages_prints_literally_everywhere(tmp_path: Path, probe_file: Path) -> None:
    runner = CliRunner()
    db = tmp_path / "s.duckdb"
    rid = "[link=https://example.invalid]r[/link][/]"
    captured = runner.invoke(
        app,
        ["capture", "-m", "tiny:qwen2_moe", "-p", str(probe_file), "--db", str(db), "--run-id", rid, "-q"],
    )
    assert captured.exit_code == 0, captured.output
    assert captured.stdout.strip() == rid  # stdout is the id, exactly (scripts read it)

    # an error message quoting user input: the unknown run and the runs that exist, literally
    missing = runner.invoke(
        app, ["export", "--db", str(db), "--run", "[/]nope", "--parquet", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert "error: no run '[/]nope' in the store; existing runs: " + rid + " (complete)" in missing.output

    exported = runner.invoke(
        app, ["export", "--db", str(db), "--run", rid, "--parquet", str(tmp_path / "[b]q[/b]")]
    )
    assert exported.exit_code == 0, exported.output
    assert str(tmp_path / "[b]q[/b]" / "routing.parquet") in exported.output

    resumed = runner.invoke(app, ["resume", "--db", str(db), "--run", rid])
    assert resumed.exit_code == 0 and resumed.stdout.strip() == rid  # complete: nothing to do


def test_labels_and_prompt_text_in_printed_tables_are_literal(tmp_path: Path) -> None:
    rows = [
        {"text": f"[bold]prompt {i}[/] \x1b[31m", "label": "[red]x[/red]" if i % 2 else "[/]"}
        for i in range(6)
    ]
    probe = tmp_path / "[p].jsonl"
    probe.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "s.duckdb"
    runner = CliRunner()
    captured = runner.invoke(
        app, ["capture", "-m", "tiny:qwen2_moe", "-p", str(probe), "--db", str(db), "-q"]
    )
    assert captured.exit_code == 0, captured.output
    run = captured.stdout.strip()
    listed = runner.invoke(app, ["runs", "--db", str(db)])
    assert listed.exit_code == 0 and probe.name in listed.output  # the file name: the table fits 80 columns
    usage = runner.invoke(app, ["analyse", "specialisation", "--db", str(db), "--run", run])
    assert usage.exit_code == 0, usage.output
    assert "[red]x[/red]" in usage.output and "[/]" in usage.output


@pytest.mark.parametrize(
    ("text", "keep", "shown"),
    [
        ("plain [b] text", "\n", "plain [b] text"),
        ("line\nbreak\ttab", "\n", "line\nbreak\\x09tab"),
        ("line\nbreak", "", "line\\x0abreak"),
        ("\x00\x7f\x85", "", "\\x00\\x7f\\x85"),
        ("\u2066isolate\u2069 é 中 🙂", "", "\\u2066isolate\\u2069 é 中 🙂"),
    ],
)
def test_visible_escapes_only_what_moves_or_hides_text(text: str, keep: str, shown: str) -> None:
    assert visible(text, keep=keep) == shown
    assert safe(text, keep=keep).plain == shown  # a Text: never parsed as markup

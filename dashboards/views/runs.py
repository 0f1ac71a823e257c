"""Runs page: every run's metadata, and the chosen run's capture options, layers and labels with links into it.

A run's status is shown as the store reports it (``running``, ``complete``, ``failed`` …); its error
only when it has one.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
from dash import dcc, html

from dashboards import data
from dashboards.components import figure, message, query_string, table
from dashboards.components.nav import nav_pages
from workbench.analysis.compare import drift_coverage
from workbench.catalog import figure_for
from workbench.store.liveness import INTERRUPTED, finish_hint

__all__ = ["capture_options", "run_detail", "run_drift", "run_metadata", "runs_table"]

RUN_COLUMNS = ("run_id", "model", "architecture", "probe", "n_experts", "top_k", "status", "created_at")
META_KEYS = ("model", "architecture", "probe", "n_experts", "top_k", "status", "created_at")
NOT_SET = "default"
"""How an option the capture left unset shows (the model's or the library's default applied)."""


def runs_table(db: str) -> Any:
    """The store's runs (metadata columns), or a message saying how to capture one."""
    runs = data.runs(db)
    if runs.height == 0:
        return message(
            f"The store {db} holds no runs yet: capture one with "
            "`moe-workbench capture --model M --probe P --db DB`, then reload."
        )
    shown = runs.select(RUN_COLUMNS).with_columns(pl.col("created_at").cast(pl.Utf8)).reverse()
    return table(shown, table_id="runs-table")


def run_metadata(info: dict[str, Any]) -> pl.DataFrame:
    """(field, value) rows of a run's metadata; ``error`` only when the run has one."""
    keys = [*META_KEYS, "error"] if info.get("error") else list(META_KEYS)
    return pl.DataFrame({"field": keys, "value": [str(info.get(k)) for k in keys]})


def capture_options(config: dict[str, Any]) -> pl.DataFrame:
    """(option, value) rows: how the run was captured (dtype, device, backend, batch size … as stored in its
    config), then where the model came from and which workbench version wrote it. Unset options say
    :data:`NOT_SET`; a run imported or written by a script may have none (an empty frame)."""
    options = config.get("options")
    rows = [(str(k), NOT_SET if v is None else _option(v)) for k, v in (options or {}).items()]
    rows += [(k, _option(config[k])) for k in ("model_source", "workbench") if config.get(k) is not None]
    return pl.DataFrame(rows, schema={"option": pl.Utf8, "value": pl.Utf8}, orient="row")


def _option(value: Any) -> str:
    """An option's value as text: JSON for structures (a device map), else ``str``."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def run_detail(db: str, run: str | None) -> Any:
    """One run: its metadata, capture options, MoE layers, labels (prompts and tokens), links to every view."""
    if not run:
        return message("Pick a run above.")
    info = data.run_info(db, run)
    meta = run_metadata(info)
    options = capture_options(info.get("config") or {})
    prompts = data.prompts(db, run)
    labels = (
        prompts.group_by("label")
        .agg(pl.len().alias("prompts"), pl.col("n_tokens").sum().alias("tokens"))
        .sort("label", nulls_last=True)
    )
    links = [  # every other page, as in the navigation bar
        dcc.Link(p.name, href=p.path + query_string(run=run), className="wb-link")
        for p in nav_pages()
        if p.path != "/"
    ]
    status: list[Any] = []
    if info.get("status") == INTERRUPTED:
        status = [
            html.P(
                f"This run was interrupted: the process writing it is gone; {finish_hint(db, run, info.get('config'))}.",
                id="runs-interrupted",
            )
        ]
    return html.Div(
        [
            html.H3(f"Run {run}"),
            *status,
            html.Div(links, className="wb-links"),
            html.Div(
                [
                    html.Div([html.H4("Metadata"), table(meta, table_id="runs-meta")], className="wb-col"),
                    html.Div(
                        [
                            html.H4("Capture options"),
                            table(
                                options,
                                table_id="runs-options",
                                page_size=40,
                                empty="no capture options stored (an imported run, or one written by a script)",
                            ),
                        ],
                        className="wb-col",
                    ),
                    html.Div(
                        [html.H4("Labels"), table(labels, empty="the run has no prompts yet")],
                        className="wb-col",
                    ),
                ],
                className="wb-row",
            ),
            # a row of its own: the layers table is wide (module paths), and in a column it was clipped
            html.Div([html.H4("MoE layers"), table(data.layers(db, run), table_id="runs-layers")]),
        ]
    )


def run_drift(db: str, run: str | None, other: str | None) -> Any:
    """Routing drift of ``run`` vs ``other``: per-layer top-k overlap with CIs and the chance line.

    Meaningful for two captures of the same prompts (checkpoints, backends, dtypes). Prompts are
    matched by text and token ids: runs that share none are refused (the analysis says so), and a
    partial overlap is compared on the shared prompts, which the view states.
    """
    if not run or not other:
        return message(
            "Pick a second run to compare with: routing drift is the per-layer top-k overlap of two "
            "captures of the same prompts (e.g. two checkpoints, backends or dtypes)."
        )
    if other == run:
        raise ValueError("pick a different run to compare with (a run does not drift from itself)")
    df = data.analysis(db, run, "drift", compare=other)
    note = drift_coverage(df, run, other) if df.height and "n_shared" in df.columns else ""
    head: list[Any] = [html.H4(f"Routing drift: {run} vs {other}")]
    if note:  # how many prompts the two runs share (matched by text and token ids)
        head.append(html.P(note[:1].upper() + note[1:] + ".", className="wb-muted", id="runs-drift-coverage"))
    return html.Div(
        [
            *head,
            figure(figure_for("drift", df), graph_id="runs-drift-figure"),
            table(df, table_id="runs-drift-table"),
        ]
    )

"""Assemble a probing report: run every catalogued analysis, state its findings, draw its figures.

:func:`compute_sections` walks the catalog (:data:`workbench.catalog.ANALYSES`), so an analysis
catalogued tomorrow gets a section without touching this file; its entry gives the figure, the
finding sentences and the table order. Before running one it checks
what the analysis ``needs`` against what the run holds — stored router logits, ``expert_stats``,
a ``--compare`` run, a model — and when something is missing the section says exactly that and
how to get it, instead of running. An analysis that raises gets a one-line "could not be
computed" with the error message, never a traceback. :func:`render` turns the sections into one
self-contained HTML page (see :mod:`workbench.reports.html`), and :func:`write_report` does both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import plotly.graph_objects as go
import polars as pl

from workbench.catalog import (
    ANALYSES,
    KNOWN_NEEDS,
    AnalysisSpec,
    figure_for,
    figure_options,
    findings_for,
    get_analysis,
    run_analysis,
)
from workbench.reports import html as H
from workbench.reports.contexts import specialist_contexts
from workbench.store import PromptMismatchError, Store, queries
from workbench.store.segments import check_segment, parse_segment, segment_scope
from workbench.wording import Context

__all__ = ["ReportMeta", "Section", "build_report", "compute_sections", "render", "write_report"]

#: Called before each analysis with (index, total, name); the CLI drives a rich progress bar with it.
Progress = Callable[[int, int, str], None]

#: Analyses with ``figure_per_label`` are drawn once per label, for up to this many labels.
MAX_LABEL_FIGURES = 6


@dataclass
class ReportMeta:
    """The run's description for the header; every string here comes from the store."""

    run_id: str
    info: dict[str, Any]
    layers: pl.DataFrame
    labels: pl.DataFrame  # label, n_prompts, n_tokens, example
    n_prompts: int
    n_tokens: int
    has_logits: bool
    has_expert_stats: bool
    compare: str | None = None
    compare_info: dict[str, Any] | None = None
    #: (target, control) labels when the run is a paired two-label contrast set, else None
    contrast: tuple[str, str] | None = None
    #: whether routing rows hold gate weights (a run imported from a serving engine holds ids only)
    has_weights: bool = True
    #: the token segment the report reads ('prompt' or 'response'), None for every token
    segment: str | None = None


@dataclass
class Section:
    """One analysis' part of the report: computed (findings, figures, table) or why it was not."""

    name: str
    spec: AnalysisSpec
    status: str  # "ok", "skipped" (something it needs is missing) or "failed" (it raised)
    reason: str = ""
    findings: list[str] = field(default_factory=list)
    figures: list[go.Figure] = field(default_factory=list)
    figure_notes: list[str] = field(default_factory=list)
    table: pl.DataFrame | None = None
    seconds: float = 0.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else '(no message)'}"


def _exists(store: Store, table: str, run_id: str, where: str = "TRUE") -> bool:
    return store.sql(f"SELECT 1 AS x FROM {table} WHERE run_id = ? AND {where} LIMIT 1", [run_id]).height > 0


def read_meta(store: Store, run_id: str, compare: str | None = None) -> ReportMeta:
    """Everything the header shows; raises the store's unknown-run error for a missing run."""
    info = store.run(run_id)
    compare_info = store.run(compare) if compare is not None else None
    labels = store.sql(
        """
        SELECT label, count(*) AS n_prompts, sum(n_tokens) AS n_tokens,
               arg_min(text, prompt_id) AS example
        FROM prompts WHERE run_id = ? GROUP BY label ORDER BY label NULLS LAST
        """,
        [run_id],
    )
    return ReportMeta(
        run_id=run_id,
        info=info,
        layers=store.layers(run_id),
        labels=labels,
        n_prompts=int(labels["n_prompts"].sum()) if labels.height else 0,
        n_tokens=int(labels["n_tokens"].sum() or 0) if labels.height else 0,
        has_logits=_exists(store, "routing", run_id, "logits IS NOT NULL"),
        has_expert_stats=_exists(store, "expert_stats", run_id),
        compare=compare,
        compare_info=compare_info,
        contrast=_contrast(store, run_id),
        has_weights=queries.has_gate_weights(store, run_id),
        segment=store.segment,
    )


def _contrast(store: Store, run_id: str) -> tuple[str, str] | None:
    """The run's (target, control) contrast labels, via the resonance analysis when it is there."""
    try:
        from workbench.analysis.resonance import default_contrast
    except ImportError:  # an older analysis suite without resonance maps
        return None
    return default_contrast(store, run_id)


class _ModelHolder:
    """The model for model-needing analyses, loaded at most once and only when first needed."""

    def __init__(self, model: Any) -> None:
        self.given = model
        self.value: Any = None
        self.error: str | None = None

    def get(self) -> Any:
        if self.value is None and self.error is None and self.given is not None:
            if isinstance(self.given, (str, Path)):
                from workbench.models.loading import load_model

                try:
                    self.value = load_model(self.given)
                except Exception as exc:  # any load failure becomes the section's reason
                    self.error = f"could not load model {self.given!s}: {_first_line(exc)}"
            else:
                self.value = self.given
        return self.value


def missing_reason(spec: AnalysisSpec, meta: ReportMeta, model_given: bool) -> str | None:
    """Why ``spec`` cannot run on this run and how to get it, or ``None`` when it can."""
    captured = meta.info.get("model") or "M"
    config = meta.info.get("config")
    ids_only = isinstance(config, dict) and bool(config.get("ids_only"))
    imported = "the run holds expert ids only (imported from a serving engine with import-routing)"
    reasons = []
    for need in spec.needs:
        if need == "routing":
            continue
        if need == "logits" and not meta.has_logits:
            reasons.append(
                f"{imported}, so no router logits"
                if ids_only
                else "the run stores no router logits; capture with --logits fp16 (the default) or --logits fp32"
            )
        elif need == "weights" and not meta.has_weights:
            reasons.append(
                f"{imported}, so no gate weights"
                if ids_only
                else "the run stores no gate weights; capture it with moe-workbench capture"
            )
        elif need == "expert_stats" and not meta.has_expert_stats:
            reasons.append("the run has no expert_stats; capture with --expert-stats")
        elif need == "compare" and meta.compare is None:
            reasons.append(
                "it compares two runs of the same prompts; give the second run with --compare RUN2 "
                "(prompts are matched by text and token ids)"
            )
        elif need == "model" and not model_given:
            reasons.append(
                f"it runs the model; give --model with the model the run was captured from (--model {captured})"
            )
        elif need == "contrast" and meta.contrast is None:
            reasons.append(
                "it needs a contrast set: paired prompts (pair_id) carrying exactly two labels, target and "
                "control (capture a paired probe such as the refusal suite)"
            )
    return "; ".join(reasons) or None


def _figures(name: str, df: pl.DataFrame, section: Section) -> None:
    """Draw the analysis' figure(s) into ``section`` (a note instead when there is none or it fails)."""
    option_sets: list[dict[str, Any]] = [{}]
    if get_analysis(name).figure_per_label and "label" in figure_options(name) and "label" in df.columns:
        labels = sorted({str(x) for x in df["label"].drop_nulls().unique().to_list()})
        option_sets = [{"label": lab} for lab in labels[:MAX_LABEL_FIGURES]] or [{}]
        if len(labels) > MAX_LABEL_FIGURES:
            section.figure_notes.append(
                f"Figures for the first {MAX_LABEL_FIGURES} of {len(labels)} labels; "
                "`moe-workbench analyse` gives the full table."
            )
    for options in option_sets:
        try:
            section.figures.append(figure_for(name, df, **options))
        except Exception as exc:  # a figure that cannot be drawn must not sink the report
            section.figure_notes.append(f"No figure: {_first_line(exc)}")


def compute_section(
    name: str,
    store: Store,
    meta: ReportMeta,
    ctx: Context,
    model: _ModelHolder,
) -> Section:
    """Run one analysis and turn its table into findings, figures and a table preview."""
    spec = get_analysis(name)
    reason = missing_reason(spec, meta, model.given is not None)
    if reason is not None:
        return Section(name, spec, "skipped", reason=reason)
    unchecked = [n for n in spec.needs if n not in KNOWN_NEEDS]
    kwargs: dict[str, Any] = {}
    if "compare" in spec.needs:
        kwargs["compare"] = meta.compare
    if "model" in spec.needs:
        loaded = model.get()
        if loaded is None:
            return Section(name, spec, "skipped", reason=model.error or "no model")
        kwargs["model"] = loaded
    start = time.perf_counter()
    try:
        df = run_analysis(name, store, meta.run_id, **kwargs)
    except PromptMismatchError as exc:  # the two runs cannot be compared: say why, in full
        return Section(name, spec, "skipped", reason=str(exc), seconds=time.perf_counter() - start)
    except Exception as exc:  # reported in the section as one line, never a traceback
        seconds = time.perf_counter() - start
        if unchecked:  # a need this report cannot check up front: the analysis' own message says why
            why = f"it needs {', '.join(unchecked)}, which this run does not provide ({_first_line(exc)})"
            return Section(name, spec, "skipped", reason=why, seconds=seconds)
        return Section(name, spec, "failed", reason=_first_line(exc), seconds=seconds)
    section = Section(name, spec, "ok", table=df, seconds=time.perf_counter() - start)
    if df.height == 0:
        section.findings = ["The analysis returned no rows for this run."]
        return section
    try:
        section.findings = findings_for(name, df, ctx)
    except Exception as exc:  # the table and figure are still worth showing
        section.findings = [f"The findings could not be summarised ({_first_line(exc)}); see the table."]
    _figures(name, df, section)
    return section


def compute_sections(
    store: Store,
    run_id: str,
    compare: str | None = None,
    model: Any = None,
    analyses: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> tuple[ReportMeta, list[Section]]:
    """The header data and one :class:`Section` per analysis (every catalogued one by default)."""
    names = list(ANALYSES) if analyses is None else list(analyses)
    for name in names:
        get_analysis(name)  # unknown names fail before any work, listing the catalogued ones
    meta = read_meta(store, run_id, compare)
    info = meta.info
    ctx = Context(
        n_experts=int(info.get("n_experts") or 0),
        top_k=int(info.get("top_k") or 0),
        labels=tuple(str(x) for x in meta.labels["label"].drop_nulls().to_list()),
        compare=compare,
        extra={"contrast": meta.contrast} if meta.contrast else {},
    )
    holder = _ModelHolder(model)
    sections = []
    for i, name in enumerate(names):
        if progress is not None:
            progress(i, len(names), name)
        sections.append(compute_section(name, store, meta, ctx, holder))
    if progress is not None:
        progress(len(names), len(names), "")
    return meta, sections


# -- rendering --------------------------------------------------------------------------------


def _header(meta: ReportMeta) -> str:
    info = meta.info
    layers = meta.layers
    layer_ids = [int(x) for x in layers["layer"].to_list()] if layers.height else []
    shared = int(layers["n_shared"].fill_null(0).max() or 0) if "n_shared" in layers.columns else 0  # type: ignore[arg-type]
    created = info.get("created_at")
    rows: list[tuple[str, Any]] = [
        ("run", meta.run_id),
        ("model", info.get("model")),
        ("architecture", info.get("architecture")),
        ("probe", info.get("probe")),
        ("prompts", f"{meta.n_prompts:,}"),
        ("tokens", f"{meta.n_tokens:,}"),
        ("MoE layers", f"{len(layer_ids)}: {', '.join(map(str, layer_ids))}"),
        ("experts per layer", f"{info.get('n_experts')}" + (f" routed + {shared} shared" if shared else "")),
        ("top-k", info.get("top_k")),
        ("status", info.get("status")),
        ("captured", created.strftime("%Y-%m-%d %H:%M:%S") if isinstance(created, datetime) else created),
        ("router logits stored", "yes" if meta.has_logits else "no"),
        ("expert_stats stored", "yes" if meta.has_expert_stats else "no"),
    ]
    if meta.compare is not None:
        ci = meta.compare_info or {}
        rows.append(("compared with", f"{meta.compare} ({ci.get('model')} on {ci.get('probe')})"))
    if meta.segment is not None:
        rows.insert(5, ("tokens read", _SEGMENT_READ[meta.segment]))
    title = f"MoE probing report: {H.esc(meta.run_id)}" + (
        f" ({H.esc(meta.segment)} tokens)" if meta.segment else ""
    )
    parts = [
        f"<h1>{title}</h1>",
        f'<p class="sub">{H.esc(info.get("model"))} ({H.esc(info.get("architecture"))}) on '
        f"{H.esc(info.get('probe'))}</p>",
    ]
    if info.get("status") != "complete":
        parts.append(
            f'<p class="skipped">This run is {H.esc(info.get("status"))}, not complete: the results cover '
            "only the prompts captured so far.</p>"
        )
    parts.append(H.key_values(rows))
    if meta.labels.height:
        labels = meta.labels.with_columns(
            pl.col("label").fill_null("(none)"),
            pl.col("example").map_elements(
                lambda s: s if len(s) <= 140 else s[:139] + "…", return_dtype=pl.Utf8
            ),
        )
        parts.append("<h3>Labels</h3>" + H.table(labels, max_rows=50))
    return "\n".join(parts)


#: The header's "tokens read" line of a report restricted to a segment (``--segment``).
_SEGMENT_READ = {
    "prompt": "the prompts' tokens only (--segment prompt); prompts and tokens above count those",
    "response": "the generated responses' tokens only (--segment response); prompts and tokens above count those",
}


def _toc(sections: list[Section]) -> str:
    items = []
    for s in sections:
        status = (
            "" if s.status == "ok" else f" <em>({'not computed' if s.status == 'skipped' else 'failed'})</em>"
        )
        items.append(
            f'<li><a href="#{H.anchor(s.name)}">{H.esc(s.name)}</a> — {H.esc(s.spec.summary)}{status}</li>'
        )
    return f'<nav class="toc"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def _section(s: Section, figure_counter: list[int]) -> str:
    parts = [
        f'<section id="{H.anchor(s.name)}" data-analysis="{H.esc(s.name)}" data-status="{H.esc(s.status)}">',
        f"<h2>{H.esc(s.spec.section)} {H.esc(s.name)}</h2>",
        f'<p class="summary">{H.esc(s.spec.summary)}</p>',
    ]
    if s.status == "skipped":
        parts.append(f'<p class="skipped">Not computed: {H.esc(s.reason)}.</p>')
    elif s.status == "failed":
        parts.append(f'<p class="failed">Could not be computed on this run: {H.esc(s.reason)}</p>')
    else:
        parts.append(H.bullet_list(s.findings))
        for fig in s.figures:
            figure_counter[0] += 1
            parts.append(H.figure_div(fig, f"fig-{figure_counter[0]}"))
        parts.extend(f'<p class="summary">{H.esc(note)}</p>' for note in s.figure_notes)
        if s.table is not None:
            table = s.table
            order = s.spec.table_order
            if order is not None and order[0] in table.columns:
                table = table.sort(order[0], descending=order[1], nulls_last=True)
            parts.append(
                f"<details><summary>Table: {table.height:,} rows × {table.width} columns "
                f"(computed in {s.seconds:.2f} s)</summary>{H.table(table, max_rows=12)}</details>"
            )
    parts.append("</section>")
    return "\n".join(parts)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moe-workbench")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "(source)"


def render(meta: ReportMeta, sections: list[Section], appendix: str = "") -> str:
    """The whole HTML document for ``meta`` and ``sections``, then ``appendix`` (HTML, e.g. example contexts)."""
    counter = [0]
    body_sections = "\n".join([*(_section(s, counter) for s in sections), appendix])
    footer = (
        "<footer>Generated by moe-workbench "
        f"{H.esc(_version())} on {datetime.now().strftime('%Y-%m-%d %H:%M')}. Confidence intervals are 95% "
        "prompt-cluster bootstrap intervals (tokens of one prompt are resampled together); q-values are "
        "Benjamini–Hochberg adjusted permutation p-values. Definitions: docs/methods.md §1–§7.</footer>"
    )
    body = "\n".join([_header(meta), _toc(sections), body_sections, footer])
    return H.page(f"MoE probing report: {meta.run_id}", body, with_plotly=counter[0] > 0)


def build_report(
    store: Store,
    run_id: str,
    compare: str | None = None,
    model: Any = None,
    analyses: Iterable[str] | None = None,
    progress: Progress | None = None,
    segment: str | None = None,
) -> str:
    """The report for ``run_id`` as an HTML string (see :func:`write_report`)."""
    chosen = parse_segment(segment)
    for rid in (run_id, compare):
        if rid is not None and chosen is not None:
            check_segment(store, rid, chosen)
    with segment_scope(store, chosen) as view:
        meta, sections = compute_sections(view, run_id, compare, model, analyses, progress)
        specialisation = next(
            (s.table for s in sections if s.name == "specialisation" and s.status == "ok"), None
        )
        appendix = specialist_contexts(view, run_id, specialisation)
    return render(meta, sections, appendix)


class RunLike(Protocol):
    """A run handle with an ``id`` (the notebook API's ``workbench.session.Run``), where a run id is expected."""

    @property
    def id(self) -> str: ...


def run_id_of(run: str | RunLike) -> str:
    """The run id of ``run``: an id as given, or a run handle's ``.id``; else a ValueError saying what to pass."""
    if isinstance(run, str):
        return run
    rid = getattr(run, "id", None)
    if not isinstance(rid, str):
        raise ValueError(f"expected a run id or a run (db.run(id)), got {type(run).__name__}")
    return rid


def write_report(
    store_or_path: Store | str | Path,
    run_id: str | RunLike,
    out: str | Path,
    compare: str | RunLike | None = None,
    model: Any = None,
    analyses: Iterable[str] | None = None,
    progress: Progress | None = None,
    segment: str | None = None,
) -> Path:
    """Write a self-contained HTML probing report of ``run_id`` to ``out``; returns the path.

    ``store_or_path`` is an open :class:`~workbench.store.Store` or a DuckDB file (opened read-only).
    ``run_id`` and ``compare`` are run ids or run handles (``db.run(id)``); ``compare`` is a second
    run for comparison analyses (drift); ``model`` (a loaded model or a
    name/path for ``load_model``) enables analyses that run the model (expert similarity);
    ``analyses`` restricts the sections (default: every catalogued analysis); ``segment``
    ('prompt' or 'response') reads only those tokens (a run without any is refused). Unknown runs or
    analysis names raise before anything is written.
    """
    run_id = run_id_of(run_id)
    compare = None if compare is None else run_id_of(compare)
    if isinstance(store_or_path, Store):
        text = build_report(store_or_path, run_id, compare, model, analyses, progress, segment)
    else:
        with Store(store_or_path, read_only=True) as store:
            text = build_report(store, run_id, compare, model, analyses, progress, segment)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path

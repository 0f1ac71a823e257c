"""HTML pieces of a report: escaping, the page template, tables and embedded plotly figures.

Everything that comes from the store (labels, prompt text, model names, error messages) goes
through :func:`esc` before it reaches the page; figure data is JSON-encoded by plotly, which
escapes ``<``, ``>`` and ``/`` so a label such as ``</script>`` cannot close a script element.
The page loads nothing from the network: plotly.js is embedded once, inline (:func:`page`),
and each figure is a ``div`` plus a small inline script that draws it. Figures are drawn in the
workbench plotly template and the page uses its font and ink colours (:mod:`workbench.plots.theme`),
so the report looks like the dashboard.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import polars as pl

from workbench.plots.theme import FONT, INK, MUTED, themed

#: plotly config of every figure: no plotly logo (it links to plotly.com), responsive layout.
FIGURE_CONFIG: dict[str, Any] = {"displaylogo": False, "responsive": True}

_CSS = (
    """
body { font-family: FONT; margin: 0; color: INK; background: #fafbfc; line-height: 1.45; }""".replace(
        "FONT", FONT
    ).replace("INK", INK)
    + """
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.4rem; border-bottom: 1px solid #d8dee4; padding-bottom: .2rem; }
.sub { color: MUTED; margin-top: 0; }
table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
th, td { border: 1px solid #d8dee4; padding: .2rem .5rem; text-align: left; vertical-align: top; }
th { background: #f0f3f6; }
table.meta th { width: 11rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
ul.findings li { margin: .25rem 0; }
.skipped { background: #fff8e5; border-left: 4px solid #d4a72c; padding: .5rem .8rem; }
.failed { background: #ffebe9; border-left: 4px solid #cf222e; padding: .5rem .8rem; }
.summary { color: MUTED; font-style: italic; }
/* Two columns when there is room; the gap leaves space for the second column's numbers (they sit
   outside the text and overlapped the first column's long lines), and an item never splits. */
nav.toc ol { columns: 2 26rem; column-gap: 4rem; font-size: .9rem; padding-left: 2rem; }
nav.toc li { break-inside: avoid; margin: 0 0 .2rem; }
.figure { margin: .8rem 0; background: white; border: 1px solid #e3e8ee; }
details { margin: .5rem 0; }
footer { color: MUTED; font-size: .8rem; margin-top: 3rem; }
""".replace("MUTED", MUTED)
)


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML element content and quoted attributes."""
    return html.escape(str(value), quote=True)


def anchor(name: str) -> str:
    """A stable, HTML-safe element id for the section of analysis ``name``."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return f"analysis-{safe}"


def cell(value: Any) -> str:
    """One table cell's text: floats to 4 significant digits, NaN/None as an em dash, lists shortened."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        text = ", ".join(cell(v) for v in value[:8])
        return f"[{text}{', …' if len(value) > 8 else ''}]"
    return str(value)


def table(df: pl.DataFrame, max_rows: int = 10, css_class: str = "") -> str:
    """An HTML table of the first ``max_rows`` rows of ``df``, every cell escaped."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    numeric = [dt.is_numeric() for dt in df.dtypes]
    rows = []
    for row in df.head(max_rows).iter_rows():
        cells = "".join(
            f'<td class="num">{esc(cell(v))}</td>' if is_num else f"<td>{esc(cell(v))}</td>"
            for v, is_num in zip(row, numeric, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    cls = f' class="{esc(css_class)}"' if css_class else ""
    more = f'<p class="summary">First {max_rows} of {df.height:,} rows.</p>' if df.height > max_rows else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column (name, value) table, both escaped."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(cell(v))}</td></tr>" for k, v in pairs)
    return f'<table class="meta"><tbody>{rows}</tbody></table>'


def bullet_list(items: Sequence[str], css_class: str = "findings") -> str:
    """An escaped ``<ul>`` of plain-text sentences."""
    lis = "".join(f"<li>{esc(s)}</li>" for s in items)
    return f'<ul class="{esc(css_class)}">{lis}</ul>'


def figure_div(fig: go.Figure, div_id: str) -> str:
    """One figure, in the workbench template, as a ``div`` and the inline script that draws it (plotly.js
    must be on the page)."""
    inner: str = pio.to_html(
        themed(fig),
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        config=FIGURE_CONFIG,
        default_height="460px",
    )
    return '<div class="figure">' + inner + "</div>"


def plotly_js() -> str:
    """The plotly.js bundle that ships with the plotly package, for inline embedding (no CDN)."""
    from plotly.offline import get_plotlyjs

    bundle: str = get_plotlyjs()
    return bundle


def page(title: str, body: str, *, with_plotly: bool) -> str:
    """The complete document: ``title`` is escaped here, ``body`` must already be HTML.

    plotly.js goes inline in ``<head>``, once, before any figure script runs.
    """
    script = ""
    if with_plotly:
        script = (
            '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>\n'
            f'<script type="text/javascript">{plotly_js()}</script>\n'
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n{script}</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )

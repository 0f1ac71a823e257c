"""The one look (``workbench.plots.theme``): the registered template, whole-number layer ticks,
readable labels on coloured fills, and the dashboard's stylesheet using the same text styles."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from workbench.plots.theme import (
    FONT,
    INK,
    MAX_INTEGER_TICKS,
    PALETTE,
    TEMPLATE,
    integer_ticks,
    label_colours,
    readable_on,
    themed,
)

pytestmark = pytest.mark.unit

STYLESHEET = Path(__file__).resolve().parents[1] / "dashboards" / "assets" / "style.css"


def test_the_template_is_registered_and_leaves_plotlys_default_alone() -> None:
    assert TEMPLATE in pio.templates
    layout = pio.templates[TEMPLATE].layout
    assert layout.font.family == FONT and layout.font.color == INK
    assert list(layout.colorway) == list(PALETTE)
    assert layout.paper_bgcolor == "white" and layout.plot_bgcolor == "white"  # never plotly's grey
    assert pio.templates.default != TEMPLATE  # a notebook's own figures keep their template
    fig = themed(go.Figure(layout={"template": "plotly"}))
    assert fig.layout.template.layout.font.family == FONT


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1], {"tickmode": "array", "tickvals": [0, 1], "ticktext": ["0", "1"]}),
        ([14, 3, 27, 3], {"tickmode": "array", "tickvals": [3, 14, 27], "ticktext": ["3", "14", "27"]}),
        (range(58), {"tickmode": "linear", "tick0": 0, "dtick": 5, "tickformat": "d"}),
        (range(3, 200), {"tickmode": "linear", "tick0": 0, "dtick": 20, "tickformat": "d"}),
        ([], {}),
    ],
)
def test_integer_ticks(values: list[int], expected: dict[str, object]) -> None:
    ticks = integer_ticks(values)
    assert ticks == expected
    if ticks.get("tickmode") == "linear":  # thinned: never more than the most ticks allowed
        span = max(values) - ticks["tick0"]  # type: ignore[operator]
        assert span / ticks["dtick"] <= MAX_INTEGER_TICKS + 1  # type: ignore[operator]


def test_labels_are_readable_on_their_fill() -> None:
    assert readable_on("#ffffff") == INK and readable_on("rgb(8, 48, 107)") == "white"
    assert readable_on("#000000") == "white" and readable_on("#fdca26") == INK  # dark text on yellow
    assert label_colours([0, 5, 10], "Blues", 0, 10) == [INK, INK, "white"]
    assert label_colours([3, 3], "Blues", 3, 3) == [INK, INK]  # a flat scale: its lowest colour


def test_the_stylesheet_uses_the_figures_text_styles() -> None:
    css = STYLESHEET.read_text(encoding="utf-8")
    assert FONT in css and INK in css
    assert "button" in css  # the lab's buttons are styled like the rest, not the browser's default

"""Shared pieces of the figure builders: layout, input checks, default choices, grids and lines.

Every builder in :mod:`workbench.plots` takes a polars DataFrame returned by an analysis and
returns a ``plotly.graph_objects.Figure``; it never queries the store. The helpers here keep the
builders consistent: the same template, the same ``ValueError`` wording for a missing column or
an absent label/layer, and the same way of turning a (layer, expert) table into a heatmap grid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl

from workbench.plots.theme import PALETTE as PALETTE  # re-exported: the builders' colours
from workbench.plots.theme import TEMPLATE
from workbench.plots.theme import integer_ticks as integer_ticks

#: Layout keywords every builder passes to ``fig.update_layout`` (the workbench template, closest-point hover).
LAYOUT: dict[str, Any] = {"template": TEMPLATE, "hovermode": "closest"}


#: Grids with more numbers than this go to the browser as float32: half the bytes of float64, and its
#: 7 significant digits are more than any hover prints (a 256 × 256 co-activation matrix with its hover
#: data is 2.1 MB as float64, 1.05 MB as float32). Smaller grids keep float64, exactly as computed.
COMPACT_CELLS = 4096
#: Layer × expert heatmaps with more layers than this get taller, :data:`LAYER_ROW_PX` per layer
#: (plus room for the title and axes), so a 58-layer model's rows stay readable; fewer layers keep
#: plotly's default height.
TALL_LAYERS = 16
LAYER_ROW_PX = 14
#: From this many experts on, expert × expert matrices (co-activation, expert similarity) are drawn
#: :data:`SQUARE_HEIGHT` tall (the co-activation matrix with square cells): in plotly's default
#: 450 px a 256 × 256 matrix is a strip of cells under 1 px high.
SQUARE_FROM = 32
SQUARE_HEIGHT = 820


def require_columns(df: pl.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the missing columns and the ones the frame has."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; frame has {df.columns}")


def check_frame(df: pl.DataFrame, columns: Iterable[str], what: str) -> None:
    """:func:`require_columns` plus a clear error for an empty table (a figure of nothing hides a bug)."""
    require_columns(df, columns, what)
    if df.height == 0:
        raise ValueError(f"{what}: empty frame (the analysis returned no rows)")


def as_floats(values: pl.Series | Sequence[Any]) -> np.ndarray:
    """A float array with nulls as NaN (plotly draws NaN as a gap and hover prints ``NaN``)."""
    series = values if isinstance(values, pl.Series) else pl.Series(list(values))
    return series.cast(pl.Float64).fill_null(np.nan).to_numpy().astype(float)


def colour(i: int) -> str:
    """The ``i``-th palette colour, cycling."""
    return PALETTE[i % len(PALETTE)]


def rgba(hex_colour: str, alpha: float) -> str:
    """``#rrggbb`` as an ``rgba(...)`` string with the given opacity (for Sankey links, bands)."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def labels_of(df: pl.DataFrame, column: str = "label") -> list[str]:
    """The distinct non-null labels of ``column``, sorted."""
    return sorted({str(x) for x in df[column].drop_nulls().unique().to_list()})


def layers_of(df: pl.DataFrame, column: str = "layer") -> list[int]:
    """The distinct layers of ``column``, sorted."""
    return sorted(int(x) for x in df[column].drop_nulls().unique().to_list())


def pick_label(df: pl.DataFrame, label: str | None, what: str) -> str:
    """``label`` if the frame has it, else (when ``None``) the first label in sorted order."""
    present = labels_of(df)
    if label is None:
        if not present:
            raise ValueError(f"{what}: no labels in the frame")
        return present[0]
    if label not in present:
        raise ValueError(f"{what}: label {label!r} absent; labels present: {present}")
    return label


def pick_layer(df: pl.DataFrame, layer: int | None, what: str, score: pl.Expr | None = None) -> int:
    """``layer`` if the frame has it; when ``None`` the layer with the largest ``score``.

    ``score`` is an aggregate expression evaluated per layer (``group_by("layer").agg``), e.g.
    a weighted mean ``|lift − 1|``; NaN scores rank last, ties go to the lower layer. Without a
    score, the first layer.
    """
    present = layers_of(df)
    if layer is None:
        if not present:
            raise ValueError(f"{what}: no layers in the frame")
        if score is None:
            return present[0]
        scores = (
            df.group_by("layer")
            .agg(score.cast(pl.Float64).alias("s"))
            .with_columns(pl.col("s").fill_nan(None))
            .sort(["s", "layer"], descending=[True, False], nulls_last=True)
        )
        return int(scores["layer"][0])
    if int(layer) not in present:
        raise ValueError(f"{what}: layer {layer} absent; layers present: {present}")
    return int(layer)


def layer_expert_grid(
    part: pl.DataFrame, value: str, custom: Sequence[str]
) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
    """Layer × expert grid of ``value`` and the ``custom`` columns (hover data) of one slice.

    Returns ``(layers, experts, z, customdata)`` with ``z`` of shape ``(n_layers, n_experts)``
    and ``customdata`` of shape ``(n_layers, n_experts, len(custom))``; missing cells are NaN.
    Boolean custom columns become 0/1.
    """
    layers = layers_of(part)
    experts = layers_of(part, "expert")
    li = np.searchsorted(layers, part["layer"].to_numpy())
    ei = np.searchsorted(experts, part["expert"].to_numpy())
    z = np.full((len(layers), len(experts)), np.nan)
    z[li, ei] = as_floats(part[value])
    cd = np.full((len(layers), len(experts), len(custom)), np.nan)
    for c, name in enumerate(custom):
        cd[li, ei, c] = as_floats(part[name])
    return layers, experts, z, cd


def compact(values: np.ndarray) -> np.ndarray:
    """``values`` as float32 when it holds more than :data:`COMPACT_CELLS` numbers, else unchanged."""
    return values.astype(np.float32) if values.size > COMPACT_CELLS else values


def layer_rows_height(n_layers: int) -> int | None:
    """The figure height that gives each of ``n_layers`` rows :data:`LAYER_ROW_PX`; None (plotly's default) up to :data:`TALL_LAYERS`."""
    return 160 + LAYER_ROW_PX * n_layers if n_layers > TALL_LAYERS else None


def significant(q: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Cells with ``q < alpha`` (NaN is not significant)."""
    mask: np.ndarray = np.nan_to_num(q, nan=1.0) < alpha
    return mask


def flagged(values: np.ndarray) -> np.ndarray:
    """Cells whose 0/1 flag is set (NaN is not)."""
    mask: np.ndarray = np.nan_to_num(values) > 0
    return mask


def layer_expert_heatmap(
    part: pl.DataFrame,
    value: str,
    custom: Sequence[str],
    *,
    title: str,
    colorbar: str,
    hover: str,
    mark: tuple[str, str, Callable[[np.ndarray], np.ndarray]] | None = None,
    **scale: Any,
) -> go.Figure:
    """A layer × expert heatmap of ``value`` with ``custom`` columns as hover data.

    ``hover`` is the hover template after ``"layer %{y}, expert %{x}<br>"``; ``mark`` is
    ``(column, symbol, test)``: cells where ``test`` of that ``custom`` column is true get
    ``symbol`` (e.g. ``("q", "*", significant)``). ``scale`` goes to ``go.Heatmap``
    (``colorscale``, ``zmid``, ``zmin`` ...). Big grids (256 experts × many layers) go out as
    float32 (:func:`compact`) and grow taller with the layer count (:func:`layer_rows_height`).
    """
    layers, experts, z, cd = layer_expert_grid(part, value, custom)
    text = None
    if mark is not None:
        column, symbol, test = mark
        text = np.where(test(cd[..., list(custom).index(column)]), symbol, "").astype(object)
    heatmap = go.Heatmap(
        z=compact(z), x=experts, y=layers, customdata=compact(cd), colorbar={"title": colorbar},
        hovertemplate="layer %{y}, expert %{x}<br>" + hover + "<extra></extra>", **scale,
    )  # fmt: skip
    if text is not None:
        heatmap.update(text=text, texttemplate="%{text}")
    fig = go.Figure(heatmap)
    fig.update_layout(title=title, xaxis_title="expert", yaxis_title="layer", **LAYOUT)
    fig.update_yaxes(**integer_ticks(layers))
    height = layer_rows_height(len(layers))
    if height is not None:
        fig.update_layout(height=height)
    return fig


def colorbar_beside(fig: go.Figure, axis: str = "xaxis") -> dict[str, Any]:
    """Colorbar settings that put it in the gap right of the subplot of ``axis`` (not over its neighbour).

    For a colour scale that belongs to the left panel of a row of subplots: the bar starts just
    past that panel's domain, so the subplot spacing must leave room for it (about 0.12 of the width).
    """
    end = float(fig.layout[axis].domain[1])
    return {"x": end + 0.01, "xanchor": "left", "thickness": 14}


def ci_error_bars(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[str, Any]:
    """Asymmetric error bars from a CI (``ci_low``/``ci_high``) around ``y``."""
    return {"type": "data", "array": hi - y, "arrayminus": y - lo, "visible": True}


def layer_line(df: pl.DataFrame, y: str, lo: np.ndarray, hi: np.ndarray, name: str, hover: str) -> go.Scatter:
    """A per-layer line of ``y`` with error bars from ``lo``/``hi`` (also in ``customdata``)."""
    yv = as_floats(df[y])
    return go.Scatter(
        x=df["layer"].to_list(),
        y=yv,
        mode="lines+markers",
        name=name,
        error_y=ci_error_bars(yv, lo, hi),
        customdata=np.column_stack([lo, hi]),
        hovertemplate=hover,
    )


def chance_line(df: pl.DataFrame, column: str = "chance", name: str = "chance") -> go.Scatter:
    """A dashed grey per-layer reference line (chance, uniform routing ...)."""
    return go.Scatter(
        x=df["layer"].to_list(),
        y=as_floats(df[column]),
        mode="lines",
        name=name,
        line={"dash": "dash", "color": "grey"},
        hovertemplate=f"layer %{{x}}<br>{name} %{{y:.4f}}<extra></extra>",
    )

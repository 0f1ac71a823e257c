"""Views at realistic expert counts, on hand-made tables: what changes past 32 experts and what a view says.

At E = 256 (``test_dashboard_wide_browser.py`` draws every page of such a run) grouped load bars are a
pixel wide, a 256 × 256 matrix squeezed into plotly's default height is a strip, and thousands of
co-activation pairs pass the network's threshold. So past :data:`~workbench.plots.health.BARS_UP_TO` /
:data:`~workbench.plots.common.SQUARE_FROM` / :data:`~dashboards.views.coactivation.ALL_NODES_UP_TO`
experts the views aggregate or show the top N, and say "N of M". Small runs keep their figures
(the tests of ``test_plots.py`` and ``test_dashboard.py`` pin those).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest

from dashboards.views import coactivation, expert, health
from workbench.plots import coactivation_matrix, load_bars, pathways_sankey
from workbench.plots.common import LAYER_ROW_PX, SQUARE_HEIGHT, layer_expert_heatmap

pytestmark = pytest.mark.unit


def _load(n_experts: int, layers: tuple[int, ...] = (0, 1)) -> pl.DataFrame:
    """Uniform load over ``n_experts`` except expert 3, which is dead at every layer."""
    f = np.full(n_experts, 1.0 / (n_experts - 1))
    f[3] = 0.0
    return pl.DataFrame(
        {
            "layer": np.repeat(layers, n_experts),
            "expert": np.tile(np.arange(n_experts), len(layers)),
            "f": np.tile(f, len(layers)),
            "ci_low": np.tile(f * 0.9, len(layers)),
            "ci_high": np.tile(f * 1.1, len(layers)),
            "dead": np.tile(f == 0, len(layers)),
        }
    )


def test_load_past_32_experts_is_a_heatmap_marking_dead_experts() -> None:
    fig = load_bars(_load(40))
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Heatmap)
    assert np.asarray(fig.data[0].z).shape == (2, 40)
    assert "uniform 1/40" in fig.layout.title.text
    marks = np.asarray(fig.data[0].text)
    assert marks[0, 3] == "×" and marks[0, 4] == ""
    assert all(isinstance(t, go.Bar) for t in load_bars(_load(8)).data)  # small E: grouped bars, as before


def test_a_click_on_the_load_heatmap_opens_that_cell() -> None:
    click = {"points": [{"curveNumber": 0, "x": 200, "y": 2, "z": 0.004}]}
    assert health.load_click("unused.duckdb", "run", click) == (2, 200)  # a cell names its own layer


def _coact(pairs: list[tuple[int, int, int, float]]) -> pl.DataFrame:
    """Layer 0 with ``pairs`` (a, b, n_ab, lift), both orders, as the analysis lists them (E: the largest id + 1)."""
    rows = []
    for a, b, n_ab, lift in pairs:
        for x, y in ((a, b), (b, a)):
            rows.append(
                {
                    "layer": 0,
                    "a": x,
                    "b": y,
                    "n_ab": n_ab,
                    "n_a": 100,
                    "lift": lift,
                    "p_b_given_a": n_ab / 100,
                }
            )
    return pl.DataFrame(rows)


def test_the_matrix_past_32_experts_is_square_and_float32() -> None:
    fig = coactivation_matrix(_coact([(0, 69, 5, 2.0), (1, 2, 9, 1.5)]), 0)
    assert np.asarray(fig.data[0].z).shape == (70, 70)
    assert np.asarray(fig.data[0].z).dtype == np.float32  # 4,900 cells: half the bytes of float64
    assert fig.layout.height == SQUARE_HEIGHT and fig.layout.yaxis.scaleanchor == "x"
    small = coactivation_matrix(_coact([(0, 7, 5, 2.0)]), 0)
    assert small.layout.height is None and np.asarray(small.data[0].z).dtype == np.float64


def test_the_network_draws_the_strongest_n_of_m_pairs_and_only_their_experts() -> None:
    pairs = [(i, i + 20, 10 + i, 2.0 + i / 10) for i in range(10)]  # 10 pairs above lift 1.5
    df = _coact([*pairs, (0, 39, 1, 0.5)])  # and one below it, reaching expert 39: 40 experts
    fig = coactivation.network_figure(df, 0, "lift", None, top=3)
    title = fig.layout.title.text
    assert "the strongest 3 of 10 pairs with lift ≥ 1.50" in title
    assert "6 of the layer's 40 experts" in title
    assert sorted(int(t) for t in fig.data[-1].text) == [7, 8, 9, 27, 28, 29]  # the three strongest pairs
    everything = coactivation.network_figure(df, 0, "lift", None, top=None)
    assert (
        "10 pairs with lift" in everything.layout.title.text
        and "strongest" not in everything.layout.title.text
    )
    counted = coactivation.network_figure(df, 0, "lift", None, top=3, n_experts=256)  # the run's own count
    assert "6 of the layer's 256 experts" in counted.layout.title.text
    with pytest.raises(ValueError, match="at least 1 pair"):
        coactivation.network_figure(df, 0, "lift", None, top=0)


def _pathways(per_pair: int) -> pl.DataFrame:
    rows = []
    for layer in (0, 1):
        for i in range(per_pair):
            n = 50 - i
            rows.append({"layer_from": layer, "layer_to": layer + 1, "expert_from": i, "expert_to": 100 + i,
                         "n": n, "n_from": 60, "p": n / 60})  # fmt: skip
    return pl.DataFrame(rows)


def test_the_sankey_says_how_many_transitions_of_how_many_it_shows() -> None:
    fig = pathways_sankey(_pathways(5), top=2)
    assert len(fig.data[0].link.source) == 4
    assert "the 2 most frequent of each layer pair: 4 of 10 transitions shown" in fig.layout.title.text
    assert "<sup>" not in pathways_sankey(_pathways(5)).layout.title.text  # nothing left out: no note
    tall = pathways_sankey(
        _pathways(40), top=40
    )  # 40 experts per column: the figure grows to keep them apart
    assert tall.layout.height is not None and tall.layout.height > 450


def test_layer_expert_heatmaps_grow_with_the_layer_count() -> None:
    def grid(n_layers: int) -> go.Figure:
        part = pl.DataFrame(
            {"layer": np.repeat(np.arange(n_layers), 4), "expert": np.tile(np.arange(4), n_layers), "v": 1.0}
        )
        return layer_expert_heatmap(part, "v", (), title="t", colorbar="v", hover="")

    assert grid(4).layout.height is None  # a few layers: plotly's default height
    assert grid(58).layout.height == 160 + LAYER_ROW_PX * 58


def test_ranked_lists_say_how_much_of_them_is_shown() -> None:
    assert expert._top_of(8, 62, "partners", "most frequent") == "The 8 most frequent of 62 partners."
    assert expert._top_of(7, 7, "partners", "most frequent") == "All 7 partners, most frequent first."

"""Figure builders on hand-made tables: shapes, hover data, HTML export, and input errors."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest

from workbench.plots import (
    coactivation_matrix,
    drift_lines,
    load_bars,
    probe_accuracy,
    resonance_heatmap,
    specialisation_heatmap,
)

pytestmark = pytest.mark.unit


def _spec() -> pl.DataFrame:
    """Expert 0 has q = 0.01 but is *under*-used (share < share_rest): only expert 1 is specialised."""
    rows = []
    for layer in (0, 1):
        for expert in range(4):
            for label in ("code", "math"):
                share = 0.25 + 0.01 * expert
                rest = 0.4 if expert == 0 else 0.1
                rows.append(
                    {
                        "layer": layer,
                        "expert": expert,
                        "label": label,
                        "share": share,
                        "share_rest": rest,
                        "specificity": share / rest,
                        "log_odds": 0.5 + 0.1 * expert,
                        "lo_low": 0.1,
                        "lo_high": 0.9,
                        "lift": 1.0 + 0.1 * expert,
                        "ci_low": 0.2,
                        "ci_high": 0.3,
                        "p": 0.01,
                        "q": 0.01 if expert < 2 else 0.5,
                        "specialised": expert == 1,
                    }
                )
    return pl.DataFrame(rows)


def _load() -> pl.DataFrame:
    f = [0.3, 0.2, 0.3, 0.2]
    return pl.DataFrame(
        {
            "layer": [0] * 4 + [1] * 4,
            "expert": list(range(4)) * 2,
            "f": f * 2,
            "utilisation": [x * 4 for x in f] * 2,
            "ci_low": [x - 0.05 for x in f] * 2,
            "ci_high": [x + 0.05 for x in f] * 2,
            "dead": [False] * 8,
        }
    )


def _coact() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "layer": [0, 0, 0, 1],
            "a": [0, 1, 2, 0],
            "b": [1, 0, 1, 1],
            "n_ab": [5, 5, 2, 3],
            "p_b_given_a": [0.5, 0.4, 0.2, 0.3],
            "lift": [1.2, 1.1, 0.9, 1.0],
        }
    )


def test_specialisation_heatmap() -> None:
    fig = specialisation_heatmap(_spec(), "code")
    assert isinstance(fig, go.Figure)
    hm = fig.data[0]
    assert isinstance(hm, go.Heatmap)
    z = np.asarray(hm.z)
    assert z.shape == (2, 4)
    assert z[1, 3] == pytest.approx(0.8)  # the colour is the log-odds against the other labels
    custom = np.asarray(hm.customdata)
    assert custom.shape == (2, 4, 10)
    assert custom[0, 0, 1] == pytest.approx(0.2) and custom[0, 0, 2] == pytest.approx(0.3)
    assert "95% CI" in hm.hovertemplate and "lift over uniform" in hm.hovertemplate
    # A star only on the specialised (over-used) cell, not on the under-used one with q = 0.01.
    assert list(np.asarray(hm.text)[0]) == ["", "*", "", ""]
    assert "uniform" not in fig.layout.title.text
    assert "code" in fig.layout.title.text
    assert fig.to_html(include_plotlyjs=False)


def test_specialisation_errors() -> None:
    with pytest.raises(ValueError, match=r"absent.*code"):
        specialisation_heatmap(_spec(), "poetry")
    with pytest.raises(ValueError, match="lift"):
        specialisation_heatmap(_spec().drop("lift"), "code")
    with pytest.raises(ValueError, match="specialised"):
        specialisation_heatmap(_spec().drop("specialised"), "code")


def test_load_bars() -> None:
    fig = load_bars(_load())
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert len(bars) == 2
    assert fig.layout.barmode == "group"
    err = bars[0].error_y
    assert np.allclose(err.array, 0.05) and np.allclose(err.arrayminus, 0.05)
    assert "95% CI" in bars[0].hovertemplate
    assert np.asarray(bars[0].customdata).shape[0] == 4
    lines = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert len(lines) == 1 and lines[0].y0 == pytest.approx(0.25)
    assert fig.to_html(include_plotlyjs=False)
    with pytest.raises(ValueError, match="ci_high"):
        load_bars(_load().drop("ci_high"))


def test_coactivation_matrix() -> None:
    fig = coactivation_matrix(_coact(), 0)
    hm = fig.data[0]
    assert isinstance(hm, go.Heatmap)
    z = np.asarray(hm.z)
    assert z.shape == (3, 3)
    assert z[0, 1] == pytest.approx(0.5) and z[2, 2] == 0
    assert fig.to_html(include_plotlyjs=False)
    with pytest.raises(ValueError, match=r"layer 7 absent.*\[0, 1\]"):
        coactivation_matrix(_coact(), 7)
    with pytest.raises(ValueError, match="p_b_given_a"):
        coactivation_matrix(_coact().drop("p_b_given_a"), 0)


def test_probe_accuracy() -> None:
    df = pl.DataFrame(
        {"layer": [1, 0], "accuracy": [0.8, 0.6], "accuracy_std": [0.05, 0.1], "chance": [0.5, 0.5]}
    )
    fig = probe_accuracy(df)
    acc, chance = fig.data
    assert isinstance(acc, go.Scatter) and list(acc.x) == [0, 1]
    assert np.allclose(acc.error_y.array, [0.1, 0.05])
    assert np.allclose(np.asarray(acc.customdata)[1], [0.75, 0.85])
    assert chance.line.dash == "dash"
    assert fig.to_html(include_plotlyjs=False)
    with pytest.raises(ValueError, match="accuracy_std"):
        probe_accuracy(df.drop("accuracy_std"))


def test_drift_lines() -> None:
    df = pl.DataFrame(
        {
            "layer": [0, 1],
            "overlap": [0.9, 0.7],
            "ci_low": [0.85, 0.6],
            "ci_high": [0.95, 0.8],
            "chance": [0.25, 0.25],
        }
    )
    fig = drift_lines(df)
    line, chance = fig.data
    assert np.allclose(line.error_y.arrayminus, [0.05, 0.1])
    assert np.allclose(np.asarray(line.customdata)[:, 1], [0.95, 0.8])
    assert "95% CI" in line.hovertemplate
    assert np.allclose(chance.y, [0.25, 0.25])
    assert fig.to_html(include_plotlyjs=False)
    with pytest.raises(ValueError, match="overlap"):
        drift_lines(df.drop("overlap"))


def test_resonance_heatmap() -> None:
    """Drawn from a hand-made table of ``resonance_map``'s columns, so every number is known."""
    df = pl.DataFrame({
        "layer": [0, 0, 1, 1], "expert": [0, 1, 0, 1], "rd": [0.3, -0.1, 0.0, 0.05],
        "ftri": [1.0, -0.2, 0.1, 0.2], "method": ["rd"] * 4, "ci_low": [0.2, -0.2, -0.1, 0.0],
        "ci_high": [0.4, 0.0, 0.1, 0.1], "p": [0.001, 0.2, 0.9, 0.5], "q": [0.004, 0.4, 0.9, 0.6],
        "rate_target": [0.5, 0.1, 0.2, 0.3], "rate_control": [0.2, 0.2, 0.2, 0.25],
        "n_target": [10] * 4, "n_control": [12] * 4,
    })  # fmt: skip
    hm = resonance_heatmap(df).data[0]
    assert np.allclose(np.asarray(hm.z), [[0.3, -0.1], [0.0, 0.05]])
    assert np.asarray(hm.text)[0].tolist() == ["*", ""]
    assert np.asarray(hm.customdata).shape == (2, 2, 10) and hm.zmid == 0
    assert "95% CI" in hm.hovertemplate
    with pytest.raises(ValueError, match="rate_target"):
        resonance_heatmap(df.drop("rate_target"))

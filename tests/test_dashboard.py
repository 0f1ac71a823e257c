"""Dashboard callbacks as plain functions (``dashboards.views``), its data layer and ``serve``.

The views are what the pages' callbacks call, so testing them on a small synthetic store
covers the callbacks without a browser; ``test_dashboard_browser.py`` drives the real app.
The synthetic run (:func:`dashboard_db`) is also that test's data: three labels (code and
math paired, a contrast set), router logits (so every logit analysis works), a planted
expert (code → layer 1 expert 5) and one stored resonance map.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pyarrow as pa
import pytest
from dash import html
from dash.dash_table.DataTable import DataTable
from synthetic import save_run, skeleton
from typer.testing import CliRunner

from dashboards import data
from dashboards.components import expert_href, guarded, query_string, to_int
from dashboards.components.pickers import ALL, default_run, label_options, pick, run_options
from dashboards.components.url import clicked_expert
from dashboards.views import coactivation, expert, health, resonance, routing, runs, specialisation
from workbench.analysis.resonance import resonance_map
from workbench.cli import app as cli_app
from workbench.plots.theme import FONT, INK
from workbench.store import Store, copy_store

pytestmark = pytest.mark.unit

E, K = 8, 2
RUN = "dash-run"
PLANT = (1, 5)  # code tokens go to layer 1, expert 5


def dashboard_db(path: Path) -> Path:
    """Write the synthetic dashboard run (see module doc) to ``path``; returns it."""
    rng = np.random.default_rng(3)
    labels = [lab for lab in ("code", "math", "prose") for _ in range(8)]
    sk = skeleton(labels, rng.integers(8, 13, size=len(labels)), (0, 1))
    pairs = [f"pair{i % 8}" if lab in ("code", "math") else None for i, lab in enumerate(labels)]
    sk.prompts = sk.prompts.set_column(
        sk.prompts.schema.get_field_index("pair_id"), "pair_id", pa.array(pairs, pa.string())
    )
    logits = rng.normal(size=(sk.n_rows, E)).astype(np.float32)
    code = (np.asarray(labels)[sk.pid] == "code") & (sk.lay == PLANT[0])
    logits[code, PLANT[1]] += 4.0
    experts = np.argsort(-logits, axis=1)[:, :K].astype(np.int16)
    top = np.take_along_axis(logits, experts.astype(np.int64), axis=1)
    weights = (np.exp(top) / np.exp(top).sum(axis=1, keepdims=True)).astype(np.float32)
    save_run(path, sk, experts=experts, weights=weights, n_experts=E, top_k=K, run_id=RUN, logits=logits)
    with Store(path) as st:
        rmap = resonance_map(st, RUN, target="code", control="math", n_boot=50, n_perm=50)
        st.write_resonance(
            RUN, rmap.drop("rate_target", "rate_control"), target="code", control="math", method="rd"
        )
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    data.clear_cache()
    return str(dashboard_db(tmp_path_factory.mktemp("dash") / "dash.duckdb"))


def _text(component: Any) -> str:
    """All text inside a Dash component tree (for asserting what a view says)."""
    if component is None:
        return ""
    if isinstance(component, (str, int, float)):
        return str(component)
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    parts = [_text(getattr(component, "children", None))]
    if isinstance(component, DataTable):
        parts.append(" ".join(str(v) for row in component.data for v in row.values()))
    return " ".join(parts)


def _is_message(component: Any) -> bool:
    return isinstance(component, html.Div) and "wb-message" in (component.className or "")


# -- data layer --------------------------------------------------------------------------------
def test_data_layer_caches_and_sees_new_writes(db: str, tmp_path: Path) -> None:
    first = data.analysis(db, RUN, "load")
    assert data.analysis(db, RUN, "load") is first  # served from the cache
    assert data.analysis(db, RUN, "load", n_boot=10) is not first  # options are part of the key
    assert data.labels(db, RUN) == ["code", "math", "prose"]
    assert data.contrast(db, RUN) == ("code", "math")
    # A store that changes on disk is read afresh: the file version is part of the key.
    copy = copy_store(db, tmp_path / "copy.duckdb")
    before = data.runs(str(copy))
    with Store(copy) as st:
        st.delete_run(RUN)
    assert before.height == 1 and data.runs(str(copy)).height == 0


def test_data_layer_is_read_only_and_parameterised(db: str) -> None:
    hostile = "x' OR 1=1; DROP TABLE runs; --"
    out = guarded(data.analysis, db, hostile, "load")
    assert _is_message(out) and "no run" in _text(out)
    assert data.prompts(db, RUN, label=hostile).height == 0
    assert data.runs(db).height == 1  # nothing was dropped
    with data.open_store(db) as st:
        assert st.read_only


def test_missing_store_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    out = guarded(runs.runs_table, str(tmp_path / "nope.duckdb"))
    assert _is_message(out) and "no store" in _text(out)


def test_empty_store_and_no_run_are_explained(tmp_path: Path) -> None:
    empty = tmp_path / "empty.duckdb"
    Store(empty).close()
    assert default_run(str(empty)) is None and run_options(str(empty)) == []
    assert "holds no runs yet" in _text(runs.runs_table(str(empty)))
    out = guarded(routing.share_heatmap, str(empty), None, ALL)
    assert _is_message(out) and "no run chosen" in _text(out)


# -- components --------------------------------------------------------------------------------
def test_url_helpers() -> None:
    assert query_string(run="a b", label=None, layer=0) == "?run=a+b&layer=0"
    assert query_string() == ""
    assert expert_href("r", "1", 5) == "/expert?run=r&layer=1&expert=5"
    assert to_int("3") == 3 and to_int("x") is None and to_int(None) is None
    assert clicked_expert({"points": [{"x": 5, "y": 1}]}) == (1, 5)
    assert clicked_expert({"points": [{"x": 9, "y": 0, "customdata": 3.0}]}, "customdata") == (0, 3)
    assert clicked_expert(None) is None and clicked_expert({"points": []}) is None
    assert pick("2", [{"value": 1}, {"value": 2}]) == 2 and pick("z", [{"value": 1}]) == 1
    assert pick("z", []) is None


# -- views (the callback bodies) ---------------------------------------------------------------
def test_runs_views(db: str) -> None:
    assert default_run(db) == RUN
    assert [o["value"] for o in run_options(db)] == [RUN]
    assert isinstance(runs.runs_table(db), DataTable)
    detail = _text(runs.run_detail(db, RUN))
    assert "Synthetic" in detail and "code" in detail and "m.1" in detail
    assert "error" not in detail  # no `error None` for a run without one
    assert "None" not in runs.run_metadata(data.run_info(db, RUN))["value"].to_list()
    assert "no capture options stored" in detail  # the synthetic run was written by a script
    assert _is_message(runs.run_detail(db, None))
    info = {"model": "m", "status": "failed", "error": "CUDA out of memory"}
    meta = runs.run_metadata(info)
    assert (
        dict(meta.iter_rows())["error"] == "CUDA out of memory"
        and dict(meta.iter_rows())["status"] == "failed"
    )
    assert "error" not in runs.run_metadata({**info, "error": None})["field"].to_list()
    config = {
        "options": {"dtype": "bfloat16", "batch_size": 16, "device": None, "device_map": {"model.layers.0": 0}},
        "model_source": "tiny-ref", "workbench": "0.9.0", "integrity": {"probe": "abc"},
    }  # fmt: skip
    options = dict(runs.capture_options(config).iter_rows())
    assert options == {
        "dtype": "bfloat16", "batch_size": "16", "device": runs.NOT_SET, "device_map": '{"model.layers.0": 0}',
        "model_source": "tiny-ref", "workbench": "0.9.0",
    }  # fmt: skip
    assert runs.capture_options({}).height == 0


def test_routing_views(db: str) -> None:
    share = routing.selection_share(db, RUN, ALL)
    sums = share.group_by("layer").agg(pl.col("share").sum())["share"].to_list()
    assert all(abs(s - K) < 1e-6 for s in sums)  # every token selects k experts
    code = routing.selection_share(db, RUN, "code")
    top = code.sort("share", descending=True).row(0, named=True)
    assert (top["layer"], top["expert"]) == PLANT
    fig = routing.share_heatmap(db, RUN, "code")
    assert isinstance(fig, go.Figure) and fig.data[0].z.shape == (2, E)
    with pytest.raises(ValueError, match="no tokens labelled"):
        routing.selection_share(db, RUN, "nope")
    prompts = routing.prompt_options(db, RUN, "math")
    assert len(prompts) == 8 and "[math]" in prompts[0]["label"]
    pid = prompts[0]["value"]
    text = routing.token_text(db, RUN, pid, 1)
    strip = next(c for c in text.children if getattr(c, "id", None) == "routing-strip")
    spans = [c for c in strip.children if isinstance(c, html.Span)]
    assert spans and "top-k experts" in spans[0].title and "their logits" in spans[0].title
    assert "token id 0" in spans[0].title  # the synthetic token ids are the positions
    assert "not stored" not in spans[0].title  # logits were captured
    grid = routing.token_grid(db, RUN, pid)
    assert grid.data[0].z.shape[0] == 2
    with pytest.raises(ValueError, match="pick a prompt"):
        routing.token_text(db, RUN, None, 1)
    with pytest.raises(ValueError, match="layer 7 was not captured"):
        routing.token_text(db, RUN, pid, 7)


def test_specialisation_views(db: str) -> None:
    fig = specialisation.lift_heatmap(db, RUN, "code")
    assert "code" in fig.layout.title.text and "CI" in fig.data[0].hovertemplate
    assert isinstance(specialisation.vocab(db, RUN), go.Figure)
    agreement = specialisation.agreement(db, RUN)
    assert isinstance(agreement, html.Div) and "lift" in _text(agreement)


def test_health_views(db: str) -> None:
    assert isinstance(health.load(db, RUN), go.Figure)
    assert isinstance(health.balance(db, RUN), DataTable)
    collapse = _text(health.flag_section(db, RUN, "collapse"))
    assert "capture the run with --expert-stats" in collapse  # explained, not a traceback
    degradation = _text(health.flag_section(db, RUN, "degradation"))
    assert "rows flagged (degraded)" in degradation and "dominant" in degradation
    assert "rows flagged (underfit)" in _text(health.flag_section(db, RUN, "underfitting"))
    click = {"points": [{"curveNumber": 1, "x": 5, "y": 0.2}]}
    assert health.load_click(db, RUN, click) == (1, 5)


def test_coactivation_views(db: str) -> None:
    layer = coactivation.default_layer(db, RUN)
    assert layer in (0, 1)
    fig = coactivation.matrix(db, RUN, 0)
    assert "layer 0" in fig.layout.title.text
    assert isinstance(coactivation.pathways(db, RUN), go.Figure)
    with pytest.raises(ValueError, match="layer 9"):
        coactivation.matrix(db, RUN, 9)
    assert coactivation.partners(db, RUN, 1, 5).height > 0


def test_coactivation_network() -> None:
    # Layer 0, four experts: 0–1 strongly together (lift 3), 2–3 a little (lift 1.2), rest apart.
    rows = []
    for a, b, n_ab, lift in [(0, 1, 90, 3.0), (2, 3, 30, 1.2), (0, 2, 5, 0.4), (1, 3, 10, 0.8)]:
        for x, y in ((a, b), (b, a)):  # the analysis lists both orders
            rows.append({"layer": 0, "a": x, "b": y, "n_ab": n_ab, "n_a": 100 + 10 * x, "lift": lift,
                         "p_b_given_a": n_ab / 100})  # fmt: skip
    df = pl.DataFrame(rows)
    edges, used = coactivation.network_edges(df, 0, "lift", None)
    assert used == coactivation.DEFAULT_MIN_LIFT and edges.select("a", "b").rows() == [(0, 1)]
    edges, used = coactivation.network_edges(df, 0, "lift", 1.0)
    assert edges.select("a", "b").rows() == [(0, 1), (2, 3)]  # strongest first, each pair once
    edges, used = coactivation.network_edges(df, 0, "count", 10)
    assert edges["weight"].to_list() == [90.0, 30.0, 10.0] and used == 10
    fig = coactivation.network_figure(df, 0, "lift", 1.0)
    nodes = fig.data[-1]
    assert list(nodes.text) == ["0", "1", "2", "3"] and [int(c[0]) for c in nodes.customdata] == [0, 1, 2, 3]
    assert [int(c[2]) for c in nodes.customdata] == [1, 1, 1, 1]  # each expert has one edge shown
    assert "2 pairs with lift ≥ 1.00" in fig.layout.title.text
    weak = df.with_columns(pl.col("lift").replace({3.0: 1.3, 1.2: 1.1}))  # no pair reaches 1.5
    edges, used = coactivation.network_edges(weak, 0, "lift", None)
    assert 1.1 < used <= 1.3 and edges.select("a", "b").rows() == [
        (0, 1)
    ]  # the strongest 10% instead of nothing
    flat = df.with_columns(pl.lit(0.5).alias("lift"))  # everything below independence: no edge
    assert coactivation.network_edges(flat, 0, "lift", None)[0].height == 0
    # Node labels stay readable: white on the darkest nodes (most pairs drawn), dark ink on light ones;
    # the colour bar says what the colour counts.
    fig = coactivation.network_figure(df, 0, "count", 10)  # pairs 0–1, 2–3, 1–3: degrees 1, 2, 1, 2
    nodes = fig.data[-1]
    assert [int(c[2]) for c in nodes.customdata] == [1, 2, 1, 2]
    assert list(nodes.textfont.color) == [INK, "white", INK, "white"]
    bar = nodes.marker.colorbar.title.text
    assert "pairs drawn" in bar and "(count)" in bar and bar != "edges"
    assert fig.layout.template.layout.font.family == FONT
    with pytest.raises(ValueError, match="edge weight"):
        coactivation.network_edges(df, 0, "pmi", None)
    with pytest.raises(ValueError, match="layer 3"):
        coactivation.network_figure(df, 3)


def test_coactivation_network_of_a_run(db: str) -> None:
    fig = coactivation.network(db, RUN, None, "count", None)
    assert "Co-activation network, layer" in fig.layout.title.text
    assert isinstance(coactivation.network(db, RUN, 1, "lift", 0.0), go.Figure)


def test_resonance_views(db: str) -> None:
    assert resonance.default_pair(db, RUN) == ("code", "math")
    fig = resonance.resonance_figure(db, RUN, "code", "math", "rd")
    z = fig.data[0].z
    assert np.nanargmax(z) == PLANT[0] * E + PLANT[1]  # the planted expert resonates most
    tokens = resonance.driving_tokens(db, RUN, "code", "math", PLANT)
    assert "open the expert card" in _text(tokens) and "excess" not in _text(tokens)
    assert _is_message(resonance.driving_tokens(db, RUN, "code", "math", None))
    with pytest.raises(ValueError, match="pick a target"):
        resonance.resonance_figure(db, RUN, None, "math", "rd")
    with pytest.raises(ValueError, match="same label"):
        resonance.resonance_figure(db, RUN, "code", "code", "rd")


def test_resonance_span_and_stored_maps(db: str, tmp_path: Path) -> None:
    # A span restricts the tokens scored (and is named); a span the grammar refuses says what it accepts.
    whole = resonance.resonance_figure(db, RUN, "code", "math", "rd", "")
    last = resonance.resonance_figure(db, RUN, "code", "math", "rd", "last:2")
    assert "span" not in whole.layout.title.text and last.layout.title.text.endswith("span last:2")
    assert not np.allclose(np.asarray(whole.data[0].z, float), np.asarray(last.data[0].z, float))
    assert resonance.span_of(" all ") is None and resonance.span_of("first:3") == "first:3"
    with pytest.raises(ValueError, match=re.escape("not understood; use all | last:N | first:N")):
        resonance.resonance_figure(db, RUN, "code", "math", "rd", "the end")
    tokens = _text(resonance.driving_tokens(db, RUN, "code", "math", PLANT, "first:4"))
    assert "(span first:4)" in tokens

    # The stored maps are offered after the map computed here, and drawn with their own contrast.
    options = resonance.map_options(db, RUN)
    assert options[0]["value"] == resonance.LIVE and len(options) == 2
    stored = data.stored_resonance(db, RUN)
    map_id = stored["map_id"][0]
    assert options[1]["value"] == map_id and "rd · code vs math · span all" in options[1]["label"]
    fig = resonance.stored_map_figure(db, RUN, map_id)
    assert map_id in fig.layout.title.text and "'code' vs 'math'" in fig.layout.title.text
    cell = stored.filter((pl.col("layer") == PLANT[0]) & (pl.col("expert") == PLANT[1]))
    assert np.asarray(fig.data[0].z, float)[PLANT] == pytest.approx(cell["rd"][0])
    with pytest.raises(
        ValueError, match=f"no stored resonance map 'rm-nope'; its stored maps: \\['{map_id}'\\]"
    ):
        resonance.stored_map_figure(db, RUN, "rm-nope")

    # A causal map (resonate --method causal --store) shows its effect, the colour bar in its unit.
    copy = copy_store(db, tmp_path / "causal.duckdb")
    causal = stored.filter(pl.col("map_id") == map_id).select(
        "layer", "expert", "rd", "ftri", "ci_low", "ci_high", "p", "q", "n_target", "n_control"
    )
    causal = causal.with_columns((pl.col("layer") * 10 + pl.col("expert")).cast(pl.Float64).alias("effect"))
    with Store(copy) as st:
        causal_id = st.write_resonance(
            RUN, causal, target="code", control="math", method="causal", span="last:3"
        )
    fig = resonance.stored_map_figure(str(copy), RUN, causal_id)
    assert np.asarray(fig.data[0].z, float)[PLANT] == PLANT[0] * 10 + PLANT[1]
    assert "effect" in fig.data[0].colorbar.title.text and "span last:3" in fig.layout.title.text
    assert "causal · code vs math · span last:3" in resonance.map_options(str(copy), RUN)[2]["label"]


def test_expert_card(db: str) -> None:
    card = expert.expert_card(db, RUN, *PLANT)
    text = _text(card)
    assert "Layer 1 · expert 5" in text and "routed slots" in text
    assert "Degradation:" in text and "no expert stats" in text
    assert "rm-" in text  # the stored resonance map's row
    assert isinstance(expert.label_shares(db, RUN, *PLANT), go.Figure)
    with pytest.raises(ValueError, match=r"experts 0\.\.7, not 8"):
        expert.expert_card(db, RUN, 1, 8)
    with pytest.raises(ValueError, match="no MoE layer 4"):
        expert.expert_card(db, RUN, 4, 0)
    assert label_options(db, RUN, False)[0] == {"label": "code", "value": "code"}
    assert "Similar experts" in text and "cosine of the experts' label profiles" in text
    assert "No ablation effect stored" in text and "--method causal" in text


def test_similar_experts_by_label_profile() -> None:
    # Three labels; (0,0) and (1,2) lean to "code", (0,1) to "math", (1,0) is a generalist,
    # (1,3) leans to code and prose alike: a partial match, neither ±1 (the two-label artefact).
    rows = [
        (0, 0, "code", 0.8), (0, 0, "math", 0.1), (0, 0, "prose", 0.1),
        (0, 1, "code", 0.1), (0, 1, "math", 0.7), (0, 1, "prose", 0.1),
        (1, 0, "code", 0.4), (1, 0, "math", 0.4), (1, 0, "prose", 0.4),
        (1, 2, "code", 0.6), (1, 2, "math", 0.1), (1, 2, "prose", 0.1),
        (1, 3, "code", 0.45), (1, 3, "math", 0.1), (1, 3, "prose", 0.45),
    ]  # fmt: skip
    spec = pl.DataFrame(rows, schema=["layer", "expert", "label", "share"], orient="row")
    out = expert.similar_by_labels(spec, 0, 0)
    assert out.select("layer", "expert").rows() == [(1, 2), (1, 3), (0, 1)]  # the generalist has no direction
    assert out.schema["layer"].is_integer() and out.schema["expert"].is_integer()  # ids stay ints (links)
    sim = out["similarity"].to_list()
    assert sim[0] == pytest.approx(1.0) and sim[2] < 0 and 0.1 < sim[1] < 0.9  # graded, not ±1
    assert out["leans_to"].to_list()[0] == "code" and out["leans_to"].to_list()[2] == "math"
    with pytest.raises(ValueError, match="generalist"):
        expert.similar_by_labels(spec, 1, 0)


def test_similar_experts_refused_with_two_labels() -> None:
    # With two labels a centred profile has one direction: every cosine is ±1 whatever the shares.
    rows = [
        (0, 0, "code", 0.8), (0, 0, "math", 0.2), (0, 1, "code", 0.1), (0, 1, "math", 0.7),
        (1, 2, "code", 0.52), (1, 2, "math", 0.47),
    ]  # fmt: skip
    spec = pl.DataFrame(rows, schema=["layer", "expert", "label", "share"], orient="row")
    with pytest.raises(ValueError, match=r"not enough labels.*needs ≥ 3 labels, the run has 2"):
        expert.similar_by_labels(spec, 0, 0)


def test_similar_experts_card_section_says_why_with_two_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(0, 0, "code", 0.8), (0, 0, "math", 0.2), (0, 1, "code", 0.1), (0, 1, "math", 0.7)]
    spec = pl.DataFrame(rows, schema=["layer", "expert", "label", "share"], orient="row")
    monkeypatch.setattr(expert.data, "analysis", lambda *_: spec)
    text = _text(guarded(expert.similar_experts, "db", "run", 0, 0))
    assert "needs ≥ 3 labels" in text and "1.000" not in text


def test_expert_card_shows_stored_ablation_effects(db: str, tmp_path: Path) -> None:
    copy = copy_store(db, tmp_path / "ablated.duckdb")
    with Store(copy) as st:
        alone = st.create_intervention(
            RUN, kind="zero", spec={"specs": [{"kind": "zero", "experts": {"1": [5]}, "span": None}]}
        )
        st.write_evaluations(
            alone,
            pl.DataFrame(
                {
                    "label": ["code", "code", "math"],
                    "metric": ["delta_nll", "nll_base", "nll_delta"],
                    "value": [0.42, 3.25, 0.125],
                    "ci_low": [0.3, 3.0, 0.125],
                    "ci_high": [0.5, 3.5, 0.125],
                    "n": [8, 8, 1],
                    "meta": ["{}"] * 3,
                }
            ),
        )
        st.create_intervention(RUN, kind="zero", spec={"specs": [{"kind": "zero", "experts": {"0": [5]}}]})
        rmap = resonance_map(st, RUN, target="code", control="math", n_boot=20, n_perm=20)
        rmap = rmap.drop("rate_target", "rate_control").with_columns(pl.lit(-0.25).alias("effect"))
        st.write_resonance(RUN, rmap, target="code", control="math", method="causal")
    text = _text(expert.ablation_effect(str(copy), RUN, *PLANT))
    assert alone in text and "delta_nll" in text and "0.42" in text  # the recorded ablation of (1, 5)
    # a level is not called a delta: the caption and each row say what the value is
    assert "intervened minus the baseline value" not in text and "levels" in text
    assert "level: baseline NLL (no intervention)" in text and "change: intervened − baseline NLL" in text
    assert (
        "[0.3, 0.5]" in text and "none (n < 2)" in text and "[0.125, 0.125]" not in text
    )  # n = 1: no interval
    assert "-0.25" in text and "causal" in text  # the causal map's effect
    other = _text(expert.ablation_effect(str(copy), RUN, 1, 4))
    assert alone not in other and "-0.25" in other  # (1, 4) was not ablated; the map covers every expert


# -- serve ---------------------------------------------------------------------------------------
def test_serve_refuses_a_missing_store(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli_app, ["serve", "--db", str(tmp_path / "missing.duckdb")])
    assert res.exit_code == 2
    assert "no store" in res.output and "missing.duckdb" in res.output


def test_serve_help_defaults_to_localhost() -> None:
    res = CliRunner().invoke(cli_app, ["serve", "--help"])
    assert res.exit_code == 0 and "127.0.0.1" in res.output and "8050" in res.output


def test_serve_passes_cache_and_prewarm(db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from workbench.cli import serve_cmd

    seen: list[dict[str, Any]] = []

    class FakeApp:
        def run(self, **_: Any) -> None:
            return None

    def fake_create(path: Path, **kw: Any) -> FakeApp:
        seen.append(kw)
        return FakeApp()

    monkeypatch.setattr(serve_cmd, "_create_app", lambda: fake_create)
    monkeypatch.setattr(serve_cmd.signal, "signal", lambda *_: None)  # leave pytest's handlers alone
    res = CliRunner().invoke(cli_app, ["serve", "--db", db, "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert seen[-1]["cache_dir"] == tmp_path and seen[-1]["prewarm"] is True
    res = CliRunner().invoke(cli_app, ["serve", "--db", db, "--no-cache", "--no-prewarm"])
    assert res.exit_code == 0 and seen[-1]["cache_dir"] is None and seen[-1]["prewarm"] is False


def test_expert_load_line_shows_no_interval_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"layer": [0], "expert": [1], "f": [0.25], "ci_low": [float("nan")], "ci_high": [float("nan")],
           "utilisation": [1.0], "dead": [False]}  # fmt: skip
    monkeypatch.setattr(expert.data, "analysis", lambda *_: pl.DataFrame(row))
    text = _text(expert._load("db", "run", 0, 1))
    assert "no CI: fewer than 2 prompts" in text and "nan" not in text.lower()
    row.update(ci_low=[0.2], ci_high=[0.3])
    assert "95% CI 20.00–30.00%" in _text(expert._load("db", "run", 0, 1))

"""Decoded tokens in the store readers, the notebook API, the CLI and the dashboard views, and an
expert's example contexts on a planted store (tests/token_support.py) where the answer is known:
layer 1 expert 5 takes every `` return`` token at gate weight 0.95 and a sixth of the other tokens
below 0.5, so its top contexts are the ``return`` tokens and a random sample of its contexts is not.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import token_support as ts
from dash import html
from synthetic import save_run, skeleton
from test_dashboard import _text
from typer.testing import CliRunner

import workbench as wb
from dashboards import data
from dashboards.views import contexts as context_view
from dashboards.views import expert as expert_view
from dashboards.views import resonance as resonance_view
from dashboards.views import routing as routing_view
from workbench.analysis.relevance import expert_top_tokens
from workbench.analysis.tokens import expert_contexts, prompt_tokens, token_scheme
from workbench.cli import app
from workbench.store import Store, queries
from workbench.tokentext import MARKER_PATTERNS, Scheme

pytestmark = pytest.mark.unit

RAW = ("Ġ", "Ċ", "ĉ")
"""Characters of raw byte-level symbols that must never reach a reader."""
NO_WEIGHTS = "no-weights"
CONTEXT_COLUMNS = ("rank", "prompt_id", "position", "label", "weight", "token_id", "token", "before", "text", "after",
                   "hover")  # fmt: skip
"""The columns of ExpertContexts.top and .sample (docs/notebook.md lists them)."""


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = ts.worded_db(tmp_path_factory.mktemp("worded") / "w.duckdb")
    ts.worded_db(path, run_id=NO_WEIGHTS, with_weights=False)
    data.clear_cache()
    return str(path)


def _unmark(text: str) -> str:
    return text.replace("·", " ").replace("⏎", "\n").replace("→", "\t")


def _selections(st: Store, run: str) -> pl.DataFrame:
    """(prompt_id, position, weight, label) of every selection of the planted expert, from the raw tables."""
    rows = st.routing(run, layers=[ts.LAYER], logits=False).filter(pl.col("experts").list.contains(ts.EXPERT))
    rows = rows.with_columns(
        pl.col("weights")
        .list.get(pl.col("experts").list.eval(pl.element() == ts.EXPERT).list.arg_max())
        .alias("w")
    )
    return rows.join(st.prompts(run).select("prompt_id", "label"), on="prompt_id")


def test_prompt_tokens_decode_and_carry_the_routing(db: str) -> None:
    with Store(db, read_only=True) as st:
        assert token_scheme(st, ts.RUN) is Scheme.BYTE_LEVEL
        assert any(s.startswith("Ġ") for s in queries.marked_symbols(st, ts.RUN, MARKER_PATTERNS))
        wide = prompt_tokens(st, ts.RUN, 1)
        long = prompt_tokens(st, ts.RUN, 1, long=True)
        routing = st.routing(ts.RUN, prompt_ids=[1], logits=False)
        with pytest.raises(ValueError, match=r"no tokens for prompt 999; its prompt ids run 0\.\.23"):
            prompt_tokens(st, ts.RUN, 999)
    assert wide.columns[:4] == ["position", "token_id", "token", "text"]
    assert {"L0", "L0_w", "L1", "L1_w"} <= set(wide.columns)
    assert "".join(_unmark(t) for t in wide["text"]) == "<bos>" + ts.CODE[1]
    assert "⏎·······" in wide["text"].to_list()  # ĊĠĠĠĠĠĠĠ: a newline and 7 spaces
    top1 = routing.filter(pl.col("layer") == 1).sort("position")["experts"].list.first()
    assert wide["L1"].list.first().to_list() == top1.to_list()
    assert long.height == 2 * wide.height and long.columns[-3:] == ["layer", "experts", "weights"]
    with wb.open(db) as session:  # the notebook API answers the same frame
        assert session.run(ts.RUN).tokens(1).equals(wide)


def test_top_contexts_are_the_planted_tokens_and_the_sample_is_seeded(db: str) -> None:
    with Store(db, read_only=True) as st:
        found = expert_contexts(st, ts.RUN, ts.LAYER, ts.EXPERT, n=6, window=4)
        again = expert_contexts(st, ts.RUN, ts.LAYER, ts.EXPERT, n=6, window=4)
        other_seed = expert_contexts(st, ts.RUN, ts.LAYER, ts.EXPERT, n=6, window=4, seed=1)
        truth = _selections(st, ts.RUN)
        tokens = st.tokens(ts.RUN)
    assert found.by_weight and found.n_selected == truth.height
    top = found.top
    assert top.columns == list(CONTEXT_COLUMNS)
    assert top["rank"].to_list() == list(range(1, 7))
    assert set(top["token"]) == {ts.PLANTED_SYMBOL} and set(top["text"]) == {"·return"}
    assert top["weight"].to_list() == pytest.approx([ts.TOP_WEIGHT] * 6)
    # Ties are broken by prompt, then position: prompt 0's only return, then prompt 1's two.
    assert list(zip(top["prompt_id"], top["position"], strict=True))[:3] == [(0, 9), (1, 13), (1, 20)]
    first = top.row(0, named=True)
    assert (first["before"], first["after"]) == (",·y):⏎···", "·x·+·y⏎")
    assert "symbol 'Ġreturn'" in first["hover"] and f"token id {first['token_id']}" in first["hover"]
    # The sample: the same with the same seed, another with another, drawn from all selections.
    assert found.sample.equals(again.sample) and not found.sample.equals(other_seed.sample)
    keys = set(zip(truth["prompt_id"], truth["position"], strict=True))
    assert set(zip(found.sample["prompt_id"], found.sample["position"], strict=True)) <= keys
    planted_share = (
        tokens.join(truth.select("prompt_id", "position"), on=["prompt_id", "position"])["token"]
        .eq(ts.PLANTED_SYMBOL)
        .mean()
    )
    assert planted_share < 0.3  # so a sample of 6 that were all "return" would be a broken sampler
    assert (found.sample["token"] != ts.PLANTED_SYMBOL).sum() >= 3
    # Label mix: counts of each set, next to all selections (from the raw tables).
    mix = {r["label"]: r for r in found.labels.iter_rows(named=True)}
    assert {k: v["n_all"] for k, v in mix.items()} == dict(Counter(truth["label"].to_list()))
    assert sum(v["n_top"] for v in mix.values()) == 6 and mix["code"]["n_top"] == 6
    assert sum(v["n_sample"] for v in mix.values()) == 6
    assert mix["code"]["share_all"] == pytest.approx(mix["code"]["n_all"] / truth.height)


def test_contexts_without_gate_weights_and_bad_requests(db: str) -> None:
    with Store(db, read_only=True) as st:
        found = expert_contexts(st, NO_WEIGHTS, ts.LAYER, ts.EXPERT, n=3, window=2)
        for bad, message in (
            ({"layer": 7}, "no MoE layer 7"),
            ({"expert": 8}, "experts 0..7, not 8"),
            ({"n": 0}, "n must be at least 1"),
        ):
            args = {"layer": ts.LAYER, "expert": ts.EXPERT, "n": 3} | bad
            with pytest.raises(ValueError, match=message):
                expert_contexts(st, ts.RUN, args["layer"], args["expert"], n=args["n"])
    assert not found.by_weight and found.top["weight"].is_null().all()
    assert list(zip(found.top["prompt_id"], found.top["position"], strict=True)) == sorted(
        zip(found.top["prompt_id"], found.top["position"], strict=True)
    )
    section = _text(context_view.contexts_section(db, NO_WEIGHTS, ts.LAYER, ts.EXPERT))
    assert "the run stores no gate weights, so none is ranked" in section
    assert "with the highest gate weight" not in section


def test_top_tokens_and_the_drill_down_read_as_text(db: str) -> None:
    with Store(db, read_only=True) as st:
        top = expert_top_tokens(st, ts.RUN, ts.LAYER, ts.EXPERT, min_count=2)
    assert top.columns[:3] == ["token_id", "token", "text"]
    assert top.row(0, named=True)["text"] == "·return"
    result = CliRunner().invoke(
        app,
        ["resonate", "--db", db, "--run", ts.RUN, "--target", "code", "--control", "prose",
         "--no-store", "--drill", f"{ts.LAYER}:{ts.EXPERT}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "token_id" in result.output and "·" in result.output
    assert not any(c in result.output for c in RAW)


def _strip(db: str, prompt: int, layer: int) -> list[Any]:
    div = routing_view.token_text(db, ts.RUN, prompt, layer)
    strip = next(c for c in div.children if getattr(c, "id", None) == "routing-strip")
    return [c for c in strip.children if isinstance(c, html.Span)]


def test_dashboard_views_show_decoded_tokens_in_one_palette(db: str) -> None:
    spans = _strip(db, 1, ts.LAYER)
    texts = [s.children[0].children for s in spans]
    assert "".join(_unmark(t) for t in texts) == "<bos>" + ts.CODE[1]
    assert not any(c in "".join(texts) for c in RAW)
    assert "token id" in spans[1].title and "bytes" in spans[1].title
    grid = routing_view.token_grid(db, ts.RUN, 1)
    heat = grid.data[0]
    assert not any(c in "".join(grid.layout.xaxis.ticktext) for c in RAW)
    # The grid's colour of a cell is the strip's colour of that token's top-1 expert.
    scale = [tuple(step) for step in heat.colorscale]
    n_ids = round(heat.zmax + 0.5)
    row = list(heat.y).index(ts.LAYER)
    for position, span in enumerate(spans):
        top1 = int(heat.z[row][position])
        assert span.children[1].children == str(top1)
        colour = span.style["backgroundColor"]
        assert colour == routing_view.expert_colour(top1)
        assert (top1 / n_ids, colour) in scale and ((top1 + 1) / n_ids, colour) in scale
    palette = [routing_view.expert_colour(e) for e in range(256)]
    assert len(set(palette[:64])) == 64  # distinct ids, distinct colours (at 256 a few may round alike)
    assert all(palette[e] not in palette[e + 1 : e + 4] for e in range(252))  # neighbours never alike
    card = _text(expert_view.expert_card(db, ts.RUN, ts.LAYER, ts.EXPERT))
    assert "Example contexts" in card and "·return" in card and "Top contexts by gate weight" in card
    assert not any(c in card for c in RAW)
    driving = _text(resonance_view.driving_tokens(db, ts.RUN, "code", "prose", (ts.LAYER, ts.EXPERT)))
    assert "·" in driving and not any(c in driving for c in RAW)


def test_prompt_link_of_a_context_opens_that_prompt(db: str) -> None:
    section = context_view.contexts_section(db, ts.RUN, ts.LAYER, ts.EXPERT)
    links = [c for c in _walk(section) if getattr(c, "href", None)]
    assert links[0].href == f"/routing?run={ts.RUN}&label=code&prompt=0&layer={ts.LAYER}"
    assert links[0].children == "#0:9"


def _walk(component: Any) -> list[Any]:
    found = [component]
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list) else [children] if children is not None else []:
        found += _walk(child)
    return found


def test_windows_read_a_character_cut_by_the_window_edge_whole(db: str) -> None:
    """A window that starts inside 日本語 shows the character, not its trailing bytes escaped."""
    with Store(db, read_only=True) as st:
        pid = int(st.prompts(ts.RUN).filter(pl.col("text").str.starts_with("日本語"))["prompt_id"][0])
        toks = st.tokens(ts.RUN, prompt_ids=[pid])
        found = expert_contexts(st, ts.RUN, ts.LAYER, ts.EXPERT, n=200, window=1)
    rows = pl.concat([found.top, found.sample]).filter(pl.col("prompt_id") == pid)
    assert rows.height and toks.height
    for r in rows.iter_rows(named=True):
        assert "\\x" not in r["before"] + r["text"] + r["after"], r


def test_messages_for_an_empty_run_and_an_idle_expert(tmp_path: Path) -> None:
    path = tmp_path / "small.duckdb"
    sk = skeleton(["a", "b"], np.array([3, 4]), (0,))
    experts = np.tile(np.array([0, 1], np.int16), (sk.n_rows, 1))  # expert 2 is never selected
    weights = np.full((sk.n_rows, 2), 0.5, np.float32)
    save_run(path, sk, experts=experts, weights=weights, n_experts=4, top_k=2, run_id="idle")
    layers = [{"layer": 0, "module_path": "m.0", "n_experts": 4, "top_k": 2}]
    with Store(path) as st:
        st.create_run(
            model="m",
            architecture="A",
            probe="p",
            n_experts=4,
            top_k=2,
            config={},
            layers=layers,
            run_id="empty",
        )
        with pytest.raises(ValueError, match="no tokens for prompt 0; it has no prompts yet"):
            prompt_tokens(st, "empty", 0)
        idle = expert_contexts(st, "idle", 0, 2)
    assert idle.n_selected == 0 and idle.top.height == 0 and idle.labels.height == 0
    assert idle.top.columns == list(CONTEXT_COLUMNS)  # the same columns as when there are rows
    data.clear_cache()
    shown = _text(context_view.contexts_section(str(path), "idle", 0, 2))
    assert "Never selected at layer 0: no contexts to show." in shown
    assert "Never selected" not in _text(context_view.contexts_section(str(path), "idle", 0, 1))

"""Every catalogued analysis drawn from its real output: the catalog's figures and each builder's content."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pyarrow as pa
import pytest
from synthetic import lists, skeleton

from workbench.catalog import (
    ANALYSES,
    FIGURES,
    UnknownFigureError,
    figure_for,
    figure_options,
    run_analysis,
)
from workbench.plots.theme import FONT
from workbench.store import Store

pytestmark = pytest.mark.unit

# --- every registered analysis, drawn from its real output on a small synthetic run -------------

E, K = 6, 2
LABELS = ("code", "math", "prose")
LAYERS = (0, 1, 2)
SUPER = 2  # expert whose output norm is planted 3x larger on every layer


def _write_run(path: Path, run_id: str, seed: int) -> str:
    """Top-2 routing with expert j planted on label j, router logits, NLLs, and expert_stats.

    ``expert_stats`` holds the selected experts plus one shared pseudo-expert (id E) per token,
    so the collapse / degradation / underfitting / super-expert analyses have data.
    """
    rng = np.random.default_rng(seed)
    labels = [lab for lab in LABELS for _ in range(6)]
    sk = skeleton(labels, rng.integers(6, 10, size=len(labels)), LAYERS)
    sk.tokens = sk.tokens.set_column(
        sk.tokens.schema.get_field_index("nll"), "nll", pa.array(rng.gamma(2.0, 1.0, sk.tokens.num_rows))
    )
    lab = np.asarray(labels)[sk.pid]
    experts = np.argsort(rng.random((sk.n_rows, E)), axis=1)[:, :K].astype(np.int16)
    for j, name in enumerate(LABELS):
        hit = (lab == name) & (rng.random(sk.n_rows) < 0.7)
        experts[hit, 0] = j
        experts[hit, 1] = (j + 1 + rng.integers(0, E - 1, size=int(hit.sum()))) % E
    weights = np.tile(np.array([0.7, 0.3], np.float32), (sk.n_rows, 1))
    logits = rng.normal(0, 1.0, size=(sk.n_rows, E)).astype(np.float32)
    logits[np.arange(sk.n_rows), experts[:, 0]] += 3.0
    logits[np.arange(sk.n_rows), experts[:, 1]] += 2.0
    ids = np.concatenate([experts, np.full((sk.n_rows, 1), E, np.int16)], axis=1).ravel()
    norm = rng.uniform(0.5, 1.5, ids.size)
    norm[ids == SUPER] *= 3.0
    stats = pa.table({
        "prompt_id": np.repeat(sk.pid, K + 1), "position": np.repeat(sk.pos, K + 1),
        "layer": np.repeat(sk.lay, K + 1), "expert": ids, "out_norm": norm.astype(np.float32),
        "zero_frac": rng.uniform(0, 0.3, ids.size).astype(np.float32),
    })  # fmt: skip
    routing = pa.table({
        "prompt_id": sk.pid, "position": sk.pos, "layer": sk.lay,
        "experts": lists(experts), "weights": lists(weights), "logits": lists(logits),
    })  # fmt: skip
    layer_rows = [
        {"layer": x, "module_path": f"m.{x}", "n_experts": E, "top_k": K, "n_shared": 1} for x in LAYERS
    ]
    with Store(path) as st:
        run = st.create_run(
            model="synthetic", architecture="Synthetic", probe="domains", n_experts=E, top_k=K,
            config={}, layers=layer_rows, run_id=run_id,
        )  # fmt: skip
        st.write_batch(run, prompts=sk.prompts, tokens=sk.tokens, routing=routing, expert_stats=stats)
        st.set_status(run, "complete")
    return run


_FAST: dict[str, dict[str, object]] = {
    "specialisation": {"n_perm": 50, "n_boot": 50},
    "underfitting": {"n_perm": 50},
    # this run is not a paired contrast set: name the two labels to contrast
    "resonance": {"target": LABELS[0], "control": LABELS[1], "n_perm": 50, "n_boot": 50},
}


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    """Every catalogued analysis run once on the synthetic run ``a`` (``drift`` against ``b``)."""
    path = tmp_path_factory.mktemp("plots") / "runs.duckdb"
    _write_run(path, "a", seed=1)
    _write_run(path, "b", seed=2)
    out: dict[str, pl.DataFrame] = {}
    with Store(path, read_only=True) as st:
        for name, spec in ANALYSES.items():
            if "model" in spec.needs:  # needs a loaded model: drawn from a table of its documented shape
                out[name] = _similarity_table() if name == "expert-similarity" else pl.DataFrame()
                continue
            compare = "b" if spec.is_compare else None
            out[name] = run_analysis(name, st, "a", compare=compare, **_FAST.get(name, {}))
    return out


def _similarity_table() -> pl.DataFrame:
    """An ``expert_similarity`` table (one row per layer, expert_a < expert_b, shared id E).

    Experts 1 and 4 of layer 2 are planted near-identical, so layer 2 holds the top merge pair.
    """
    from workbench.interventions.expert_similarity import SIMILARITY_COLUMNS

    rng = np.random.default_rng(0)
    rows = []
    for layer in LAYERS:
        for a in range(E + 1):
            for b in range(a + 1, E + 1):
                shared = b == E
                ang = 0.97 if (layer, a, b) == (2, 1, 4) else float(rng.uniform(0.5, 0.8))
                rows.append({
                    "layer": layer, "expert_a": a, "expert_b": b, "shared": shared,
                    "weight_cos": None if shared else float(rng.uniform(-0.1, 0.3)),
                    "output_cos": float(np.cos(np.pi * (1 - ang))), "output_angular": ang,
                    "ci_low": ang - 0.02, "ci_high": ang + 0.01, "n_tokens": 100, "n_prompts": 10,
                })  # fmt: skip
    df = pl.DataFrame(rows).with_columns(
        pl.when(~pl.col("shared"))
        .then(pl.col("output_angular").rank("ordinal", descending=True).over("layer", "shared"))
        .alias("merge_rank"),
        (~pl.col("shared") & (pl.col("ci_low") >= 0.75)).alias("merge_candidate"),
    )
    return df.select(list(SIMILARITY_COLUMNS))


def test_every_analysis_has_a_figure_builder_from_plots() -> None:
    """Each catalog entry names a builder on the plots floor that takes the table first."""
    assert list(FIGURES) == list(ANALYSES)
    for name, builder in FIGURES.items():
        assert builder.__module__.startswith("workbench.plots."), (name, builder.__module__)
        first = next(iter(inspect.signature(builder).parameters))
        assert first == "df", (name, first)


def test_figure_for_unknown_name_lists_names() -> None:
    with pytest.raises(UnknownFigureError, match=r"available: .*load.*specialisation"):
        figure_for("nope", pl.DataFrame())
    with pytest.raises(KeyError):
        figure_for("nope", pl.DataFrame())


def test_figure_for_unknown_option(tables: dict[str, pl.DataFrame]) -> None:
    assert figure_options("specialisation") == {"label": None}
    assert figure_options("load") == {}
    with pytest.raises(TypeError, match=r"'load' does not take option\(s\) \['label'\]"):
        figure_for("load", tables["load"], label="code")


def _needed_column(name: str, df: pl.DataFrame) -> str | None:
    """A column the builder needs: dropping it raises a ValueError that names it (``layer`` tried first)."""
    for column in sorted(df.columns, key=lambda c: c != "layer"):
        try:
            figure_for(name, df.drop(column))
        except ValueError as exc:
            if column in str(exc):
                return column
    return None


def _axes(fig: go.Figure) -> dict[str, Any]:
    """Every x/y axis of the figure's layout, by name (``xaxis``, ``yaxis2`` ...)."""
    layout = fig.layout
    return {k: layout[k] for k in layout if k.startswith(("xaxis", "yaxis")) and layout[k] is not None}


def _check_look(name: str, fig: go.Figure) -> None:
    """The workbench template; whole-number ticks on every layer axis; no colorbar inside a plot area."""
    assert fig.layout.template.layout.font.family == FONT, f"{name}: not drawn in the workbench template"
    axes = _axes(fig)
    for axis_name, axis in axes.items():
        if (axis.title.text or "").split(" (")[0] != "layer":
            continue
        if axis.tickmode == "array":
            ticks = list(axis.tickvals)
            assert ticks and all(float(t).is_integer() for t in ticks), (name, axis_name, ticks)
        else:
            assert axis.tickmode == "linear" and float(axis.dtick).is_integer(), (name, axis_name, axis.dtick)
    domains = [tuple(a.domain) for k, a in axes.items() if k.startswith("xaxis") and a.domain is not None]
    for trace in fig.data:
        bars = [getattr(trace, "colorbar", None), getattr(getattr(trace, "marker", None), "colorbar", None)]
        for bar in bars:
            if bar is None or bar.x is None:
                continue
            inside = [d for d in domains if d[0] < bar.x < d[1]]
            assert not inside, f"{name}: colorbar at x={bar.x} lies over the plot area {inside}"


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_every_figure_draws_its_table(name: str, tables: dict[str, pl.DataFrame]) -> None:
    df = tables[name]
    assert df.height > 0
    fig = figure_for(name, df)
    assert isinstance(fig, go.Figure)
    assert len(fig.data) >= 1
    assert fig.layout.title.text
    for trace in fig.data:
        hover = trace.hovertemplate if hasattr(trace, "hovertemplate") else trace.link.hovertemplate
        assert hover and "%{" in hover, f"{name}: trace {trace.name!r} has no numeric hover"
    html = fig.to_html(include_plotlyjs=False)
    assert "plotly" in html.lower()
    _check_look(name, fig)
    assert _needed_column(name, df) is not None, f"{name}: no dropped column gives a ValueError naming it"
    with pytest.raises(ValueError, match=r"empty|no labels|no layers"):
        figure_for(name, df.clear())


def test_specialisation_default_label(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["specialisation"]
    fig = figure_for("specialisation", df)
    assert "'code'" in fig.layout.title.text
    hm = figure_for("specialisation", df, label="math").data[0]
    z = np.asarray(hm.z, dtype=float)
    assert z.shape == (len(LAYERS), E)
    expected = df.filter((pl.col("label") == "math") & (pl.col("layer") == 2) & (pl.col("expert") == 1))
    assert z[2, 1] == pytest.approx(expected["log_odds"][0])
    assert np.asarray(hm.customdata).shape == (len(LAYERS), E, 10)


def test_balance_lines(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["balance"]
    fig = figure_for("balance", df)
    by_name = {t.name.split(" ")[0]: t for t in fig.data}
    assert list(by_name["CV"].x) == list(LAYERS)
    assert np.allclose(by_name["CV"].y, df["cv"].to_numpy())
    assert np.allclose(by_name["balancedness"].y, df["balancedness"].to_numpy())
    assert np.asarray(by_name["CV"].customdata).shape == (len(LAYERS), 5)
    assert "dead experts" in by_name["CV"].hovertemplate


def test_router_confidence_lines(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["router-confidence"]
    fig = figure_for("router-confidence", df)
    assert len(fig.data) == 3
    for trace, column in zip(fig.data, ("entropy_norm", "margin", "fragility"), strict=True):
        assert np.allclose(trace.y, df[column].to_numpy())
    assert "nats" in fig.data[0].hovertemplate


def test_super_expert_strip(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["super-experts"]
    fig = figure_for("super-experts", df)
    stars = [t for t in fig.data if t.name == "super expert"]
    assert len(stars) == 1
    flagged = df.filter(pl.col("super"))
    assert flagged.height >= 1 and set(flagged["expert"].to_list()) == {SUPER}
    assert np.asarray(stars[0].customdata)[:, 0].tolist() == flagged["expert"].to_list()
    assert fig.layout.yaxis.type == "log"
    assert sum(len(t.x) for t in fig.data) == df.height
    assert [s.line.dash for s in fig.layout.shapes] == ["dot"]


def test_vocab_and_mutual_information(tables: dict[str, pl.DataFrame]) -> None:
    vocab = figure_for("vocab", tables["vocab"])
    assert np.allclose(vocab.data[0].y, tables["vocab"]["vocab_specialisation"].to_numpy())
    assert np.allclose(vocab.data[1].y, 1 / E) and vocab.data[1].line.dash == "dash"
    mi = figure_for("mutual-information", tables["mutual-information"])
    plug_in, corrected = (np.asarray(t.y, dtype=float) for t in mi.data)
    assert np.all(corrected <= plug_in + 1e-12) and np.all(plug_in > 0)
    assert "nats" in mi.data[0].hovertemplate


def test_esft_and_tcess_heatmaps(tables: dict[str, pl.DataFrame]) -> None:
    esft = tables["esft"]
    hm = figure_for("esft", esft, label="prose").data[0]
    assert np.asarray(hm.z).shape == (len(LAYERS), E)
    n_in = esft.filter((pl.col("label") == "prose") & pl.col("in_set_gs")).height
    assert int((np.asarray(hm.text) == "●").sum()) == n_in
    tsr = figure_for("esft", esft, label="prose", score="tsr").data[0]
    part = esft.filter(pl.col("label") == "prose").sort("layer", "expert")
    assert np.allclose(np.asarray(tsr.z).ravel(), part["tsr"].to_numpy())
    with pytest.raises(ValueError, match="score must be one of"):
        figure_for("esft", esft, score="nope")
    tc = figure_for("tcess", tables["tcess"], label="math").data[0]
    part = tables["tcess"].filter(pl.col("label") == "math").sort("layer", "expert")
    assert np.allclose(np.asarray(tc.z).ravel(), part["tcess"].to_numpy())
    assert np.asarray(tc.customdata).shape == (len(LAYERS), E, 2)


def test_agreement_heatmap(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["agreement"]
    hm = figure_for("agreement", df).data[0]
    z = np.asarray(hm.z, dtype=float)
    assert list(hm.x) == list(LABELS)
    assert z.shape == (6, len(LABELS))  # lift, gs, tsr, tcess -> 6 pairs
    assert (hm.zmin, hm.zmax) == (-1.0, 1.0)
    row = df.filter(
        (pl.col("label") == "math") & (pl.col("scorer_a") == "lift") & (pl.col("scorer_b") == "tsr")
    )
    assert z[list(hm.y).index("lift vs tsr"), 1] == pytest.approx(row["spearman"][0])
    noted = df.with_columns(pl.lit("tcess skipped: <no logits>").alias("note"))
    assert "&lt;no logits&gt;" in figure_for("agreement", noted).layout.title.text


def test_home_figures(tables: dict[str, pl.DataFrame]) -> None:
    collapse = tables["collapse"]
    fig = figure_for("collapse", collapse)
    experts = [t for t in fig.data if t.name in ("routed experts", "shared experts")]
    assert sum(len(t.x) for t in experts) == collapse.height
    uniform = next(t for t in fig.data if t.name == "uniform routing collapse")
    assert np.allclose(uniform.y, 1 / E)  # ceil(0.1·6)/6
    deg = tables["degradation"]
    fig = figure_for("degradation", deg, threshold=0.8)
    assert sum(len(t.x) for t in fig.data) == deg.height
    assert fig.layout.shapes[0].y0 == pytest.approx(0.8)
    under = tables["underfitting"]
    fig = figure_for("underfitting", under)
    spec, gen, shared = fig.data
    assert fig.layout.barmode == "stack"
    assert np.allclose(np.asarray(spec.y) + np.asarray(gen.y), 1.0)
    flagged = under.filter(pl.col("underfit"))["label"].to_list()
    assert [x for x in spec.x if x.endswith("▼")] == [f"{x} ▼" for x in flagged]
    assert np.allclose(shared.y, under["shared_norm_share"].to_numpy())


def test_coactivation_default_layer(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["coactivation"]
    signal = (
        df.group_by("layer")
        .agg(((pl.col("n_ab") * (pl.col("lift") - 1).abs()).sum() / pl.col("n_ab").sum()).alias("s"))
        .sort("s", descending=True)
    )
    best = int(signal["layer"][0])
    fig = figure_for("coactivation", df)
    assert f"layer {best}" in fig.layout.title.text
    assert np.asarray(fig.data[0].z).shape == (E, E)
    assert "layer 1:" in figure_for("coactivation", df, layer=1).layout.title.text


def test_pathways_sankey(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["pathways"]
    sankey = figure_for("pathways", df).data[0]
    assert isinstance(sankey, go.Sankey)
    assert len(sankey.link.source) == df.height
    assert float(np.sum(sankey.link.value)) == pytest.approx(float(df["n"].sum()))
    labels = list(sankey.node.label)
    first = df.row(0, named=True)
    src, dst = labels[sankey.link.source[0]], labels[sankey.link.target[0]]
    assert (src, dst) == (
        f"L{first['layer_from']} E{first['expert_from']}",
        f"L{first['layer_to']} E{first['expert_to']}",
    )
    assert np.asarray(sankey.link.customdata)[0, 1] == pytest.approx(first["p"])
    xs = {lab.split()[0]: x for lab, x in zip(labels, sankey.node.x, strict=True)}
    assert xs["L0"] < xs["L1"] < xs["L2"]  # one column per layer, in order
    top1 = figure_for("pathways", df, top=1).data[0]
    assert len(top1.link.source) == len(LAYERS) - 1


def test_fixed_partners_heatmap(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["fixed-partners"]
    hm, bars = figure_for("fixed-partners", df).data
    assert np.asarray(hm.z).shape == (len(LAYERS), E)
    assert list(bars.y) == list(LAYERS)
    assert np.allclose(
        bars.x, df.group_by("layer").agg(pl.col("layer_mean").first()).sort("layer")["layer_mean"]
    )


def test_dynamic_k_lines(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["dynamic-k"]
    n_p = df["p"].n_unique()
    fig = figure_for("dynamic-k", df)
    assert len(fig.data) == 2 * len(LABELS) * n_p  # mean k and ρ per (label, p)
    first = fig.data[0]
    assert "k=1:" in np.asarray(first.customdata)[0, 0]
    assert np.isfinite(np.asarray(fig.data[1].y, dtype=float)).all()  # ρ with NLL present
    one = figure_for("dynamic-k", df, p=0.9)
    assert len(one.data) == 2 * len(LABELS)
    with pytest.raises(ValueError, match="masses present"):
        figure_for("dynamic-k", df, p=0.123)


def test_expert_similarity_heatmap(tables: dict[str, pl.DataFrame]) -> None:
    df = tables["expert-similarity"]
    fig = figure_for("expert-similarity", df)
    assert "layer 2" in fig.layout.title.text  # the planted near-identical pair
    hm, bars = fig.data
    z = np.asarray(hm.z, dtype=float)
    assert z.shape == (E + 1, E + 1)
    assert z[1, 4] == z[4, 1] == pytest.approx(0.97)
    assert np.isnan(z[3, 3])
    assert bars.y[0] == "1–4" and len(bars.y) == 10
    assert np.allclose(bars.error_x.arrayminus, 0.02) and np.allclose(bars.error_x.array, 0.01)
    assert "95% CI" in hm.hovertemplate and "95% CI" in bars.hovertemplate
    # only the planted pair clears the merge threshold: the other top-ranked pairs are not painted as candidates
    cand = df.filter((pl.col("layer") == 2) & pl.col("merge_candidate"))
    assert list(bars.marker.color).count("#2ca02c") == cand.height and bars.marker.color[0] == "#2ca02c"
    assert cand.height < len(bars.y) and "merge candidate" in fig.layout.annotations[1].text
    weight = figure_for("expert-similarity", df, layer=0, measure="weight_cos")
    assert "layer 0" in weight.layout.title.text
    assert np.isnan(np.asarray(weight.data[0].z, dtype=float)[0, E])  # shared pair: no weight cosine
    with pytest.raises(ValueError, match="measure must be one of"):
        figure_for("expert-similarity", df, measure="nope")

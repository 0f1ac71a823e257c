"""``--segment prompt|response``: every analysis reads one segment of a generated run, never a summary of all.

The reference is a second run that holds only that segment's tokens (copied from the generated run),
completed so that its per-prompt summaries are built:
every catalogued analysis on the segment view of the generated run must give its table. A segment
view that read the generated run's summaries (which sum over prompt *and* response) would not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

import workbench.analysis  # noqa: F401  (registers the logits part of the summaries)
from workbench.catalog import ANALYSES, run_analysis
from workbench.cli import app
from workbench.store import Store, StoreError, queries, summaries
from workbench.store.segments import (
    check_segment,
    parse_segment,
    segment_counts,
    split_stored_span,
    stored_span,
)

pytestmark = pytest.mark.integration

SEGMENT_ANALYSES = [n for n, s in ANALYSES.items() if not s.needs_model and not s.is_compare]


def _copy_segment(src_db: Path, run: str, segment: str, dst: Store, *, renumber: bool = False) -> str:
    """A complete run in ``dst`` holding only ``segment``'s tokens of ``run`` (``renumber``: positions from 0).

    Positions are kept by default: router-confidence's fragility draws its noise keyed by position.
    """
    with Store(src_db, read_only=True) as src:
        info = src.run(run)
        layers = src.layers(run).drop("run_id", strict=False).to_dicts()
        tokens = src.tokens(run).filter(pl.col("segment") == segment)
        start = tokens.group_by("prompt_id").agg(pl.col("position").min().alias("start"), pl.len().alias("n"))
        routing = src.routing(run).join(tokens.select("prompt_id", "position"), on=["prompt_id", "position"])
        prompts = (
            src.prompts(run)
            .drop("run_id", "content_hash", "n_tokens", strict=False)
            .join(start, on="prompt_id")
        )
    shift = pl.col("position") - (pl.col("start") if renumber else 0)
    rid = dst.create_run(
        run_id=f"{segment}-{'from-0' if renumber else 'only'}", model=info["model"], architecture=info["architecture"], probe=info["probe"],
        n_experts=info["n_experts"], top_k=info["top_k"], config=info["config"], layers=layers,
    )  # fmt: skip
    dst.write_batch(
        rid,
        prompts=prompts.rename({"n": "n_tokens"}).drop("start"),
        tokens=tokens.drop("run_id", strict=False)
        .join(start, on="prompt_id")
        .with_columns(shift.alias("position"))
        .drop("start", "n"),
        routing=routing.drop("run_id", strict=False)
        .join(start, on="prompt_id")
        .with_columns(shift.alias("position"))
        .drop("start", "n"),
    )
    dst.set_status(rid, "complete")  # builds the copy's summaries, which its analyses then read
    return rid


@pytest.fixture(scope="module")
def copies(generated_run: tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    db, _, run = generated_run
    out = tmp_path_factory.mktemp("segments") / "copies.duckdb"
    with Store(out) as dst:
        for segment in ("prompt", "response"):
            _copy_segment(db, run, segment, dst)
            _copy_segment(db, run, segment, dst, renumber=True)
    return out


@pytest.mark.parametrize("segment", ["response", "prompt"])
def test_every_analysis_of_a_segment_equals_a_run_of_that_segment_alone(
    generated_run: tuple[Path, Path, str], copies: Path, segment: str
) -> None:
    db, _, run = generated_run
    with Store(db, read_only=True) as store, Store(copies, read_only=True) as ref:
        alone = f"{segment}-only"
        assert summaries.usable(ref, alone) and summaries.usable(ref, alone, summaries.LOGITS)
        assert summaries.usable(store, run)  # the generated run has summaries too, over every token
        view = store.segment_view(segment)
        try:
            assert not summaries.usable(view, run)  # ... which its segment view never reads
            # the routing probe (a cross-validated classifier, the slowest) is checked on the responses
            for name in [n for n in SEGMENT_ANALYSES if segment == "response" or n != "probe"]:
                try:
                    want = run_analysis(name, ref, alone)
                except ValueError as exc:  # e.g. no expert_stats: the segment must say the same
                    with pytest.raises(ValueError, match="expert_stats"):
                        run_analysis(name, store, run, segment=segment)
                    assert "expert_stats" in str(exc)
                    continue
                got = run_analysis(name, store, run, segment=segment)
                assert_frame_equal(
                    got, want, check_exact=False, rel_tol=1e-5, abs_tol=1e-9, check_row_order=False
                )
            # token spans count from the segment's start: first:2 of the responses is the first two generated
            for span in ("first:2", "last:3", "positions:1-2"):
                got = run_analysis("resonance", view, run, span=span)
                want = run_analysis("resonance", ref, f"{segment}-from-0", span=span)
                assert_frame_equal(got, want, check_exact=False)
        finally:
            view.close()
        assert store.tokens(run).height > view_tokens(store, run, segment)  # the store itself is whole again


def view_tokens(store: Store, run: str, segment: str) -> int:
    view = store.segment_view(segment)
    try:
        n = view.tokens(run).height
        per_layer = queries.tokens_per_layer(view, run)
    finally:
        view.close()
    assert set(per_layer["n"].to_list()) == {n}  # every layer counts the segment's tokens, not the summary's
    return n


def test_segment_choices_and_refusals(generated_run: tuple[Path, Path, str], tmp_path: Path) -> None:
    db, _, run = generated_run
    assert (
        parse_segment("all") is None
        and parse_segment(None) is None
        and parse_segment("response") == "response"
    )
    with pytest.raises(ValueError, match="segment must be one of prompt, response, all, got 'answer'"):
        parse_segment("answer")
    with Store(db, read_only=True) as store:
        counts = segment_counts(store, run)
        assert set(counts) == {"prompt", "response"} and min(counts.values()) > 0
        check_segment(store, run, "response")  # accepted: the run has responses
        view = store.segment_view("response")
        try:
            with pytest.raises(StoreError, match="is a view of the response tokens and only reads"):
                view.create_intervention(run, kind="zero", spec={})
        finally:
            view.close()
    plain = tmp_path / "plain.duckdb"
    with Store(plain) as st:
        rid = _copy_segment(db, run, "prompt", st)
        with pytest.raises(ValueError) as err:
            check_segment(st, rid, "response")
        assert str(err.value) == (
            f"run {rid!r} has no response tokens (it was captured without --generate); it has "
            f"{counts['prompt']} prompt tokens: choose a segment it has, or all"
        )
        check_segment(st, rid, "prompt")


def test_cli_analyse_report_and_resonate_take_a_segment(
    generated_run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    db, _, run = generated_run
    runner = CliRunner()
    out = tmp_path / "load.csv"
    result = runner.invoke(
        app, ["analyse", "load", "--db", str(db), "--run", run, "--segment", "response", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with Store(db, read_only=True) as store:
        want = run_analysis("load", store, run, segment="response")
    assert_frame_equal(pl.read_csv(out), want, check_dtypes=False, check_exact=False)
    html = tmp_path / "r.html"
    result = runner.invoke(
        app,
        ["report", "--db", str(db), "--run", run, "--out", str(html), "--segment", "response", "-a", "load"],
    )
    assert result.exit_code == 0, result.output
    text = html.read_text()
    assert "(response tokens)" in text and "the generated responses&#x27; tokens only" in text
    result = runner.invoke(
        app,
        [
            "resonate",
            "--db",
            str(db),
            "--run",
            run,
            "--target",
            "harmful",
            "--control",
            "benign",
            "--segment",
            "response",
            "--no-store",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["analyse", "load", "--db", str(db), "--run", run, "--segment", "answer"])
    assert result.exit_code != 0 and "answer" in result.output


def test_dashboard_resonance_page_offers_the_run_segments(
    generated_run: tuple[Path, Path, str], copies: Path
) -> None:
    from dashboards import data
    from dashboards.components.pickers import segment_choice
    from dashboards.views import resonance

    db, _, run = generated_run
    data.clear_cache()
    counts = data.segments(str(db), run)
    choice = segment_choice(str(db), run, "response")
    assert choice.value == "response"
    assert [o["value"] for o in choice.options] == ["all", "prompt", "response"]
    assert choice.options[2]["label"] == f"response tokens ({counts['response']:,})"
    only_prompts = segment_choice(str(copies), "prompt-only", "response")  # a run without responses
    assert [o["value"] for o in only_prompts.options] == ["all", "prompt"] and only_prompts.value == "all"
    fig = resonance.resonance_figure(str(db), run, "harmful", "benign", "rd", segment="response")
    with Store(db, read_only=True) as store:
        want = run_analysis("resonance", store, run, segment="response", target="harmful", control="benign")
        every = run_analysis("resonance", store, run, target="harmful", control="benign")
    n_experts = int(fig.data[0].z.shape[1])
    z = want.sort("layer", "expert")["rd"].to_numpy().reshape(-1, n_experts)
    assert (fig.data[0].z == z).all()  # the map of the response tokens ...
    assert not (
        every.sort("layer", "expert")["rd"].to_numpy().reshape(-1, n_experts) == z
    ).all()  # ... not all
    tokens = resonance.driving_tokens(str(db), run, "harmful", "benign", (0, 0), segment="response")
    assert tokens is not None


def test_dashboard_specialisation_and_health_views_draw_the_chosen_segment(
    generated_run: tuple[Path, Path, str],
) -> None:
    from dashboards import data
    from dashboards.components import table
    from dashboards.views import health, specialisation
    from workbench.catalog import figure_for

    db, _, run = generated_run
    data.clear_cache()
    drawn = {
        "specialisation": lambda segment: specialisation.lift_heatmap(str(db), run, "harmful", segment),
        "vocab": lambda segment: specialisation.vocab(str(db), run, segment),
        "load": lambda segment: health.load(str(db), run, segment),
    }
    options = {"specialisation": {"label": "harmful"}}
    with Store(db, read_only=True) as store:
        for name, draw in drawn.items():
            want = figure_for(
                name, run_analysis(name, store, run, segment="response"), **options.get(name, {})
            )
            every = figure_for(name, run_analysis(name, store, run), **options.get(name, {}))
            got = draw("response")
            assert traces(got) == traces(want), name  # the responses' ...
            assert traces(got) != traces(every), name  # ... not all tokens'
            assert got.layout.title.text.endswith(", response tokens"), name
            assert "response" not in str(draw("all").layout.title.text), name  # all tokens: the plain title
        balance = {
            segment: table(run_analysis("balance", store, run, segment=segment)).data
            for segment in ("response", None)
        }
    got = health.balance(str(db), run, "response").data
    assert (
        got == balance["response"] and got != balance[None]
    )  # the table of the responses, not of all tokens


def traces(fig: Any) -> Any:
    """A figure's traces as plain JSON (numpy arrays as lists), comparable with ``==``."""
    return json.loads(fig.to_json())["data"]


@pytest.mark.parametrize(
    ("segment", "span"),
    [(None, "all"), ("response", "all"), ("prompt", "last:4"), ("response", "positions:2-5")],
)
def test_a_stored_span_names_its_segment_and_gives_it_back(segment: str | None, span: str) -> None:
    stored = stored_span(segment, span)
    assert stored == (span if segment is None else f"{segment}:{span}")
    assert split_stored_span(stored) == (segment, span)


def test_a_span_without_a_segment_is_not_read_as_one() -> None:
    assert split_stored_span("last:4") == (None, "last:4")  # 'last' is no segment
    assert split_stored_span(None) == (None, "all")
    assert split_stored_span("response") == (None, "response")  # no span after it: not this encoding

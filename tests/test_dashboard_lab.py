"""The model-backed dashboard pieces as plain functions: the intervention lab, circuits, run
comparison, the threaded job manager and ``make demo``'s serve flag.

The lab and circuits run on ``planted_model()`` (tests/planted.py), whose layer 0 expert 5 is
used only by "early" text: rerouting it must move early prompts (KL > 0) and leave late ones
exactly alone, and the routing shift must show the expert's share going to zero. Results are
recorded into a writable copy of the synthetic dashboard store. Nothing here starts a server.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest
from dash.dash_table.DataTable import DataTable
from planted import PLANT_EXPERT, PLANT_LAYER, gold_prompts, planted_model, prompts
from synthetic import save_run, skeleton, uniform_topk
from test_dashboard import RUN, _is_message, _text, dashboard_db

from dashboards import data
from dashboards.app import job_cache
from dashboards.jobs import (
    MODEL_LOCK,
    Attached,
    JobCancelled,
    ThreadJobManager,
    attach_model,
    check_cancelled,
)
from dashboards.views import circuits, lab, lab_positions, lab_result, runs
from workbench.cli import demo
from workbench.interventions import Bias, Force, Reroute, Scale, Zero
from workbench.interventions.effects import summarise
from workbench.interventions.position_effects import position_effects, position_summary
from workbench.probefile import Prompt
from workbench.store import Store, StoreLockedError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def planted() -> Any:
    return planted_model()


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A fresh writable copy of the synthetic dashboard store (the lab writes into it)."""
    data.clear_cache()
    return str(dashboard_db(tmp_path / "lab.duckdb"))


# -- lab ---------------------------------------------------------------------------------------
def test_make_spec_maps_each_semantics() -> None:
    assert lab.make_spec("zero", 0, [5]) == Zero({0: [5]})
    assert lab.make_spec("zero-renorm", "0", ["5", 3]) == Zero({0: [3, 5]}, renorm=True)
    assert lab.make_spec("reroute", 1, [2]) == Reroute({1: [2]})
    assert lab.make_spec("force", 1, [2]) == Force({1: [2]})
    assert lab.make_spec("bias", 1, [2], "1.5") == Bias({1: [2]}, delta=1.5)
    assert lab.make_spec("scale", 1, [2], 0.5) == Scale({1: [2]}, s=0.5)
    with pytest.raises(ValueError, match="at least one expert"):
        lab.make_spec("zero", 0, [])
    with pytest.raises(ValueError, match="needs a value"):
        lab.make_spec("bias", 0, [1], None)
    with pytest.raises(ValueError, match="semantics must be one of"):
        lab.make_spec("melt", 0, [1])


def test_reroute_of_the_planted_expert_moves_only_early_text(planted: Any) -> None:
    spec = lab.make_spec("reroute", PLANT_LAYER, [PLANT_EXPERT])
    items = prompts(n=4, length=16)
    result = lab.run_lab(planted, items, spec, max_new_tokens=4)
    ev = result.evaluation
    assert ev.metric("kl", "early") > 1e-3
    assert ev.metric("kl", "late") < 1e-6 and ev.metric("top1_agreement", "late") == 1.0
    assert set(result.diff.columns) >= {"base", "intervened", "same"}
    assert result.diff["prompt_id"].to_list() == [p.prompt_id for p in items]  # every prompt, not the first 3
    planted_row = result.shift.filter(
        (result.shift["layer"] == PLANT_LAYER) & (result.shift["expert"] == PLANT_EXPERT)
    )
    assert planted_row["share_base"][0] > 0.3 and planted_row["share_int"][0] == 0.0
    assert (
        abs(result.shift["share_int"].sum() - result.shift["share_base"].sum()) < 1e-6
    )  # slots move, k stays
    page = lab.lab_result(result)
    text = _text(page)
    assert "reroute" in text and "Routing shift at the touched layers" in text
    assert "all 8 prompts" in text and "5 per page: page through them" in text
    assert "No interval" not in text  # 4 prompts per label: every label has its interval
    ids = {_key(getattr(c, "id", None)) for c in _walk(page)}
    assert {"lab-diff", "lab-effects", "lab-summary", "lab-shift"} <= ids
    assert {"lab-per-token-summary", "lab-per-token-figure", "lab-per-token-table"} <= ids
    assert isinstance(lab_result.effects_figure(ev.summary), go.Figure)
    # the picker lists every prompt; every letter of an early prompt is rerouted at layer 0, no late one is
    picker = next(c for c in _walk(page) if getattr(c, "id", None) == lab_positions.PICK)
    assert [o["value"] for o in picker.options] == [p.prompt_id for p in items]
    for option, prompt in zip(picker.options, items, strict=True):
        moved = 16 if prompt.label == "early" else 0  # <bos> (position 0) is kept off the planted expert
        assert f"{prompt.label} · top-1 changed at " in option["label"]
        assert option["label"].endswith(f" of 17 positions, routing at {moved}"), option["label"]


def _key(component_id: Any) -> Any:
    """A component id as a set member (pattern-matching ids are dicts)."""
    return tuple(sorted(component_id.items())) if isinstance(component_id, dict) else component_id


def _positions(planted: Any, items: list[Prompt]) -> pl.DataFrame:
    table = position_effects(planted, items, Reroute({PLANT_LAYER: [PLANT_EXPERT]}))
    return lab_positions.decode_positions(table, lambda i: lab_positions.token_text(planted, i))


def test_picking_a_prompt_redraws_its_view_from_the_page(planted: Any) -> None:
    items = [
        Prompt(prompt_id=3, text="nopqbnop", label="mixed"),
        Prompt(prompt_id=4, text="nopqrs", label="late"),
    ]
    section = lab_positions.per_token_section(_positions(planted, items), [x.layer for x in planted.layers])
    stored = next(c for c in section if getattr(c, "id", None) == lab_positions.POSITIONS).data
    shown = next(c for c in section if getattr(c, "id", None) == lab_positions.PER_TOKEN)
    assert "first at position 5 'b', layer(s) 0" in _text(shown)  # the first prompt, drawn at once
    late = _text(lab_positions.pick_prompt(4, stored))
    assert (
        "Top-1 next token changed at 0 of 7 positions; the top-k expert set changed at 0 of 7 positions; "
        "KL is 0 at every position." in late
    )
    assert "first" not in late and "largest KL" not in late
    mixed = _text(lab_positions.pick_prompt("3", stored))  # a dropdown may send the id as text
    assert "the top-k expert set changed at 1 of 9 positions (first at position 5 'b', layer(s) 0" in mixed
    assert "the largest KL is " in mixed and "after position 5 'b'" in mixed
    assert "No positions for this prompt" in _text(lab_positions.pick_prompt(99, stored))
    assert "holds no per-token table" in _text(lab_positions.pick_prompt(3, None))
    row = stored["prompts"]["3"][0]
    for bad in ([{"position": 0}], [{**row, "kl": "high"}], "rows"):  # a tampered request, not the page
        with pytest.raises(ValueError, match="per-token table is damaged: run the intervention again"):
            lab_positions.pick_prompt(3, {**stored, "prompts": {"3": bad}})
    assert (
        lab_positions.token_text(planted, planted.tokenizer("b", add_special_tokens=False)["input_ids"][0])
        == "b"
    )


def test_per_token_sentence_and_figure_say_what_the_rows_hold() -> None:
    rows = pl.DataFrame({
        "position": [0, 1, 2], "token": ["<s>", "a", "b"], "top1_base": [5, 6, 7], "top1_int": [5, 9, 7],
        "base_top1": ["x", "y", "z"], "int_top1": ["x", "w", "z"], "logp_base": [-1.0, -2.0, -3.0],
        "logp_int": [-1.0, -2.5, -3.0], "kl": [0.0, 0.25, 0.5], "changed_layers": [[], [0, 1], [1]],
    })  # fmt: skip
    assert lab_positions.per_token_sentence(rows) == (
        "Top-1 next token changed at 1 of 3 positions (first after position 1 'a': 'y' → 'w'); the top-k "
        "expert set changed at 2 of 3 positions (first at position 1 'a', layer(s) 0, 1); the largest KL is "
        "0.5 nats, after position 2 'b'."
    )
    still = rows.with_columns(
        top1_int=pl.col("top1_base"),
        kl=pl.lit(0.0),
        changed_layers=pl.Series([[], [], []], dtype=pl.List(pl.Int64)),
    )
    assert lab_positions.per_token_sentence(still) == (
        "Top-1 next token changed at 0 of 3 positions; the top-k expert set changed at 0 of 3 positions; "
        "KL is 0 at every position."
    )
    fig = lab_positions.per_token_figure(rows, [0, 1, 3])
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert [list(r) for r in heat.z] == [[0, 1, 0], [0, 1, 1], [0, 0, 0]] and list(heat.y) == [
        "layer 0",
        "layer 1",
        "layer 3",
    ]
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"  # whole positions only
    summary = position_summary(rows.with_columns(prompt_id=pl.lit(7), label=pl.lit("code")))
    assert lab_positions.prompt_options(summary) == [
        {"label": "prompt 7 · code · top-1 changed at 1 of 3 positions, routing at 2", "value": 7}
    ]


def test_no_interval_for_one_prompt_and_the_page_says_why() -> None:
    tokens = pl.DataFrame({
        "prompt_id": [0, 1, 2, 3], "label": ["typed", "code", "code", "code"], "n_tokens": [5, 4, 6, 5],
        "nll_base": [10.0, 8.0, 12.0, 9.0], "nll_int": [11.0, 8.5, 13.0, 9.0], "kl": [0.5, 0.1, 0.3, 0.2],
        "top1": [4.0, 4.0, 5.0, 5.0],
    })  # fmt: skip
    both = summarise(tokens)
    only_one = both.filter(pl.col("label") == "typed")
    only_many = both.filter(pl.col("label") == "code")
    note = lab_result.interval_note(both)
    assert note is not None and _text(note).startswith(
        "No interval for typed (1 prompt): one prompt gives no spread"
    )
    assert "code" not in _text(note) and lab_result.interval_note(only_many) is None
    assert (
        lab_result.effects_title(only_one)
        == "Effects per label (no interval: one prompt per label gives no spread to resample)"
    )
    assert (
        lab_result.effects_title(both)
        == "Effects per label (95% prompt-bootstrap CI; none where a label has only one prompt)"
    )
    assert lab_result.effects_title(only_many) == "Effects per label (95% prompt-bootstrap CI)"
    assert all(t.error_y.array is None for t in lab_result.effects_figure(only_one).data)  # no bars at all
    assert all(t.error_y.array is not None for t in lab_result.effects_figure(only_many).data)
    mixed = lab_result.effects_figure(both).data[
        0
    ]  # labels sorted: code (3 prompts) has a bar, typed (1) none
    assert (
        list(mixed.x) == ["code", "typed"]
        and not np.isnan(mixed.error_y.array[0])
        and np.isnan(mixed.error_y.array[1])
    )


def test_generation_and_shift_notes_fit_their_counts() -> None:
    assert "all 8 prompts" in lab_result.generations_note(
        8, 8
    ) and "5 per page" in lab_result.generations_note(8, 8)
    assert "of all 3 prompts" in lab_result.generations_note(
        3, 3
    ) and "per page" not in lab_result.generations_note(3, 3)
    assert (
        "of the prompt," in lab_result.generations_note(1, 1)
        and "all" not in lab_result.generations_note(1, 1).split(",")[0]
    )
    assert "the first 2 of 8 prompts" in lab_result.generations_note(2, 8)
    assert lab_result.shift_note(1).startswith("Over the tokens of 1 prompt:")
    assert lab_result.shift_note(8).startswith("Over the tokens of 8 prompts:")


def _walk(component: Any) -> list[Any]:
    """Every component in a Dash tree."""
    out = [component]
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list) else [children]:
        if child is not None and not isinstance(child, (str, int, float)):
            out += _walk(child)
    return out


def test_lab_job_saves_to_a_writable_store(planted: Any, db: str) -> None:
    page = lab.lab_job(db, planted, RUN, PLANT_LAYER, [PLANT_EXPERT], "scale", 0.0, lab.TYPED, 8, "abcdefgh")
    assert "Saved as intervention iv-" in _text(page)
    assert "No interval for typed (1 prompt): one prompt gives no spread" in _text(page)
    with Store(db, read_only=True) as st:
        ivs = st.interventions(RUN)
        assert ivs.height == 1 and ivs["kind"][0] == "scale"
        evals = st.evaluations(run_id=RUN)
    assert {"nll_delta", "kl", "top1_agreement"} <= set(evals["metric"].to_list())
    assert set(evals["label"].to_list()) == {"typed"}


def test_lab_prompts_from_a_label_and_explained_errors(db: str) -> None:
    got = lab.lab_prompts(db, RUN, "math", None, 3)
    assert [p.label for p in got] == ["math"] * 3 and all(p.text for p in got)
    with pytest.raises(ValueError, match="type a prompt"):
        lab.lab_prompts(db, RUN, lab.TYPED, "  ", 3)
    with pytest.raises(ValueError, match="no prompts labelled"):
        lab.lab_prompts(db, RUN, "poetry", None, 3)


def test_behaviour_only_on_a_refusal_contrast_set(
    planted: Any, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = lab.lab_prompts(db, RUN, "code", None, 2)
    assert lab.behaviour_for(db, RUN, code, planted) is None  # the synthetic probe is not a refusal probe
    monkeypatch.setattr(data, "run_info", lambda db, run: {"probe": "refusal"})
    assert lab.behaviour_for(db, RUN, code, planted) is lab.REFUSAL
    prose = lab.lab_prompts(db, RUN, "prose", None, 2)
    assert lab.behaviour_for(db, RUN, prose, planted) is None  # not in the contrast set


def test_a_locked_store_is_reported_not_fatal(planted: Any, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = lab.run_lab(planted, prompts(n=1, length=8), lab.make_spec("zero", 0, [5]), max_new_tokens=2)

    def locked(*_: Any, **__: Any) -> Any:
        raise StoreLockedError("cannot open store: another process (PID 1) has it open for writing")

    monkeypatch.setattr(lab, "Store", locked)
    out = lab.save_result(db, RUN, result)
    assert _is_message(out) and "locked" in _text(out) and "PID 1" in _text(out)
    assert "no run chosen" in _text(lab.save_result(db, None, result))


def test_forcing_in_the_lab_is_compared_with_random_forced_sets(planted: Any) -> None:
    """Issue 12 item 7: the lab's forced set gets distinct random sets of its shape, forced the same way, and a p."""
    from workbench.interventions.controls import parse_set
    from workbench.interventions.effects import token_effects

    items = prompts(n=3, length=12)
    spec = lab.make_spec("force", PLANT_LAYER, [PLANT_EXPERT])
    result = lab.run_lab(
        planted, items, spec, n_diff=1, max_new_tokens=2, n_controls=5,
        controls_for=lambda s: lab.make_spec("force", PLANT_LAYER, s[PLANT_LAYER]),
    )  # fmt: skip
    assert result.controls is not None and result.versus is not None
    random_rows = result.controls.filter(pl.col("set") == "random")
    sets = random_rows["experts"].to_list()
    assert len(sets) == len(set(sets)) == 5 and f"{PLANT_LAYER}:{PLANT_EXPERT}" not in sets
    assert all(list(parse_set(x)) == [PLANT_LAYER] and len(parse_set(x)[PLANT_LAYER]) == 1 for x in sets)
    # each control is the *forced* random set (not, say, a zeroed one): recompute one
    other = parse_set(sets[0])
    table = token_effects(planted, items, Force(other))
    expect = float((table["nll_int"] - table["nll_base"]).sum() / table["n_tokens"].sum())
    assert random_rows["value"][0] == pytest.approx(expect, abs=1e-9)
    zeroed = token_effects(planted, items, Zero(other))
    assert random_rows["value"][0] != pytest.approx(
        float((zeroed["nll_int"] - zeroed["nll_base"]).sum() / zeroed["n_tokens"].sum()), abs=1e-9
    )
    v = result.versus
    assert v["p_floor"] == pytest.approx(1 / 6) and v["p_floor"] <= v["p"] <= 1.0
    text = _text(lab.lab_result(result))
    assert "Against random experts" in text and "floor 0.167 with 5 controls" in text


# -- circuits ----------------------------------------------------------------------------------
def test_circuits_on_the_planted_model(planted: Any) -> None:
    early = [p for p in gold_prompts(n=4, length=12) if p.label == "early"]
    late = [p for p in gold_prompts(n=4, length=12) if p.label == "late"]
    result = circuits.run_circuits(planted, early, late, n_boot=50)
    scatter = circuits.importance_scatter(result)
    assert sum(len(t.x) for t in scatter.data) == sum(x.n_experts for x in planted.layers)
    page = circuits.circuits_result(result)
    ids = {getattr(c, "id", None) for c in _walk(page)}
    assert {"circuits-table", "circuits-overlap", "circuits-scatter", "circuits-cross"} <= ids
    assert "IoU" in _text(page) and "circuit(early)" in _text(page)


def test_circuit_prompts_need_gold_labels() -> None:
    assert {"brackets", "arithmetic"} <= set(circuits.suite_labels("tasks"))
    a, b = circuits.circuit_prompts("tasks", "brackets", "arithmetic", 3)
    assert len(a) == len(b) == 3 and a[0].label == "brackets"
    with pytest.raises(ValueError, match="two different labels"):
        circuits.circuit_prompts("tasks", "brackets", "brackets", 3)
    with pytest.raises(ValueError, match="no label 'harmful' with gold"):
        circuits.circuit_prompts("tasks", "brackets", "harmful", 3)


# -- runs comparison -----------------------------------------------------------------------------
def test_run_drift_between_two_captures(tmp_path: Path) -> None:
    data.clear_cache()
    path = tmp_path / "two.duckdb"
    rng = np.random.default_rng(0)
    sk = skeleton(["a"] * 4 + ["b"] * 4, rng.integers(5, 9, size=8), (0, 1))
    experts = uniform_topk(rng, sk.n_rows, 8, 2)
    weights = np.full(experts.shape, 0.5, np.float32)
    save_run(path, sk, experts=experts, weights=weights, n_experts=8, top_k=2, run_id="r1")
    save_run(path, sk, experts=experts, weights=weights, n_experts=8, top_k=2, run_id="r2")
    out = runs.run_drift(str(path), "r1", "r2")
    assert "Routing drift: r1 vs r2" in _text(out)
    assert any(isinstance(c, DataTable) for c in _walk(out))
    assert _is_message(runs.run_drift(str(path), "r1", None))
    with pytest.raises(ValueError, match="different run"):
        runs.run_drift(str(path), "r1", "r1")


# -- jobs ----------------------------------------------------------------------------------------
def test_thread_job_manager_keeps_a_finished_result_readable(tmp_path: Path) -> None:
    import diskcache

    manager = ThreadJobManager(diskcache.Cache(str(tmp_path / "cache")))
    release = threading.Event()

    def job_fn(key: str, _progress_key: str, args: Any, _context: Any) -> None:
        release.wait(5)
        manager.handle.set(key, args)

    job = manager.call_job_fn("k1", job_fn, 42, {})
    assert manager.job_running(job) and not manager.result_ready("k1")
    release.set()
    for _ in range(100):
        if manager.result_ready("k1"):
            break
        time.sleep(0.02)
    assert manager.job_running(job)  # finished, but its result is still to be read
    assert manager.get_result("k1", job) == 42
    assert not manager.job_running(job) and not manager.terminate_unhealthy_job(job)


def test_a_cancelled_job_stops_at_its_next_step(tmp_path: Path) -> None:
    import diskcache

    manager = ThreadJobManager(diskcache.Cache(str(tmp_path / "cache")))
    started, steps, outcome = threading.Event(), [], []

    def job_fn(key: str, _progress_key: str, _args: Any, _context: Any) -> None:
        started.set()
        try:
            for step in range(500):  # a long job that checks in between its steps, as the lab does
                check_cancelled()
                steps.append(step)
                time.sleep(0.01)
            outcome.append("finished")
        except JobCancelled:
            outcome.append("cancelled")
            manager.handle.set(key, "cancelled")

    job = manager.call_job_fn("k2", job_fn, None, {})
    assert started.wait(5) and not manager.cancel_requested(job)
    manager.terminate_job(job)  # what Dash calls for the Cancel button
    assert manager.cancel_requested(job)
    for _ in range(200):
        if outcome:
            break
        time.sleep(0.02)
    assert outcome == ["cancelled"] and len(steps) < 500
    check_cancelled()  # outside a job: nothing to cancel


def test_lab_job_releases_the_model_when_cancelled(planted: Any, db: str) -> None:
    def cancel(_i: int, _n: int, _what: str) -> None:
        raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        lab.lab_job(
            db, planted, RUN, PLANT_LAYER, [PLANT_EXPERT], "zero", None, lab.TYPED, 1, "ab", progress=cancel
        )
    assert MODEL_LOCK.acquire(blocking=False)  # the lock was released on the way out
    MODEL_LOCK.release()


def test_circuits_job_stops_at_the_next_forward_pass_when_cancelled(planted: Any, tmp_path: Path) -> None:
    """Circuits has no steps of its own for minutes: any forward pass is a cancellation point."""
    import diskcache

    manager = ThreadJobManager(diskcache.Cache(str(tmp_path / "cache")))
    outcome: list[str] = []
    passes: list[int] = []
    counter = planted.model.register_forward_pre_hook(lambda *_: passes.append(1))
    early, late = circuits.circuit_prompts("tasks", "brackets", "arithmetic", 4)

    def job_fn(_key: str, _progress_key: str, _args: Any, _context: Any) -> None:
        try:
            circuits.run_circuits(planted, early, late, n_boot=10)
            outcome.append("finished")
        except JobCancelled:
            outcome.append("cancelled")

    try:
        job = manager.call_job_fn("k3", job_fn, None, {})
        for _ in range(500):  # cancel once the job is inside the ablations
            if len(passes) >= 3 or outcome:
                break
            time.sleep(0.01)
        manager.terminate_job(job)
        for _ in range(500):
            if outcome:
                break
            time.sleep(0.02)
    finally:
        counter.remove()
    assert outcome == ["cancelled"]
    full = 2 * sum(x.n_experts for x in planted.layers)  # one ablation pass per expert and label, at least
    assert len(passes) < full / 2
    assert MODEL_LOCK.acquire(blocking=False)  # released on the way out
    MODEL_LOCK.release()
    assert not planted.model._forward_pre_hooks  # the cancellation hook is gone


def test_job_cache_folder_is_removed_on_cleanup() -> None:
    cache, cleanup = job_cache()
    folder = Path(cache.directory)
    cache.set("k", 1)
    assert folder.is_dir()
    cleanup()
    assert not folder.exists()


def test_attach_model_keeps_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.models.loading as loading

    def fail(name: str) -> Any:  # a real miss would ask the Hub first: slow and network-bound
        raise loading.ModelLoadError(f"{name}: not a zoo name or directory")

    monkeypatch.setattr(loading, "load_model", fail)
    assert attach_model(None) == Attached()
    bad = attach_model("no-such-model")
    assert bad.loaded is None and bad.error and "no-such-model" in bad.error


# -- make demo -----------------------------------------------------------------------------------
def test_demo_serve_flag_plumbing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVE", raising=False)
    assert demo.parse_args([]).serve is True
    assert demo.parse_args(["--no-serve"]).serve is False
    monkeypatch.setenv("SERVE", "0")
    assert demo.parse_args([]).serve is False and demo.parse_args(["--serve"]).serve is True
    served: list[tuple[Any, ...]] = []
    command = demo.finish(
        Path("demo.duckdb"), "tiny-ref", "LOADED", serve=False, server=lambda *a: served.append(a)
    )
    assert command == "moe-workbench serve --db demo.duckdb --model tiny-ref" and served == []
    demo.finish(Path("demo.duckdb"), "tiny-ref", "LOADED", serve=True, server=lambda *a: served.append(a))
    assert served == [(Path("demo.duckdb"), "LOADED", demo.PORT)]


def test_makefile_demo_passes_serve() -> None:
    def dry(*args: str) -> str:
        return subprocess.run(
            ["make", "-n", "-C", str(REPO), "demo", *args], capture_output=True, text=True
        ).stdout

    assert "--serve" in dry("SERVE=1") and "--no-serve" in dry("SERVE=0") and "--serve" in dry()

"""The lab's and circuits' inputs are bounded before any model runs (issue 15 item 5): the typed
prompt's length, prompts per label, the scale and bias ranges, NaN/inf, layers and experts the
model has; each refusal is one sentence the page shows, and values inside the bounds pass.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from test_dashboard import RUN, _is_message, _text, dashboard_db

from dashboards import data
from dashboards.components import guarded, to_float
from dashboards.views import bounds, circuits, lab
from workbench.interventions import Bias, Scale, Zero

pytestmark = pytest.mark.unit

# a stand-in for the attached model: only what the checks read (its name and MoE layers)
MODEL: Any = SimpleNamespace(
    name="fake-moe", layers=[SimpleNamespace(layer=0, n_experts=8), SimpleNamespace(layer=2, n_experts=4)]
)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    data.clear_cache()
    return str(dashboard_db(tmp_path_factory.mktemp("bounds") / "dash.duckdb"))


def test_numbers_within_their_range_pass_and_the_rest_are_named() -> None:
    assert (
        bounds.number_within("1.5", (-2.0, 2.0), "x") == 1.5
        and bounds.number_within(-2, (-2.0, 2.0), "x") == -2
    )
    for bad in (float("nan"), float("inf"), "-inf", "NaN", 2.5, "abc", None, True, [1]):
        with pytest.raises(ValueError, match=r"x must be a finite number from -2 to 2, not "):
            bounds.number_within(bad, (-2.0, 2.0), "x")
    assert bounds.count_within(None, (1, 64), "n", 8) == 8 and bounds.count_within("3", (1, 64), "n", 8) == 3
    assert bounds.count_within(4.0, (1, 64), "n", 8) == 4
    for bad in (0, 65, -1, 2.5, "x", float("nan"), 10**30, {"a": 1}):
        with pytest.raises(ValueError, match="n must be a whole number from 1 to 64"):
            bounds.count_within(bad, (1, 64), "n", 8)


def test_make_spec_refuses_nan_inf_and_out_of_range_values() -> None:
    assert lab.make_spec("scale", 0, [1], "-10") == Scale({0: [1]}, s=-10.0)
    assert lab.make_spec("bias", 0, [1], 100) == Bias({0: [1]}, delta=100.0)
    for semantics, value, said in [
        ("scale", "nan", "the scale s must be a finite number from -10 to 10, not 'nan'"),
        ("scale", float("inf"), "the scale s must be a finite number from -10 to 10"),
        ("scale", 10.5, "the scale s must be a finite number"),
        ("bias", -1e9, "the bias δ must be a finite number from -100 to 100"),
        ("bias", "lots", "the bias δ must be a finite number"),
    ]:
        with pytest.raises(ValueError) as caught:
            lab.make_spec(semantics, 0, [1], value)
        assert said in str(caught.value)


def test_make_spec_checks_layers_and_experts_against_the_model() -> None:
    assert lab.make_spec("zero", 2, [3], loaded=MODEL) == Zero({2: [3]})
    with pytest.raises(ValueError, match=r"layer 1 is not a MoE layer of fake-moe \(its MoE layers: 0, 2\)"):
        lab.make_spec("zero", 1, [0], loaded=MODEL)
    with pytest.raises(ValueError, match=r"layer 2 has 4 experts \(0 to 3\); there is no expert 4, 9"):
        lab.make_spec("zero", 2, [1, 4, 9], loaded=MODEL)
    for layer, experts, said in [
        ({"x": 1}, [0], "the layer must be a whole number"),
        (0, "1,2", "the experts must be a list"),
        (0, [{"e": 1}], "an expert must be a whole number"),
        (0, [-3], "an expert must be a whole number from 0"),
    ]:
        with pytest.raises(ValueError, match=said):
            lab.make_spec("zero", layer, experts, loaded=MODEL)
    with pytest.raises(ValueError, match="semantics must be one of"):
        lab.make_spec(["zero"], 0, [1])  # type: ignore[arg-type]


def test_lab_prompts_are_bounded(db: str) -> None:
    fits = "x" * bounds.MAX_PROMPT_CHARS
    assert lab.lab_prompts(db, RUN, lab.TYPED, fits, None)[0].text == fits
    with pytest.raises(
        ValueError, match=r"the typed prompt has 200,000 characters; the most allowed is 2,000"
    ):
        lab.lab_prompts(db, RUN, lab.TYPED, "x" * 200_000, None)
    with pytest.raises(ValueError, match="the typed prompt must be text, not list"):
        lab.lab_prompts(db, RUN, lab.TYPED, ["a"], None)
    assert len(lab.lab_prompts(db, RUN, "math", None, 64)) == 8  # the label has 8: all of them
    for n in (0, 65, 10_000, "2.5"):
        with pytest.raises(ValueError, match="prompts per label must be a whole number from 1 to 64"):
            lab.lab_prompts(db, RUN, "math", None, n)
    with pytest.raises(ValueError, match="the label set must be a label name"):
        lab.lab_prompts(db, RUN, {"a": 1}, None, 3)  # type: ignore[arg-type]


def test_lab_job_shows_the_refusal_in_the_page_before_touching_the_model(db: str) -> None:
    # the model is a stand-in: reaching it (or the model lock) would fail differently
    page = guarded(lab.lab_job, db, MODEL, RUN, 0, [1], "scale", "inf", lab.TYPED, None, "hello")
    assert _is_message(page) and "the scale s must be a finite number" in _text(page)
    page = guarded(lab.lab_job, db, MODEL, RUN, 0, [1], "zero", None, lab.TYPED, None, "y" * 200_000)
    assert _is_message(page) and "200,000 characters" in _text(page)


def test_circuit_prompts_are_bounded() -> None:
    a, b = circuits.circuit_prompts("tasks", "brackets", "arithmetic", "2")
    assert len(a) == len(b) == 2
    for n in (1, 257, -4, float("nan"), "many"):
        with pytest.raises(ValueError, match="prompts per label must be a whole number from 2 to 256"):
            circuits.circuit_prompts("tasks", "brackets", "arithmetic", n)
    with pytest.raises(ValueError, match="the labels must be label names"):
        circuits.circuit_prompts("tasks", ["brackets"], "arithmetic", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the suite must be a suite name"):
        circuits.circuit_prompts(None, "brackets", "arithmetic", 2)  # type: ignore[arg-type]


def test_a_nan_in_the_address_does_not_reach_the_value_field() -> None:
    assert (
        to_float("0.5") == 0.5
        and to_float("nan") is None
        and to_float("inf") is None
        and to_float("x") is None
    )

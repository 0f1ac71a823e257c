"""The pre-registered MoTE decision rule (workbench.interventions.mote_verdict) on planted outcomes."""

from __future__ import annotations

import pytest

from workbench.interventions.mote_verdict import decide, verdict_markdown

pytestmark = pytest.mark.unit

POINTS = [(n, s) for n in (2, 4, 8) for s in ("zero", "reroute")]


def _rows(measure: str, spec: dict[tuple[int, str], tuple[float, float, float]]) -> list[dict[str, object]]:
    """Rows of MoteResult.outcomes: spec maps (n, semantics) -> (p, chosen, control_mean)."""
    return [
        {"measure": measure, "scorer": "causal-greedy", "semantics": s, "n": n, "chosen": c,
         "control_mean": m, "z": (c - m) / 0.05, "p": p, "n_controls": 200.0, "p_floor": 1 / 201}
        for (n, s), (p, c, m) in spec.items()
    ]  # fmt: skip


def _outcomes(compliance: dict, refusal: dict | None = None) -> list[dict[str, object]]:
    neutral = {k: (0.6, 0.5, 0.5) for k in POINTS}
    return _rows("compliance", {**neutral, **compliance}) + _rows("refusal", {**neutral, **(refusal or {})})


def test_all_points_confirmed_confirm_h1_and_the_headline() -> None:
    v = decide(_outcomes({k: (0.005, 0.4, 0.1) for k in POINTS}))
    assert v.h1_confirmed and v.headline_confirmed
    assert all(p.confirmed for p in v.primary)
    assert "**H1 is confirmed**" in verdict_markdown(v, 192)


def test_one_point_at_the_floor_confirms_h1_but_not_the_headline() -> None:
    v = decide(_outcomes({(2, "zero"): (0.005, 0.4, 0.1)}))
    # BH over 6: 0.005 * 6 / 1 = 0.03 <= 0.05
    assert v.h1_confirmed and not v.headline_confirmed
    assert [(p.n, p.semantics) for p in v.primary if p.confirmed] == [(2, "zero")]
    text = verdict_markdown(v, 192)
    assert "confirmed** at N = 2 (zero)" in text and "headline is not confirmed" in text


def test_the_correction_is_applied_a_raw_p_below_alpha_is_not_enough() -> None:
    v = decide(_outcomes({(4, "zero"): (0.01, 0.4, 0.1)}))  # q = 0.06
    (point,) = [p for p in v.primary if (p.n, p.semantics) == (4, "zero")]
    assert point.q == pytest.approx(0.06)
    assert not v.h1_confirmed
    assert "**H1 is not confirmed**" in verdict_markdown(v, 192)


def test_significance_in_the_wrong_direction_counts_against_h1() -> None:
    v = decide(_outcomes({(8, "reroute"): (0.005, 0.05, 0.3)}))
    assert not v.h1_confirmed
    (point,) = [p for p in v.primary if p.against]
    assert (point.n, point.semantics) == (8, "reroute")
    assert "opposite direction (against H1): N = 8 (reroute)" in verdict_markdown(v, 192)


def test_the_secondary_family_cannot_rescue_h1() -> None:
    v = decide(_outcomes({}, refusal={k: (0.005, 0.1, 0.8) for k in POINTS}))
    assert all(p.confirmed for p in v.secondary)
    assert not v.h1_confirmed
    text = verdict_markdown(v, 192)
    assert "**H1 is not confirmed**" in text and "chosen below the random mean with BH q" in text


def test_refusal_direction_is_below_the_random_mean() -> None:
    v = decide(_outcomes({}, refusal={(2, "zero"): (0.005, 0.9, 0.5)}))
    (point,) = [p for p in v.secondary if (p.n, p.semantics) == (2, "zero")]
    assert point.against and not point.confirmed


def test_a_missing_or_repeated_point_is_refused() -> None:
    rows = _outcomes({})
    with pytest.raises(ValueError, match="lack the pre-registered point"):
        decide([r for r in rows if not (r["measure"] == "compliance" and r["n"] == 8)])
    with pytest.raises(ValueError, match="appears twice"):
        decide([*rows, rows[0]])

"""The pickers every page starts with: which run, which of its labels and layers, which run to compare.

One picker is a :class:`Choice`: its options, the value chosen among them, and (for the run
picker) the message saying why there are none. A page builds its choices in ``layout`` from the
query string and draws them with :meth:`Choice.dropdown`; when the run changes, the page's own
callback builds them again for the new run and returns :meth:`Choice.update`, so a choice the new
run still offers is kept and any other falls back to the default. Either way the rule is the same:

* run: the one asked for when the store has it, else the newest run (:func:`run_choice`);
* labels: the run's labels, after "all labels" where a page offers it (:func:`label_choice`);
* layers: the run's MoE layers, by the model's own block indices (:func:`layer_choice`);
* compare: the runs sharing at least one prompt with the run (:func:`compare_choice`);
* segment: all tokens, or the prompts' or the generated responses' alone, among those the run has
  (:func:`segment_choice`; a run captured without ``--generate`` has prompt tokens only).

Option lists that fail to load (a locked store, an unknown run) come back empty, with the reason in
``problem``: the controls stay in place and the page says why (:func:`dashboards.components.choices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl
from dash import dcc

from dashboards import data
from dashboards.components.common import choices, to_int
from workbench.store.segments import SEGMENTS

__all__ = [
    "ALL", "Choice", "compare_choice", "compare_options", "default_run", "label_choice", "label_options",
    "layer_choice", "layer_options", "pick", "run_choice", "run_options", "segment_choice", "segment_options",
    "segments_of",
]  # fmt: skip

ALL = "__all__"
"""Dropdown value meaning "every label"."""


def pick(value: Any, options: list[dict[str, Any]], fallback_index: int = 0) -> Any:
    """``value`` if it is one of ``options``' values, else the option at ``fallback_index`` (or None).

    A number given as text (from the query string) matches the option with that int value.
    """
    values = [o["value"] for o in options]
    if value in values:
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and int(value) in values:
        return int(value)
    return values[fallback_index] if len(values) > fallback_index else None


@dataclass(frozen=True)
class Choice:
    """A picker's ``options`` (``{"label", "value"}`` dicts), its chosen ``value``, and ``problem``:
    the message saying why the options could not be listed (None when they could)."""

    options: list[dict[str, Any]] = field(default_factory=list)
    value: Any = None
    problem: Any = None

    def offers(self, value: Any) -> bool:
        """Whether ``value`` is one of the options' values."""
        return value in [o["value"] for o in self.options]

    def pick(self, value: Any, fallback_index: int = 0) -> Choice:
        """This choice with ``value`` chosen when offered, else the option at ``fallback_index`` (:func:`pick`)."""
        return replace(self, value=pick(value, self.options, fallback_index))

    def keep(self, value: Any, default: Any = None) -> Choice:
        """This choice with ``value`` chosen when offered (as given, no conversion), else ``default``."""
        return replace(self, value=value if self.offers(value) else default)

    def update(self) -> tuple[list[dict[str, Any]], Any]:
        """(options, value): what a callback returns into the dropdown's ``options`` and ``value``."""
        return self.options, self.value

    def dropdown(
        self,
        picker_id: str,
        *,
        clearable: bool = False,
        class_name: str | None = "wb-pick",
        placeholder: str | None = None,
    ) -> dcc.Dropdown:
        """The dropdown ``picker_id`` showing this choice (``class_name`` None: full width).

        Only the props that differ from Dash's defaults are set (a dropdown is clearable by default).
        """
        props: dict[str, Any] = {} if clearable else {"clearable": False}
        if class_name is not None:
            props["className"] = class_name
        if placeholder is not None:
            props["placeholder"] = placeholder
        return dcc.Dropdown(id=picker_id, options=self.options, value=self.value, **props)


# -- the option lists ------------------------------------------------------------------------------
def run_options(db: str) -> list[dict[str, Any]]:
    """Dropdown options for the store's runs, newest first, with model and status in the label."""
    runs = data.runs(db)
    return [
        {"label": f"{r['run_id']} · {r['model']} · {r['probe']} ({r['status']})", "value": r["run_id"]}
        for r in reversed(list(runs.iter_rows(named=True)))
    ]


def compare_options(db: str, run: str | None) -> list[dict[str, Any]]:
    """Dropdown options for a run to compare ``run`` with: only runs sharing at least one prompt
    (matched by text and token ids), most shared first, with how many in the label."""
    if not run:
        return []
    info = {r["run_id"]: r for r in data.runs(db).iter_rows(named=True)}
    return [
        {
            "label": f"{other} · {info[other]['model']} · {info[other]['probe']} "
            f"({n_shared} of {n_prompts} prompts shared)",
            "value": other,
        }
        for other, n_shared, n_prompts in data.compatible_runs(db, run).iter_rows()
        if other in info
    ]


def default_run(db: str) -> str | None:
    """The most recent complete run (else the most recent run; None for an empty store)."""
    runs = data.runs(db)
    if runs.height == 0:
        return None
    complete = runs.filter(pl.col("status") == "complete")
    chosen = complete if complete.height else runs
    return str(chosen["run_id"][-1])


def label_options(db: str, run: str | None, with_all: bool = True) -> list[dict[str, Any]]:
    """Dropdown options for the run's labels (first "all labels" when ``with_all``)."""
    options = [{"label": "all labels", "value": ALL}] if with_all else []
    if run:
        options += [{"label": lab, "value": lab} for lab in data.labels(db, run)]
    return options


def layer_options(db: str, run: str | None) -> list[dict[str, Any]]:
    """Dropdown options for the run's MoE layers (the model's own block indices)."""
    if not run:
        return []
    return [{"label": f"layer {x}", "value": int(x)} for x in data.layers(db, run)["layer"].to_list()]


def segment_options(db: str, run: str | None) -> list[dict[str, Any]]:
    """Dropdown options for the token segment: all tokens, then each segment the run has, with its count."""
    options: list[dict[str, Any]] = [{"label": "all tokens", "value": "all"}]
    if run:
        counts = data.segments(db, run)
        options += [
            {"label": f"{segment} tokens ({counts[segment]:,})", "value": segment}
            for segment in SEGMENTS
            if counts.get(segment)
        ]
    return options


# -- the choices -----------------------------------------------------------------------------------
def run_choice(db: str, run: Any = None) -> Choice:
    """The store's runs (newest first) with ``run`` chosen when the store has it, else the newest."""
    options, problem = choices(run_options, db)
    return Choice(options, problem=problem).pick(run)


def label_choice(
    db: str,
    run: str | None,
    label: Any = None,
    *,
    with_all: bool = True,
    lead: Sequence[dict[str, Any]] = (),
) -> Choice:
    """The run's labels (after ``lead`` options and "all labels" when ``with_all``), ``label`` chosen
    when offered, else the first option."""
    options, _ = choices(label_options, db, run, with_all)
    return Choice([*lead, *options]).pick(label)


def layer_choice(db: str, run: str | None, layer: Any = None) -> Choice:
    """The run's MoE layers, ``layer`` (an int, or one as text) chosen when the run has it, else the first."""
    options, _ = choices(layer_options, db, run)
    return Choice(options).pick(to_int(layer))


def segment_choice(db: str, run: str | None, segment: Any = None) -> Choice:
    """The token segments the run has after "all tokens", ``segment`` chosen when offered, else all."""
    options, _ = choices(segment_options, db, run)
    return Choice(options or [{"label": "all tokens", "value": "all"}]).pick(segment)


def segments_of(run: str | None, segment: Any) -> tuple[list[dict[str, Any]], Any]:
    """The segment picker for a new run (a page's callback on its run picker): the run's segments,
    keeping the chosen one when it has it (else all tokens)."""
    return segment_choice(data.current_db(), run, segment).update()


def compare_choice(db: str, run: str | None, compare: Any = None) -> Choice:
    """The runs sharing a prompt with ``run``, ``compare`` chosen when it is one of them (never ``run``
    itself; else none); ``problem`` says why the list could not be made."""
    if not run:
        return Choice()
    options, problem = choices(compare_options, db, run)
    return Choice(options, problem=problem).keep(None if compare == run else compare)

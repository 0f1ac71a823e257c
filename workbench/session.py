"""The notebook API: ``wb.open(db)`` → :class:`Session`, ``session.run(R)`` → :class:`Run`.

``Run`` exposes every catalogued analysis (``workbench.catalog.ANALYSES``) as a
method, named with underscores for hyphens (``run.specialisation(by="label")``,
``run.router_confidence()``, ``run.drift(other)``), returning an
:class:`~workbench.frames.AnalysisFrame` — a polars DataFrame whose ``.plot()`` is the
analysis' plotly figure. The methods are generated from the catalog, so a newly catalogued
analysis is reachable at once; ``dir(run)`` lists them, so Jupyter's tab completion finds
them.

A ``Session`` also answers every read method of :class:`~workbench.store.Store`
(``routing``, ``prompts``, ``tokens``, ``layers``, ``expert_stats``, ``sql`` ...), so code
written against the store keeps working. Note the one name both have: ``Store.run(id)``
returns the run's raw metadata dict, ``Session.run(id)`` the analysis handle (its ``.info``
is that dict).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from workbench.catalog import ANALYSES, get_analysis, run_analysis
from workbench.frames import AnalysisFrame

if TYPE_CHECKING:
    import polars as pl

    from workbench.store import Store

__all__ = ["GROUPINGS", "Run", "Session", "method_name"]

GROUPINGS: tuple[str, ...] = ("label",)
"""Prompt groupings the analyses understand (``by=``); the probe's labels for now."""


def method_name(analysis: str) -> str:
    """The Python method name of a catalogued analysis (``router-confidence`` → ``router_confidence``)."""
    return analysis.replace("-", "_")


_BY_METHOD: dict[str, str] = {method_name(name): name for name in ANALYSES}


class Session:
    """An open run store for interactive work: ``runs()``, ``run(R)`` and the store's readers."""

    def __init__(self, store: Store, model: Any = None) -> None:
        self._store = store
        self.model = model
        """A loaded model (``wb.load_model``) for analyses that need one (expert similarity)."""

    @property
    def store(self) -> Store:
        """The underlying :class:`~workbench.store.Store`."""
        return self._store

    def runs(self) -> pl.DataFrame:
        """All runs in the store, oldest first."""
        return self._store.runs()

    def run(self, run_id: str | None = None) -> Run:
        """The handle of run ``run_id``; without an id, the most recent complete run."""
        if run_id is None:
            runs = self._store.runs()
            complete = runs.filter(runs["status"] == "complete") if runs.height else runs
            if complete.height == 0:
                raise ValueError(
                    f"{self._store.path} holds no complete run; capture one first "
                    "(moe-workbench capture --model M --probe P --db DB)"
                )
            run_id = str(complete["run_id"][-1])
        return Run(self, run_id)

    def close(self) -> None:
        """Close the store (idempotent)."""
        self._store.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names Session lacks: hand the store's readers through.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._store, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {n for n in dir(self._store) if not n.startswith("_")})

    def __repr__(self) -> str:
        return f"Session({self._store!r})"

    def _repr_html_(self) -> str:
        runs = self._store.runs()
        return f"<p><b>moe-workbench store</b> {html.escape(str(self._store.path))}</p>" + str(
            runs._repr_html_()
        )


class Run:
    """One captured run: its metadata, its tables, and every catalogued analysis as a method."""

    def __init__(self, session: Session, run_id: str) -> None:
        self._session = session
        self.info: dict[str, Any] = session.store.run(run_id)  # raises StoreError for an unknown id
        self.id = run_id

    @property
    def store(self) -> Store:
        return self._session.store

    # -- tables -------------------------------------------------------------------------
    def layers(self) -> pl.DataFrame:
        """The run's MoE layers (index, module path, experts, top-k, shared experts)."""
        return self.store.layers(self.id)

    def prompts(self, labels: list[str] | None = None) -> pl.DataFrame:
        """The run's prompts with labels (optionally only ``labels``)."""
        return self.store.prompts(self.id, labels=labels)

    def routing(self, **filters: Any) -> pl.DataFrame:
        """The run's per-token routing; ``filters`` as :meth:`Store.routing` (layers, labels ...)."""
        return self.store.routing(self.id, **filters)

    def tokens(self, prompt_id: int, *, long: bool = False) -> pl.DataFrame:
        """Prompt ``prompt_id``'s tokens as readable text, with their routing.

        One row per token: ``position``, ``token_id``, ``token`` (the tokenizer's raw symbol, e.g.
        ``Ġreturn``), ``text`` (what it reads as, whitespace visible: ``·return``), ``segment``,
        ``nll``, then per MoE layer ``L<layer>`` (its top-k experts, highest weight first) and
        ``L<layer>_w`` (their gate weights): ``run.tokens(3)["L1"].list.first()`` is each token's
        top-1 expert at layer 1. ``long=True`` gives one row per (token, layer) with ``layer,
        experts, weights`` instead (for ``group_by`` and plotting). Decoded from the store alone.
        """
        from workbench.analysis.tokens import prompt_tokens

        return prompt_tokens(self.store, self.id, prompt_id, long=long)

    # -- analyses -------------------------------------------------------------------------
    def analyse(
        self,
        name: str,
        *,
        by: str = "label",
        compare: Run | str | None = None,
        model: Any = None,
        segment: str | None = None,
        **options: Any,
    ) -> AnalysisFrame:
        """Run the catalogued analysis ``name`` (``run.analyse("specialisation")``).

        ``by`` is the prompt grouping (only ``"label"`` exists); ``compare`` the second run of
        a comparison analysis (a :class:`Run` or an id); ``model`` a loaded model for the
        analyses that need one (default: the session's); ``segment`` ``"prompt"`` or
        ``"response"`` reads only those tokens of a run captured with ``generate=N``
        (``run.load(segment="response")``). Other options go to the analysis function (e.g.
        ``layers=[1, 2]``).
        """
        if by not in GROUPINGS:
            raise ValueError(f"by={by!r} is not a grouping; available: {', '.join(GROUPINGS)}")
        spec = get_analysis(name)
        other = compare.id if isinstance(compare, Run) else compare
        if "model" in spec.needs:
            options["model"] = model if model is not None else self._session.model
        frame = run_analysis(name, self.store, self.id, compare=other, segment=segment, **options)
        shown = {k: v for k, v in options.items() if k != "model"}
        if segment not in (None, "all"):
            shown["segment"] = segment
        if other is not None:
            shown["compare"] = other
            if {"n_shared", "n_prompts_a", "n_prompts_b"} <= set(frame.columns) and frame.height:
                from workbench.analysis.compare import drift_coverage

                shown["prompts"] = drift_coverage(frame, self.id, other)  # matched by text and token ids
        return AnalysisFrame.wrap(frame, name, shown)

    def specialists(self, alpha: float = 0.05, **options: Any) -> AnalysisFrame:
        """The specialised (layer, expert, label) cells, strongest first (log-odds against the other labels).

        The workbench's one definition (the report, ``make demo`` and the dashboard use it too): the
        label uses the expert more than the other labels do, at BH ``q < alpha`` in a one-sided
        label-permutation test — :func:`~workbench.analysis.specialisation.specialised_cells` of
        ``run.specialisation(**options)``. Lift over uniform plays no part.
        """
        from workbench.analysis.specialisation import specialised_cells

        frame = specialised_cells(self.analyse("specialisation", **options), alpha)
        return AnalysisFrame.wrap(frame, "specialisation", {**options, "alpha": alpha})

    def __getattr__(self, name: str) -> Callable[..., AnalysisFrame]:
        analysis = _BY_METHOD.get(name)
        if analysis is None:
            raise AttributeError(f"Run has no attribute {name!r}; analyses: {', '.join(sorted(_BY_METHOD))}")
        spec = ANALYSES[analysis]
        method = partial(self.analyse, analysis)
        if spec.is_compare:

            def compare_method(other: Run | str, **options: Any) -> AnalysisFrame:
                return self.analyse(analysis, compare=other, **options)

            compare_method.__doc__ = f"{spec.section} {spec.summary} (pass the other run)."
            return compare_method
        method.__doc__ = f"{spec.section} {spec.summary}"
        return method

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_BY_METHOD))

    def report(
        self, out: str | Path, compare: Run | str | None = None, model: Any = None, segment: str | None = None
    ) -> Path:
        """Write the self-contained HTML probing report of this run to ``out`` (``segment``: as :meth:`analyse`)."""
        from workbench.reports import write_report

        other = compare.id if isinstance(compare, Run) else compare
        return write_report(
            self.store,
            self.id,
            out,
            compare=other,
            model=model if model is not None else self._session.model,
            segment=segment,
        )

    def resume_hint(self) -> str:
        """For a run whose capture process is gone (status ``interrupted``), the command that finishes it; else ``""``."""
        from workbench.store.liveness import INTERRUPTED, finish_hint

        if self.info.get("status") != INTERRUPTED:
            return ""
        how = finish_hint(self.store.path, self.id, self.info.get("config"))
        return f"interrupted: the process writing it is gone; {how}"

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Run({self.id!r}: {i.get('model')} [{i.get('architecture')}], probe {i.get('probe')}, "
            f"{i.get('n_experts')} experts top-{i.get('top_k')}, {self.resume_hint() or i.get('status')})"
        )

    def _repr_html_(self) -> str:
        keys = ("model", "architecture", "probe", "n_experts", "top_k", "status", "created_at")
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(self.info.get(k)))}</td></tr>"
            for k in keys
        )
        hint = f"<p>{html.escape(self.resume_hint())}</p>" if self.resume_hint() else ""
        return (
            f"<p><b>run</b> <code>{html.escape(self.id)}</code></p><table>{rows}</table>{hint}"
            f"<p>analyses: {', '.join(sorted(_BY_METHOD))}</p>"
        )

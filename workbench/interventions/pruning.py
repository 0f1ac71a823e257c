"""Task pruning with retention curves (docs/methods.md §2, §8 ``prune(task)``; PreMoe, NAEE, ESFT).

Does a task need all of a layer's experts, and do the relevance scorers know which ones it needs?

1. The task's prompts (one label, e.g. of the ``tasks`` suite) are split alternately into a
   *selection* half and an *evaluation* half (:func:`split_halves`), so experts are never chosen
   and judged on the same prompts.
2. The selection half is captured with router logits into a temporary DuckDB, and every
   (layer, expert) is scored by the analysis functions (:func:`expert_scores`): **TCESS**
   (PreMoe's mean router probability, :func:`~workbench.analysis.relevance.tcess`), the **ESFT**
   gate score ``GS`` (:func:`~workbench.analysis.relevance.esft_scores`) and the selection
   **frequency** ``f`` (:func:`~workbench.analysis.health.expert_load`). The store is deleted
   once the scores are read; nothing but the score table is kept.
3. For each kept fraction ``f`` every layer keeps its top ``ceil(f · E)`` experts by each method
   (ties broken by the lower expert id) — **never fewer than the layer's top-k**, because a
   layer with fewer than k experts left cannot route (``Prune`` refuses it) — and the rest are
   rerouted (:class:`~workbench.interventions.specs.Prune`). Random keep sets of the same size
   per layer (``n_random`` distinct sets, :func:`~workbench.interventions.controls.random_sets`; fewer
   when fewer sets exist, e.g. one when every expert is kept) are the control.
4. On the evaluation half the task metric is measured under each keep set and unpruned:
   exact match of the greedy continuation (:func:`~workbench.interventions.metrics.exact_match`)
   and the mean teacher-forced log-prob of the gold answer's first token
   (:func:`~workbench.interventions.metrics.gold_logprob`).

Retention columns of :func:`retention_curve`:

* ``retention`` = exact match / the unpruned exact match — **only when the unpruned model answers
  at least** :data:`MIN_BASELINE_CORRECT` **evaluation prompts correctly** (``n_correct`` of the
  baseline row); otherwise null, and :func:`summary_lines` says "not enough baseline successes".
  A ratio over 3 correct answers of 75 swings by a third when one answer flips.
* ``lp_retention`` = ``exp(mean gold_logprob − mean baseline gold_logprob)``: the ratio of the
  geometric-mean probabilities of the gold token, pruned over unpruned. A ratio of log-probs
  themselves would mean nothing (they are negative and unbounded); this one is 1 for no change,
  below 1 for a loss, and stays informative when exact match is near 0 (a weak model).

Measurements are memoised by keep set, so the baseline, the keep = 1.0 sets (all experts) and
any sets two methods share are run once; memory stays bounded by one evaluation batch.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.interventions.apply import intervene
from workbench.interventions.controls import ExpertSet, format_set, random_sets
from workbench.interventions.metrics import exact_match, gold_logprob, metric_values
from workbench.interventions.specs import Prune, expert_map
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt

__all__ = [
    "METHODS", "MIN_BASELINE_CORRECT", "TaskMeasure", "baseline_note", "expert_scores", "keep_count",
    "retention_curve", "retention_summary", "split_halves", "summary_lines", "top_keep",
]  # fmt: skip

#: the scorers that choose keep sets (column of :func:`expert_scores`)
METHODS: tuple[str, ...] = ("tcess", "esft", "frequency")

#: Fewest correct baseline answers for which exact-match ``retention`` is reported. With c correct
#: answers one flip moves the ratio by 1/c, and its relative standard error is ≈ 1/√c (32% at 10).
MIN_BASELINE_CORRECT = 10

SCHEMA: dict[str, Any] = {
    "method": pl.Utf8, "keep": pl.Float64, "seed": pl.Int64, "n_kept_per_layer": pl.Utf8,
    "experts": pl.Utf8, "exact_match": pl.Float64, "gold_logprob": pl.Float64, "retention": pl.Float64,
    "lp_retention": pl.Float64, "n_correct": pl.Int64, "n_eval": pl.Int64,
}  # fmt: skip


def split_halves(
    prompts: Sequence[Prompt], label: str, *, n_select: int | None = None, n_eval: int | None = None
) -> tuple[list[Prompt], list[Prompt]]:
    """The ``label`` prompts, alternately into a selection and an evaluation half (each optionally capped)."""
    task = [p for p in prompts if p.label == label]
    select, evaluate = task[0::2][:n_select], task[1::2][:n_eval]
    if not select or not evaluate:
        labels = sorted({str(p.label) for p in prompts})
        raise ValueError(f"label {label!r} has too few prompts for two halves (labels present: {labels})")
    return select, evaluate


def expert_scores(loaded: LoadedModel, select: Sequence[Prompt], label: str) -> pl.DataFrame:
    """TCESS, ESFT gate score and selection frequency of every (layer, expert) on the ``label`` prompts.

    Captures ``select`` with fp32 router logits into a temporary store (deleted on return).
    Columns ``layer, expert, tcess, esft, frequency``.
    """
    from workbench.analysis.health import expert_load
    from workbench.analysis.relevance import esft_scores, tcess
    from workbench.capture.engine import capture
    from workbench.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "select.duckdb"
        run = capture(loaded, list(select), db, progress=False, logits="fp32")
        with Store(db, read_only=True) as store:
            tc = tcess(store, run).filter(pl.col("label") == label)
            gs = esft_scores(store, run).filter(pl.col("label") == label)
            freq = expert_load(store, run, n_boot=0)
    if tc.height == 0:
        raise ValueError(f"no tokens with label {label!r} in the selection half")
    return (
        tc.select("layer", "expert", "tcess")
        .join(gs.select("layer", "expert", pl.col("gs").alias("esft")), on=["layer", "expert"])
        .join(freq.select("layer", "expert", pl.col("f").alias("frequency")), on=["layer", "expert"])
        .sort("layer", "expert")
    )


def keep_count(fraction: float, n_experts: int, top_k: int) -> int:
    """Experts a layer keeps at ``fraction``: ``ceil(fraction · E)``, at least top-k, at most E."""
    if not 0 < fraction <= 1:
        raise ValueError(f"kept fraction must be in (0, 1], got {fraction}")
    return min(n_experts, max(top_k, math.ceil(fraction * n_experts - 1e-9)))


def top_keep(scores: pl.DataFrame, method: str, sizes: Mapping[int, int]) -> ExpertSet:
    """Per layer the ``sizes[layer]`` experts with the highest ``method`` score (ties: lower expert id)."""
    if method not in scores.columns:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    out: ExpertSet = {}
    for layer, size in sorted(sizes.items()):
        part = scores.filter(pl.col("layer") == layer).sort([method, "expert"], descending=[True, False])
        out[int(layer)] = sorted(int(e) for e in part["expert"].head(size).to_list())
    return out


class TaskMeasure:
    """Exact match and mean gold log-prob on fixed prompts, memoised per keep set (``None``: unpruned)."""

    def __init__(self, loaded: LoadedModel, prompts: Sequence[Prompt], *, max_new_tokens: int | None = None):
        self.loaded, self.prompts = loaded, list(prompts)
        self.metric = gold_logprob(loaded)
        if max_new_tokens is None:  # enough for the longest gold plus a token to see a number run on
            tok = loaded.tokenizer
            longest = max(len(tok(str((p.meta or {}).get("gold", "")), add_special_tokens=False)["input_ids"])
                          for p in self.prompts)  # fmt: skip
            max_new_tokens = min(6, longest + 2)
        self.max_new_tokens = max_new_tokens
        self.cache: dict[str, tuple[float, float]] = {}

    def _run(self) -> tuple[float, float]:
        em = exact_match(self.loaded, self.prompts, max_new_tokens=self.max_new_tokens)
        lp = metric_values(self.loaded, self.prompts, self.metric)
        return float(em.mean()), float(lp.mean())

    def __call__(self, keep: Mapping[int, Sequence[int]] | None) -> tuple[float, float]:
        key = "base" if keep is None else format_set(keep)
        if key not in self.cache:
            if keep is None:
                self.cache[key] = self._run()
            else:
                with intervene(self.loaded, Prune(keep=expert_map(keep, "keep"))):
                    self.cache[key] = self._run()
        return self.cache[key]


def _row(method: str, keep: float, seed: int | None, chosen: ExpertSet, value: tuple[float, float],
         base: tuple[float, float], n_eval: int, min_correct: int) -> dict[str, Any]:  # fmt: skip
    em, lp = value
    enough = round(base[0] * n_eval) >= max(min_correct, 1)  # else retention is not reported
    return {
        "method": method, "keep": keep, "seed": seed,
        "n_kept_per_layer": ",".join(str(len(chosen[k])) for k in sorted(chosen)),
        "experts": format_set(chosen), "exact_match": em, "gold_logprob": lp,
        "retention": em / base[0] if enough else None, "lp_retention": math.exp(lp - base[1]),
        "n_correct": round(em * n_eval), "n_eval": n_eval,
    }  # fmt: skip


def retention_curve(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    *,
    label: str,
    keep: Sequence[float] = (0.25, 0.5, 0.75),
    methods: Sequence[str] = METHODS,
    n_random: int = 5,
    seed: int = 0,
    n_select: int | None = None,
    n_eval: int | None = None,
    max_new_tokens: int | None = None,
    min_baseline_correct: int = MIN_BASELINE_CORRECT,
    log: Callable[[str], None] = lambda _: None,
) -> pl.DataFrame:
    """Task metric vs fraction of experts kept per layer, for each scorer's keep sets and random ones.

    ``prompts`` are split by :func:`split_halves` (``label`` only; ``n_select``/``n_eval`` cap the
    halves); experts are scored on the selection half, the metric is measured on the evaluation
    half. Each layer keeps ``ceil(f · E)`` experts but never fewer than its top-k (so at small ``f``
    every method keeps k). Random sets (``n_random`` distinct ones per fraction, drawn with ``seed``;
    their ``seed`` column is ``seed + i`` for the i-th) have the same size on every layer as the
    chosen sets; when fewer than ``n_random`` such sets exist, all of them are used.

    Rows: the ``baseline`` (keep 1.0, nothing pruned), then per fraction each method and each
    random seed. Columns ``method, keep, seed`` (null unless random), ``n_kept_per_layer``
    (comma-separated, by layer), ``experts`` (:func:`~workbench.interventions.controls.format_set`),
    ``exact_match``, ``gold_logprob`` (means over the evaluation half), ``retention`` and
    ``lp_retention`` (see the module docstring), ``n_correct`` (exactly matched evaluation prompts)
    and ``n_eval``. ``retention`` is null unless the baseline has ≥ ``min_baseline_correct`` correct.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    select, evaluate = split_halves(prompts, label, n_select=n_select, n_eval=n_eval)
    log(f"{label}: scoring experts on {len(select)} prompts, evaluating on {len(evaluate)}")
    scores = expert_scores(loaded, select, label) if methods else None
    measure = TaskMeasure(loaded, evaluate, max_new_tokens=max_new_tokens)
    base = measure(None)
    everything: ExpertSet = {x.layer: list(range(x.n_experts)) for x in loaded.layers}
    n_eval, floor = len(evaluate), min_baseline_correct
    if round(base[0] * n_eval) < floor:
        log(f"{label}: not enough baseline successes for exact-match retention "
            f"({round(base[0] * n_eval)} correct of {n_eval}; needs ≥ {floor}); only lp_retention is reported")  # fmt: skip
    rows = [{**_row("baseline", 1.0, None, everything, base, base, n_eval, floor), "experts": "all"}]
    n_experts = {x.layer: x.n_experts for x in loaded.layers}
    for fraction in keep:
        sizes = {x.layer: keep_count(fraction, x.n_experts, x.top_k) for x in loaded.layers}
        log(f"{label}: keep {fraction:g} ({','.join(map(str, sizes.values()))} experts per layer)")
        for method in methods:
            assert scores is not None
            chosen = top_keep(scores, method, sizes)
            rows.append(_row(method, float(fraction), None, chosen, measure(chosen), base, n_eval, floor))
        shape = {layer: range(n) for layer, n in sizes.items()}
        controls = random_sets(shape, n_experts, n_random, seed=seed, exclude_chosen=False)  # distinct sets
        for i, control in enumerate(controls):
            rows.append(
                _row("random", float(fraction), seed + i, control, measure(control), base, n_eval, floor)
            )
    return pl.DataFrame(rows, schema=SCHEMA)


def retention_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per kept fraction and method: retention and lp_retention, with the random sets' mean, sd, min and max."""
    random = (
        table.filter(pl.col("method") == "random")
        .group_by("keep")
        .agg(
            pl.col("retention").mean().alias("random_mean"),
            pl.col("retention").std().alias("random_sd"),
            pl.col("lp_retention").mean().alias("random_lp_mean"),
            pl.col("lp_retention").std().alias("random_lp_sd"),
            pl.col("lp_retention").min().alias("random_lp_min"),
            pl.col("lp_retention").max().alias("random_lp_max"),
        )
    )
    chosen = table.filter(~pl.col("method").is_in(["random", "baseline"]))
    return (
        chosen.select("method", "keep", "retention", "lp_retention")
        .join(random, on="keep", how="left")
        .sort("method", "keep")
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def baseline_note(table: pl.DataFrame, min_correct: int = MIN_BASELINE_CORRECT) -> str | None:
    """The "not enough baseline successes" sentence when exact-match retention is withheld; else None."""
    base = table.filter(pl.col("method") == "baseline")
    if base.height == 0 or "n_correct" not in base.columns:
        return None
    r = base.row(0, named=True)
    if r["n_correct"] >= max(min_correct, 1) and r["retention"] is not None:
        return None
    return (
        f"Exact-match retention not reported: not enough baseline successes ({r['n_correct']} correct of "
        f"{r['n_eval']} evaluation prompts; needs ≥ {min_correct}). p(gold) retention is shown instead."
    )


def summary_lines(table: pl.DataFrame) -> list[str]:
    """One line per method: ``retention / lp_retention`` at each fraction vs the random mean.

    When the baseline has too few correct answers, a first line says so (:func:`baseline_note`)
    and each cell gives p(gold) retention only — never an exact-match ratio.
    """
    summary = retention_summary(table)
    note = baseline_note(table)
    lines = [] if note is None else [note]
    for (method,), part in summary.group_by("method", maintain_order=True):
        cells = []
        for r in part.iter_rows(named=True):
            em = "" if note is not None else f"EM {_fmt(r['retention'])} (random {_fmt(r['random_mean'])}), "
            cells.append(
                f"f={r['keep']:g}: {em}p(gold) {_fmt(r['lp_retention'])} (random {_fmt(r['random_lp_mean'])})"
            )
        lines.append(f"{method}: " + "; ".join(cells))
    return lines

"""The MoTE experiment (docs/methods.md §5, §8): do the experts a resonance scorer picks control refusal?

MoTE and SteerMoE pick "safety experts" by activation difference between harmful and benign
prompts and switch them off; nobody measures whether those are the experts that matter. Here:

1. The refusal contrast set (``probes/refusal.jsonl``: harmful requests and matched benign twins)
   is split by pair into a *selection* half and an *evaluation* half, so experts are never
   chosen and judged on the same prompts.
2. On the selection half every expert is scored four ways: ``rd`` and ``ftri`` (correlational,
   from a capture), the causal single-expert ablation ``effect`` on the refusal margin, and its
   first-order ``attribution`` estimate; and ``causal-greedy`` builds a set jointly, adding the
   expert whose ablation together with those already chosen lowers the margin most (single
   effects miss experts that back each other up). Rankings: rd and ftri descending (more active
   on harmful), effect and attribution ascending (ablation lowers the refusal margin most), the
   greedy order as chosen (experts it did not reach follow by single effect).
3. For each scorer, semantics (``zero``, ``reroute``) and dose N, the top-N experts are switched
   off and the refusal rate on the evaluation half's harmful requests is measured (greedy,
   judged by the transparent scorer), with the NLL change on held-out domain text as the cost.
   Each chosen set is compared with ``n_controls`` random sets of the same size on the same layers
   (:mod:`workbench.interventions.controls`).
   The refusal rate alone cannot tell "refusal was removed" from "the model was broken" (on a
   small model a random quarter of the experts does both), so every set is also measured by
   :data:`MEASURES`: the share of harmful requests the model now *answers* (the behaviour's
   alternative judge: an affirmative or "here is" answer, not broken text), the change of the
   refusal margin, and the refusal rate against only those random sets that cost no more NLL.
4. Forced activation: the top experts of each scorer (at most k per layer) are forced on for the
   evaluation half's benign requests — does that make the model refuse? Forcing any experts may
   do that, so each forced set is compared, like the ablations, with ``n_controls`` distinct random
   sets of the same shape (``forced``: control stats, z, p and its floor, the control sets).

Nothing here assumes the answer: whatever the scorers do is what gets recorded.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from workbench.analysis.resonance import resonance_map
from workbench.behaviour.generate import greedy_continuations
from workbench.behaviour.registry import Behaviour, get_behaviour
from workbench.data.suites import suite_path
from workbench.interventions.apply import intervene
from workbench.interventions.causal import attribution, causal_resonance, greedy_ablation, rank_agreement
from workbench.interventions.controls import (
    ExpertSet,
    format_set,
    parse_set,
    run_with_controls,
    top_n,
    versus_controls,
)  # fmt: skip
from workbench.interventions.effects import token_effects
from workbench.interventions.metrics import behaviour_margin, metric_values
from workbench.interventions.specs import Ablate, Force, Intervention, Zero, expert_map
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt, read_probe_file
from workbench.store import Store

__all__ = [
    "MEASURES", "SCORERS", "MoteConfig", "MoteResult", "Outcome", "eval_pairs", "run_mote", "split_pairs",
]  # fmt: skip

#: scorer -> (column of ``MoteResult.scores``, rank descending?)
SCORERS: dict[str, tuple[str, bool]] = {
    "rd": ("rd", True),
    "ftri": ("ftri", True),
    "causal": ("effect", False),
    "attribution": ("attribution", False),
    "causal-greedy": ("greedy_rank", False),
}
SEMANTICS: dict[str, Callable[[ExpertSet], Intervention]] = {
    "zero": lambda s: Zero(expert_map(s)),
    "zero-renorm": lambda s: Zero(expert_map(s), renorm=True),
    "reroute": lambda s: Ablate(s, mode="reroute"),
}


@dataclass(frozen=True)
class MoteConfig:
    """Sizes of the experiment; the defaults are the recorded run, tests shrink them."""

    doses: tuple[int, ...] = (1, 2, 4, 8)
    semantics: tuple[str, ...] = ("zero", "reroute")
    n_controls: int = 10
    n_select: int = 64  # pairs used to choose experts
    n_eval: int = 96  # pairs used to judge them
    n_domain: int = 60  # domain prompts for the NLL cost
    force_n: int = 4
    seed: int = 0
    behaviour: str = "refusal"  # a name in workbench.behaviour.registry.BEHAVIOURS
    scorers: tuple[str, ...] = tuple(SCORERS)  # a subset, e.g. to rerun one scorer with more controls
    #: judge on this probe file's pairs instead of the refusal suite's evaluation half (selection
    #: stays on the refusal suite); None: the exploratory split of ``probes/refusal.jsonl``
    eval_probe: str | None = None


@dataclass
class MoteResult:
    """All tables of one run of the experiment."""

    config: MoteConfig
    scores: pl.DataFrame  # layer, expert, rd, ftri, effect, attribution (selection half)
    agreement: pl.DataFrame  # Spearman of rd / ftri / attribution with the causal effect
    doses: pl.DataFrame  # scorer, semantics, n, set, seed, experts, and the Outcome fields
    summary: pl.DataFrame  # scorer, semantics, n, chosen, control stats, z, p
    forced: pl.DataFrame  # scorer, experts, benign refusal without / with forcing, vs random forced sets
    baseline: dict[str, float] = field(default_factory=dict)
    #: measure (a key of MEASURES), scorer, semantics, n, chosen, control stats, z, p; ``summary``
    #: is its refusal rows
    outcomes: pl.DataFrame = field(default_factory=pl.DataFrame)


def split_pairs(prompts: Sequence[Prompt], n_select: int, n_eval: int) -> tuple[list[Prompt], list[Prompt]]:
    """Complete (harmful, benign) pairs, alternately into the selection and evaluation halves.

    The halves share no pair, no prompt and no text: a pair that repeats a text of an earlier pair
    (the same request under two pair ids) is dropped, so it cannot be chosen on and judged on.
    """
    by_pair: dict[str, list[Prompt]] = {}
    for p in prompts:
        if p.pair_id is not None:
            by_pair.setdefault(p.pair_id, []).append(p)
    pairs = [sorted(v, key=lambda p: p.label != "harmful") for _, v in sorted(by_pair.items()) if len(v) == 2]
    pairs = [v for v in pairs if {p.label for p in v} == {"harmful", "benign"}]
    seen: set[str] = set()
    unique = []
    for v in pairs:
        if not {p.text for p in v} & seen:
            unique.append(v)
        seen |= {p.text for p in v}
    pairs = unique
    select = [p for v in pairs[0::2][:n_select] for p in v]
    evaluate = [p for v in pairs[1::2][:n_eval] for p in v]
    if not select or not evaluate:
        raise ValueError("the refusal suite has too few complete harmful/benign pairs for the experiment")
    return select, evaluate


def eval_pairs(prompts: Sequence[Prompt], select: Sequence[Prompt], n_eval: int) -> list[Prompt]:
    """Up to ``n_eval`` complete pairs of ``prompts`` (a separate probe file) to judge on.

    Raises when any of them shares a text (after case and whitespace normalisation) with the
    selection prompts: experts chosen on a prompt must never be judged on it.
    """
    chosen = {" ".join(p.text.casefold().split()) for p in select}
    leaks = sorted({p.text for p in prompts if " ".join(p.text.casefold().split()) in chosen})
    if leaks:
        raise ValueError(f"{len(leaks)} evaluation prompt(s) also in the selection half, e.g. {leaks[0]!r}")
    by_pair: dict[str, list[Prompt]] = {}
    for p in prompts:
        if p.pair_id is not None:
            by_pair.setdefault(p.pair_id, []).append(p)
    out: list[Prompt] = []
    for _, v in sorted(by_pair.items()):
        if len(v) == 2 and {p.label for p in v} == {"harmful", "benign"} and len(out) < 2 * n_eval:
            out += sorted(v, key=lambda p: p.label != "harmful")
    if not out:
        raise ValueError("the evaluation probe file has no complete harmful/benign pair")
    return out


def _score_experts(
    loaded: LoadedModel, select: list[Prompt], behaviour: Behaviour, n_greedy: int, log: Callable[[str], None]
) -> pl.DataFrame:
    from workbench.capture.engine import capture

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "select.duckdb"
        run = capture(loaded, select, db, progress=False)
        with Store(db, read_only=True) as store:
            corr = resonance_map(store, run, target="harmful", control="benign", n_boot=200, n_perm=200)
    harmful = [p for p in select if p.label == "harmful"]
    log(
        f"causal map: {sum(x.n_experts for x in loaded.layers)} single-expert ablations on {len(harmful)} prompts"
    )
    causal = causal_resonance(loaded, harmful, behaviour, n_boot=200, n_perm=200)
    attr = attribution(loaded, harmful, behaviour)
    scores = (
        corr.select("layer", "expert", "rd", "ftri")
        .join(
            causal.select("layer", "expert", "effect", pl.col("q").alias("effect_q")), on=["layer", "expert"]
        )
        .join(attr, on=["layer", "expert"])
    )
    if n_greedy == 0:  # the greedy scorer is not part of this run: skip its n × E forward passes
        return scores
    log(f"greedy joint ablation: {n_greedy} rounds")
    greedy = greedy_ablation(loaded, harmful, behaviour, n_greedy)
    order = {(int(r["layer"]), int(r["expert"])): int(r["rank"]) for r in greedy.iter_rows(named=True)}
    # experts the greedy search did not reach come after it, in the order of their single effect
    by_effect = scores.sort("effect").select("layer", "expert").rows()
    rest = [cell for cell in by_effect if cell not in order]
    order.update({cell: len(order) + 1 + i for i, cell in enumerate(rest)})
    return scores.with_columns(
        pl.Series(
            "greedy_rank", [order[(a, b)] for a, b in scores.select("layer", "expert").rows()], pl.Int64
        )
    )


def _ranking(scores: pl.DataFrame, scorer: str) -> list[tuple[int, int]]:
    column, descending = SCORERS[scorer]
    ranked = scores.sort(column, descending=descending)
    return [(int(a), int(b)) for a, b in ranked.select("layer", "expert").iter_rows()]


@dataclass(frozen=True)
class Outcome:
    """What switching one expert set off does on the evaluation half (and what it costs)."""

    refusal: float  # share of held-out harmful requests refused (greedy, transparent patterns)
    compliance: float  # share answered instead (the behaviour's alternative judge; NaN without one)
    margin_delta: float  # mean change of the behaviour margin log p(yes₀) − log p(no₀) on them
    nll_delta: float  # NLL change per token on held-out domain text


#: the measures compared with random controls: name -> what it says (MoteResult.outcomes)
MEASURES: dict[str, str] = {
    "refusal": "refusal rate on held-out harmful requests",
    "compliance": "share of held-out harmful requests answered (not refused, and not broken text)",
    "margin_delta": "mean change of the refusal margin on held-out harmful requests",
    "refusal_cost_matched": "refusal rate, against only the random sets that cost no more domain NLL",
}


class _Measure:
    """:class:`Outcome` of an expert set on the evaluation harmful requests, memoised per set."""

    def __init__(
        self, loaded: LoadedModel, behaviour: Behaviour, harmful: list[Prompt], domain: list[Prompt]
    ) -> None:
        self.loaded, self.domain, self.behaviour, self.harmful = loaded, domain, behaviour, harmful
        self.asked = [behaviour.ask(p.text) for p in harmful]
        self.metric = behaviour_margin(loaded, behaviour)
        self.cache: dict[tuple[str, str], Outcome] = {}
        self.base_margin = float(metric_values(loaded, harmful, self.metric).mean())

    def texts(self, specs: Intervention | None) -> list[str]:
        """Greedy continuations of the harmful requests, with ``specs`` applied (None: the base model)."""
        model, tok = self.loaded.model, self.loaded.tokenizer
        if specs is None:
            return greedy_continuations(model, tok, self.asked, self.behaviour.max_new_tokens)
        with intervene(self.loaded, specs):
            return greedy_continuations(model, tok, self.asked, self.behaviour.max_new_tokens)

    def rates(self, texts: Sequence[str]) -> tuple[float, float]:
        """(refusal, compliance) shares of ``texts``."""
        alt = self.behaviour.alternative
        refusal = float(np.mean([self.behaviour.judge(t) for t in texts]))
        return refusal, float(np.mean([alt(t) for t in texts])) if alt else float("nan")

    def __call__(self, semantics: str, experts: ExpertSet) -> Outcome:
        key = (semantics, repr(sorted(experts.items())))
        if key not in self.cache:
            spec = SEMANTICS[semantics](experts)
            table = token_effects(self.loaded, self.domain, spec)
            nll = float((table["nll_int"] - table["nll_base"]).sum() / max(int(table["n_tokens"].sum()), 1))
            with intervene(self.loaded, spec):
                margin = float(metric_values(self.loaded, self.harmful, self.metric).mean())
            refusal, compliance = self.rates(self.texts(spec))
            self.cache[key] = Outcome(refusal, compliance, margin - self.base_margin, nll)
        return self.cache[key]


def _versus(table: pl.DataFrame, outcomes: list[Outcome]) -> list[dict[str, object]]:
    """One row of :func:`versus_controls` per measure of :data:`MEASURES` (chosen set first in ``table``).

    ``refusal_cost_matched`` keeps only the random sets whose domain-NLL cost is at most the chosen
    set's: a random set that breaks the model more than the chosen one is no fair comparison for
    "this set removes refusal". It is left out when fewer than 5 such sets exist.
    """
    rows: list[dict[str, object]] = []
    for name in ("refusal", "compliance", "margin_delta"):
        values = [getattr(o, name) for o in outcomes]
        if not all(np.isfinite(values)):
            continue
        rows.append({"measure": name, **versus_controls(table.with_columns(pl.Series("value", values)))})
    cost = np.array([o.nll_delta for o in outcomes])
    keep = np.concatenate(([True], cost[1:] <= cost[0]))
    if int(keep[1:].sum()) >= 5:
        matched = table.with_columns(pl.Series("value", [o.refusal for o in outcomes])).filter(
            pl.Series(keep)
        )
        rows.append({"measure": "refusal_cost_matched", **versus_controls(matched)})
    return rows


def _force_set(ranking: list[tuple[int, int]], n: int, top_k: dict[int, int]) -> ExpertSet:
    """The first ``n`` experts of ``ranking`` with at most k per layer (forcing more than k is impossible)."""
    out: ExpertSet = {}
    for layer, expert in ranking:
        if sum(map(len, out.values())) == n:
            break
        if len(out.get(layer, [])) < top_k[layer]:
            out.setdefault(layer, []).append(expert)
    return out


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 02 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Steps:
    """The experiment's steps counted off, each reported with the time so far and an estimate of the rest.

    The estimate is the mean time of the steps done so far times the steps left: the first step
    (scoring every expert) is the longest, so early estimates run high and then settle.
    """

    def __init__(
        self, total: int, log: Callable[[str], None], clock: Callable[[], float] = time.perf_counter
    ):
        self.total, self.done, self._log, self._clock = total, 0, log, clock
        self._start = clock()

    def step(self, what: str) -> None:
        """Count one step done and report it."""
        self.done += 1
        elapsed = self._clock() - self._start
        left = elapsed / self.done * (self.total - self.done)
        eta = f", about {_duration(left)} left" if self.done < self.total else ""
        self._log(f"[{self.done}/{self.total}] {what} done: {_duration(elapsed)} so far{eta}")


def run_mote(
    loaded: LoadedModel, config: MoteConfig | None = None, log: Callable[[str], None] = lambda _: None
) -> MoteResult:
    """Run the whole experiment on ``loaded`` (a model that speaks tiny-ref's chat format)."""
    cfg = config or MoteConfig()
    unknown = [x for x in cfg.scorers if x not in SCORERS]
    if unknown:
        raise ValueError(f"unknown scorer(s) {unknown}; available: {', '.join(SCORERS)}")
    select, evaluation = split_pairs(read_probe_file(suite_path("refusal")), cfg.n_select, cfg.n_eval)
    if cfg.eval_probe is not None:
        evaluation = eval_pairs(read_probe_file(Path(cfg.eval_probe)), select, cfg.n_eval)
    domain_pool = read_probe_file(suite_path("domains"))
    labels = sorted({p.label for p in domain_pool})
    per_label = max(1, cfg.n_domain // len(labels))
    domain = [p for label in labels for p in [q for q in domain_pool if q.label == label][:per_label]]
    behaviour = get_behaviour(cfg.behaviour)
    n_greedy = max(cfg.doses) if "causal-greedy" in cfg.scorers else 0
    steps = Steps(1 + len(cfg.scorers) * (len(cfg.semantics) * len(cfg.doses) + 1), log)
    scores = _score_experts(loaded, select, behaviour, n_greedy, log)
    steps.step("scoring the experts")
    agreement = rank_agreement(scores)
    harmful = [p for p in evaluation if p.label == "harmful"]
    benign = [p for p in evaluation if p.label == "benign"]
    measure = _Measure(loaded, behaviour, harmful, domain)
    n_experts = {x.layer: x.n_experts for x in loaded.layers}
    frames, summaries = [], []
    for scorer in cfg.scorers:
        ranking = _ranking(scores, scorer)
        for semantics in cfg.semantics:
            for n in cfg.doses:
                log(f"{scorer} / {semantics} / N={n}: chosen and {cfg.n_controls} random sets")
                table = run_with_controls(
                    lambda s, sem=semantics: measure(sem, s).refusal,  # type: ignore[misc]
                    top_n(ranking, n), n_experts, n_controls=cfg.n_controls, seed=cfg.seed + 97 * n,
                )  # fmt: skip
                outcomes = [measure(semantics, parse_set(e)) for e in table["experts"].to_list()]
                frames.append(
                    table.drop("value").with_columns(
                        *[
                            pl.Series(k, [getattr(o, k) for o in outcomes])
                            for k in Outcome.__dataclass_fields__
                        ],
                        pl.lit(scorer).alias("scorer"),
                        pl.lit(semantics).alias("semantics"),
                        pl.lit(n).alias("n"),
                    )
                )
                point = {"scorer": scorer, "semantics": semantics, "n": n}
                summaries += [{**row, **point} for row in _versus(table, outcomes)]
                steps.step(f"{scorer} / {semantics} / N={n}")
    top_k = {x.layer: x.top_k for x in loaded.layers}
    benign_asked = [behaviour.ask(p.text) for p in benign]
    base_benign = float(
        np.mean(
            [
                behaviour.judge(t)
                for t in greedy_continuations(
                    loaded.model, loaded.tokenizer, benign_asked, behaviour.max_new_tokens
                )
            ]
        )
    )
    forced_cache: dict[str, float] = {}

    def forced_refusal(experts: ExpertSet) -> float:
        """Benign refusal with ``experts`` forced into the top-k (memoised per set)."""
        key = format_set(experts)
        if key not in forced_cache:
            with intervene(loaded, Force(expert_map(experts))):
                texts = greedy_continuations(
                    loaded.model, loaded.tokenizer, benign_asked, behaviour.max_new_tokens
                )
            forced_cache[key] = float(np.mean([behaviour.judge(t) for t in texts]))
        return forced_cache[key]

    forced = []
    for i, scorer in enumerate(cfg.scorers):
        # forcing any few experts may make a model refuse: compare with distinct random sets of the same shape
        chosen = _force_set(_ranking(scores, scorer), cfg.force_n, top_k)
        table = run_with_controls(
            forced_refusal, chosen, n_experts, n_controls=cfg.n_controls, seed=cfg.seed + 7919 + i
        )
        stats = versus_controls(table)
        forced.append({
            "scorer": scorer, "experts": format_set(chosen), "benign_refusal_base": base_benign,
            "benign_refusal_forced": stats.pop("chosen"), **stats,
            "control_sets": "|".join(table.filter(pl.col("set") == "random")["experts"].to_list()),
        })  # fmt: skip
        steps.step(f"{scorer}: forcing its experts on benign prompts")
    harmful_refusal, harmful_compliance = measure.rates(measure.texts(None))
    baseline = {
        "harmful_refusal": harmful_refusal, "benign_refusal": base_benign,
        "harmful_compliance": harmful_compliance, "harmful_margin": measure.base_margin,
        "n_harmful_eval": float(len(harmful)),
    }  # fmt: skip
    keys = ["measure", "scorer", "semantics", "n"]
    table = pl.DataFrame(summaries).select(*keys, pl.exclude(*keys))
    summary = table.filter(pl.col("measure") == "refusal").drop("measure")
    return MoteResult(
        cfg, scores, agreement, pl.concat(frames, how="diagonal_relaxed"), summary, pl.DataFrame(forced),
        baseline, table,
    )  # fmt: skip

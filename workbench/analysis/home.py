"""Expert health in multi-task use (docs/methods.md §3): HoME's collapse, degradation, underfitting for LLM MoE.

HoME ("Hierarchy of Multi-gate Experts", recommender MoE) names three failure modes of
experts trained on many tasks; here they are adapted to an LLM MoE and a labelled run
(label = task / domain). Layer l, routed experts ``0..E-1``; shared experts (always on) are
the pseudo-experts ``expert = E + s`` of ``expert_stats`` and carry ``shared = True``.

* **Collapse** (:func:`expert_collapse`), per (layer, expert): ``mean_zero_frac`` — the mean
  over the tokens the expert processed (its ``expert_stats`` rows) of the fraction of its
  hidden units that are (near) zero, as measured at capture (``zero_frac``; exact zeros or
  ``|h| < τ``, see the capture) — and ``mean_out_norm``. Per layer (repeated on each of its
  rows): ``out_norm_max_min`` and ``out_norm_cv`` (population std / mean), the spread of
  mean output norm over the layer's *routed* experts (shared ones are never mixed into E),
  and ``routing_collapse``, the share of all selections (``routing``) taken by the
  ``ceil(0.1·E)`` most-selected routed experts (uniform routing gives ≈ 0.1). Needs
  ``expert_stats``; raises ``ValueError`` if the run has none.
* **Degradation** (:func:`expert_degradation`), per (layer, expert): label-size-normalised
  usage ``u_t = (n(e, t)/N_t) / Σ_t' n(e, t')/N_t'`` where ``n(e, t)`` is the number of
  label-t tokens that selected e and ``N_t`` the label-t tokens at the layer, so a label with
  many prompts does not look dominant just by size. ``concentration = 1 − H(u)/log T`` (T =
  labels present at the layer; 0 = evenly used, 1 = one label only), ``dominant_label`` =
  argmax u and ``dominant_share`` its u. An expert is *meant to be general* (``general``)
  when it is shared, or routed with load (selections) ≥ the median load of the layer's
  routed experts; it is ``degraded`` when general and ``dominant_share ≥ threshold``
  (default 0.9). Shared experts process every token, so selection counts say nothing about
  them: their usage is the **output-norm mass** per label, ``n(e, t) = Σ out_norm`` over
  their label-t ``expert_stats`` rows and ``N_t`` the number of those rows (u is the
  normalised mean output norm per label). Without ``expert_stats`` only routed experts are
  reported. With fewer than two labels concentration is NaN and nothing is degraded.
* **Underfitting** (:func:`underfitting`), per label t: ``shared_norm_share`` — the share of
  the output norm on label-t tokens (all selected layers, ``expert_stats``) that comes from
  shared experts (NaN without ``expert_stats``); ``specialist_gate_mass`` — the gate weight
  label-t tokens put on label-t's specialists divided by all their gate weight (ratio of
  sums over tokens and the selected layers; ``generalist_gate_mass`` is the rest). The
  specialists of t at layer l are the routed experts specialised for t by the workbench's one
  definition (:func:`~workbench.analysis.specialisation.is_specialised`: t over-uses them relative
  to the other labels, q < alpha, default 0.05); when no expert passes for (l, t) the single expert
  with the largest log-odds against the other labels is used instead, so
  every label has at least one specialist per layer. ``ci_low``/``ci_high`` are the 95%
  prompt-cluster bootstrap CI of ``specialist_gate_mass`` (ratio of per-prompt sums).
  ``underfit`` flags labels whose specialist gate mass is below the median over labels
  (strictly below; the median label itself is not flagged) **and** whose CI lies entirely
  below that median. The bare "below the median" rule of docs/methods.md §3 flags about half the
  labels whatever the data (with four labels, always the lower two), so on a null run it
  would never be quiet; requiring the CI to clear the median keeps the flag for labels
  whose specialists are clearly starved (typically data-sparse labels). Without a CI
  (``n_boot=0``, or a label with fewer than 2 prompts) a label is never flagged: there is not
  enough evidence to tell it from the median.

Prompts with a NULL label are left out of degradation and underfitting. Counting is done in
DuckDB (named queries of :mod:`workbench.store.queries`); the small per-layer tables are finished in polars / numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import polars as pl

from workbench.analysis.common import layer_info
from workbench.analysis.specialisation import domain_specialisation, is_specialised
from workbench.analysis.stats import cluster_bootstrap
from workbench.store import Store, queries

__all__ = [
    "COLLAPSE_COLUMNS",
    "DEGRADATION_COLUMNS",
    "UNDERFITTING_COLUMNS",
    "expert_collapse",
    "expert_degradation",
    "underfitting",
]

COLLAPSE_COLUMNS: tuple[str, ...] = (
    "layer", "expert", "shared", "mean_zero_frac", "mean_out_norm", "n_tokens",
    "out_norm_max_min", "out_norm_cv", "routing_collapse",
)  # fmt: skip
DEGRADATION_COLUMNS: tuple[str, ...] = (
    "layer", "expert", "shared", "load", "general", "concentration", "dominant_label", "dominant_share", "degraded",
)  # fmt: skip
UNDERFITTING_COLUMNS: tuple[str, ...] = (
    "label", "shared_norm_share", "specialist_gate_mass", "ci_low", "ci_high", "generalist_gate_mass",
    "n_tokens", "underfit",
)  # fmt: skip


def expert_collapse(store: Store, run_id: str, layers: Iterable[int] | None = None) -> pl.DataFrame:
    """Zero fraction, mean output norm, and per-layer norm spread / routing collapse (module docstring).

    One row per (layer, expert) present in ``expert_stats`` (shared pseudo-experts included),
    sorted by layer, expert. Raises ``ValueError`` when the run has no ``expert_stats``.
    """
    info = layer_info(store, run_id, layers)
    if queries.n_expert_stats_rows(store, run_id) == 0:
        raise ValueError(
            f"run {run_id!r} has no expert_stats; collapse needs per-expert zero fractions and "
            "output norms: capture the run with --expert-stats"
        )
    layer_list = info["layer"].to_list()
    per_expert = queries.expert_stats_means(store, run_id, layer_list)
    selections = queries.selections_per_layer(store, run_id, layer_list)
    per_expert = per_expert.join(info.select("layer", "n_experts"), on="layer", how="inner").with_columns(
        (pl.col("expert") >= pl.col("n_experts")).alias("shared")
    )
    layer_rows: list[dict[str, object]] = []
    for layer, n_experts in info.select("layer", "n_experts").iter_rows():
        routed = per_expert.filter((pl.col("layer") == layer) & ~pl.col("shared"))
        norms = routed["mean_out_norm"].drop_nulls().to_numpy().astype(np.float64)
        lo = float(norms.min()) if norms.size else math.nan
        hi = float(norms.max()) if norms.size else math.nan
        mean = float(norms.mean()) if norms.size else math.nan
        counts = np.zeros(int(n_experts))
        sel = selections.filter(
            (pl.col("layer") == layer) & (pl.col("expert") >= 0) & (pl.col("expert") < n_experts)
        )
        counts[sel["expert"].to_numpy().astype(np.int64)] = sel["n"].to_numpy()
        n_top = max(1, math.ceil(0.1 * int(n_experts)))
        total = counts.sum()
        layer_rows.append({
            "layer": int(layer),
            "out_norm_max_min": hi / lo if lo > 0 else math.nan,
            "out_norm_cv": float(norms.std()) / mean if mean > 0 else math.nan,
            "routing_collapse": float(np.sort(counts)[::-1][:n_top].sum() / total) if total > 0 else math.nan,
        })  # fmt: skip
    per_layer = pl.DataFrame(
        layer_rows,
        schema={"layer": pl.Int32, "out_norm_max_min": pl.Float64, "out_norm_cv": pl.Float64,
                "routing_collapse": pl.Float64},
    )  # fmt: skip
    out = per_expert.with_columns(pl.col("layer").cast(pl.Int32)).join(per_layer, on="layer", how="left")
    return (
        out.select(list(COLLAPSE_COLUMNS))
        .with_columns(
            pl.col("expert").cast(pl.Int32),
            pl.col("mean_zero_frac").cast(pl.Float64),
            pl.col("mean_out_norm").cast(pl.Float64),
            pl.col("n_tokens").cast(pl.Int64),
        )
        .sort("layer", "expert")
    )


def _usage_rows(
    layer: int, experts: np.ndarray, shared: bool, mass: np.ndarray, den: np.ndarray, labels: list[str]
) -> list[dict[str, object]]:
    """Concentration / dominant label per expert from a (experts × labels) mass and denominator."""
    rows: list[dict[str, object]] = []
    n_labels = len(labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(den > 0, mass / np.where(den > 0, den, 1.0), 0.0)
    for i, expert in enumerate(experts):
        total = rate[i].sum()
        if total <= 0 or n_labels == 0:
            conc, dom, share = math.nan, None, math.nan
        else:
            u = rate[i] / total
            nz = u[u > 0]
            entropy = float(-(nz * np.log(nz)).sum())
            conc = 1.0 - entropy / math.log(n_labels) if n_labels >= 2 else math.nan
            j = int(np.argmax(u))
            dom, share = labels[j], float(u[j])
        rows.append({"layer": layer, "expert": int(expert), "shared": shared, "concentration": conc,
                     "dominant_label": dom, "dominant_share": share})  # fmt: skip
    return rows


def expert_degradation(
    store: Store, run_id: str, layers: Iterable[int] | None = None, *, threshold: float = 0.9
) -> pl.DataFrame:
    """Label concentration of each expert and the degradation flag (module docstring).

    One row per routed expert ``0..E-1`` of each selected layer (``load`` = its share of the
    layer's selections, ``f``), plus one per shared pseudo-expert present in ``expert_stats``
    (``load`` NaN). Sorted by layer, expert.
    """
    info = layer_info(store, run_id, layers)
    layer_list = info["layer"].to_list()
    selections = queries.labelled_selections(store, run_id, layer_list)
    tokens = queries.label_token_counts(store, run_id, layer_list)
    shared_mass = queries.shared_norm_mass(store, run_id, layer_list)
    rows: list[dict[str, object]] = []
    for layer, n_experts in info.select("layer", "n_experts").iter_rows():
        tok = tokens.filter(pl.col("layer") == layer)
        sh = shared_mass.filter(pl.col("layer") == layer)
        labels = sorted(set(tok["label"].to_list()) | set(sh["label"].to_list()))
        code = {name: j for j, name in enumerate(labels)}
        n_e = int(n_experts)
        counts = np.zeros((n_e, len(labels)))
        sel = selections.filter(
            (pl.col("layer") == layer) & (pl.col("expert") >= 0) & (pl.col("expert") < n_e)
        )
        for lab, expert, n in sel.select("label", "expert", "n").iter_rows():
            counts[int(expert), code[lab]] += n
        den = np.zeros(len(labels))
        for lab, n in tok.select("label", "n_tokens").iter_rows():
            den[code[lab]] = n
        load = counts.sum(axis=1)
        f = load / load.sum() if load.sum() > 0 else np.full(n_e, math.nan)
        median = float(np.median(load)) if n_e else math.nan
        routed = _usage_rows(
            int(layer), np.arange(n_e), False, counts, np.broadcast_to(den, counts.shape), labels
        )
        for row, fe, le in zip(routed, f, load, strict=True):
            row["load"] = float(fe)
            row["general"] = bool(le >= median and le > 0)
        rows.extend(routed)
        shared_ids = sorted(set(sh["expert"].to_list()))
        if shared_ids:
            mass = np.zeros((len(shared_ids), len(labels)))
            sden = np.zeros_like(mass)
            index = {e: i for i, e in enumerate(shared_ids)}
            for lab, expert, m, n in sh.select("label", "expert", "mass", "n").iter_rows():
                mass[index[expert], code[lab]] = m
                sden[index[expert], code[lab]] = n
            shared_rows = _usage_rows(int(layer), np.asarray(shared_ids), True, mass, sden, labels)
            for row in shared_rows:
                row["load"] = math.nan
                row["general"] = True
            rows.extend(shared_rows)
    schema = {
        "layer": pl.Int32, "expert": pl.Int32, "shared": pl.Boolean, "load": pl.Float64, "general": pl.Boolean,
        "concentration": pl.Float64, "dominant_label": pl.Utf8, "dominant_share": pl.Float64,
    }  # fmt: skip
    out = pl.DataFrame([{k: r[k] for k in schema} for r in rows], schema=schema)
    out = out.with_columns(
        (pl.col("general") & (pl.col("dominant_share") >= threshold) & pl.col("concentration").is_not_nan())
        .fill_null(False)
        .alias("degraded")
    )
    return out.select(list(DEGRADATION_COLUMNS)).sort("layer", "expert")


def underfitting(
    store: Store,
    run_id: str,
    layers: Iterable[int] | None = None,
    *,
    alpha: float = 0.05,
    n_perm: int = 1000,
    n_boot: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """Shared vs routed output-norm share and specialist gate mass per label (module docstring).

    ``n_perm`` and ``seed`` go to :func:`domain_specialisation` (which picks the specialists);
    ``n_boot`` resamples of prompts give the CI of ``specialist_gate_mass``.
    One row per non-null label with routed tokens in the selected layers, sorted by label.
    """
    info = layer_info(store, run_id, layers)
    layer_list = info["layer"].to_list()
    spec = domain_specialisation(
        store, run_id, layers=layer_list, n_boot=0, n_perm=n_perm, seed=seed, alpha=alpha
    )
    significant = spec.filter(is_specialised(alpha))
    top = spec.sort("log_odds", descending=True).group_by("layer", "label", maintain_order=True).first()
    fallback = top.join(significant.select("layer", "label").unique(), on=["layer", "label"], how="anti")
    specialists = pl.concat(
        [significant.select("layer", "expert", "label"), fallback.select("layer", "expert", "label")]
    )
    specialists = specialists.with_columns(pl.lit(True).alias("is_specialist"))
    gate = queries.labelled_gate_mass(store, run_id, layer_list)
    tokens = queries.label_token_totals(store, run_id, layer_list)
    gate = gate.with_columns(pl.col("layer").cast(pl.Int32)).join(
        specialists.with_columns(pl.col("layer").cast(pl.Int32), pl.col("expert").cast(pl.Int32)),
        on=["layer", "label", "expert"],
        how="left",
    )
    per_prompt = gate.group_by("label", "prompt_id").agg(
        pl.col("mass").filter(pl.col("is_specialist").fill_null(False)).sum().cast(pl.Float64).alias("spec"),
        pl.col("mass").sum().cast(pl.Float64).alias("total"),
    )
    mass_rows: list[dict[str, object]] = []
    for (label,), part in per_prompt.sort("label", "prompt_id").group_by(["label"], maintain_order=True):
        est, low, high = cluster_bootstrap(
            part["spec"].to_numpy(), part["total"].to_numpy(), n_boot=n_boot, seed=seed
        )
        mass_rows.append(
            {
                "label": label,
                "specialist_gate_mass": float(est[0]),
                "ci_low": float(low[0]),
                "ci_high": float(high[0]),
            }
        )
    gate_mass = pl.DataFrame(
        mass_rows,
        schema={
            "label": pl.Utf8,
            "specialist_gate_mass": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
        },
    )
    norms = queries.shared_norm_totals(store, run_id, layer_list)
    norms = norms.select(
        "label", (pl.col("shared_norm") / pl.col("total_norm")).cast(pl.Float64).alias("shared_norm_share")
    )
    out = (
        tokens.join(gate_mass, on="label", how="left")
        .join(norms, on="label", how="left")
        .with_columns(
            pl.col("shared_norm_share").fill_null(math.nan),
            pl.col("specialist_gate_mass").fill_null(math.nan),
            pl.col("ci_low").fill_null(math.nan),
            pl.col("ci_high").fill_null(math.nan),
            pl.col("n_tokens").cast(pl.Int64),
        )
        .with_columns((1.0 - pl.col("specialist_gate_mass")).alias("generalist_gate_mass"))
    )
    mass = out["specialist_gate_mass"].to_numpy()
    median = float(np.nanmedian(mass)) if out.height and not np.isnan(mass).all() else math.nan
    # numpy comparisons with NaN are False: no CI (n_boot=0, or < 2 prompts) flags nothing
    flag = (mass < median) & (out["ci_high"].to_numpy() < median)
    out = out.with_columns(pl.Series("underfit", flag, dtype=pl.Boolean))
    return out.select(list(UNDERFITTING_COLUMNS)).sort("label")

"""`moe-workbench circuits`: compare two labels' expert circuits (docs/methods.md §9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, fail, note, show, user_errors
from workbench.cli.tables import print_frame


@app.command()
def circuits(
    compare: Annotated[
        tuple[str, str], typer.Option("--compare", help="Two labels of the suite, e.g. brackets arithmetic.")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Model (zoo name or directory).")] = "tiny-ref",
    suite: Annotated[str, typer.Option("--suite", help="Probe suite with meta.gold answers.")] = "tasks",
    n_prompts: Annotated[int, typer.Option("--prompts", help="Prompts per label (first N).")] = 48,
    share: Annotated[
        float, typer.Option("--share", help="Share of the full drop a circuit must reproduce.")
    ] = 0.8,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write every number as JSON.")] = None,
) -> None:
    """Find each label's circuit (fewest experts whose ablation removes ≥ 80% of its gold-answer log-prob
    drop) and compare them: IoU, overlap, importance Spearman with CI and p, cross-ablation specificity.
    Experts are chosen on half of each label's prompts (split by pair, by a seeded hash) and the
    circuits are judged on the other half; --out lists which prompts served which purpose.

    Example: moe-workbench circuits --compare brackets arithmetic --model tiny-ref --out circuits.json
    """
    from workbench.data.suites import SuiteError, load_suite
    from workbench.interventions.circuits import compare_circuits
    from workbench.interventions.metrics import gold_logprob
    from workbench.models.loading import load_model

    try:
        pool = load_suite(suite)
    except (SuiteError, KeyError, FileNotFoundError) as exc:
        fail(str(exc))
    groups = {label: [p for p in pool if p.label == label][:n_prompts] for label in compare}
    missing = [label for label, items in groups.items() if not items]
    if missing:
        fail(f"suite {suite!r} has no prompts labelled {missing}; labels: {sorted({p.label for p in pool})}")
    try:
        loaded = load_model(model)
        note(f"importance of {sum(x.n_experts for x in loaded.layers)} experts per label, then circuits")
        result = compare_circuits(
            loaded, groups[compare[0]], groups[compare[1]], gold_logprob(loaded), share=share
        )
    except user_errors() as exc:
        fail(str(exc))
    summary = result.summary()
    held = {r["label"]: r for r in result.held_out.iter_rows(named=True)}
    for c in (result.a, result.b):
        n_sel, n_eval = len(result.selection[c.label]), len(result.evaluation[c.label])
        show(
            f"circuit({c.label}): {len(c.experts)} experts {c.experts}, chosen on {n_sel} prompts "
            f"({c.share:.0%} of their full drop); on {n_eval} held-out prompts {held[c.label]['share']:.0%}"
        )
    lo, hi = result.spearman_ci
    show(
        f"IoU {result.iou:.2f}, overlap {result.overlap:.2f}, importance Spearman {result.spearman:+.2f} "
        f"(95% CI {lo:+.2f} to {hi:+.2f}, permutation p = {result.spearman_p:.3f})"
    )
    show("cross-ablation on the evaluation prompts only:")
    print_frame(result.cross, more=None)
    print_frame(result.importance_agreement, more=None)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        note(f"wrote {out_file}")

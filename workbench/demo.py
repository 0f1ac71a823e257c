"""``make demo``: capture the reference model on the probe suites and print who specialises in what.

Captures ``tiny-ref`` (the committed reference MoE) on the ``domains`` and ``refusal`` suites into
``demo.duckdb`` (recreated each time), then prints, per layer, each label's most specialised
experts: the share of the label's tokens routed to the expert and its lift over uniform routing
(share / (k/E)). The full analyses with confidence intervals are the analysis suite's job; this is
the quick look.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from workbench.capture.engine import capture
from workbench.data.suites import suite_path
from workbench.models.loading import load_model
from workbench.store import Store
from workbench.zoo.tiny_ref import model_dir

DEFAULT_MODEL = "tiny-ref"
DEFAULT_SUITES = ("domains", "refusal")


def expert_shares(store: Store, run_id: str) -> pl.DataFrame:
    """Per (layer, label, expert): share of the label's tokens whose top-k includes the expert, and lift."""
    return store.sql(
        """
        WITH sel AS (
            SELECT r.layer, p.label, unnest(r.experts) AS expert
            FROM routing r JOIN prompts p USING (run_id, prompt_id)
            WHERE r.run_id = ?
        ), n AS (
            SELECT label, sum(n_tokens) AS n_tokens FROM prompts WHERE run_id = ? GROUP BY label
        ), shape AS (
            SELECT layer, any_value(top_k) AS k, any_value(n_experts) AS e FROM layers WHERE run_id = ? GROUP BY layer
        )
        SELECT layer, label, expert, count(*) / any_value(n.n_tokens) AS share,
               count(*) / any_value(n.n_tokens) / (any_value(k) / any_value(e)) AS lift
        FROM sel JOIN n USING (label) JOIN shape USING (layer)
        GROUP BY layer, label, expert
        ORDER BY layer, label, lift DESC
        """,
        [run_id, run_id, run_id],
    )


def summary(shares: pl.DataFrame, top: int = 2) -> str:
    """One line per (layer, label): its ``top`` most specialised experts with share and lift."""
    lines = []
    for (layer,), per_layer in shares.group_by(["layer"], maintain_order=True):
        lines.append(f"layer {layer}")
        for (label,), rows in per_layer.group_by(["label"], maintain_order=True):
            best = ", ".join(
                f"e{r['expert']} {r['share']:.0%} ({r['lift']:.1f}x)"
                for r in rows.head(top).iter_rows(named=True)
            )
            lines.append(f"  {label:<9} {best}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="demo.duckdb")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--suite", action="append", dest="suites", help="probe suite (repeatable)")
    args = parser.parse_args(argv)
    db = Path(args.db)
    for stale in (db, db.with_suffix(db.suffix + ".wal")):
        stale.unlink(missing_ok=True)
    if args.model == DEFAULT_MODEL and not (model_dir() / "model.safetensors").exists():
        print(
            f"note: {model_dir()} is missing; train it with `moe-workbench zoo train tiny-ref`. "
            "Capturing an untrained tiny random Qwen2-MoE instead."
        )
        args.model = "tiny:qwen2_moe"
    loaded = load_model(args.model)
    runs = {}
    for suite in args.suites or DEFAULT_SUITES:
        runs[suite] = capture(loaded, suite_path(suite), db, run_id=f"{args.model}-{suite}", progress=True)
    with Store(db, read_only=True) as store:
        for suite, run_id in runs.items():
            n_rows = store.sql("SELECT count(*) AS n FROM routing WHERE run_id = ?", [run_id])["n"][0]
            print(f"\n{args.model} on `{suite}`: run {run_id}, {n_rows:,} token×layer records in {db}")
            print("share of each label's tokens routed to its most specialised experts (lift over uniform):")
            print(summary(expert_shares(store, run_id)))


if __name__ == "__main__":
    main()

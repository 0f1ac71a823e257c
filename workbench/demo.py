"""``make demo``: capture the embedded default model and print who specialises in what.

Until the reference model ships, the default is a tiny random Qwen2-MoE (routed + shared experts)
captured on ``probes/example.jsonl``; its experts have learned nothing, so the shares show the
pipeline working, not a finding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from workbench.capture.engine import capture
from workbench.store import Store

DEFAULT_MODEL = "tiny:qwen2_moe"
DEFAULT_PROBE = Path(__file__).resolve().parent.parent / "probes" / "example.jsonl"


def expert_shares(store: Store, run_id: str) -> pl.DataFrame:
    """Per (layer, label, expert): share of the label's tokens whose top-k includes the expert."""
    return store.sql(
        """
        WITH sel AS (
            SELECT r.layer, p.label, unnest(r.experts) AS expert
            FROM routing r JOIN prompts p USING (run_id, prompt_id)
            WHERE r.run_id = ?
        ), n AS (
            SELECT p.label, sum(p.n_tokens) AS n_tokens FROM prompts p WHERE p.run_id = ? GROUP BY p.label
        )
        SELECT layer, label, expert, count(*) / any_value(n.n_tokens) AS share
        FROM sel JOIN n USING (label)
        GROUP BY layer, label, expert
        ORDER BY layer, label, share DESC
        """,
        [run_id, run_id],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="demo.duckdb")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--probe", default=str(DEFAULT_PROBE))
    args = parser.parse_args(argv)
    run_id = capture(args.model, args.probe, args.db, progress=True)
    with Store(args.db, read_only=True) as store:
        shares = expert_shares(store, run_id)
        print(
            f"\nrun {run_id} in {args.db}: {store.routing(run_id, logits=False).height} token×layer records"
        )
        for (layer,), per_layer in shares.group_by(["layer"], maintain_order=True):
            print(f"layer {layer}")
            for (label,), rows in per_layer.group_by(["label"], maintain_order=True):
                top = ", ".join(
                    f"e{r['expert']} {r['share']:.0%}" for r in rows.head(3).iter_rows(named=True)
                )
                print(f"  {label:<8} {top}")


if __name__ == "__main__":
    main()

"""`moe-workbench resonate`: the L×E resonance map of a behaviour (docs/methods.md §5), stored and written out."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from workbench.cli.analyse_cmd import Segment
from workbench.cli.app import app, existing_run, fail, note, reading_store, show, user_errors, write_table
from workbench.cli.tables import print_frame
from workbench.store.segments import SEGMENT_HELP

if TYPE_CHECKING:
    import polars as pl

    from workbench.store import Store


class Method(str, Enum):
    rd = "rd"
    ftri = "ftri"
    causal = "causal"


@app.command()
def resonate(
    db: Annotated[Path, typer.Option("--db", help="DuckDB file holding the run.")],
    run: Annotated[str, typer.Option("--run", "-r", help="Run id (captured on a contrast set).")],
    target: Annotated[str, typer.Option("--target", help="Label of the prompts showing the behaviour.")],
    control: Annotated[str, typer.Option("--control", help="Label of the matched prompts without it.")],
    span: Annotated[
        str,
        typer.Option(
            "--span",
            help="Tokens to score: all | last:N | first:N | positions:A-B (counted within --segment).",
        ),
    ] = "all",
    segment: Annotated[Segment, typer.Option("--segment", help=SEGMENT_HELP)] = Segment.all,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            help="Score the CI, p and q refer to: rd (rate difference), ftri (per-token gate-weight difference), or causal (needs --model: "
            "each expert ablated alone, change of the behaviour margin on target prompts, plus attribution).",
        ),
    ] = Method.rd,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model of the run (zoo name or directory), for --method causal."),
    ] = None,
    behaviour: Annotated[
        str, typer.Option("--behaviour", help="Behaviour whose margin --method causal measures (refusal).")
    ] = "refusal",
    max_prompts: Annotated[
        int, typer.Option("--max-prompts", help="Target prompts used by --method causal (first N).")
    ] = 64,
    paired: Annotated[
        bool,
        typer.Option("--paired/--unpaired", help="Permute within pair_id pairs when every prompt has one."),
    ] = True,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the map to FILE (.csv or .parquet).")
    ] = None,
    store_map: Annotated[
        bool, typer.Option("--store/--no-store", help="Also keep the map in the DB's resonance table.")
    ] = True,
    drill: Annotated[
        str | None,
        typer.Option("--drill", help="LAYER:EXPERT — also list the tokens that drive this expert."),
    ] = None,
) -> None:
    """Find the experts whose routing differs between TARGET and CONTROL prompts.

    Scores every (layer, expert) by the selection-rate difference (rd, SteerMoE) and the
    per-token gate-weight difference (ftri: each prompt's mean gate weight per token, averaged per
    class, so prompt length does not count), with prompt-bootstrap CIs, permutation p and BH q. These are
    correlational; an expert can fire more on the target without causing the behaviour.

    Example: moe-workbench resonate --db demo.duckdb --run R --target harmful --control benign --out map.csv

    On a run captured with --generate, --segment response scores the generated responses alone (a
    stored map then records its span as response:SPAN).
    """
    import polars as pl

    from workbench.analysis.resonance import resonance_map, resonance_tokens
    from workbench.store import Store
    from workbench.store.segments import check_segment, parse_segment, segment_scope, stored_span

    suffix = out_file.suffix.lower() if out_file is not None else None
    if suffix not in (None, ".csv", ".parquet"):
        fail(f"--out must end in .csv or .parquet, got {out_file}")
    cell: tuple[int, int] | None = None
    if drill is not None:
        try:
            layer_s, expert_s = drill.split(":")
            cell = (int(layer_s), int(expert_s))
        except ValueError:
            fail(f"--drill must be LAYER:EXPERT, e.g. 3:5; got {drill!r}")
    if method is Method.causal and model is None:
        fail(
            "--method causal ablates experts in the model: give --model M (the model the run was captured from)"
        )
    if method is Method.causal and segment is not Segment.all:
        fail(
            "--method causal measures the behaviour margin at the end of each prompt, not over a segment: "
            "leave --segment out (or use rd or ftri)"
        )
    existing_run(db, run)
    agreement = None
    chosen = parse_segment(segment.value)
    try:
        with reading_store(db), Store(db, read_only=not store_map) as store:
            check_segment(store, run, chosen)
            with segment_scope(store, chosen) as view:
                frame = resonance_map(
                    view, run, target=target, control=control, span=span,
                    method="rd" if method is Method.causal else method.value, paired=paired,
                )  # fmt: skip
                tokens = None
                if cell is not None:
                    tokens = resonance_tokens(
                        view, run, layer=cell[0], expert=cell[1], target=target, control=control, span=span
                    )
            if method is Method.causal:
                assert model is not None  # checked above
                frame, agreement = _with_causal(store, run, frame, target, model, behaviour, max_prompts)
            if store_map:
                map_id = store.write_resonance(
                    run, frame.drop("method", "rate_target", "rate_control"),
                    target=target, control=control, method=method.value,
                    span=stored_span(chosen, span),
                )  # fmt: skip
                note(f"stored as resonance map {map_id}")
    except user_errors() as exc:
        fail(str(exc))
    key = "effect" if method is Method.causal else method.value
    shown = [
        c
        for c in ("layer", "expert", "rd", "ftri", "effect", "attribution", "ci_low", "ci_high", "q")
        if c in frame.columns
    ]
    top = frame.sort(pl.col(key).abs(), descending=True).head(10).select(shown)
    print_frame(top, total=frame.height, more="--out FILE writes the whole map")
    if agreement is not None:
        show("rank agreement with the causal effect:")
        print_frame(agreement, more=None)
    if tokens is not None:  # decoded text and id; the raw symbol (Ġ for a space ...) would only confuse
        print_frame(tokens.drop("token"), more=None)
    if out_file is not None:
        write_table(frame, out_file)
        note(f"wrote {frame.height} rows to {out_file}")


def _with_causal(
    store: Store, run: str, frame: pl.DataFrame, target: str, model: str, behaviour: str, max_prompts: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Add ``effect`` (its CI, p, q replace rd's) and ``attribution`` to the correlational map."""
    import polars as pl

    from workbench.behaviour.registry import get_behaviour
    from workbench.interventions.causal import attribution, causal_resonance, rank_agreement
    from workbench.models.loading import load_model
    from workbench.probefile import Prompt

    rows = store.prompts(run, labels=[target]).head(max_prompts)
    prompts = [
        Prompt(prompt_id=int(r["prompt_id"]), text=r["text"], label=r["label"])
        for r in rows.iter_rows(named=True)
    ]
    loaded = load_model(model)
    spec = get_behaviour(behaviour)
    note(
        f"causal map: {sum(x.n_experts for x in loaded.layers)} single-expert ablations on {len(prompts)} prompts"
    )
    causal = causal_resonance(loaded, prompts, spec)
    attr = attribution(loaded, prompts, spec)
    merged = (
        frame.drop("ci_low", "ci_high", "p", "q")
        .join(causal.drop("n_target"), on=["layer", "expert"], how="left")
        .join(attr, on=["layer", "expert"], how="left")
        .with_columns(pl.lit("causal").alias("method"))
    )
    return merged, rank_agreement(merged)

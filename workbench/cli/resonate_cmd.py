"""`moe-workbench resonate`: the L×E resonance map of a behaviour (METHODS.md §5), stored and written out."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, console, fail, out, user_errors


class Method(str, Enum):
    rd = "rd"
    ftri = "ftri"


@app.command()
def resonate(
    db: Annotated[Path, typer.Option("--db", help="DuckDB file holding the run.")],
    run: Annotated[str, typer.Option("--run", "-r", help="Run id (captured on a contrast set).")],
    target: Annotated[str, typer.Option("--target", help="Label of the prompts showing the behaviour.")],
    control: Annotated[str, typer.Option("--control", help="Label of the matched prompts without it.")],
    span: Annotated[
        str, typer.Option("--span", help="Tokens to score: all | last:N | first:N | positions:A-B.")
    ] = "all",
    method: Annotated[
        Method, typer.Option("--method", help="Score the CI, p and q refer to: rd (rate difference) or ftri.")
    ] = Method.rd,
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
    gate-mass difference (ftri), with prompt-bootstrap CIs, permutation p and BH q. These are
    correlational; an expert can fire more on the target without causing the behaviour.

    Example: moe-workbench resonate --db demo.duckdb --run R --target harmful --control benign --out map.csv
    """
    from workbench.analysis.resonance import resonance_map, resonance_tokens
    from workbench.store import Store

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
    try:
        with Store(db, read_only=not store_map) as store:
            frame = resonance_map(
                store, run, target=target, control=control, span=span, method=method.value, paired=paired
            )
            if store_map:
                map_id = store.write_resonance(
                    run, frame.drop("method", "rate_target", "rate_control"), target=target, control=control,
                    method=method.value, span=span,
                )  # fmt: skip
                console.print(f"stored as resonance map {map_id}")
            tokens = None
            if cell is not None:
                tokens = resonance_tokens(
                    store, run, layer=cell[0], expert=cell[1], target=target, control=control, span=span
                )
    except user_errors() as exc:
        fail(str(exc))
    top = frame.sort(method.value, descending=True).head(10)
    out.print(top.select("layer", "expert", "rd", "ftri", "ci_low", "ci_high", "q"))
    if tokens is not None:
        out.print(tokens)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            frame.write_csv(out_file)
        else:
            frame.write_parquet(out_file)
        console.print(f"wrote {frame.height} rows to {out_file}")

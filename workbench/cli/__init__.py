"""The ``moe-workbench`` command line.

Capture routing into a DuckDB store, list and export runs, resume interrupted captures, run
analyses. Every command explains itself with ``--help``. Each command group lives in its own
module; importing it registers its commands on :data:`app`, in the order of
``COMMAND_MODULES`` (which is the order ``--help`` lists them in).
"""

from __future__ import annotations

from importlib import import_module

from workbench.cli.app import app

__all__ = ["COMMAND_MODULES", "app", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "capture_cmds",
    "import_cmd",
    "analyse_cmd",
    "resonate_cmd",
    "report_cmd",
    "experiment_cmd",
    "circuits_cmd",
    "prune_cmd",
    "probes_cmd",
    "zoo_cmd",
    "serve_cmd",
)

for _name in COMMAND_MODULES:
    import_module(f"workbench.cli.{_name}")


def main() -> None:  # pragma: no cover - console entry point
    app()

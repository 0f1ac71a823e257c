"""``make demo`` (``python -m workbench.cli.demo``): capture the reference model on the probe suites
and print who specialises in what.

It lives with the command line (the top floor) because it ends by serving the dashboard, which the
library below never imports.

Captures ``tiny-ref`` (the committed reference MoE, with expert statistics) on the ``domains``
and ``refusal`` suites into ``demo.duckdb`` (reused when it already holds those runs complete and
current: same weights, same prompts, same store schema; ``--fresh`` captures again), then prints, per layer, each
label's specialised experts — those the label uses more than the other labels do (q < 0.05, the same
test and definition as the report and the dashboard): the label's token share against the other labels',
specificity and log-odds. That is the quick look; the full analyses with confidence
intervals go into an HTML probing report per run (``demo.html`` next to the DB for the first suite,
``demo-<suite>.html`` for the others, or ``--report PATH``), which opens offline in a browser.

Finally it prints the ``moe-workbench serve`` command for the dashboard and, unless ``--no-serve``
(or ``SERVE=0`` in the environment, which ``make demo SERVE=0`` passes on), serves it on
http://127.0.0.1:8050/ (``--port``, ``make demo PORT=N``; a taken port is replaced by a free one,
checked before the capture) with the model attached, so the intervention lab works (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from workbench.analysis.specialisation import domain_specialisation, specialised_cells
from workbench.capture.engine import capture
from workbench.data.suites import suite_path
from workbench.models.fingerprint import weights_fingerprint
from workbench.models.loading import LoadedModel, load_model
from workbench.probefile import scan_probe_file
from workbench.reports import write_report
from workbench.store import Store, StoreError
from workbench.wording import pct
from workbench.zoo.tiny_ref import model_dir

DEFAULT_MODEL = "tiny-ref"
DEFAULT_SUITES = ("domains", "refusal")


def expert_shares(store: Store, run_id: str) -> pl.DataFrame:
    """The run's domain-specialisation table, as the report and the dashboard compute it.

    :func:`~workbench.analysis.specialisation.domain_specialisation` at its defaults except
    ``n_boot=0`` (the quick look prints no CIs); p, q and ``specialised`` do not depend on
    ``n_boot``, so the terminal names exactly the specialists the HTML report and the dashboard do.
    """
    return domain_specialisation(store, run_id, n_boot=0)


def summary(spec: pl.DataFrame, top: int = 2, alpha: float = 0.05) -> str:
    """One line per (layer, label): its ``top`` specialised experts by log-odds, or ``-``.

    Specialised = the label uses the expert more than the other labels do at q < ``alpha``
    (:func:`~workbench.analysis.specialisation.is_specialised`); each entry reads
    ``e5 41% vs 12% (3.4x, log-odds 1.6, q=0.003)``: the label's token share, the other labels'
    share, specificity, the log-odds of the slot share against the rest, and the BH q-value.
    """
    lines = []
    best = specialised_cells(spec, alpha)
    for (layer,), per_layer in spec.sort("layer").group_by(["layer"], maintain_order=True):
        lines.append(f"layer {layer}")
        for label in sorted({str(x) for x in per_layer["label"].to_list()}):
            rows = best.filter((pl.col("layer") == layer) & (pl.col("label") == label)).head(top)
            text = ", ".join(
                f"e{r['expert']} {pct(r['share'])} vs {pct(r['share_rest'])} "
                f"({r['specificity']:.1f}x, log-odds {r['log_odds']:.2f}, q={r['q']:.2g})"
                for r in rows.iter_rows(named=True)
            )
            lines.append(f"  {label:<9} {text or '-'}")
    return "\n".join(lines)


def report_paths(db: Path, suites: list[str], report: Path | None = None) -> dict[str, Path]:
    """Where each suite's report goes: ``report`` (default ``<db stem>.html``) for the first suite,
    ``<stem>-<suite>.html`` beside it for the others."""
    first = report if report is not None else db.with_suffix(".html")
    return {
        suite: first if i == 0 else first.with_name(f"{first.stem}-{suite}{first.suffix}")
        for i, suite in enumerate(suites)
    }


HOST, PORT = "127.0.0.1", 8050


def free_port(host: str, wanted: int) -> int:
    """``wanted`` if a server can listen on it at ``host`` now, else a port the system says is free.

    Checked before the capture, so a taken port is known in a second rather than after minutes of
    capture (another process may still take it in between; the server then fails with its own error).
    """
    for port in (wanted, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError(f"no free TCP port on {host}")


def reusable_runs(
    db: Path, loaded: LoadedModel, model: str, probes: dict[str, Path]
) -> tuple[dict[str, str] | None, str]:
    """The demo runs already in ``db`` (suite → run id) if they are complete and current, else None; and why.

    ``probes`` maps each suite to its probe file. Current: each suite's run is complete, captured with
    expert statistics from the same weights (fingerprint, models/fingerprint.py) and the same prompts
    (the probe file's content digest, capture/integrity.py), into a store of this workbench's schema
    version (a read-only open refuses any other).
    """
    if not db.is_file():
        return None, f"{db} does not exist yet"
    runs = {suite: f"{model}-{suite}" for suite in probes}
    try:
        with Store(db, read_only=True) as store:
            infos = {suite: store.run(rid) for suite, rid in runs.items()}
    except (StoreError, duckdb.Error, OSError) as exc:  # another schema version, a damaged file, no such run
        return None, str(exc).split(". ")[0]
    weights = weights_fingerprint(loaded.model)["sha256"]
    for suite, info in infos.items():
        integrity = info["config"].get("integrity") or {}
        probe = integrity.get("probe") or {}
        if info["status"] != "complete":
            return None, f"run {runs[suite]} is {info['status']}, not complete"
        if (integrity.get("model") or {}).get("sha256") != weights:
            return None, f"run {runs[suite]} was captured from other weights of {model}"
        if probe.get("digest") != scan_probe_file(probes[suite]).digest:
            return (
                None,
                f"run {runs[suite]} was captured from other prompts than {probes[suite]} holds now",
            )
        if not info["config"].get("options", {}).get("expert_stats"):
            return None, f"run {runs[suite]} has no expert statistics"
    return (
        runs,
        f"its runs {', '.join(runs.values())} are complete and current (same weights, prompts and store schema)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's options; ``--serve``/``--no-serve`` default to the ``SERVE`` variable (serve unless 0)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default="demo.duckdb")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--suite", action="append", dest="suites", help="probe suite (repeatable)")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="HTML report of the first suite's run (default: DB stem + .html)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=os.environ.get("PORT") or PORT,  # argparse converts (and refuses in one line) a PORT string
        help=f"port to serve on (default: PORT or {PORT}); a taken port is replaced by a free one, before the capture",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="capture again even when the DB already holds complete, current demo runs",
    )
    parser.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("SERVE", "1").strip() not in ("0", "false", "no", ""),
        help=f"serve the dashboard on http://{HOST}:{PORT}/ at the end (default: yes unless SERVE=0)",
    )
    return parser.parse_args(argv)


def serve_dashboard(db: Path, loaded: Any, port: int = PORT) -> None:
    """Serve the dashboard over ``db`` with ``loaded`` attached, behind a new access token (blocks until Ctrl-C)."""
    from dashboards.access import new_token
    from dashboards.app import create_app

    token = new_token()
    app = create_app(db, model=loaded, prewarm=True, token=token)  # pages start warm
    print(f"open http://{HOST}:{port}/?token={token}", flush=True)
    app.run(host=HOST, port=port, debug=False)


def finish(
    db: Path,
    model: str,
    loaded: Any,
    *,
    serve: bool,
    port: int = PORT,
    server: Callable[[Path, Any, int], None] = serve_dashboard,
) -> str:
    """Print the dashboard command and, when ``serve``, run ``server(db, loaded, port)``; returns the command."""
    command = f"moe-workbench serve --db {db} --model {model}" + (f" --port {port}" if port != PORT else "")
    print(f"\ndashboard (runs, routing, ..., intervention lab): {command}")
    if serve:
        print(f"serving it now on {HOST}:{port} (Ctrl-C to stop; `make demo SERVE=0` skips this)")
        server(db, loaded, port)
    return command


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    db = Path(args.db)
    port = args.port
    if args.serve:  # before minutes of capture, not after
        port = free_port(HOST, args.port)
        if port != args.port:
            print(f"port {args.port} is taken on {HOST}; the dashboard will use port {port} instead")
    if args.model == DEFAULT_MODEL and not (model_dir() / "model.safetensors").exists():
        print(
            f"note: {model_dir()} is missing; train it with `moe-workbench zoo train tiny-ref`. "
            "Capturing an untrained tiny random Qwen2-MoE instead."
        )
        args.model = "tiny:qwen2_moe"
    loaded = load_model(args.model)
    suites = list(args.suites or DEFAULT_SUITES)
    reused, why = (
        (None, "--fresh (FRESH=1) asked for it")
        if args.fresh
        else reusable_runs(db, loaded, args.model, {suite: suite_path(suite) for suite in suites})
    )
    if reused is not None:
        print(f"reusing {db}: {why}; `make demo FRESH=1` (or --fresh) captures again")
        runs = reused
    else:
        if db.exists():
            print(f"capturing {db} again: {why}")
        for stale in (db, db.with_suffix(db.suffix + ".wal")):
            stale.unlink(missing_ok=True)
        runs = {
            suite: capture(
                loaded,
                suite_path(suite),
                db,
                run_id=f"{args.model}-{suite}",
                progress=True,
                expert_stats=True,
            )
            for suite in suites
        }
    with Store(db, read_only=True) as store:
        for suite, run_id in runs.items():
            n_rows = store.sql("SELECT count(*) AS n FROM routing WHERE run_id = ?", [run_id])["n"][0]
            print(f"\n{args.model} on `{suite}`: run {run_id}, {n_rows:,} token×layer records in {db}")
            print(
                "per layer, each label's specialised experts (used more by the label than by the other labels, "
                "q < 0.05): the label's token share vs the other labels', specificity, log-odds, q"
            )
            print(summary(expert_shares(store, run_id)))
    paths = report_paths(db, suites, args.report)
    for suite, run_id in runs.items():
        path = write_report(db, run_id, paths[suite], model=loaded)
        print(f"\nreport of run {run_id}: {path.resolve()} (self-contained HTML; open it in a browser)")
    finish(db, args.model, loaded, serve=args.serve, port=port)


if __name__ == "__main__":
    main()

"""The typer application, its consoles and the error handling shared by every command.

Names are data, never markup: run ids, labels, paths, prompt text, model names and error messages
(which quote user input) reach the terminal only through :func:`safe` / :func:`show`, or through
:func:`fail`, :func:`warn` and :func:`note`, which treat their whole message as plain text. A run
id such as ``a[/]b`` or ``[link=...]click[/link]`` then prints literally instead of raising rich's
``MarkupError`` or turning into a hyperlink, and control characters print as ``\\x1b``-style escapes
instead of moving the cursor.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

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


#: Unicode categories written as escapes: controls (ESC moves the cursor, CR overwrites the line) and
#: lone surrogates; bidirectional overrides are listed below (they reorder what follows them)
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cs"})
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(text: str, *, keep: str = "\n") -> str:
    """``text`` with control characters (except those in ``keep``) written as ``\\x1b``-style escapes."""
    if text.isprintable():
        return text
    return "".join(_escaped(ch) if _hidden(ch) and ch not in keep else ch for ch in text)


def _hidden(ch: str) -> bool:
    return ch in _BIDI or unicodedata.category(ch) in _HIDDEN_CATEGORIES


def _escaped(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object, *, keep: str = "\n") -> Text:
    """A user-supplied value as rich text that is never parsed as markup (for tables and prints)."""
    return Text(visible(str(value), keep=keep))


def show(value: object, *, to: Console | None = None) -> None:
    """Print ``value`` (a run id, a path, a polars frame ...) as plain text on stdout (or ``to``)."""
    (to or out).print(safe(value), soft_wrap=True)


def _say(prefix: str, style: str, message: object, keep: str = "\n") -> None:
    body = safe(message, keep=keep)
    text = Text.assemble((prefix, style), " ", body) if prefix else body
    console.print(text, soft_wrap=True)  # one line: the terminal wraps it, rich inserts no newlines


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` (plain text, one line: a newline it quotes prints as ``\\x0a``) and exit."""
    _say("error:", "bold red", message, keep="")
    raise typer.Exit(code)


def warn(message: object) -> None:
    """Print ``warning: message`` (plain text, one line) on stderr."""
    _say("warning:", "yellow", message, keep="")


def note(message: object, prefix: str = "") -> None:
    """Print ``message`` (plain text) on stderr, after ``prefix`` in yellow: progress, "wrote FILE", logs."""
    _say(prefix, "yellow", message)


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


@contextmanager
def reading_store(db: Path) -> Iterator[None]:
    """Turn the low-level errors of reading a store (truncated, overwritten, shards gone) into one line.

    The line quotes the error (which names the file it failed on) and says what to do if that file
    is the store; an error on another file (an --out path) is quoted as it is.
    """
    import duckdb

    try:
        yield
    except (duckdb.Error, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = getattr(exc, "filename", None)
        if isinstance(exc, OSError) and name is not None and not str(name).startswith(str(db.absolute())):
            fail(f"{name}: {exc.strerror or first}")
        fail(
            f"store {db}: {first}. If the store is truncated or corrupted (or its .shards folder incomplete), "
            "restore it from a copy, or capture the run again"
        )


def writable_db(db: Path) -> None:
    """Refuse, before anything loads, a --db whose directory cannot be created."""
    parent = db.expanduser().absolute().parent
    if parent.exists() and not parent.is_dir():
        fail(f"--db {db}: {parent} is a file, not a directory; choose a --db in a writable directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(
            f"--db {db}: cannot create the directory {parent} ({exc.strerror or exc}); choose a writable place"
        )


def existing_run(db: Path, run: str) -> None:
    """Refuse a store that is not there, or that lacks ``run``, before a command opens it to write.

    A writable open creates a missing file, so without this a mistyped --db would leave an empty
    store behind and the command would complain about the run's labels instead of the path.
    """
    from workbench.store import Store

    with reading_store(db):
        try:
            with Store(db, read_only=True) as store:
                store.run(run)
        except user_errors() as exc:
            fail(str(exc))


def summary_builders() -> None:
    """Register every part of the per-prompt summaries, so the runs this command completes get them all.

    The store builds only the counting part alone; the logits, pairs and transitions parts are built
    by the analyses' kernels (``workbench.analysis.summaries``), which the store, a lower floor, never
    imports. Importing that module (not the whole of ``workbench.analysis``) registers them.
    """
    import workbench.analysis.summaries  # noqa: F401  (registers the parts with workbench.store.summaries)


SCRATCH_ENV = "MOE_WORKBENCH_SCRATCH"
DEFAULT_SCRATCH = Path("~/.cache/moe-workbench/scratch")
"""Where commands whose outputs would otherwise overwrite tracked files (``experiment mote``, ``zoo train``)
write by default: ``$MOE_WORKBENCH_SCRATCH`` or this folder."""


def scratch_dir(name: str) -> Path:
    """A new folder ``<scratch>/<name>-<UTC time>`` for a command's output that nobody asked to keep in place.

    The repository's recorded outputs (docs/experiments, datasets/tiny-ref) change only when a
    command is told to write there with ``--out``.
    """
    import os
    from datetime import datetime, timezone

    root = Path(os.environ.get(SCRATCH_ENV) or DEFAULT_SCRATCH).expanduser()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = root / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        except OSError as exc:
            fail(
                f"cannot create the scratch folder {folder} ({exc.strerror or exc}); pass --out, or set ${SCRATCH_ENV}"
            )
        return folder
    fail(f"no new scratch folder under {root}: pass --out")
    raise AssertionError("unreachable: fail exits")


def write_table(frame: object, path: Path) -> None:
    """Write polars ``frame`` to ``path`` (.csv, .parquet or .json, by suffix), creating its folder.

    A path that cannot be written (a file where a folder should be, no permission, a full disk)
    is one ``error:`` line naming it; nested columns become their text in CSV.
    """
    import polars as pl

    assert isinstance(frame, pl.DataFrame)
    suffix = path.suffix.lower()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            nested = [c for c, t in frame.schema.items() if isinstance(t, pl.List | pl.Array | pl.Struct)]
            flat = frame.with_columns(
                pl.Series(c, [str(v) for v in frame[c].to_list()], dtype=pl.Utf8) for c in nested
            )
            flat.write_csv(path)
        elif suffix == ".parquet":
            frame.write_parquet(path)
        else:
            frame.write_json(path)
    except OSError as exc:
        fail(f"{path}: cannot be written ({exc.strerror or exc}); choose another --out")

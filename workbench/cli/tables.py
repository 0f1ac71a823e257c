"""Tables the command line prints: as many whole columns as the terminal holds (80 is enough), never a cut id.

A polars frame printed as it is runs past an 80-column terminal, and rich squeezes a wide table by
folding every cell into slivers (a run id became four lines of seven characters). Here each column
keeps its full width on one line; columns are taken in order (the ``first`` ones, then the rest)
while they fit, and the ones left out are named below the table with how to get them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from workbench.cli.app import out, safe, show

if TYPE_CHECKING:  # polars is imported by the commands that print a frame, not at start-up
    import polars as pl

GAP = 3
"""Characters between two columns: rich's padding on both sides and the column divider."""


def cell(value: Any) -> str:
    """A value as table text: floats to 4 significant digits, None as blank, the rest as str."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _width(frame: pl.DataFrame, col: str) -> int:
    return max([len(col), *(len(cell(v)) for v in frame[col].to_list())])


def key_width(frame: pl.DataFrame, col: str, width: int) -> int:
    """The width of the key (first) column: its longest value, but at most half the terminal.

    A longer value (a 5,000-character run id) folds over lines, whole: it is never cut, and it
    does not push every other column off the table.
    """
    return min(_width(frame, col), max(width // 2, 1))


def fitting_columns(frame: pl.DataFrame, width: int, first: Sequence[str] = ()) -> list[str]:
    """The columns of ``frame`` that fit side by side in ``width`` characters: ``first``, then the rest, in order.

    The first of them is the key column, always kept (:func:`key_width`).
    """
    order = [c for c in first if c in frame.columns] + [c for c in frame.columns if c not in first]
    if not order:
        return []
    chosen, used = [order[0]], key_width(frame, order[0], width)
    for col in order[1:]:
        need = _width(frame, col) + GAP
        if used + need > width:
            continue  # a narrower column further on may still fit
        chosen.append(col)
        used += need
    return chosen


def print_frame(
    frame: pl.DataFrame,
    *,
    first: Sequence[str] = (),
    title: str | None = None,
    total: int | None = None,
    more: str | None = "--out FILE writes the whole table",
) -> None:
    """Print ``frame`` as a borderless table of the columns that fit the terminal, then what was left out.

    ``total`` is the number of rows the full table has when ``frame`` is its head.
    """
    width = out.width
    cols = fitting_columns(frame, width, first)
    table = Table(
        box=box.SIMPLE_HEAD, title=None if title is None else safe(title), pad_edge=False, show_edge=False
    )
    for i, col in enumerate(cols):
        if i == 0:  # the key: folded whole when longer than its share, never cut
            table.add_column(safe(col), overflow="fold", min_width=key_width(frame, col, width))
        else:
            table.add_column(safe(col), no_wrap=True, overflow="ignore")
    for row in frame.select(cols).iter_rows():
        table.add_row(*(safe(cell(v), keep="") for v in row))
    out.print(table, crop=False)
    notes = []
    if total is not None and total > frame.height:
        notes.append(f"{frame.height} of {total:,} rows")
    left = [c for c in frame.columns if c not in cols]
    if left:
        notes.append(f"not shown: {', '.join(left)}")
    if notes:
        show(f"({'; '.join([*notes, *([more] if more else [])])})")


def significant_first(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows flagged significant (``specialised``/``significant``) first, then by ``q`` (or ``p``) ascending.

    A table without such columns keeps its order.
    """
    import polars as pl

    keys: list[Any] = []
    descending: list[bool] = []
    for flag in ("specialised", "significant"):
        if flag in frame.columns and frame.schema[flag] == pl.Boolean:
            keys.append(pl.col(flag).fill_null(False))
            descending.append(True)
    for stat in ("q", "p"):
        if stat in frame.columns and frame.schema[stat].is_numeric():
            keys.append(pl.col(stat).fill_nan(None))
            descending.append(False)
            break
    if not keys:
        return frame
    return frame.sort(keys, descending=descending, nulls_last=True, maintain_order=True)


def id_columns(names: Iterable[str]) -> list[str]:
    """The identifying columns among ``names`` (layer, expert, label ...), which a table shows first."""
    return [c for c in ("layer", "expert", "label", "label_a", "label_b", "target", "control") if c in names]

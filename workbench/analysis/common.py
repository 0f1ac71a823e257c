"""Small helpers every analysis shares: which layers to read, and how to turn streamed logits into numpy.

The SQL the analyses run lives in :mod:`workbench.store.queries`; nothing here writes SQL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar, cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from workbench.store import Store


def layer_info(store: Store, run_id: str, layers: Iterable[int] | None) -> pl.DataFrame:
    """The run's ``layers`` rows (n_experts, top_k, score_fn, ...), restricted to ``layers``, by layer.

    Raises ``UnknownRunError`` (listing the runs that exist) for an unknown run.
    """
    info = store.layers(run_id)
    if layers is not None:
        info = info.filter(pl.col("layer").is_in(sorted({int(x) for x in layers})))
    return info.sort("layer")


class BatchLogits:
    """A routing batch's ``logits`` list column as one flat array, gathered row by row.

    Converting the list column once per batch (instead of once per layer group through a
    polars gather) is what keeps the per-layer loops of the logit analyses cheap. Takes a
    polars Series or a pyarrow list array (what :func:`stream_logits` yields).
    """

    def __init__(self, column: pl.Series | pa.Array | pa.ChunkedArray) -> None:
        arr = column.rechunk().to_arrow() if isinstance(column, pl.Series) else column
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        self._arrow = arr
        lengths = pc.fill_null(pc.list_value_length(arr), 0)
        self.lengths = np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.lengths)))
        self._raw: np.ndarray | None = None
        self._flat: np.ndarray | None = None
        self._uniform: bool | None = None

    def _values(self) -> np.ndarray:
        """The values of the non-null lists, concatenated, in the stored float dtype (NULL values: NaN)."""
        if self._raw is None:
            values = np.asarray(self._arrow.flatten().to_numpy(zero_copy_only=False))  # honours slicing
            self._raw = values if values.dtype.kind == "f" else values.astype(np.float64)
        return self._raw

    def rows(self, rows: np.ndarray, width: int) -> np.ndarray:
        """The ``(len(rows), width)`` float64 logits of ``rows`` (each must have ``width`` entries)."""
        if self._flat is None:
            self._flat = self._values().astype(np.float64)
        if self._uniform is None:
            self._uniform = bool(self.lengths.size) and bool((self.lengths == self.lengths[0]).all())
        if self._uniform and int(self.lengths[0]) == width:  # a plain (n, E) matrix: gather whole rows
            whole: np.ndarray = self._flat.reshape(-1, width)[rows]
            return whole
        gathered: np.ndarray = self._flat[self.offsets[rows][:, None] + np.arange(width)]
        return gathered

    def matrix(self, width: int) -> np.ndarray | None:
        """All rows as one ``(n, width)`` array in the stored dtype (a view, no copy), or None.

        None when the rows do not all have ``width`` entries. The values are not converted:
        sorting and comparing them is exact in any float dtype, and the float64 conversion
        can then be fused with the transposition the vectorised kernels want anyway.
        """
        if self.lengths.size == 0 or not bool((self.lengths == width).all()):
            return None
        return self._values().reshape(-1, width)


def stream_logits(
    store: Store,
    run_id: str,
    layers: list[int],
    *,
    labels: list[str] | None = None,
    batch_rows: int = 262_144,
) -> Iterator[tuple[pl.DataFrame, pa.Array]]:
    """The run's routing rows with non-NULL logits, unsorted, as (keys, logits) batches.

    ``keys`` holds ``prompt_id, position, layer`` (and ``label`` when ``labels`` is given:
    only rows of prompts with one of those labels); ``logits`` is the Arrow list array. Only
    these columns are read and the list column never goes through polars, which makes this
    about twice as cheap as :meth:`Store.iter_routing` for the logit analyses. Rows come in
    no particular order; raises ``UnknownRunError`` for an unknown run.
    """
    store.layers(run_id)  # raises UnknownRunError for an unknown run
    if not layers or labels == []:
        return
    for batch in store.iter_logits(run_id, layers, labels, batch_rows=batch_rows):
        keys = cast(pl.DataFrame, pl.from_arrow(batch.drop_columns(["logits"])))
        yield keys, batch.column("logits")


def layer_groups(layer_col: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(layer, row indices) per layer of a batch, layers in order of first appearance.

    The same groups, in the same order, as ``group_by("layer", maintain_order=True)``.
    """
    present, first = np.unique(layer_col, return_index=True)
    return [(int(layer), np.flatnonzero(layer_col == layer)) for layer in present[np.argsort(first)].tolist()]


T = TypeVar("T")
R = TypeVar("R")
H = TypeVar("H", bound=Hashable)


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int = 2) -> Iterator[R]:
    """``map(fn, items)`` with ``fn`` run on ``workers`` threads, results in input order.

    The per-batch kernels of the logit analyses are numpy calls that release the GIL, so a
    second thread overlaps one batch's maths with the next batch's DuckDB read. At most
    ``2·workers`` items are in flight, which bounds memory. ``workers <= 1`` runs inline.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def layer_index(layer_col: np.ndarray, layers: list[int]) -> np.ndarray:
    """Each row's position in ``layers`` (int64); raises ``KeyError`` for a layer not listed."""
    col = np.asarray(layer_col, dtype=np.int64)
    if col.size == 0:
        return col
    lo, hi = int(col.min()), int(col.max())
    lut = np.full(hi - lo + 1, -1, dtype=np.int64)
    for i, layer in enumerate(layers):
        if lo <= layer <= hi:
            lut[layer - lo] = i
    out = lut[col - lo]
    if (out < 0).any():
        raise KeyError(f"routing rows of layer {int(col[np.argmax(out < 0)])}, which is not selected")
    return out


def check_widths(lengths: np.ndarray, li: np.ndarray, n_experts: np.ndarray, layers: list[int]) -> None:
    """Raise ``ValueError`` naming the first layer whose logits rows are not ``n_experts`` long."""
    bad = lengths != n_experts[li]
    if bad.any():
        at = int(np.argmax(bad))
        raise ValueError(
            f"layer {layers[int(li[at])]}: logits rows must have length n_experts={int(n_experts[li[at]])}"
        )


def signature_rows(li: np.ndarray, signatures: Sequence[H]) -> list[tuple[H, np.ndarray | None]]:
    """Rows per distinct per-layer ``signatures[li]`` (E, k, score_fn ...), in order of first layer.

    ``None`` stands for "every row of the batch" (one signature, the usual case), so the
    caller can use the batch's logits as one matrix without gathering rows.
    """
    groups: dict[H, list[int]] = {}
    for i in np.flatnonzero(np.bincount(li, minlength=len(signatures))).tolist():
        groups.setdefault(signatures[i], []).append(i)
    if len(groups) == 1:
        return [(next(iter(groups)), None)]
    return [(sig, np.flatnonzero(np.isin(li, idx))) for sig, idx in groups.items()]


def logits_matrix(logits: BatchLogits, rows: np.ndarray | None, width: int) -> np.ndarray:
    """The ``(n, width)`` logits of ``rows`` (None: all rows, without a copy where possible)."""
    if rows is None:
        whole = logits.matrix(width)
        if whole is not None:
            return whole
        rows = np.arange(logits.lengths.size)
    return logits.rows(rows, width)


def transposed_f64(z: np.ndarray) -> np.ndarray:
    """``z.T`` as a C-contiguous float64 ``(E, n)`` array.

    Reductions over the E experts of each row are then reductions along axis 0 of a
    contiguous array: elementwise operations on whole rows of length n, several times
    faster than numpy's row-wise reductions over rows of 16 values.
    """
    return np.array(np.asarray(z).T, dtype=np.float64, order="C")


#: Rows per chunk of the vectorised logit kernels: an ``(E, CHUNK_ROWS)`` float64 block of a
#: 16-expert layer is 1 MiB, so a chain of elementwise steps on it stays in cache (about
#: twice as fast as running each step over a whole batch).
CHUNK_ROWS = 8192


def row_chunks(n: int, size: int = CHUNK_ROWS) -> list[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` rows."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def sorted_index(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index into the sorted ``sorted_ids`` of each value (clipped; callers check the match).

    A lookup table when the ids are dense enough (e.g. prompt ids 0..n-1), else a binary search.
    """
    ids = np.asarray(sorted_ids, dtype=np.int64)
    vals = np.asarray(values, dtype=np.int64)
    if ids.size == 0:
        return np.zeros(vals.size, dtype=np.int64)
    lo, hi = int(ids[0]), int(ids[-1])
    if hi - lo > 4 * ids.size + 1024:
        return np.minimum(np.searchsorted(ids, vals), ids.size - 1)
    lut = np.minimum(np.searchsorted(ids, np.arange(lo, hi + 1)), ids.size - 1)
    return lut[np.clip(vals - lo, 0, hi - lo)]

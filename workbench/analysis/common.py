"""Small helpers every analysis shares: which layers to read, and the SQL clause that selects them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from workbench.store import Store


def layer_filter(layers: Iterable[int] | None, column: str = "layer") -> tuple[str, list[int]]:
    """An ``AND column IN (?, ...)`` clause and its parameters; empty for all layers, FALSE for none."""
    if layers is None:
        return "", []
    values = [int(x) for x in layers]
    if not values:
        return " AND FALSE", []
    return f" AND {column} IN ({', '.join('?' for _ in values)})", values


def layer_info(store: Store, run_id: str, layers: Iterable[int] | None) -> pl.DataFrame:
    """The run's ``layers`` rows (n_experts, top_k, score_fn, ...), restricted to ``layers``, by layer.

    Raises ``UnknownRunError`` (listing the runs that exist) for an unknown run.
    """
    info = store.layers(run_id)
    if layers is not None:
        info = info.filter(pl.col("layer").is_in(sorted({int(x) for x in layers})))
    return info.sort("layer")


class BatchLogits:
    """A routing batch's ``logits`` list column as one flat float64 array, gathered row by row.

    Converting the list column once per batch (instead of once per layer group through a
    polars gather) is what keeps the per-layer loops of the logit analyses cheap.
    """

    def __init__(self, column: pl.Series) -> None:
        self.lengths = column.list.len().to_numpy().astype(np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.lengths)))
        self._column = column
        self._flat: np.ndarray | None = None
        self._uniform: bool | None = None

    def rows(self, rows: np.ndarray, width: int) -> np.ndarray:
        """The ``(len(rows), width)`` float64 logits of ``rows`` (each must have ``width`` entries)."""
        if self._flat is None:
            if (self.lengths == 0).any():  # explode() gives an empty list a null row: flatten in Arrow
                values = self._column.rechunk().to_arrow().flatten()  # type: ignore[attr-defined]
                self._flat = values.to_numpy(zero_copy_only=False).astype(np.float64)
            else:
                self._flat = self._column.explode().to_numpy().astype(np.float64)
        if self._uniform is None:
            self._uniform = bool(self.lengths.size) and bool((self.lengths == self.lengths[0]).all())
        if self._uniform and int(self.lengths[0]) == width:  # a plain (n, E) matrix: gather whole rows
            return self._flat.reshape(-1, width)[rows]
        return self._flat[self.offsets[rows][:, None] + np.arange(width)]


def layer_groups(layer_col: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(layer, row indices) per layer of a batch, layers in order of first appearance.

    The same groups, in the same order, as ``group_by("layer", maintain_order=True)``.
    """
    present, first = np.unique(layer_col, return_index=True)
    return [(int(layer), np.flatnonzero(layer_col == layer)) for layer in present[np.argsort(first)].tolist()]

"""Routing drift's fast path: two runs' expert lists read from their shards in step, overlaps as bit counts.

Why: comparing two runs token by token needs every routing row of both. Read through DuckDB and
polars, a 10M-token pair took 133 CPU-s (benchmarks/README.md, "Scaling curves"). Here each run's
``prompt_id, position, layer, experts`` columns are decoded by pyarrow, one row group at a time,
each run on its own thread (:mod:`workbench.store.shard_reader`), and each top-k set becomes a
bitmask (one unsigned word up to 64 experts, ``ceil(E/64)`` 64-bit words beyond), so
``|S ∩ S'|`` is a popcount of ``S & S'``.

Same answer as the in-step scan of :mod:`workbench.analysis.compare`: row i of one run must have
row i's (prompt_id, position, layer) in the other, checked on every row (or, where the two runs'
row groups hold byte-identical key chunks, once per row group); the overlap of a row is
the number of distinct common ids over ``max(|S|, |S'|, 1)`` with list lengths as stored. It gives
up (returns None, and the caller takes the SQL-backed paths) on the first key mismatch, a NULL
list or id, a negative id, ids far beyond the layers' experts, or where the shards cannot be read
directly (:func:`~workbench.store.shard_reader.run_pieces`).

Sums: per (layer, prompt) the common counts are summed as integers, separately for each value of
``max(|S|, |S'|)``, and divided once at the end (ascending lengths), so the per-prompt overlap is
deterministic and, with one ``k`` per prompt, correctly rounded. Where ``k`` is a power of two this
is bit for bit the old float sum; otherwise the two differ by float rounding only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from workbench.store import Store
from workbench.store.shard_reader import ShardPiece, read_piece, run_pieces, same_encoding

__all__ = ["shard_overlap"]

_KEYS = ("prompt_id", "position", "layer")

#: Row groups each run's reader decodes ahead of the comparison (memory: this many per run).
_READ_AHEAD = 2

#: Largest (layers × prompt-id range) grid of accumulators; sparser prompt ids go through SQL.
_MAX_CELLS = 1 << 26


class _GiveUp(Exception):
    """The fast path cannot answer this pair of runs (the caller falls back)."""


@dataclass(frozen=True)
class _Rows:
    """Consecutive routing rows of one run: the keys decoded, and each expert list as a bitmask and a length."""

    keys: dict[str, np.ndarray]  # some of prompt_id, position, layer (int32)
    masks: np.ndarray  # (words, rows) uint64: bit i of word w set for expert id 64·w + i
    length: np.ndarray  # each list's length as stored (duplicates counted)
    k: int  # the length of every list, or -1 where they differ

    def __len__(self) -> int:
        return int(self.length.size)

    def slice(self, start: int, stop: int) -> _Rows:
        keys = {name: values[start:stop] for name, values in self.keys.items()}
        return _Rows(keys, self.masks[:, start:stop], self.length[start:stop], self.k)


@dataclass
class _Grid:
    """Per (prompt, layer) cell: matched tokens and, per list length m, Σ |S ∩ S'| (integers)."""

    prompt_min: int
    layer_min: int
    n_layers: int
    n_prompts: int
    tokens: np.ndarray
    common: dict[int, np.ndarray]

    @classmethod
    def covering(cls, pieces: list[ShardPiece]) -> _Grid:
        p_lo, p_hi = min(p.prompt_min for p in pieces), max(p.prompt_max for p in pieces)
        l_lo, l_hi = min(p.layer_min for p in pieces), max(p.layer_max for p in pieces)
        n_prompts, n_layers = p_hi - p_lo + 1, l_hi - l_lo + 1
        if n_prompts * n_layers > _MAX_CELLS:
            raise _GiveUp
        return cls(p_lo, l_lo, n_layers, n_prompts, np.zeros(n_prompts * n_layers, np.int64), {})

    def add(self, rows: _Rows, common: np.ndarray, length: np.ndarray | int) -> None:
        """Count ``rows`` and their common ids; ``length`` is ``max(|S|, |S'|, 1)``, per row or one for all."""
        cell = (rows.keys["prompt_id"] - self.prompt_min).astype(np.intp)
        cell *= self.n_layers
        cell += rows.keys["layer"]
        cell -= self.layer_min
        size = self.tokens.size
        try:  # a negative cell raises, one past the grid lengthens the counts: statistics that lie
            tokens = np.bincount(cell, minlength=size)
        except ValueError as exc:
            raise _GiveUp from exc
        if tokens.size != size:
            raise _GiveUp
        self.tokens += tokens
        if isinstance(length, int):
            self._add_common(length, np.bincount(cell, weights=common, minlength=size))
            return
        for m in np.unique(length).tolist():
            sel = length == m
            self._add_common(int(m), np.bincount(cell[sel], weights=common[sel], minlength=size))

    def _add_common(self, m: int, counts: np.ndarray) -> None:
        if m not in self.common:
            self.common[m] = np.zeros(self.tokens.size, np.float64)
        self.common[m] += counts  # whole numbers below 2**53: exact

    def frame(self, layers: list[int] | None) -> pl.DataFrame:
        """``layer, prompt_id, n, overlap`` of the cells with tokens, by layer then prompt."""
        overlap = np.zeros(self.tokens.size, np.float64)
        for m in sorted(self.common):
            overlap += self.common[m] / m
        by_layer = self.tokens.reshape(self.n_prompts, self.n_layers).T
        layer_idx, prompt_idx = np.nonzero(by_layer)
        cells = prompt_idx * self.n_layers + layer_idx
        out = pl.DataFrame({
            "layer": (layer_idx + self.layer_min).astype(np.int32),
            "prompt_id": (prompt_idx + self.prompt_min).astype(np.int32),
            "n": self.tokens[cells].astype(np.int64),
            "overlap": overlap[cells],
        })  # fmt: skip
        return out if layers is None else out.filter(pl.col("layer").is_in(layers))


def shard_overlap(
    store: Store, run_a: str, run_b: str, layers: list[int] | None, n_experts: int
) -> pl.DataFrame | None:
    """Per (layer, prompt) ``n`` and Σ overlap of two runs stored in the same row order, or None.

    ``n_experts`` is the largest expert count of the two runs' layers (ids far beyond it give up).
    Same frame as :func:`workbench.analysis.compare._aligned_overlap`: ``layer, prompt_id, n,
    overlap`` sorted by layer and prompt.
    """
    pieces_a, pieces_b = run_pieces(store, run_a), run_pieces(store, run_b)
    if pieces_a is None or pieces_b is None:
        return None
    if sum(p.n_rows for p in pieces_a) != sum(p.n_rows for p in pieces_b):
        return None
    if not pieces_a:
        return _Grid(0, 0, 0, 0, np.zeros(0, np.int64), {}).frame(layers)
    max_words = (2 * n_experts + 64 + 63) // 64  # the in-step scan's bound on ids
    # Runs written in the same batches have row groups of the same rows with byte-identical key
    # chunks: then only A's prompt and layer are decoded, and no key is compared row by row.
    lined_up = len(pieces_a) == len(pieces_b) and all(
        same_encoding(a, b, list(_KEYS)) for a, b in zip(pieces_a, pieces_b, strict=True)
    )
    keys_a, keys_b = (["prompt_id", "layer"], []) if lined_up else (list(_KEYS), list(_KEYS))
    with ThreadPoolExecutor(1) as pool_a, ThreadPoolExecutor(1) as pool_b:
        try:
            grid = _Grid.covering(pieces_a)
            reads = (
                _read_ahead(pool_a, pieces_a, keys_a, max_words),
                _read_ahead(pool_b, pieces_b, keys_b, max_words),
            )
            for a, b in _in_step(*reads):
                _compare(a, b, grid)
        except _GiveUp:
            return None
        finally:  # a reader abandoned on giving up must not decode the rest of its run
            pool_a.shutdown(cancel_futures=True)
            pool_b.shutdown(cancel_futures=True)
    return grid.frame(layers)


def _read_ahead(
    pool: ThreadPoolExecutor, pieces: list[ShardPiece], keys: list[str], max_words: int
) -> Iterator[_Rows]:
    """The pieces' rows in order, decoded on ``pool`` up to :data:`_READ_AHEAD` pieces ahead."""
    pending: deque[Future[_Rows]] = deque()
    queue = iter(pieces)
    for piece in queue:
        pending.append(pool.submit(_decode, piece, keys, max_words))
        if len(pending) >= _READ_AHEAD:
            break
    while pending:
        rows = pending.popleft().result()
        following = next(queue, None)
        if following is not None:
            pending.append(pool.submit(_decode, following, keys, max_words))
        yield rows


def _decode(piece: ShardPiece, keys: list[str], max_words: int) -> _Rows:
    """One piece's ``keys`` and bitmasks (on a reader thread); gives up on NULLs and out-of-range ids."""
    columns = [*keys, "experts"]
    table = read_piece(piece, columns)
    if any(table.column(c).null_count for c in columns):
        raise _GiveUp
    experts = table.column("experts").combine_chunks()
    if experts.values.null_count:
        raise _GiveUp
    offsets = np.asarray(experts.offsets.to_numpy())
    ids = np.asarray(experts.values.to_numpy())[offsets[0] : offsets[-1]]
    length = np.diff(offsets)
    top = 0
    if ids.size:
        if int(ids.min()) < 0:
            raise _GiveUp
        top = int(ids.max())
        if top // 64 + 1 > max_words:  # ids far beyond the layers' experts
            raise _GiveUp
    k = int(length[0]) if length.size and bool((length == length[0]).all()) else -1
    decoded = {name: np.asarray(table.column(name).to_numpy(), dtype=np.int32) for name in keys}
    return _Rows(decoded, _masks(ids, length, k, top), length, k)


def _in_step(left: Iterator[_Rows], right: Iterator[_Rows]) -> Iterator[tuple[_Rows, _Rows]]:
    """Equal-length runs of rows from two streams, in step; streams of different lengths give up."""
    buf_l: _Rows | None = None
    buf_r: _Rows | None = None
    while True:
        if buf_l is None or len(buf_l) == 0:
            buf_l = next(left, None)
        if buf_r is None or len(buf_r) == 0:
            buf_r = next(right, None)
        if buf_l is None or buf_r is None:
            if (buf_l is not None and len(buf_l)) or (buf_r is not None and len(buf_r)):
                raise _GiveUp
            return
        n = min(len(buf_l), len(buf_r))
        yield buf_l.slice(0, n), buf_r.slice(0, n)
        buf_l, buf_r = buf_l.slice(n, len(buf_l)), buf_r.slice(n, len(buf_r))


def _compare(a: _Rows, b: _Rows, grid: _Grid) -> None:
    """Add the overlaps of two aligned row runs to ``grid``; gives up where their keys differ."""
    for name in a.keys.keys() & b.keys.keys():  # none where the key chunks were found identical
        if not np.array_equal(a.keys[name], b.keys[name]):
            raise _GiveUp
    common = np.bitwise_count(a.masks[0] & b.masks[0])
    shared = min(a.masks.shape[0], b.masks.shape[0])  # a word only one run has holds no common id
    if shared > 1:
        common = common.astype(np.int64)
        for w in range(1, shared):
            common += np.bitwise_count(a.masks[w] & b.masks[w])
    if a.k >= 0 and a.k == b.k:
        grid.add(a, common, max(a.k, 1))
    else:
        grid.add(a, common, np.maximum(np.maximum(a.length, b.length), 1))


def _masks(ids: np.ndarray, length: np.ndarray, k: int, top: int) -> np.ndarray:
    """``(words, rows)``: per list, bit ``i`` of word ``w`` set for each id ``64·w + i`` in it (ids <= ``top``).

    ``k`` is every list's length (-1 where they differ): then a reshape replaces the segmented OR.
    One word uses the narrowest unsigned type that holds bit ``top``: a shift in a type no wider
    than the ids' own is ~40x cheaper than one in uint64 after a widening copy. Several use uint64.
    """
    n = length.size
    words = top // 64 + 1
    kind = np.uint64 if words > 1 else next(t for t in _UNSIGNED if top < np.iinfo(t).bits)
    out = np.zeros((words, n), kind)
    if n == 0 or ids.size == 0:
        return out
    one, zero = kind(1), kind(0)
    starts = None if k > 0 else np.concatenate([[0], np.cumsum(length)[:-1]])
    for w in range(words):
        if words == 1:
            word = np.left_shift(one, ids.astype(kind, copy=False))
        else:
            word = np.where((ids >> 6) == w, np.left_shift(one, (ids & 63).astype(kind)), zero)
        if starts is None:
            per_list = word.reshape(n, k)
            for j in range(k):
                out[w] |= per_list[:, j]
        else:  # reduceat ORs word[start_i:start_i+1]; a trailing 0 makes every start a valid index
            out[w] = np.bitwise_or.reduceat(np.append(word, zero), starts)
            out[w, length == 0] = 0  # an empty list's one-element "OR" is its neighbour's first id
    return out


#: The unsigned integer types, narrowest first.
_UNSIGNED: tuple[type[np.unsignedinteger[Any]], ...] = (np.uint8, np.uint16, np.uint32, np.uint64)

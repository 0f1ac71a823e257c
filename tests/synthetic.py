"""Synthetic runs written through the real store, for the analysis known-answer tests.

A test decides the routing (who is planted where); this module builds the prompt/token tables,
the (prompt, position, layer) index of the routing rows, and writes everything as one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from workbench.store import Store


def lists(values: np.ndarray) -> pa.ListArray:
    """A [rows, width] array as an Arrow list column (the store's SMALLINT[] / FLOAT[])."""
    n_rows, width = values.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(n_rows + 1, dtype=np.int32) * width), pa.array(values.ravel())
    )


@dataclass
class Skeleton:
    """Prompts and tokens of a run, and the index of its routing rows (token-major, then layer)."""

    labels: list[str]
    layers: tuple[int, ...]
    prompts: pa.Table
    tokens: pa.Table
    pid: np.ndarray  # per routing row
    pos: np.ndarray
    lay: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.pid.size)


def prompt_tables(
    labels: list[str], lengths: np.ndarray, *, pid_offset: int = 0, nll: np.ndarray | None = None
) -> tuple[pa.Table, pa.Table, np.ndarray, np.ndarray]:
    """``prompts`` and ``tokens`` tables (token ids = positions), and the per-token prompt ids and positions."""
    n_prompts = len(labels)
    pids = np.arange(n_prompts, dtype=np.int32) + pid_offset
    pid_tok = np.repeat(pids, lengths)
    pos_tok = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    prompts = pa.table({
        "prompt_id": pa.array(pids, pa.int32()),
        "text": [f"prompt {i}" for i in range(n_prompts)],
        "label": labels,
        "pair_id": pa.array([None] * n_prompts, pa.string()),
        "split": ["test"] * n_prompts,
        "meta": pa.array([None] * n_prompts, pa.string()),
        "n_tokens": pa.array(lengths, pa.int32()),
    })  # fmt: skip
    tokens = pa.table({
        "prompt_id": pid_tok, "position": pos_tok, "token_id": pos_tok,
        "token": [f"t{q}" for q in pos_tok],
        "nll": (np.ones(pid_tok.size) if nll is None else nll).astype(np.float32),
    })  # fmt: skip
    return prompts, tokens, pid_tok, pos_tok


def skeleton(labels: list[str], lengths: np.ndarray, layers: tuple[int, ...]) -> Skeleton:
    """Prompts ``i`` with label ``labels[i]`` and ``lengths[i]`` tokens; token ids = positions."""
    prompts, tokens, pid_tok, pos_tok = prompt_tables(labels, lengths)
    return Skeleton(
        labels=list(labels),
        layers=tuple(layers),
        prompts=prompts,
        tokens=tokens,
        pid=np.repeat(pid_tok, len(layers)),
        pos=np.repeat(pos_tok, len(layers)),
        lay=np.tile(np.asarray(layers, np.int32), pid_tok.size),
    )


def save_run(
    path: Path,
    sk: Skeleton,
    *,
    experts: np.ndarray,
    weights: np.ndarray,
    n_experts: int,
    top_k: int,
    run_id: str,
    logits: np.ndarray | None = None,
) -> str:
    """Write ``sk`` with the given per-row routing as one complete run; returns its id."""
    routing = pa.table({
        "prompt_id": sk.pid, "position": sk.pos, "layer": sk.lay,
        "experts": lists(experts), "weights": lists(weights),
        "logits": lists(logits) if logits is not None else pa.nulls(sk.n_rows, pa.list_(pa.float32())),
    })  # fmt: skip
    layer_rows = [
        {"layer": x, "module_path": f"m.{x}", "n_experts": n_experts, "top_k": top_k} for x in sk.layers
    ]
    with Store(path) as st:
        run = st.create_run(
            model="synthetic", architecture="Synthetic", probe="domains", n_experts=n_experts, top_k=top_k,
            config={}, layers=layer_rows, run_id=run_id,
        )  # fmt: skip
        st.write_batch(run, prompts=sk.prompts, tokens=sk.tokens, routing=routing)
        st.set_status(run, "complete")
    return run


def uniform_topk(rng: np.random.Generator, n_rows: int, n_experts: int, top_k: int) -> np.ndarray:
    """``[n_rows, top_k]`` distinct experts per row, uniformly at random (the null router)."""
    return np.argsort(rng.random((n_rows, n_experts)), axis=1)[:, :top_k].astype(np.int16)


def plant_first(
    rng: np.random.Generator, experts: np.ndarray, rows: np.ndarray, expert: int, prob: float
) -> np.ndarray:
    """Put ``expert`` in slot 0 of each of ``rows`` with probability ``prob`` (top-k stays distinct).

    Where ``expert`` already sits in another slot it is swapped with slot 0, so no row selects
    an expert twice. Returns the modified copy.
    """
    out = experts.copy()
    hit = rows[rng.random(rows.size) < prob]
    for row in hit:
        where = np.flatnonzero(out[row] == expert)
        if where.size:
            out[row, where[0]] = out[row, 0]
        out[row, 0] = expert
    return out

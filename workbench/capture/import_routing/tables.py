"""One chunk of imported sequences as the Arrow tables of ``Store.write_batch`` (prompts, tokens, routing).

Built column-wise with numpy (no Python loop over rows): routing rows are ordered by position and
then layer, ``experts`` is a list column of the kept layers' ids, ``weights`` is a column of NULL
lists and ``logits`` is left out (the store writes NULL). A prompt's ``n_tokens`` is its routed
tokens, and its ``tokens`` rows are those positions, with NULL ids where the record has none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from workbench.capture.import_routing.formats import EngineSequence
from workbench.capture.import_routing.layout import LayerMap

__all__ = ["batch_tables"]


def _prompt_meta(seq: EngineSequence) -> str:
    meta = {
        **seq.meta,
        "line": seq.line,
        "choice": seq.choice,
        "first_position": seq.first_position,
        "n_prompt_tokens": seq.n_prompt,
        "n_generated_tokens": seq.n_generated,
    }
    return json.dumps(meta)


def batch_tables(
    chunk: Sequence[EngineSequence], first_prompt_id: int, layer_map: LayerMap, label: str | None
) -> dict[str, pa.Table]:
    """The prompts, tokens and routing tables of ``chunk``; prompt ids count on from ``first_prompt_id``."""
    axis = np.asarray(layer_map.axis, dtype=np.int64)
    blocks = np.asarray(layer_map.layers, dtype=np.int32)
    n_layers = len(axis)
    prompt_ids = np.arange(first_prompt_id, first_prompt_id + len(chunk), dtype=np.int32)
    rows = np.array([seq.experts.shape[0] for seq in chunk], dtype=np.int64)
    starts = np.array([seq.first_position for seq in chunk], dtype=np.int64)
    # per token: prompt id and position
    tok_prompt = np.repeat(prompt_ids, rows)
    offsets = np.repeat(np.cumsum(rows) - rows, rows)
    tok_pos = (np.arange(int(rows.sum()), dtype=np.int64) - offsets + np.repeat(starts, rows)).astype(
        np.int32
    )
    token_ids = np.concatenate(
        [np.asarray(s.token_ids, dtype=np.float64) if s.token_ids is not None else np.full(r, np.nan)
         for s, r in zip(chunk, rows, strict=True)]
    )  # fmt: skip
    ids_known = ~np.isnan(token_ids)
    # per routing row (token × kept layer): the kept layers' ids, k per row
    kept = np.concatenate([seq.experts[:, axis, :] for seq in chunk]).astype(np.int16)
    top_k = kept.shape[2]
    flat = kept.reshape(-1, top_k)
    n_route = flat.shape[0]
    prompts = pa.table({
        "prompt_id": pa.array(prompt_ids),
        "text": pa.array([seq.text for seq in chunk], pa.string()),
        "label": pa.array([seq.label if seq.label is not None else label for seq in chunk], pa.string()),
        "pair_id": pa.array([seq.pair_id for seq in chunk], pa.string()),
        "split": pa.array([seq.split for seq in chunk], pa.string()),
        "meta": pa.array([_prompt_meta(seq) for seq in chunk], pa.string()),
        "n_tokens": pa.array(rows.astype(np.int32)),
    })  # fmt: skip
    tokens = pa.table({
        "prompt_id": pa.array(tok_prompt),
        "position": pa.array(tok_pos),
        "token_id": pa.array(np.where(ids_known, token_ids, 0).astype(np.int32), mask=~ids_known),
        "token": pa.nulls(len(tok_pos), pa.string()),
    })  # fmt: skip
    routing = pa.table({
        "prompt_id": pa.array(np.repeat(tok_prompt, n_layers)),
        "position": pa.array(np.repeat(tok_pos, n_layers)),
        "layer": pa.array(np.tile(blocks, len(tok_pos))),
        "experts": pa.ListArray.from_arrays(
            pa.array(np.arange(n_route + 1, dtype=np.int32) * top_k), pa.array(flat.ravel())
        ),
        "weights": pa.nulls(n_route, pa.list_(pa.float32())),
    })  # fmt: skip
    return {"prompts": prompts, "tokens": tokens, "routing": routing}

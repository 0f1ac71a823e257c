"""Builders shared by the store tests: layer rows, a synthetic batch, a new run."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from workbench.store import Store
from workbench.store import schema as schema_mod

LAYERS = [
    {
        "layer": 3,
        "module_path": "model.layers.3.mlp",
        "n_experts": 8,
        "top_k": 2,
        "n_shared": 1,
        "score_fn": "softmax",
    },
    {
        "layer": 7,
        "module_path": "model.layers.7.mlp",
        "n_experts": 8,
        "top_k": 2,
        "n_shared": 1,
        "score_fn": "softmax",
    },
]


def fixed_lists(values: np.ndarray) -> pa.ListArray:
    """A 2-D array as an Arrow list column (one list per row), built without Python loops."""
    n_rows, width = values.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(n_rows + 1, dtype=np.int32) * width), pa.array(values.ravel())
    )


def make_batch(
    prompt_ids: list[int],
    *,
    n_pos: int = 3,
    layers: tuple[int, ...] = (3, 7),
    k: int = 2,
    labels: list[str | None] | None = None,
    logits_every: int = 2,
) -> dict[str, pa.Table]:
    """A consistent batch; every ``logits_every``-th routing row has logits, the rest null."""
    n_prompts = len(prompt_ids)
    labels = labels or [f"label{p % 2}" for p in prompt_ids]
    prompts = pa.table({
        "prompt_id": pa.array(prompt_ids, pa.int32()),
        "text": [f"prompt {p}" for p in prompt_ids],
        "label": pa.array(labels, pa.string()),
        "pair_id": [f"pair{p // 2}" for p in prompt_ids],
        "split": ["train"] * n_prompts,
        "meta": pa.array([json.dumps({"p": p}) if p % 3 else None for p in prompt_ids], pa.string()),
        "n_tokens": pa.array([n_pos] * n_prompts, pa.int32()),
    })  # fmt: skip
    pid_tok = np.repeat(np.asarray(prompt_ids, np.int32), n_pos)
    pos_tok = np.tile(np.arange(n_pos, dtype=np.int32), n_prompts)
    tokens = pa.table({
        "prompt_id": pid_tok,
        "position": pos_tok,
        "token_id": (pid_tok * 100 + pos_tok).astype(np.int32),
        "token": [f"t{p}_{q}" for p, q in zip(pid_tok, pos_tok, strict=True)],
        "nll": np.linspace(0.5, 3.0, len(pid_tok), dtype=np.float32),
    })  # fmt: skip
    n_rows = len(pid_tok) * len(layers)
    pid = np.repeat(pid_tok, len(layers))
    pos = np.repeat(pos_tok, len(layers))
    lay = np.tile(np.asarray(layers, np.int32), len(pid_tok))
    experts = ((np.arange(n_rows)[:, None] + np.arange(k)[None, :]) % 8).astype(np.int16)
    weights = np.tile(np.linspace(0.9, 0.1, k, dtype=np.float32), (n_rows, 1))
    logit_values = np.arange(8, dtype=np.float32)[None, :] + np.arange(n_rows, dtype=np.float32)[:, None]
    has_logits = np.arange(n_rows) % logits_every == 0
    logits = pa.ListArray.from_arrays(
        pa.array(np.arange(n_rows + 1, dtype=np.int32) * 8),
        pa.array(logit_values.ravel()),
        mask=pa.array(~has_logits),
    )
    routing = pa.table({
        "prompt_id": pid, "position": pos, "layer": lay,
        "experts": fixed_lists(experts),
        "weights": fixed_lists(weights),
        "logits": logits,
    })  # fmt: skip
    stats = pa.table({
        "prompt_id": pid, "position": pos, "layer": lay,
        "expert": pa.array(experts[:, 0], pa.int16()),
        "out_norm": np.full(n_rows, 1.5, np.float32),
        "zero_frac": np.full(n_rows, 0.25, np.float32),
    })  # fmt: skip
    return {"prompts": prompts, "tokens": tokens, "routing": routing, "expert_stats": stats}


def new_run(st: Store, run_id: str | None = None) -> str:
    return st.create_run(
        model="tiny-moe", architecture="MixtralForCausalLM", probe="domains", n_experts=8, top_k=2,
        config={"batch_size": 4, "dtype": "float32"}, layers=LAYERS, run_id=run_id,
    )  # fmt: skip


V3_FIXTURE = Path(__file__).parent / "data" / "store-v3.duckdb.gz"
"""A store written by the v3 release (commit 1e4e6f2): the migrations' test input."""


def unpack_v3_store(folder: Path) -> Path:
    """A fresh, writable copy of :data:`V3_FIXTURE` in ``folder``."""
    path = folder / "v3.duckdb"
    with gzip.open(V3_FIXTURE, "rb") as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


@contextmanager
def schema_upto(version: int) -> Iterator[None]:
    """This code with the migrations above ``version`` unregistered: it writes a store as that release did."""
    saved = {v: schema_mod.MIGRATIONS.pop(v) for v in sorted(schema_mod.MIGRATIONS) if v > version}
    try:
        yield
    finally:
        schema_mod.MIGRATIONS.update(saved)

"""Ingest part of the capture benchmark: ``Store.write_batch`` on synthetic Arrow tables.

Rows/s and bytes per token×layer row on disk, for logits fp16 / fp32 / none, in capture-sized writes
and in coalesced writes of ≥ 4 DuckDB row groups.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_tables(args: argparse.Namespace, logits_mode: str, n_batches: int) -> list[dict[str, Any]]:
    """Arrow tables shaped like one capture batch each (routing rows ordered prompt, position, layer)."""
    import pyarrow as pa

    rng = np.random.default_rng(args.seed)
    b, t, n_layers, n_exp, k = args.batch_size, args.tokens, args.layers, args.experts, args.top_k
    out = []
    for bi in range(n_batches):
        n = b * t
        prompt_ids = np.repeat(np.arange(bi * b, (bi + 1) * b, dtype=np.int32), t)
        positions = np.tile(np.arange(t, dtype=np.int32), b)
        logits = rng.standard_normal((n * n_layers, n_exp), dtype=np.float32)
        experts = np.argsort(-logits, axis=1)[:, :k].astype(np.int16)
        top = np.take_along_axis(logits, experts.astype(np.int64), axis=1)
        weights = np.exp(top - top.max(axis=1, keepdims=True))
        weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        routing: dict[str, Any] = {
            "prompt_id": np.repeat(prompt_ids, n_layers),
            "position": np.repeat(positions, n_layers),
            "layer": np.tile(np.arange(n_layers, dtype=np.int32), n),
            "experts": _lists(experts, pa.int16()),
            "weights": _lists(weights, pa.float32()),
        }
        if logits_mode == "fp16":
            routing["logits"] = _lists(logits.astype(np.float16), pa.float16())  # as capture ships them
        elif logits_mode == "fp32":
            routing["logits"] = _lists(logits, pa.float32())
        else:
            routing["logits"] = pa.nulls(n * n_layers, pa.list_(pa.float32()))
        token_ids = rng.integers(3, 259, n, dtype=np.int32)
        out.append(
            {
                "prompts": pa.table(
                    {
                        "prompt_id": pa.array(np.arange(bi * b, (bi + 1) * b, dtype=np.int32)),
                        "text": pa.array(["x" * (t - 1)] * b),
                        "label": pa.array(["prose"] * b),
                        "n_tokens": pa.array(np.full(b, t, dtype=np.int32)),
                    }
                ),
                "tokens": pa.table(
                    {
                        "prompt_id": prompt_ids,
                        "position": positions,
                        "token_id": token_ids,
                        "token": pa.array([chr(97 + int(i) % 26) for i in token_ids]),
                        "nll": rng.random(n, dtype=np.float32) * 6,
                    }
                ),
                "routing": pa.table(routing),
            }
        )
    return out


def _lists(values: np.ndarray, value_type: Any) -> Any:
    import pyarrow as pa

    n, width = values.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=value_type))


#: DuckDB's row group size: an append of at least this many rows in one transaction is written
#: straight to the database file (no WAL, no later re-compression at checkpoint).
ROW_GROUP = 122_880


def ingest(
    args: argparse.Namespace, workdir: Path, logits_mode: str, prompts_per_write: int
) -> tuple[float, int, int, int]:
    """(seconds in write_batch, routing rows, file bytes after CHECKPOINT, rows per write)."""
    from workbench.store import Store, remove_store, store_size

    sub = argparse.Namespace(**{**vars(args), "batch_size": prompts_per_write})
    rows_per_write = prompts_per_write * args.tokens * args.layers
    n_writes = max(1, -(-args.ingest_rows // rows_per_write))
    tables = synthetic_tables(sub, logits_mode, n_writes)
    path = workdir / f"ingest-{logits_mode}.duckdb"
    remove_store(path)
    with Store(path) as store:
        layers = [
            {"layer": i, "module_path": f"model.layers.{i}.mlp", "n_experts": args.experts, "top_k": args.top_k,
             "n_shared": 0, "score_fn": "softmax"}
            for i in range(args.layers)
        ]  # fmt: skip
        run = store.create_run(
            model="synthetic", architecture="synthetic", probe="<benchmark>", n_experts=args.experts,
            top_k=args.top_k, config={"benchmark": "ingest", "logits": logits_mode}, layers=layers,
        )  # fmt: skip
        start = time.perf_counter()
        for t in tables:
            store.write_batch(run, prompts=t["prompts"], tokens=t["tokens"], routing=t["routing"])
        store.con.execute("CHECKPOINT")  # part of the cost: rows in the WAL are compressed here
        seconds = time.perf_counter() - start
        store.set_status(run, "complete")
        store.con.execute("CHECKPOINT")
    size = store_size(path)  # the file, its WAL and its routing shards
    remove_store(path)
    return seconds, n_writes * rows_per_write, size, rows_per_write


def ingest_rows(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str, str, str]]:
    """Per capture batch (what capture() writes today) for fp16/fp32/none, then coalesced writes."""
    per_prompt = args.tokens * args.layers
    # ≥ 4 DuckDB row groups per write (but not more than the whole ingest test)
    coalesced = max(args.batch_size, min(-(-4 * ROW_GROUP // per_prompt), -(-args.ingest_rows // per_prompt)))
    cases = [
        ("ingest_logits_fp16", "fp16", args.batch_size),
        ("ingest_logits_fp32", "fp32", args.batch_size),
        ("ingest_logits_none", "none", args.batch_size),
        ("ingest_logits_fp16_coalesced", "fp16", coalesced),
        ("ingest_logits_none_coalesced", "none", coalesced),
    ]
    out = []
    for name, mode, prompts_per_write in cases:
        seconds, n, size, per_write = ingest(args, workdir, mode, prompts_per_write)
        out.append(
            (
                name,
                f"{n / seconds:,.0f}",
                f"{size / n:.1f}",
                f"{n:,} rows in writes of {per_write:,} ({prompts_per_write} prompts) + tokens/prompts "
                f"tables, {seconds:.2f}s incl. final CHECKPOINT",
            )
        )
    return out

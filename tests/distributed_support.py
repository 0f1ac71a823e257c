"""Helpers for the torchrun tests (gloo on CPU): the prompts, starting a job, reading and comparing rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from workbench.store import Store

TEXTS = [
    "the experts route each token",
    "ranks split the prompts between them",
    "short",
    "a longer prompt, with more tokens in it, pads the batch",
    "gloo runs on the CPU",
    "one run in the store",
    "every row compared",
    "resume takes in what the ranks committed",
    "no prompt twice",
    "and none lost",
    "eleven",
]


def write_probe(tmp_path: Path, texts: list[str] = TEXTS) -> Path:
    probe = tmp_path / "p.jsonl"
    probe.write_text(
        "".join(json.dumps({"text": t, "label": "ab"[i % 2]}) + "\n" for i, t in enumerate(texts))
    )
    return probe


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """A standalone torchrun job of ``nproc`` CPU ranks (one thread each), its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def all_rows(db: Path, run: str) -> dict[str, pl.DataFrame]:
    with Store(db, read_only=True) as store:
        return {
            "prompts": store.prompts(run).sort("prompt_id"),
            "tokens": store.tokens(run).sort("prompt_id", "position"),
            "routing": store.routing(run).sort("prompt_id", "position", "layer"),
            "expert_stats": store.expert_stats(run).sort(pl.all()),
        }


def max_diff(a: pl.Series, b: pl.Series) -> float:
    x, y = np.asarray(a.to_list(), dtype=np.float64), np.asarray(b.to_list(), dtype=np.float64)
    return float(np.nanmax(np.abs(x - y)))


def tp_checkpoint(tmp_path: Path, model_type: str = "qwen2_moe") -> Path:
    """A tiny MoE saved as a model directory (tensor parallelism loads through from_pretrained)."""
    from workbench.models.tiny import byte_tokenizer, tiny_model

    checkpoint = tmp_path / model_type
    tiny_model(model_type).save_pretrained(checkpoint)
    byte_tokenizer().save_pretrained(checkpoint)
    return checkpoint


def assert_rows_match_within_rounding(single: Path, run_a: str, parallel: Path, run_b: str) -> None:
    """Expert ids equal one process's; floats differ only by the all-reduce's rounding (docs/capture.md)."""
    a, b = all_rows(single, run_a), all_rows(parallel, run_b)
    assert a["prompts"].drop("run_id", strict=False).equals(b["prompts"].drop("run_id", strict=False))
    assert a["tokens"]["token_id"].equals(b["tokens"]["token_id"])
    ra, rb = a["routing"], b["routing"]
    assert ra.height == rb.height > 0
    assert ra["experts"].to_list() == rb["experts"].to_list()
    assert max_diff(ra["weights"], rb["weights"]) < 1e-6
    assert max_diff(ra["logits"], rb["logits"]) < 1e-5
    assert max_diff(a["tokens"]["nll"], b["tokens"]["nll"]) < 1e-4

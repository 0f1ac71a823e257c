"""Shared fixtures: tiny models built from configs, a byte tokenizer, temp stores."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from workbench.store import Store

warnings.filterwarnings("ignore", category=FutureWarning)

# Tiny models: thread start-up costs more than the matmuls (1.4 s vs 3 ms per forward on a loaded
# 2-core machine), so tests run torch single-threaded.
torch.set_num_threads(1)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.duckdb"


@pytest.fixture
def st(db: Path) -> Iterator[Store]:
    """A writable store in a temp file, closed after the test."""
    with Store(db) as s:
        yield s


@pytest.fixture
def probe_file(tmp_path: Path) -> Path:
    import json

    rows = [
        {"text": "def f(x):\n    return x + 1", "label": "code", "pair_id": "a"},
        {"text": "The cat sat on the mat.", "label": "prose", "pair_id": "a"},
        {"text": "12 + 30 = 42", "label": "math", "split": "test", "meta": {"source": "gen"}},
        {"text": "Le chat est sur le tapis, et il dort profondément.", "label": "french"},
        {"text": "x", "label": "prose"},
    ]
    path = tmp_path / "probe.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path

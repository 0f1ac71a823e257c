"""Shared pieces of the data package: locations, the deterministic split, gzip JSONL I/O."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: The repository root (``workbench/data/common.py`` -> two levels up from the package).
REPO_ROOT = Path(__file__).resolve().parents[2]

TRAIN = "train"
HELDOUT = "heldout"
SPLITS = (TRAIN, HELDOUT)


def datasets_dir() -> Path:
    """``datasets/`` of the checkout (override with ``WORKBENCH_DATASETS_DIR``)."""
    env = os.environ.get("WORKBENCH_DATASETS_DIR")
    return Path(env) if env else REPO_ROOT / "datasets"


def corpora_dir() -> Path:
    """Where the committed corpus files live: ``datasets/corpora``."""
    return datasets_dir() / "corpora"


def probes_dir() -> Path:
    """``probes/`` of the checkout (override with ``WORKBENCH_PROBES_DIR``)."""
    env = os.environ.get("WORKBENCH_PROBES_DIR")
    return Path(env) if env else REPO_ROOT / "probes"


def unit_hash(key: str) -> float:
    """A stable number in [0, 1) for ``key`` (sha256; no PYTHONHASHSEED dependence)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str, heldout: float = 0.1) -> str:
    """``"heldout"`` for a fraction ``heldout`` of keys, else ``"train"``; decided by the key's hash.

    Identical keys always land in the same split, so a text duplicated across sources never
    leaks from train into held-out.
    """
    return HELDOUT if unit_hash("split:" + key) < heldout else TRAIN


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dumps_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=False, separators=(",", ":"))


def write_jsonl_gz(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as gzip JSONL byte-for-byte reproducibly (no name, mtime 0). Returns the row count."""
    raw = io.BytesIO()
    n = 0
    for row in rows:
        raw.write(dumps_row(row).encode("utf-8"))
        raw.write(b"\n")
        n += 1
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return n


def iter_jsonl_gz(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a gzip JSONL file; errors name the file and line."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield row


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Plain JSONL (probe files), one object per line, UTF-8, trailing newline."""
    lines = [dumps_row(row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def norm_ws(text: str) -> str:
    """Collapse all whitespace runs to one space (used to compare prompts with corpus rows)."""
    return " ".join(text.split())

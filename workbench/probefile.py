"""Probe files: labelled prompts in JSONL, CSV or Parquet.

Columns: ``text`` and ``label`` (required), ``pair_id``, ``split`` and ``meta`` (optional; ``meta``
is any JSON object). ``prompt_id`` is the 0-based row index in the file, so ids are stable across
runs of the same file. Errors name the file and the line (1-based, as an editor shows it).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED = ("text", "label")
OPTIONAL = ("pair_id", "split", "meta")


class ProbeFileError(ValueError):
    """A probe file is missing, malformed or empty."""


@dataclass(frozen=True)
class Prompt:
    """One labelled prompt; ``prompt_id`` is its 0-based row in the probe file."""

    prompt_id: int
    text: str
    label: str
    pair_id: str | None = None
    split: str | None = None
    meta: dict[str, Any] | None = None


def _prompt(row: dict[str, Any], index: int, where: str) -> Prompt:
    missing = [c for c in REQUIRED if row.get(c) is None or row.get(c) == ""]
    if missing:
        raise ProbeFileError(
            f"{where}: missing required field(s) {', '.join(missing)}; each row needs text and label"
        )
    text = row["text"]
    if not isinstance(text, str):
        raise ProbeFileError(f"{where}: `text` must be a string, got {type(text).__name__}")
    meta = row.get("meta")
    if isinstance(meta, str) and meta.strip():
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            raise ProbeFileError(f"{where}: `meta` is not valid JSON ({exc.msg})") from exc
    if meta is not None and meta != "" and not isinstance(meta, dict):
        raise ProbeFileError(f"{where}: `meta` must be a JSON object, got {type(meta).__name__}")
    pair = row.get("pair_id")
    split = row.get("split")
    return Prompt(
        prompt_id=index,
        text=text,
        label=str(row["label"]),
        pair_id=None if pair in (None, "") else str(pair),
        split=None if split in (None, "") else str(split),
        meta=meta or None,
    )


def _jsonl(path: Path) -> Iterator[Prompt]:
    index = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProbeFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise ProbeFileError(f"{where}: each line must be a JSON object with text and label")
            yield _prompt(row, index, where)
            index += 1


def _csv(path: Path) -> Iterator[Prompt]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ProbeFileError(f"{path}:1: header lacks column(s) {', '.join(missing)} (found {header})")
        for index, row in enumerate(reader):
            yield _prompt(dict(row), index, f"{path}:{reader.line_num}")


def _parquet(path: Path) -> Iterator[Prompt]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise ProbeFileError(f"{path}: not a readable Parquet file ({exc})") from exc
    names = pf.schema_arrow.names
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ProbeFileError(f"{path}: lacks column(s) {', '.join(missing)} (found {names})")
    cols = [c for c in (*REQUIRED, *OPTIONAL) if c in names]
    index = 0
    for batch in pf.iter_batches(columns=cols, batch_size=4096):
        for row in batch.to_pylist():
            yield _prompt(row, index, f"{path}: row {index + 1}")
            index += 1


_READERS = {".jsonl": _jsonl, ".ndjson": _jsonl, ".json": _jsonl, ".csv": _csv, ".parquet": _parquet}


def iter_probe_file(path: str | Path) -> Iterator[Prompt]:
    """Stream the prompts of a probe file, validating each row as it is read."""
    path = Path(path)
    if not path.exists():
        raise ProbeFileError(f"{path}: no such probe file")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ProbeFileError(f"{path}: unknown probe format {path.suffix!r}; use .jsonl, .csv or .parquet")
    empty = True
    for prompt in reader(path):
        empty = False
        yield prompt
    if empty:
        raise ProbeFileError(f"{path}: the probe file has no prompts; add rows with text and label")


def read_probe_file(path: str | Path) -> list[Prompt]:
    """All prompts of a probe file (validated)."""
    return list(iter_probe_file(path))

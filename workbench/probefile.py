"""Probe files: labelled prompts in JSONL, CSV or Parquet.

Columns: ``text`` and ``label`` (required), ``pair_id``, ``split`` and ``meta`` (optional; ``meta``
is any JSON object). ``prompt_id`` is the 0-based row index in the file, so ids are stable across
runs of the same file. Errors name the file and the line (1-based, as an editor shows it).

Text files are UTF-8 (a leading byte-order mark is accepted and dropped); a line that is not
UTF-8, or a field holding a lone surrogate (a ``"\\ud800"`` escape in JSON, which no encoder can
write), is refused with its line. :func:`scan_probe_file` reads a whole file this way before a
capture starts, so a bad row 10,000 lines down stops nothing half-way.

Each prompt's *record hash* (:func:`record_hash`) is the SHA-256 of its text, label, pair_id,
split and meta, and a file's *content digest* (:class:`ProbeDigest`) is the SHA-256 over its
prompts' ids and record hashes in order. Both describe the prompts as read, not the bytes: JSON
spacing, key order, a BOM or CRLF line ends leave them unchanged; changing, adding, removing or
reordering a prompt changes the digest. ``resume`` compares them (capture/integrity.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

REQUIRED = ("text", "label")
OPTIONAL = ("pair_id", "split", "meta")
MAX_META_DEPTH = 64
"""How deeply a prompt's ``meta`` object may nest lists and objects (hashing and storing it recurse)."""
_CSV_FIELD_LIMIT = 2**31 - 1
"""The csv module's field limit while a probe file is read: a prompt's text may be megabytes (it is
truncated to the model's context at capture), not the csv default of 128 KiB."""


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


def _unicode_problem(value: Any) -> str | None:
    """Why ``value`` (a str, or JSON-like data holding strings) cannot be written as UTF-8; else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            return f"a lone surrogate U+{ord(bad):04X} at character {exc.start + 1}"
        return None
    if isinstance(value, dict):
        items: Iterable[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return None
    for item in items:
        problem = _unicode_problem(item)
        if problem is not None:
            return problem
    return None


def check_prompt(prompt: Prompt, where: str | None = None) -> Prompt:
    """``prompt`` if every field is valid Unicode, else a :class:`ProbeFileError` naming the field.

    Prompts built in Python bypass the file readers; capture checks them here so a lone
    surrogate is a clear error, not a tokenizer's ``TypeError`` mid-run.
    """
    where = where or f"prompt {prompt.prompt_id}"
    for name in ("text", "label", "pair_id", "split", "meta"):
        problem = _unicode_problem(getattr(prompt, name))
        if problem is not None:
            raise ProbeFileError(
                f"{where}: `{name}` holds {problem}, which is not valid Unicode; fix or remove that escape"
            )
    return prompt


def record_hash(prompt: Prompt) -> str:
    """SHA-256 hex of a prompt's source record: text, label, pair_id, split and meta (not its id).

    The record is hashed as compact JSON with sorted keys, so the same prompt read from JSONL,
    CSV, Parquet or the store's ``prompts`` table hashes the same.
    """
    record = [prompt.text, prompt.label, prompt.pair_id, prompt.split, prompt.meta]
    body = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class DigestBuilder:
    """Accumulates a content digest over prompts in order (module docstring)."""

    VERSION = "probe-records-v1"

    def __init__(self) -> None:
        self._hash = hashlib.sha256(f"{self.VERSION}\n".encode())
        self.n_prompts = 0

    def add(self, prompt: Prompt) -> str:
        """Add ``prompt``; returns its record hash."""
        rec = record_hash(prompt)
        self._hash.update(f"{prompt.prompt_id}:{rec}\n".encode())
        self.n_prompts += 1
        return rec

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True)
class ProbeDigest:
    """What a run records about its probe file: where it was, how many prompts, their digest."""

    path: str  # absolute
    n_prompts: int
    digest: str
    method: str = DigestBuilder.VERSION

    def as_config(self) -> dict[str, Any]:
        return {"path": self.path, "n_prompts": self.n_prompts, "digest": self.digest, "method": self.method}


def digest_of(prompts: Iterable[Prompt], path: str = "<python>") -> ProbeDigest:
    """The content digest of ``prompts`` (each checked with :func:`check_prompt`)."""
    builder = DigestBuilder()
    for prompt in prompts:
        builder.add(check_prompt(prompt))
    return ProbeDigest(path=path, n_prompts=builder.n_prompts, digest=builder.hexdigest())


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
    if isinstance(meta, dict) and _depth(meta) > MAX_META_DEPTH:
        raise ProbeFileError(f"{where}: `meta` nests deeper than {MAX_META_DEPTH} levels; flatten it")
    for name in ("label", "pair_id", "split"):
        if isinstance(row.get(name), (dict, list)):
            raise ProbeFileError(
                f"{where}: `{name}` must be a string or a number, got {type(row[name]).__name__}"
            )
    pair = row.get("pair_id")
    split = row.get("split")
    prompt = Prompt(
        prompt_id=index,
        text=text,
        label=str(row["label"]),
        pair_id=None if pair in (None, "") else str(pair),
        split=None if split in (None, "") else str(split),
        meta=meta or None,
    )
    return check_prompt(prompt, where)


def _decode(raw: bytes, where: str, first: bool) -> str:
    """One line of a text probe file as str; a BOM on the first line is dropped."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeFileError(
            f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "save the file as UTF-8"
        ) from None


def _json_line(line: str, where: str) -> Any:
    """One JSON value; every way ``json.loads`` can refuse it becomes a :class:`ProbeFileError`.

    Besides malformed JSON that is a number of more than 4,300 digits (Python's int limit raises
    a plain ``ValueError``) and nesting deep enough to exhaust the recursion limit.
    """
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProbeFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # an integer literal longer than sys.get_int_max_str_digits()
        reason = str(exc).split(":")[0]
        raise ProbeFileError(f"{where}: not valid JSON ({reason}); write long numbers as strings") from None
    except RecursionError:
        raise ProbeFileError(f"{where}: not valid JSON (nested too deeply); flatten the line") from None


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (0 for a scalar); iterative, so any depth is safe."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _check_utf8(path: Path) -> None:
    """Refuse a text file that is not UTF-8, naming the first bad line (before csv reads it)."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            _decode(raw, f"{path}:{lineno}", lineno == 1)


def _jsonl(path: Path) -> Iterator[Prompt]:
    index = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            line = _decode(raw, where, lineno == 1)
            if not line.strip():
                continue
            row = _json_line(line, where)
            if not isinstance(row, dict):
                raise ProbeFileError(f"{where}: each line must be a JSON object with text and label")
            yield _prompt(row, index, where)
            index += 1


def _csv(path: Path) -> Iterator[Prompt]:
    _check_utf8(path)
    limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader: Any = None
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise ProbeFileError(
                    f"{path}:1: header lacks column(s) {', '.join(missing)} (found {header})"
                )
            for index, row in enumerate(reader):
                yield _prompt(dict(row), index, f"{path}:{reader.line_num}")
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 1
        raise ProbeFileError(f"{path}:{line}: not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(limit)


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
    batches = pf.iter_batches(columns=cols, batch_size=4096)
    while True:
        try:
            batch = next(batches, None)
            rows = [] if batch is None else batch.to_pylist()
        except Exception as exc:  # a damaged page or invalid UTF-8: pyarrow raises several types
            raise ProbeFileError(f"{path}: unreadable near row {index + 1} ({exc})") from exc
        if batch is None:
            return
        for row in rows:
            yield _prompt(row, index, f"{path}: row {index + 1}")
            index += 1


_READERS = {".jsonl": _jsonl, ".ndjson": _jsonl, ".json": _jsonl, ".csv": _csv, ".parquet": _parquet}


def _usable_path(path: str | Path) -> Path:
    """``path`` as a Path; a NUL character (which no file name can hold) is refused by name."""
    if "\x00" in str(path):
        raise ProbeFileError(
            f"{str(path)!r}: a file name cannot hold a NUL character; check the --probe path"
        )
    return Path(path)


def iter_probe_file(path: str | Path) -> Iterator[Prompt]:
    """Stream the prompts of a probe file, validating each row as it is read."""
    path = _usable_path(path)
    if not path.exists():
        raise ProbeFileError(f"{path}: no such probe file")
    if path.is_dir():
        raise ProbeFileError(f"{path}: is a directory; give a probe file (.jsonl, .csv or .parquet)")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ProbeFileError(f"{path}: unknown probe format {path.suffix!r}; use .jsonl, .csv or .parquet")
    empty = True
    try:
        for prompt in reader(path):
            empty = False
            yield prompt
    except OSError as exc:  # unreadable (permissions), or gone mid-read
        raise ProbeFileError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if empty:
        raise ProbeFileError(f"{path}: the probe file has no prompts; add rows with text and label")


UNLABELLED = "unlabelled"
"""The label of a prompt passed from Python as a plain string, or as a dict without ``label``."""

_PROMPT_KEYS = ("prompt_id", *REQUIRED, *OPTIONAL)

PromptLike = Prompt | str | Mapping[str, Any]
"""A prompt passed from Python: a :class:`Prompt`, its text, or a dict of probe-file fields."""


def as_prompts(items: Iterable[PromptLike]) -> Iterator[Prompt]:
    """Prompts passed from Python (:class:`Prompt` objects, plain strings or dicts) as :class:`Prompt` objects.

    A string is a prompt's text, labelled ``"unlabelled"``; a dict holds the probe-file fields
    (``text``, and optionally ``label``, ``pair_id``, ``split``, ``meta``, ``prompt_id``), validated as a
    file row is. A prompt without an id gets its 0-based position in ``items``, as a file's row does.
    Anything else, or a dict with a key outside those fields, is a :class:`ProbeFileError` naming it.
    Lazy, so a generator still streams.
    """
    for index, item in enumerate(items):
        where = f"prompt {index} (from Python)"
        if isinstance(item, Prompt):
            yield item
        elif isinstance(item, str):
            yield check_prompt(Prompt(index, item, UNLABELLED), where)
        elif isinstance(item, Mapping):
            yield _prompt_of_mapping(item, index, where)
        else:
            raise ProbeFileError(
                f"{where}: a prompt is a string, a dict with `text` (and `label` ...) or a Prompt, "
                f"not {type(item).__name__}"
            )


def _prompt_of_mapping(item: Mapping[str, Any], index: int, where: str) -> Prompt:
    unknown = sorted(str(k) for k in item if k not in _PROMPT_KEYS)
    if unknown:
        raise ProbeFileError(
            f"{where}: unknown field(s) {', '.join(unknown)}; a prompt has {', '.join(_PROMPT_KEYS)}"
        )
    prompt_id = item.get("prompt_id", index)
    if isinstance(prompt_id, bool) or not isinstance(prompt_id, int) or prompt_id < 0:
        raise ProbeFileError(f"{where}: `prompt_id` must be an integer >= 0, got {prompt_id!r}")
    row = {"label": UNLABELLED, **{k: v for k, v in item.items() if k != "prompt_id"}}
    return _prompt(row, prompt_id, where)


def read_probe_file(path: str | Path) -> list[Prompt]:
    """All prompts of a probe file (validated)."""
    return list(iter_probe_file(path))


def scan_probe_file(path: str | Path) -> ProbeDigest:
    """Read and validate the whole file (every row, before a run starts); its :class:`ProbeDigest`.

    Remembered per (absolute path, inode, size, modification time), so capture's check and the
    run's record read the file once (resume never relies on this: it reads the file afresh). The path is resolved to an absolute one (a resume from another
    working directory then reads the same file).
    """
    resolved = _usable_path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        stat = None
    if stat is None or not resolved.is_file():
        return _scan(str(resolved), (-1, -1, -1))  # raises "no such probe file" / "is a directory"
    return _scan(str(resolved), (stat.st_ino, stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=8)
def _scan(path: str, version: tuple[int, int, int]) -> ProbeDigest:
    del version  # the cache key: a changed file is read again
    builder = DigestBuilder()
    for prompt in iter_probe_file(path):
        builder.add(prompt)
    return ProbeDigest(path=path, n_prompts=builder.n_prompts, digest=builder.hexdigest())

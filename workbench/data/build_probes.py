"""Rebuild the probe suites in ``probes/`` from the committed corpora (held-out rows only).

    python -m workbench.data.build_probes

Writes ``domains.jsonl``, ``refusal.jsonl``, ``tasks.jsonl``, ``vocab.jsonl`` and ``suites.yaml``;
leaves ``example.jsonl`` alone. Deterministic: prompts are picked by the hash of their text.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from workbench.data.common import HELDOUT, corpora_dir, norm_ws, probes_dir, unit_hash, write_jsonl
from workbench.data.corpus import read_corpus_file
from workbench.data.probe_tasks import bracket_items, vocab_items

PER_DOMAIN = 120
PER_TASK = 150
MIN_CHARS, MAX_CHARS = 20, 200
DOMAINS = {  # label -> (corpus file, how many)
    "prose": (("prose_shakespeare.jsonl.gz", 60), ("prose_fortunes.jsonl.gz", 60)),
    "code": (("code_stdlib.jsonl.gz", PER_DOMAIN),),
    "math": (("math_generated.jsonl.gz", PER_DOMAIN),),
    "german": (("german_fortunes.jsonl.gz", PER_DOMAIN),),
    "spanish": (("spanish_fortunes.jsonl.gz", PER_DOMAIN),),
    "italian": (("italian_fortunes.jsonl.gz", PER_DOMAIN),),
}


def excerpt(text: str, code: bool = False) -> str | None:
    """The text cut to at most ``MAX_CHARS`` at a line (code) or word boundary; None if too short."""
    if not code:
        text = norm_ws(text)
    if len(text) > MAX_CHARS:
        cut = text[:MAX_CHARS]
        at = cut.rfind("\n") if code else -1
        if at < MIN_CHARS:
            at = cut.rfind(" ")
        text = cut[: max(at, 0)].rstrip()
    return text if len(text) >= MIN_CHARS else None


def _pick(rows: list[dict[str, Any]], n: int, salt: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: unit_hash(f"{salt}:{r['text']}"))[:n]


class TrainIndex:
    """Whitespace-normalised training texts, to reject a prompt that begins any training row."""

    def __init__(self, files: list[Path]) -> None:
        self.by_head: dict[str, list[str]] = defaultdict(list)
        for path in files:
            for row in read_corpus_file(path):
                if row["split"] != HELDOUT:
                    text = norm_ws(row["text"])
                    self.by_head[text[:16]].append(text)

    def leaks(self, prompt: str) -> bool:
        p = norm_ws(prompt)
        return any(t.startswith(p) for t in self.by_head.get(p[:16], ()))


def domains(corpora: Path) -> list[dict[str, Any]]:
    out = []
    train = TrainIndex(sorted(corpora.glob("*.jsonl.gz")))
    for label, parts in DOMAINS.items():
        for file, n in parts:
            cands: dict[str, dict[str, Any]] = {}
            for row in read_corpus_file(corpora / file):
                if row["split"] != HELDOUT:
                    continue
                text = excerpt(row["text"], code=label == "code")
                if text and text not in cands and not train.leaks(text):
                    cands[text] = {
                        "text": text,
                        "source": row["source"],
                        "kind": row.get("meta", {}).get("kind"),
                    }
            picked = _pick(list(cands.values()), n, f"domains:{label}")
            if len(picked) < n:
                raise SystemExit(f"{file}: only {len(picked)} held-out prompts for {label}, need {n}")
            for c in picked:
                meta = {"source": c["source"], "corpus": file}
                if c["kind"]:
                    meta["kind"] = c["kind"]
                out.append({"text": c["text"], "label": label, "split": HELDOUT, "meta": meta})
    return out


def refusal(corpora: Path) -> list[dict[str, Any]]:
    pairs: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for file in ("harmful_requests.jsonl.gz", "benign_requests.jsonl.gz"):
        for row in read_corpus_file(corpora / file):
            if row["split"] == HELDOUT:
                pairs[row["pair_id"]][row["domain"]] = row
    out = []
    for pair_id in sorted(pairs):
        for label in ("harmful", "benign"):
            row = pairs[pair_id][label]
            meta = {"source": row["source"], **row.get("meta", {})}
            out.append(
                {"text": row["text"], "label": label, "pair_id": pair_id, "split": HELDOUT, "meta": meta}
            )
    return out


_ARITH = re.compile(r"^(\d+)([-+*])(\d+)$")


def arithmetic(corpora: Path, n: int = PER_TASK) -> list[dict[str, Any]]:
    """``"17 + 25 ="`` -> gold ``" 42"``, from problems whose every surface form is held out."""
    problems = set()
    for row in read_corpus_file(corpora / "math_generated.jsonl.gz"):
        m = _ARITH.match(row.get("meta", {}).get("problem", ""))
        if row["split"] == HELDOUT and m:
            problems.add((int(m.group(1)), m.group(2), int(m.group(3))))
    ordered = sorted(problems, key=lambda p: unit_hash(f"arith:{p}"))[:n]
    if len(ordered) < n:
        raise SystemExit(f"only {len(ordered)} held-out arithmetic problems, need {n}")
    out = []
    for a, op, b in ordered:
        c = a + b if op == "+" else a - b if op == "-" else a * b
        meta = {"task": "arithmetic", "gold": f" {c}", "op": op}
        out.append({"text": f"{a} {op} {b} =", "label": "arithmetic", "split": HELDOUT, "meta": meta})
    return out


MANIFEST: dict[str, Any] = {
    "version": 1,
    "suites": [
        {
            "name": "domains",
            "file": "domains.jsonl",
            "description": "Held-out excerpts (20-200 chars) of each training domain: English prose "
            "(Shakespeare, fortunes), Python stdlib code, arithmetic and word problems, German, "
            "Spanish and Italian fortunes.",
            "labels": list(DOMAINS),
            "min_per_label": 100,
            "heldout": True,
            "max_chars": MAX_CHARS,
            "metric": "routing_probe_accuracy",
        },
        {
            "name": "refusal",
            "file": "refusal.jsonl",
            "description": "Held-out harmful requests (AdvBench, HarmBench, Do-Not-Answer) and their "
            "matched benign twins (same frame, topic made harmless, same word count); pair_id links them.",
            "labels": ["harmful", "benign"],
            "paired": True,
            "heldout": True,
            "metric": "refusal_rate",
        },
        {
            "name": "tasks",
            "file": "tasks.jsonl",
            "description": "Tasks with a gold answer in meta.gold, for circuit comparison. brackets: "
            "close the innermost open bracket or quote of a Python line (exact_match_next_char: the "
            "greedy continuation starts with the gold character). arithmetic: the answer of 'a op b =' "
            "(exact_match_answer: the greedy continuation starts with the gold ' 42', not followed by "
            "a digit).",
            "labels": ["brackets", "arithmetic"],
            "min_per_label": 100,
            "gold": True,
            "metric": {"brackets": "exact_match_next_char", "arithmetic": "exact_match_answer"},
        },
        {
            "name": "vocab",
            "file": "vocab.jsonl",
            "description": "Single-token-ish prompts: letters, digits, punctuation, common English, "
            "Python, German, Spanish and Italian words.",
            "labels": list(dict.fromkeys(r["label"] for r in vocab_items())),
            "max_chars": 12,
        },
        {
            "name": "example",
            "file": "example.jsonl",
            "description": "Twelve hand-written prompts for quick smoke tests.",
            "labels": ["prose", "code", "math", "german", "french", "spanish"],
        },
    ],
}

HEADER = "# Probe suites. Generated by `python -m workbench.data.build_probes`; validated by\n# `workbench.data.suites.validate_all()` (tests/test_probes.py).\n"


def build(corpora: Path, out: Path) -> dict[str, int]:
    files = {
        "domains.jsonl": domains(corpora),
        "refusal.jsonl": refusal(corpora),
        "tasks.jsonl": bracket_items(PER_TASK) + arithmetic(corpora),
        "vocab.jsonl": vocab_items(),
    }
    counts = {name: write_jsonl(out / name, rows) for name, rows in files.items()}
    text = yaml.safe_dump(MANIFEST, sort_keys=False, allow_unicode=True, width=100)
    (out / "suites.yaml").write_text(HEADER + text, encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", type=Path, default=corpora_dir())
    ap.add_argument("--out", type=Path, default=probes_dir())
    args = ap.parse_args(argv)
    for name, n in build(args.corpora, args.out).items():
        print(f"{name:16s} {n:5d} prompts")


if __name__ == "__main__":
    main()

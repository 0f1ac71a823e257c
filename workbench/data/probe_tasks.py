"""Generated probe items: bracket/quote closing prompts and single-token vocabulary prompts."""

from __future__ import annotations

import random
from typing import Any

FUNCS = ("print", "len", "sum", "max", "min", "sorted", "list", "str", "int", "abs", "round", "set")
NAMES = ("x", "y", "n", "total", "count", "items", "values", "name", "data", "result")
WORDS = ("hello", "world", "spam", "eggs", "apple", "blue", "ok", "done", "name", "value", "text")


def _atom(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return str(rng.randint(0, 99))
    if r < 0.7:
        return rng.choice(NAMES)
    q = rng.choice("\"'")
    return f"{q}{rng.choice(WORDS)}{q}"


def _expr(rng: random.Random, depth: int) -> str:
    if depth == 0:
        return _atom(rng)
    kind = rng.choice(("call", "call", "list", "paren", "dict", "tuple"))
    inner = _expr(rng, depth - 1)
    if kind == "call":
        return f"{rng.choice(FUNCS)}({inner})"
    if kind == "list":
        return "[" + ", ".join([_atom(rng) for _ in range(rng.randint(0, 2))] + [inner]) + "]"
    if kind == "paren":
        return f"({_atom(rng)} {rng.choice('+-*')} {inner})"
    if kind == "dict":
        q = rng.choice("\"'")
        return f"{{{q}{rng.choice(WORDS)}{q}: {inner}}}"
    return f"({_atom(rng)}, {inner})"


def _trailing_closers(s: str) -> int:
    n = 0
    while n < len(s) and s[len(s) - 1 - n] in ")]}\"'":
        n += 1
    return n


def bracket_item(rng: random.Random) -> tuple[str, str, str]:
    """``(prompt, gold next character, full completion)`` for a Python line cut before its closers."""
    if rng.random() < 0.25:  # a string literal left open: the gold is its quote
        q, w = rng.choice("\"'"), " ".join(rng.sample(WORDS, k=rng.randint(1, 3)))
        line = rng.choice(("print({s})", "{v} = {s}", "{v}.append({s})", "{v} = len({s})")).format(
            s=f"{q}{w}{q}", v=rng.choice(NAMES)
        )
        k = _trailing_closers(line)
        return line[:-k], line[-k], line[-k:]
    while True:
        expr = _expr(rng, rng.randint(1, 3))
        line = rng.choice(("print({e})", "{v} = {e}", "return {e}", "{v}.append({e})")).format(
            e=expr, v=rng.choice(NAMES)
        )
        trail = _trailing_closers(line)
        if trail:
            break
    k = rng.randint(1, trail)
    return line[:-k], line[-k], line[-k:]


def bracket_items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(f"brackets:{seed}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(out) < n:
        prompt, gold, completion = bracket_item(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        kind = "quote" if gold in "\"'" else "bracket"
        meta = {"task": "brackets", "gold": gold, "completion": completion, "kind": kind}
        out.append({"text": prompt, "label": "brackets", "split": "heldout", "meta": meta})
    return out


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


VOCAB: dict[str, tuple[str, ...]] = {
    "letter": tuple("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    "digit": (*"0123456789", "10", "42", "100", "2024"),
    "punct": tuple(".,;:!?-()[]{}\"'/\\=+*#@%&_<>|~`^$"),
    "word_en": _words(
        "the of and to in is was he it for on are as with his they at be this from have or by one "
        "had not but what all were when we there can an your which their said if do will each about "
        "how up out them then she many some so these would other into has more her two like him see "
        "time could no make than first been its who now people my made over did down only way find "
        "use may water long little very after words called just where most know king love night "
        "heart death"
    ),
    "word_code": _words(
        "def class return import from if elif else for while try except finally with as lambda yield "
        "None True False self print range len dict list str int pass break continue raise assert "
        "global async await"
    ),
    "word_de": _words(
        "und der die das nicht ist ich ein eine zu mit sich auf für wir sie Mann Frau Haus Zeit Leben "
        "Welt Liebe Arbeit immer"
    ),
    "word_es": _words(
        "el la de que y en los se del las por un una con no es para como más pero amor vida tiempo "
        "mundo casa siempre"
    ),
    "word_it": _words(
        "il di che e la per un non una sono con si mi ma come anche tutto vita amore tempo mondo casa "
        "sempre uomo donna"
    ),
}


def vocab_items() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for label, words in VOCAB.items():
        for w in words:
            if w in seen:  # one label per string ("a" is a letter, not an English word)
                continue
            seen.add(w)
            out.append({"text": w, "label": label})
    return out

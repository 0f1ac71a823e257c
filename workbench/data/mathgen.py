"""Seeded arithmetic and simple word problems.

Each problem is generated in several surface forms; every form of one problem shares a ``key``
(``"17+25"``), so all of them fall into the same train/held-out split.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

OPS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}


@dataclass(frozen=True)
class Problem:
    text: str  # question and answer
    question: str
    answer: str
    key: str  # all surface forms of one problem share it
    kind: str


def _ab(rng: random.Random, op: str) -> tuple[int, int, int]:
    if op == "+":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return a, b, a + b
    if op == "-":
        a = rng.randint(0, 99)
        b = rng.randint(0, a)
        return a, b, a - b
    if op == "*":
        a, b = rng.randint(0, 12), rng.randint(0, 12)
        return a, b, a * b
    b, c = rng.randint(1, 12), rng.randint(0, 12)
    return b * c, b, c


def arithmetic(rng: random.Random) -> Iterator[Problem]:
    op = rng.choice("++--*/")
    a, b, c = _ab(rng, op)
    sym = {"*": "×", "/": "÷"}.get(op, op)
    key = f"{a}{op}{b}"
    forms = [
        (f"{a} {op} {b} =", f" {c}"),
        (f"What is {a} {OPS[op]} {b}?", f" {c}"),
        (f"{a} {sym} {b} =", f" {c}"),
        (f"Compute {a} {op} {b}. Answer:", f" {c}"),
    ]
    for q, ans in rng.sample(forms, k=rng.randint(1, 2)):
        yield Problem(q + ans, q, ans.strip(), key, "arithmetic")


NAMES = (
    "Tom", "Anna", "Ravi", "Mei", "Lucas", "Fatima", "Olga", "Kofi", "Sara", "Diego", "Hana", "Ben",
    "Amara", "Jonas", "Lina", "Omar", "Priya", "Noah", "Yuki", "Elena",
)  # fmt: skip
THINGS = (
    "apples", "pencils", "marbles", "stickers", "books", "cookies", "stamps", "shells", "coins",
    "balloons", "cards", "oranges", "eggs", "buttons", "flowers", "toy cars",
)  # fmt: skip

WORD = (
    ("{n} has {a} {t} and buys {b} more. How many {t} does {n} have now?", "+"),
    ("{n} had {a} {t} and found {b} more. How many {t} does {n} have?", "+"),
    ("There are {a} {t} in a box and {b} {t} on the table. How many {t} are there in all?", "+"),
    ("{n} had {a} {t} and gave {b} to a friend. How many {t} are left?", "-"),
    ("{n} picked {a} {t} and ate {b} of them. How many {t} are left?", "-"),
    ("A shelf holds {a} {t}. {n} takes away {b}. How many {t} remain on the shelf?", "-"),
    ("{n} has {a} bags with {b} {t} in each bag. How many {t} does {n} have?", "*"),
    ("Each of {a} children brings {b} {t}. How many {t} do they bring altogether?", "*"),
    ("{n} shares {a} {t} equally among {b} friends. How many {t} does each friend get?", "/"),
)


def word_problem(rng: random.Random) -> Problem:
    template, op = rng.choice(WORD)
    a, b, c = _ab(rng, op)
    if op == "*":
        a, b = max(a, 2), max(b, 2)
        c = a * b
    if op == "/" and b == 1:
        b, a = 2, 2 * c
    q = template.format(n=rng.choice(NAMES), t=rng.choice(THINGS), a=a, b=b)
    return Problem(f"{q} {c}", q, str(c), q, "word")


def generate(n_arithmetic: int = 12000, n_word: int = 6000, seed: int = 0) -> list[Problem]:
    """Deterministic problems (duplicates removed, first occurrence kept)."""
    rng = random.Random(f"math:{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    draws = 0
    while draws < n_arithmetic:
        draws += 1
        for p in arithmetic(rng):
            if p.text not in seen:
                seen.add(p.text)
                out.append(p)
    for _ in range(n_word):
        p = word_problem(rng)
        if p.text not in seen:
            seen.add(p.text)
            out.append(p)
    return out

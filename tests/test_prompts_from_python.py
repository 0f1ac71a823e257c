"""Prompts passed from Python: plain strings, dicts and Prompt objects become Prompts (probefile.as_prompts)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from workbench.probefile import UNLABELLED, ProbeFileError, Prompt, as_prompts
from workbench.reports.build import run_id_of

pytestmark = pytest.mark.unit


def test_strings_dicts_and_prompts_become_prompts() -> None:
    given: list[Any] = [
        "def f(x):",
        {"text": "2 + 2 =", "label": "math", "meta": {"source": "me"}},
        {"text": "hola", "prompt_id": 7, "pair_id": 3},
        Prompt(9, "kept as it is", "prose"),
    ]
    assert list(as_prompts(given)) == [
        Prompt(0, "def f(x):", UNLABELLED),
        Prompt(1, "2 + 2 =", "math", meta={"source": "me"}),
        Prompt(7, "hola", UNLABELLED, pair_id="3"),
        Prompt(9, "kept as it is", "prose"),
    ]


def test_a_generator_streams() -> None:
    def endless() -> Any:
        n = 0
        while True:
            yield f"prompt {n}"
            n += 1

    stream = as_prompts(endless())
    assert [next(stream).text for _ in range(3)] == ["prompt 0", "prompt 1", "prompt 2"]


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (42, "not int"),
        ({"txt": "typo"}, "unknown field(s) txt"),
        ({"label": "math"}, "missing required field(s) text"),
        ({"text": "x", "prompt_id": -1}, "`prompt_id` must be an integer >= 0"),
        ({"text": "x", "prompt_id": "3"}, "`prompt_id` must be an integer >= 0"),
        ({"text": "x", "label": ""}, "missing required field(s) label"),
        ("\ud800", "not valid Unicode"),
    ],
)
def test_bad_prompts_are_named(item: Any, says: str) -> None:
    with pytest.raises(ProbeFileError, match=re.escape("prompt 1 (from Python)")) as caught:
        list(as_prompts(["fine", item]))
    assert says in str(caught.value)


def test_run_id_of_takes_an_id_or_a_run_handle() -> None:
    class Handle:
        id = "run-1"

    assert run_id_of("run-2") == "run-2"
    assert run_id_of(Handle()) == "run-1"
    with pytest.raises(ValueError, match=re.escape("expected a run id or a run (db.run(id)), got int")):
        run_id_of(3)  # type: ignore[arg-type]

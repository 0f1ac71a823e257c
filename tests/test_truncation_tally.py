"""Truncation warnings take memory independent of how many prompts are truncated (issue 15 item 6).

The CLI kept every caught warning (about 425 bytes per truncated prompt) and, under Python's
default filter, the warnings registry kept one entry per message (about 270 bytes): each message
names its prompt, so both grew with the run.
"""

from __future__ import annotations

import warnings

import pytest

from workbench.capture import batching
from workbench.capture.batching import PromptTooLongWarning, TruncationTally, batches
from workbench.models.tiny import byte_tokenizer
from workbench.probefile import Prompt

pytestmark = pytest.mark.unit

PROMPTS = [Prompt(prompt_id=i, text=f"prompt {i} is longer than four tokens", label="a") for i in range(25)]


def _batch_all() -> None:
    for _ in batches(PROMPTS, byte_tokenizer(), batch_size=4, max_length=4, padding_side="right"):
        pass


def test_the_tally_counts_every_truncation_and_keeps_ten() -> None:
    with TruncationTally() as tally:
        _batch_all()
        warnings.warn("not a truncation", UserWarning, stacklevel=1)  # dropped, as the CLI always did
    assert tally.count == 25
    assert [w.prompt_id for w in tally.first] == list(range(10))
    assert tally.summary() == (
        "25 prompt(s) truncated: prompt_id 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 15 more (first: prompt 0 has 36 "
        "tokens; truncated to --max-length (4 tokens))"
    )
    with TruncationTally() as none:
        pass
    assert none.summary() is None


def test_truncation_warnings_leave_nothing_in_the_warnings_registry() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a library user gets: each distinct message shown once
        _batch_all()
        registry = dict(getattr(batching, "__warningregistry__", {}))
    assert len([w for w in caught if issubclass(w.category, PromptTooLongWarning)]) == 25
    assert caught[0].filename == batching.__file__  # attributed to batches(), make_batch's caller
    assert not [key for key in registry if isinstance(key, tuple) and "truncated" in str(key[0])]

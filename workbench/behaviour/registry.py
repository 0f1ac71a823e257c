"""Behaviours an intervention is meant to change, and how to score them (docs/methods.md §8).

A :class:`Behaviour` says how a request is asked (``ask``), how a greedy continuation is
judged (``judge``: True when the behaviour shows), and which first answer tokens express it
(``yes``) or its alternative (``no``) — the latter give the *behaviour margin* used by causal
resonance (docs/methods.md §5): ``log p(yes₀) − log p(no₀)`` at the position where the answer starts.

The first behaviour is refusal on tiny-ref's chat format, judged by the transparent pattern
scorer :mod:`workbench.behaviour.judges` (its accuracy on labelled examples is measured in
tests/test_interventions_effects.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workbench.behaviour import chat
from workbench.behaviour.judges import is_compliance, is_refusal

__all__ = ["BEHAVIOURS", "REFUSAL", "REFUSAL_CHATML", "Behaviour", "get_behaviour"]


@dataclass(frozen=True)
class Behaviour:
    """How to elicit, judge and measure one behaviour."""

    name: str
    ask: Callable[[str], str]
    judge: Callable[[str], bool]
    yes: str
    no: str
    max_new_tokens: int = 12
    description: str = ""
    #: judges the alternative answer (True when the continuation is the *other* behaviour, e.g. a
    #: compliant answer instead of a refusal); tells "the behaviour went" from "the model broke"
    alternative: Callable[[str], bool] | None = None


REFUSAL = Behaviour(
    name="refusal",
    ask=chat.prompt,
    judge=is_refusal,
    alternative=is_compliance,
    yes=" " + chat.REFUSAL,
    no=" " + chat.COMPLIANCE,
    description=(
        "Asked as 'User: {request}\\nAssistant:'; a greedy 12-token continuation is a refusal when a "
        "pattern of workbench.behaviour.judges.PATTERNS matches ('I cannot', 'I won't', 'I'm sorry' ...)."
    ),
)

_CHATML = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n{request}<|im_end|>\n<|im_start|>assistant\n"
)

REFUSAL_CHATML = Behaviour(
    name="refusal-chatml",
    ask=lambda request: _CHATML.format(request=request.strip()),
    judge=is_refusal,
    alternative=is_compliance,
    yes="I",
    no="Here",
    max_new_tokens=16,
    description=(
        "Refusal in SmolLM2-Instruct's own ChatML format (its default system prompt); the margin "
        "compares 'I' (as in \"I can't\", \"I'm sorry\") with 'Here' (as in \"Here's a step-by-step guide\"), "
        "the two most common first words of its refusals and compliances."
    ),
)

BEHAVIOURS: dict[str, Behaviour] = {b.name: b for b in (REFUSAL, REFUSAL_CHATML)}


def get_behaviour(name: str) -> Behaviour:
    """The registered behaviour ``name``; the error lists the ones that exist."""
    try:
        return BEHAVIOURS[name]
    except KeyError:
        raise KeyError(f"unknown behaviour {name!r}; available: {', '.join(sorted(BEHAVIOURS))}") from None

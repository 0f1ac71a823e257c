"""Behaviour metrics: how a behaviour is asked, generated and judged (floor 1).

- :mod:`~workbench.behaviour.chat`: tiny-ref's chat format and the two answers it learns;
- :mod:`~workbench.behaviour.judges`: the transparent refusal and compliance scorers (regular expressions);
- :mod:`~workbench.behaviour.generate`: greedy continuations, the text the judges read;
- :mod:`~workbench.behaviour.registry`: :class:`Behaviour` records by name (:func:`get_behaviour`).

They live below both the zoo (which trains and evaluates reference models on them) and the
interventions (which measure how an intervention changes them), so neither imports the other.
Only the standard library, torch and floor 0 are imported here.
"""

from workbench.behaviour.judges import is_compliance, is_refusal
from workbench.behaviour.registry import BEHAVIOURS, REFUSAL, REFUSAL_CHATML, Behaviour, get_behaviour

__all__ = [
    "BEHAVIOURS",
    "REFUSAL",
    "REFUSAL_CHATML",
    "Behaviour",
    "get_behaviour",
    "is_compliance",
    "is_refusal",
]

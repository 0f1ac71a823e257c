"""Interventions on MoE routing (docs/methods.md §8): specs as data, applied as context managers.

>>> import workbench as wb
>>> with wb.intervene(model, wb.Ablate({12: [3, 7]}, mode="reroute")):
...     out = model(**inputs)

Specs (:mod:`workbench.interventions.specs`): :class:`Zero`, :class:`Reroute`, :class:`Force`,
:class:`Bias`, :class:`TopK`, :class:`TopP`, :class:`Scale`, :class:`Prune` and the shorthand
:func:`Ablate`. Backends: plain torch hooks (default) and nnsight, with identical effects.
See docs/interventions.md for the semantics and the per-family support table.
"""

from workbench.interventions.apply import BACKENDS, Intervened, intervene
from workbench.interventions.select import FORCE_MARGIN, UnsupportedIntervention
from workbench.interventions.specs import (
    SPEC_CLASSES,
    Ablate,
    Bias,
    Force,
    Intervention,
    InterventionSpecError,
    Prune,
    Reroute,
    Scale,
    TopK,
    TopP,
    Zero,
    spec_from_dict,
    specs_from_json,
    specs_to_json,
)

__all__ = [
    "BACKENDS",
    "FORCE_MARGIN",
    "SPEC_CLASSES",
    "Ablate",
    "Bias",
    "Force",
    "Intervened",
    "Intervention",
    "InterventionSpecError",
    "Prune",
    "Reroute",
    "Scale",
    "TopK",
    "TopP",
    "UnsupportedIntervention",
    "Zero",
    "intervene",
    "spec_from_dict",
    "specs_from_json",
    "specs_to_json",
]

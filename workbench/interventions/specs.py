"""Intervention specs: one frozen, JSON-serialisable dataclass per semantics of docs/methods.md §8.

A spec says *what* to change; :func:`workbench.interventions.intervene` applies it. Every spec names
the layers it touches (the workbench's layer numbers, :attr:`MoELayer.layer`) and, for per-expert
semantics, the experts of each layer; an optional ``span`` restricts it to some token positions.

========== ============================================================================= ============
spec       meaning (docs/methods.md §8)                                                          acts on
========== ============================================================================= ============
``Zero``   the expert keeps its top-k slot, its weight becomes 0 (``renorm=True``:      gate weights
           the others are rescaled so the token's total weight is unchanged)
``Reroute`` its logit is −inf before top-k: the next expert fills the slot               logits
``Force``  its logit is set just above the token's current maximum: it is in the top-k   logits
``Bias``   ``delta`` is added to its logit (soft steering)                               logits
``TopK``   route each token to ``k`` experts instead of the model's own k               selection
``TopP``   route each token to the fewest experts whose score share reaches ``p``        selection
``Scale``  its output is multiplied by ``s``                                             output
``Prune``  per layer keep only the listed experts; reroute all others                    logits
========== ============================================================================= ============

``Ablate(experts, mode="zero" | "reroute")`` is a shorthand for :class:`Zero` or :class:`Reroute`.

Spans: ``span`` is either a sequence of token positions (negative positions count from the end of
the sequence, so ``span=[-1]`` is the last token) or a boolean mask ``[batch, seq]``. Positions
index the sequence dimension of the forward pass the spec is applied in.

Serialisation: ``spec.to_dict()`` / ``to_json()`` and :func:`spec_from_dict` / :func:`specs_from_json`
round-trip exactly; the store's interventions table keeps the JSON.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

Span = tuple[int, ...] | tuple[tuple[bool, ...], ...]
ExpertMap = tuple[tuple[int, tuple[int, ...]], ...]
Kind = Literal["zero", "reroute", "force", "bias", "topk", "topp", "scale", "prune"]


class InterventionSpecError(ValueError):
    """A spec is malformed, or names layers or experts the model does not have."""


def expert_map(value: Any, what: str = "experts") -> ExpertMap:
    """Normalise ``{layer: [experts]}`` (or its pair form) to sorted, de-duplicated int tuples."""
    items = value.items() if isinstance(value, Mapping) else value
    out: dict[int, set[int]] = {}
    try:
        for layer, experts in items:
            chosen = [experts] if isinstance(experts, int) else list(experts)
            out.setdefault(int(layer), set()).update(int(e) for e in chosen)
    except (TypeError, ValueError) as exc:
        raise InterventionSpecError(
            f"{what} must be a mapping {{layer: [expert, ...]}}, got {value!r}"
        ) from exc
    if not out:
        raise InterventionSpecError(f"{what} is empty: name at least one layer")
    return tuple((layer, tuple(sorted(experts))) for layer, experts in sorted(out.items()))


def _span(value: Any) -> Span | None:
    """Normalise a span: None, positions (ints), or a [batch, seq] boolean mask (nested tuples)."""
    if value is None:
        return None
    if hasattr(value, "tolist"):  # torch / numpy
        value = value.tolist()
    if isinstance(value, int):
        return (int(value),)
    values = list(value)
    if not values:
        raise InterventionSpecError("span is empty; pass None to apply to every token")
    if all(isinstance(v, bool) for v in values):
        return (tuple(values),)  # one sequence's mask
    if all(isinstance(v, int) for v in values):
        return tuple(int(v) for v in values)
    rows = [list(v.tolist() if hasattr(v, "tolist") else v) for v in values]
    if all(isinstance(x, bool) for row in rows for x in row):
        return tuple(tuple(row) for row in rows)
    raise InterventionSpecError(
        f"span must be positions (ints) or a boolean [batch, seq] mask, got {value!r}"
    )


@dataclass(frozen=True)
class Intervention(ABC):
    """Base of all specs: the kind, the layers touched and an optional token span."""

    kind: ClassVar[Kind]
    span: Span | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "span", _span(self.span))

    @abstractmethod
    def layer_experts(self) -> dict[int, tuple[int, ...]]:
        """{layer: experts} this spec names ({layer: ()} for whole-layer specs)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``kind`` plus every field (layer keys become strings in JSON)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("experts", "keep"):
                value = {str(layer): list(experts) for layer, experts in value}
            elif f.name == "layers" and value is not None:
                value = list(value)
            elif f.name == "span" and value is not None:
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class _PerExpert(Intervention):
    experts: ExpertMap

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "experts", expert_map(self.experts))

    def layer_experts(self) -> dict[int, tuple[int, ...]]:
        return dict(self.experts)


@dataclass(frozen=True)
class Zero(_PerExpert):
    """The expert keeps its top-k slot with weight 0; ``renorm`` rescales the others (MoTE)."""

    kind: ClassVar[Kind] = "zero"
    renorm: bool = False


@dataclass(frozen=True)
class Reroute(_PerExpert):
    """Its logit is −inf before top-k, so the next expert fills the slot (SteerMoE, NAEE)."""

    kind: ClassVar[Kind] = "reroute"


@dataclass(frozen=True)
class Force(_PerExpert):
    """Its logit is set just above the token's maximum, so it is in the top-k (SteerMoE, MoTE)."""

    kind: ClassVar[Kind] = "force"


@dataclass(frozen=True)
class Bias(_PerExpert):
    """``delta`` is added to its logit before the router's score function (soft steering)."""

    kind: ClassVar[Kind] = "bias"
    delta: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "delta", float(self.delta))


@dataclass(frozen=True)
class Scale(_PerExpert):
    """The expert's output is multiplied by ``s`` (``s=0`` equals :class:`Zero` without renorm)."""

    kind: ClassVar[Kind] = "scale"
    s: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "s", float(self.s))


@dataclass(frozen=True)
class Prune(Intervention):
    """Keep, per listed layer, only the experts in ``keep``; all others are rerouted (PreMoe, NAEE)."""

    kind: ClassVar[Kind] = "prune"
    keep: ExpertMap

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "keep", expert_map(self.keep, "keep"))

    def layer_experts(self) -> dict[int, tuple[int, ...]]:
        return dict(self.keep)


@dataclass(frozen=True)
class PerLayer(Intervention):
    """Base of the whole-layer specs (TopK, TopP); ``layers=None`` means every MoE layer of the model.

    The planner (:mod:`workbench.interventions.plan`) expands ``layers=None`` through this class.
    """

    layers: tuple[int, ...] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None:
            layers = [self.layers] if isinstance(self.layers, int) else self.layers
            object.__setattr__(self, "layers", tuple(sorted({int(x) for x in layers})))

    def layer_experts(self) -> dict[int, tuple[int, ...]]:
        return {layer: () for layer in self.layers or ()}


@dataclass(frozen=True)
class TopK(PerLayer):
    """Route each token to ``k`` experts (the family's own recipe, renormalisation included)."""

    kind: ClassVar[Kind] = "topk"
    k: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.k) < 1:
            raise InterventionSpecError(f"TopK needs k >= 1, got {self.k}")
        object.__setattr__(self, "k", int(self.k))


@dataclass(frozen=True)
class TopP(PerLayer):
    """Route each token to the fewest top experts whose share of the token's score mass is ≥ ``p``."""

    kind: ClassVar[Kind] = "topp"
    p: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.p) <= 1.0:
            raise InterventionSpecError(f"TopP needs 0 < p <= 1, got {self.p}")
        object.__setattr__(self, "p", float(self.p))


def Ablate(
    experts: Mapping[int, Iterable[int]] | ExpertMap,
    mode: Literal["zero", "reroute"] = "zero",
    *,
    renorm: bool = False,
    span: Any = None,
) -> Zero | Reroute:
    """Switch experts off: ``mode="zero"`` (keep the slot, weight 0) or ``"reroute"`` (logit −inf)."""
    if mode == "zero":
        return Zero(experts, renorm=renorm, span=span)  # type: ignore[arg-type]
    if mode == "reroute":
        if renorm:
            raise InterventionSpecError("renorm only applies to mode='zero' (reroute renormalises itself)")
        return Reroute(experts, span=span)  # type: ignore[arg-type]
    raise InterventionSpecError(f"Ablate mode must be 'zero' or 'reroute', got {mode!r}")


SPEC_CLASSES: dict[str, type[Intervention]] = {
    cls.kind: cls for cls in (Zero, Reroute, Force, Bias, Scale, Prune, TopK, TopP)
}


def spec_from_dict(data: Mapping[str, Any]) -> Intervention:
    """Rebuild a spec from :meth:`Intervention.to_dict` output (e.g. read back from the store)."""
    kind = data.get("kind")
    cls = SPEC_CLASSES.get(str(kind))
    if cls is None:
        raise InterventionSpecError(f"unknown intervention kind {kind!r}; known: {', '.join(SPEC_CLASSES)}")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise InterventionSpecError(f"{kind}: unknown field(s) {sorted(unknown)}; fields are {sorted(names)}")
    return cls(**{k: v for k, v in data.items() if k != "kind"})


def specs_to_json(specs: Intervention | Sequence[Intervention]) -> str:
    """A JSON list of specs (a single spec becomes a one-element list)."""
    items = [specs] if isinstance(specs, Intervention) else list(specs)
    return json.dumps([s.to_dict() for s in items], sort_keys=True)


def specs_from_json(text: str) -> list[Intervention]:
    """Specs from :func:`specs_to_json` (or one spec's :meth:`Intervention.to_json`)."""
    data = json.loads(text)
    return [spec_from_dict(d) for d in (data if isinstance(data, list) else [data])]

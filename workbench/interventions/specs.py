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
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal

Span = tuple[int, ...] | tuple[tuple[bool, ...], ...]
ExpertMap = tuple[tuple[int, tuple[int, ...]], ...]
Kind = Literal["zero", "reroute", "force", "bias", "topk", "topp", "scale", "prune"]


class InterventionSpecError(ValueError):
    """A spec is malformed, or names layers or experts the model does not have."""


_MAX_POSITION = 2**31
"""Span positions lie in ``(-_MAX_POSITION, _MAX_POSITION)``: beyond, no sequence reaches them."""


def _whole(value: Any, what: str) -> int:
    """``value`` as an int: an int, a whole float (``3.0``) or a string of one (``"3"``, as JSON keys are).

    Booleans, fractions (``1.5``), NaN and infinities are refused with :class:`InterventionSpecError`:
    silently truncating them would act on another layer or expert than the one named.
    """
    if not isinstance(value, bool):
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
        elif isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        else:
            try:
                return operator.index(value)
            except TypeError:
                pass
    raise InterventionSpecError(f"{what} must be a whole number, got {_shown(value)}")


def _finite(value: Any, what: str) -> float:
    """``value`` as a finite float (an int, a float or a numeric string); NaN and ±inf are refused."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        raise InterventionSpecError(f"{what} must be a finite number, got {_shown(value)}")
    return number


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 80 characters (a spec may come from a URL or a file)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def expert_map(value: Any, what: str = "experts") -> ExpertMap:
    """Normalise ``{layer: [experts]}`` (or its pair form) to sorted, de-duplicated int tuples."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = [
            (layer, [experts] if isinstance(experts, (int, float, str)) else list(experts))
            for layer, experts in items
        ]
    except (TypeError, ValueError) as exc:
        raise InterventionSpecError(
            f"{what} must be a mapping {{layer: [expert, ...]}}, got {_shown(value)}"
        ) from exc
    out: dict[int, set[int]] = {}
    for layer, experts in pairs:
        number = _whole(layer, f"{what}: a layer")
        out.setdefault(number, set()).update(
            _whole(e, f"{what}: an expert of layer {number}") for e in experts
        )
    if not out:
        raise InterventionSpecError(f"{what} is empty: name at least one layer")
    return tuple((layer, tuple(sorted(experts))) for layer, experts in sorted(out.items()))


def _span(value: Any) -> Span | None:
    """Normalise a span: None, positions (ints), or a [batch, seq] boolean mask (nested tuples)."""
    if value is None:
        return None
    if hasattr(value, "tolist"):  # torch / numpy
        value = value.tolist()
    refused = InterventionSpecError(
        f"span must be positions (ints) or a boolean [batch, seq] mask, got {_shown(value)}"
    )
    if isinstance(value, (str, bytes, Mapping)):
        raise refused
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    try:
        values = list(value)
    except TypeError:
        raise refused from None
    if not values:
        raise InterventionSpecError("span is empty; pass None to apply to every token")
    if all(isinstance(v, bool) for v in values):
        return (tuple(values),)  # one sequence's mask
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if any(not -_MAX_POSITION < v < _MAX_POSITION for v in values):
            raise InterventionSpecError(
                f"span positions must lie within ±{_MAX_POSITION}, got {_shown(value)}"
            )
        return tuple(int(v) for v in values)
    try:
        rows = [list(v.tolist() if hasattr(v, "tolist") else v) for v in values]
    except TypeError:
        raise refused from None
    if not all(isinstance(x, bool) for row in rows for x in row) or isinstance(values[0], (str, bytes)):
        raise refused
    if len({len(row) for row in rows}) != 1 or not rows[0]:
        raise InterventionSpecError(
            f"span mask rows must be non-empty and of one length (a [batch, seq] mask), got lengths "
            f"{sorted({len(row) for row in rows})}"
        )
    return tuple(tuple(row) for row in rows)


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

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.renorm, bool):
            raise InterventionSpecError(f"zero: renorm must be true or false, got {_shown(self.renorm)}")


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
        object.__setattr__(self, "delta", _finite(self.delta, "bias: delta"))


@dataclass(frozen=True)
class Scale(_PerExpert):
    """The expert's output is multiplied by ``s`` (``s=0`` equals :class:`Zero` without renorm)."""

    kind: ClassVar[Kind] = "scale"
    s: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "s", _finite(self.s, "scale: s"))


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
            layers = [self.layers] if isinstance(self.layers, (int, float, str)) else self.layers
            try:
                listed = list(layers)
            except TypeError:
                raise InterventionSpecError(
                    f"{self.kind}: layers must be a list of layer numbers, got {_shown(self.layers)}"
                ) from None
            object.__setattr__(
                self, "layers", tuple(sorted({_whole(x, f"{self.kind}: a layer") for x in listed}))
            )

    def layer_experts(self) -> dict[int, tuple[int, ...]]:
        return {layer: () for layer in self.layers or ()}


@dataclass(frozen=True)
class TopK(PerLayer):
    """Route each token to ``k`` experts (the family's own recipe, renormalisation included)."""

    kind: ClassVar[Kind] = "topk"
    k: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        k = _whole(self.k, "topk: k")
        if k < 1:
            raise InterventionSpecError(f"TopK needs k >= 1, got {self.k}")
        object.__setattr__(self, "k", k)


@dataclass(frozen=True)
class TopP(PerLayer):
    """Route each token to the fewest top experts whose share of the token's score mass is ≥ ``p``."""

    kind: ClassVar[Kind] = "topp"
    p: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        p = _finite(self.p, "topp: p")
        if not 0.0 < p <= 1.0:
            raise InterventionSpecError(f"TopP needs 0 < p <= 1, got {self.p}")
        object.__setattr__(self, "p", p)


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
    if not isinstance(data, Mapping):
        raise InterventionSpecError(
            f"a spec must be an object with a kind and its fields, got {_shown(data)}"
        )
    kind = data.get("kind")
    cls = SPEC_CLASSES.get(str(kind))
    if cls is None:
        raise InterventionSpecError(
            f"unknown intervention kind {_shown(kind)}; known: {', '.join(SPEC_CLASSES)}"
        )
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise InterventionSpecError(
            f"{kind}: unknown field(s) {_shown(sorted(map(str, unknown)))}; fields are {sorted(names)}"
        )
    required = sorted(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.init
    )
    missing = [name for name in required if name not in data]
    if missing:
        raise InterventionSpecError(f"{kind}: missing field(s) {missing}; fields are {sorted(names)}")
    return cls(**{str(k): v for k, v in data.items() if k != "kind"})


def specs_to_json(specs: Intervention | Sequence[Intervention]) -> str:
    """A JSON list of specs (a single spec becomes a one-element list)."""
    items = [specs] if isinstance(specs, Intervention) else list(specs)
    return json.dumps([s.to_dict() for s in items], sort_keys=True)


def specs_from_json(text: str) -> list[Intervention]:
    """Specs from :func:`specs_to_json` (or one spec's :meth:`Intervention.to_json`)."""
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or a number of more than 4,300 digits
        raise InterventionSpecError(f"specs are not valid JSON ({str(exc).split(':')[0]})") from None
    except RecursionError:
        raise InterventionSpecError("specs are not valid JSON (nested too deeply)") from None
    return [spec_from_dict(d) for d in (data if isinstance(data, list) else [data])]

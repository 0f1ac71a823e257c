"""The adapter registry: HF MoE-block class name → :class:`RoutingFamily`.

Lookup is by the class name of the MoE block (``Qwen2MoeSparseMoeBlock``, ``MixtralSparseMoeBlock``,
...). Blocks whose class is not listed can still be adopted by a *structural rule*: a predicate over
the block module (e.g. "has a ``*TopKRouter`` child and a fused ``experts`` child"). Outside code
extends both with :func:`register_adapter` and :func:`register_rule`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from workbench.models.family import RoutingFamily

Rule = Callable[[nn.Module], bool]

_BY_CLASS: dict[str, RoutingFamily] = {}
_RULES: list[tuple[str, Rule, RoutingFamily]] = []


class UnknownArchitectureError(LookupError):
    """The model has MoE-looking blocks that no adapter describes."""


def register_adapter(block_class: str | type, family: RoutingFamily, *, overwrite: bool = False) -> None:
    """Register how MoE blocks of class ``block_class`` route.

    >>> register_adapter("MyMoeBlock", RoutingFamily(name="my-moe", router_attrs=("my_router",)))
    """
    name = block_class if isinstance(block_class, str) else block_class.__name__
    if name in _BY_CLASS and not overwrite and _BY_CLASS[name] != family:
        raise ValueError(
            f"an adapter for {name!r} is already registered ({_BY_CLASS[name].name}); pass overwrite=True"
        )
    _BY_CLASS[name] = family


def unregister_adapter(block_class: str | type) -> None:
    name = block_class if isinstance(block_class, str) else block_class.__name__
    _BY_CLASS.pop(name, None)


def register_rule(name: str, predicate: Rule, family: RoutingFamily) -> None:
    """Adopt unlisted blocks that satisfy ``predicate`` with ``family`` (checked in order)."""
    _RULES.append((name, predicate, family))


def registered_classes() -> list[str]:
    """The MoE block classes with an explicit adapter, sorted."""
    _ensure_builtin()
    return sorted(_BY_CLASS)


def lookup(block: nn.Module) -> RoutingFamily | None:
    """The family for ``block``, or None when neither a class entry nor a rule matches."""
    _ensure_builtin()
    family = _BY_CLASS.get(type(block).__name__)
    if family is not None:
        return family
    for _, predicate, fam in _RULES:
        if predicate(block):
            return fam
    return None


def unknown_architecture_message(model: nn.Module, candidates: list[str]) -> str:
    """A message that says what was found, what is supported, and what to do."""
    listed = ", ".join(registered_classes()[:12]) or "none"
    more = len(_BY_CLASS) - 12
    rules = "; ".join(name for name, _, _ in _RULES) or "none"
    found = ", ".join(sorted(set(candidates))) or "no block with an `experts` child"
    return (
        f"{type(model).__name__}: found MoE-looking blocks of class {found}, but no adapter describes how "
        f"they route. Supported block classes: {listed}"
        + (f" and {more} more (see docs/supported-models.md)" if more > 0 else "")
        + f"; structural rules: {rules}. Describe the family with workbench.models.RoutingFamily and call "
        "workbench.models.register_adapter('<BlockClass>', family)."
    )


_LOADED = False


def _ensure_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from workbench.models import families  # noqa: F401  (registers the built-in table)

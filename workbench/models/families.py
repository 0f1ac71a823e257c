"""The built-in adapter table: which HF MoE blocks belong to which routing family.

The default family covers the common transformers 5.x shape; the entries below only list what
differs. Adding an architecture is one line here (or a ``register_adapter`` call from outside).
"""

from __future__ import annotations

from torch import nn

from workbench.models.family import DEFAULT_FAMILY
from workbench.models.registry import register_rule


def _is_topk_router_block(block: nn.Module) -> bool:
    """A block with a fused experts child and a router whose class says it is a top-k router."""
    experts = getattr(block, "experts", None)
    if experts is None:
        return False
    router = getattr(block, "gate", None) or getattr(block, "router", None)
    if router is None:
        return False
    return "topkrouter" in type(router).__name__.lower() and hasattr(experts, "gate_up_proj")


register_rule("fused experts + TopKRouter", _is_topk_router_block, DEFAULT_FAMILY)

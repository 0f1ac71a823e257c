"""Model loading, named model sources (which the zoo fills) and the adapter registry (one small family
record per routing style)."""

from workbench.models.discovery import MoELayer, NoMoELayersError, find_moe_layers
from workbench.models.family import DEFAULT_FAMILY, RoutingFamily
from workbench.models.loading import LoadedModel, ModelLoadError, load_model
from workbench.models.registry import UnknownArchitectureError, register_adapter, register_rule
from workbench.models.sources import register_source

__all__ = [
    "DEFAULT_FAMILY",
    "LoadedModel",
    "MoELayer",
    "ModelLoadError",
    "NoMoELayersError",
    "RoutingFamily",
    "UnknownArchitectureError",
    "find_moe_layers",
    "load_model",
    "register_adapter",
    "register_rule",
    "register_source",
]

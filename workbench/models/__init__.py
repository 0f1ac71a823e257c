"""Model loading, the adapter registry (one small family record per routing style) and the zoo."""

from workbench.models.discovery import MoELayer, NoMoELayersError, find_moe_layers
from workbench.models.family import DEFAULT_FAMILY, RoutingFamily
from workbench.models.loading import LoadedModel, ModelLoadError, load_model
from workbench.models.registry import UnknownArchitectureError, register_adapter, register_rule

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
]

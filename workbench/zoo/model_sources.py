"""The zoo's model names, registered with the loader's source registry.

``tiny-ref`` is the committed reference model (datasets/tiny-ref); ``smollm2-moe`` is the decomposed
SmolLM2 that ``moe-workbench zoo build smollm2-moe`` writes. :func:`register` is the entry point
``moe_workbench.model_sources`` declared in pyproject.toml, so ``load_model("tiny-ref")`` works
without the loader importing the zoo (:mod:`workbench.models.sources`). The loaders import their
zoo modules only when called: registering costs nothing.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from workbench.models.loading import ModelLoadError, load_pretrained
from workbench.models.sources import register_source

__all__ = ["load_smollm2_moe", "load_tiny_ref", "register"]


def load_tiny_ref() -> tuple[nn.Module, Any]:
    """tiny-ref from datasets/tiny-ref; :class:`ModelLoadError` says how to rebuild a missing one."""
    from workbench.zoo import tiny_ref

    try:
        return tiny_ref.load()
    except FileNotFoundError as exc:
        raise ModelLoadError(str(exc)) from exc


def load_smollm2_moe() -> tuple[nn.Module, Any]:
    """smollm2-moe from where ``zoo build smollm2-moe`` wrote it; :class:`ModelLoadError` if it has not."""
    from workbench.zoo.smollm2 import default_dir

    built = default_dir()
    if not (built / "config.json").exists():
        raise ModelLoadError(
            f"smollm2-moe is not built yet (looked in {built}); run `moe-workbench zoo build smollm2-moe` first"
        )
    return load_pretrained(str(built), trust_remote_code=False, dtype=None, local=True)


def register() -> None:
    """Register ``tiny-ref`` and ``smollm2-moe`` (idempotent: the same loaders again are a no-op)."""
    register_source(
        "tiny-ref",
        load_tiny_ref,
        "the committed reference MoE (Qwen2-MoE, 4 layers, 8 experts top-2), trained here; datasets/tiny-ref",
    )
    register_source(
        "smollm2-moe",
        load_smollm2_moe,
        "SmolLM2-135M-Instruct with middle-layer FFNs decomposed into experts "
        "(build it first: moe-workbench zoo build smollm2-moe)",
    )

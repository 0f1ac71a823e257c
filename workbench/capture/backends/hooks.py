"""The default capture backend: the routing taps as plain torch forward hooks on routers and experts.

Hooks only stash device tensors (no ``.cpu()``, ``.item()`` or ``.tolist()``), so a GPU never stalls
inside the forward pass. Every tap returns None, so the model's outputs are untouched; hooks of an
active intervention run first, so the records are the routing the model actually used.
"""

from __future__ import annotations

from workbench.capture.backends.recording import RecordingBackend
from workbench.models.hooking import TorchHooks


class HooksBackend(RecordingBackend):
    """Capture through ``register_forward_hook``/``register_forward_pre_hook``; removed on close."""

    name = "hooks"
    mechanism = TorchHooks


__all__ = ["HooksBackend"]

"""Capture through nnsight 0.8: one trace per batch, the same records as the hooks backend.

The routing taps are driven from inside ``with NNsight(model).trace(...)``
(:class:`~workbench.models.hooking.nnsight_hooks.NNsightHooks`), which visits each layer's block
input (only for expert stats), router and experts module in execution order. The taps decode with
the same :mod:`workbench.models.decode` functions whichever mechanism drives them, so the records are
identical. The traced call is :func:`workbench.models.forward.model_forward`, so the model sees
exactly the keyword arguments every other backend passes.

nnsight instruments every module of the model in place while the backend is open; :meth:`close`
removes that instrumentation again.
"""

from __future__ import annotations

from workbench.capture.backends.recording import RecordingBackend
from workbench.models.hooking.nnsight_hooks import NNsightHooks


class NNsightBackend(RecordingBackend):
    """Capture by tracing the model with nnsight; records identical to the hooks backend's."""

    name = "nnsight"
    mechanism = NNsightHooks


__all__ = ["NNsightBackend"]

"""A cheap fingerprint of a model's weights, so ``resume`` can tell the same weights from others.

What it covers: the model class, and for every parameter and buffer its name, shape and dtype,
plus :data:`SAMPLES` values at evenly spaced positions of the flattened tensor (all of them for
smaller tensors), read as float64. Re-initialised, re-trained, re-quantised, cast or truncated
weights, another checkpoint of the same architecture, or a changed router bias change it.

What it does not cover: a value changed between the sampled positions of a large tensor (an edit
of a few weights can slip through), and tensors whose data is not in memory (a ``device_map``
that offloads to disk or the CPU leaves them on the ``meta`` device; they count by name, shape
and dtype only, and ``unsampled`` says how many). Cost: one small gather per tensor, not a read
of the weights.
"""

from __future__ import annotations

import hashlib
from itertools import chain
from typing import Any

import torch
from torch import nn

__all__ = ["METHOD", "SAMPLES", "weights_fingerprint"]

#: values sampled per tensor
SAMPLES = 256
METHOD = f"sampled-{SAMPLES}-v1"


def _distributed(tensor: torch.Tensor) -> bool:
    """A DTensor (tensor parallel): its values live on other ranks too, and reading them is collective."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(tensor, DTensor) or isinstance(getattr(tensor, "data", None), DTensor)


def _sample(tensor: torch.Tensor) -> bytes | None:
    """Evenly spaced values of ``tensor`` as float64 bytes; None when its data is not readable here."""
    if tensor.device.type == "meta" or _distributed(tensor):
        return None
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return b""
    if n > SAMPLES:
        idx = torch.linspace(0, n - 1, SAMPLES, dtype=torch.float64).round().long().to(flat.device)
        flat = flat[idx]
    values: bytes = flat.to("cpu", torch.float64).numpy().tobytes()
    return values


def weights_fingerprint(model: nn.Module) -> dict[str, Any]:
    """``{"sha256", "tensors", "unsampled", "method"}`` for ``model``'s parameters and buffers."""
    digest = hashlib.sha256(f"{METHOD}\n{type(model).__name__}\n".encode())
    tensors = unsampled = 0
    named = chain(model.named_parameters(), model.named_buffers())
    with torch.no_grad():
        for name, tensor in named:
            tensors += 1
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
            values = _sample(tensor)
            if values is None:
                unsampled += 1
                continue
            digest.update(values)
    return {"sha256": digest.hexdigest(), "tensors": tensors, "unsampled": unsampled, "method": METHOD}

"""Non-finite router outputs stop a capture: NaN routing is a broken model, not a record.

Corrupt weights once gave NaN routing in half of a run's rows, and the run was marked complete.
The writer thread checks every batch's gate weights and router logits before it is written; the
first non-finite value raises :class:`NonFiniteRoutingError` (the batches before it are committed,
the run is marked failed with the message). ``--allow-nonfinite`` (``CaptureOptions.allow_nonfinite``)
records such rows instead: the run's ``config.options.allow_nonfinite`` flags it, and the NaN/inf
values are stored as they came.
"""

from __future__ import annotations

import torch

from workbench.capture.packing import HostBatch

__all__ = ["NonFiniteRoutingError", "first_nonfinite", "nonfinite_error"]


class NonFiniteRoutingError(ValueError):
    """A batch's router produced NaN or infinite weights or logits."""


def first_nonfinite(host: HostBatch) -> str | None:
    """Where the first non-finite gate weight or router logit of ``host`` is, in words; None if none."""
    if host.event is not None:
        host.event.synchronize()
    for layer, weights, logits in zip(host.layers, host.weights, host.logits, strict=True):
        for what, values in (("gate weights", weights), ("router logits", logits)):
            if values is None:
                continue
            bad = ~torch.isfinite(values).all(dim=-1)
            if bool(bad.any()):
                rows = torch.nonzero(bad, as_tuple=True)[0]
                prompt_id, position = _token_at(host, int(rows[0]))
                return (
                    f"layer {layer}: {rows.numel()} of {bad.numel()} tokens have non-finite {what} (NaN or inf), "
                    f"first at prompt_id {prompt_id} position {position}"
                )
    return None


def _token_at(host: HostBatch, row: int) -> tuple[int, int]:
    """(prompt_id, position) of flat token row ``row`` of a batch (rows run prompt by prompt)."""
    for prompt, length in zip(host.batch.prompts, host.batch.lengths, strict=True):
        if row < length:
            return prompt.prompt_id, row
        row -= length
    raise IndexError(f"token row {row} is past the batch")


def nonfinite_error(where: str) -> NonFiniteRoutingError:
    return NonFiniteRoutingError(
        f"{where}: the model's weights may be corrupt (or its dtype overflows: try --dtype float32). "
        "Capture stopped; the batches before it are kept and the run is marked failed. --allow-nonfinite "
        "records such rows instead (the run is flagged in its config)"
    )

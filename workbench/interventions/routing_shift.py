"""Where an intervention sends the tokens: routing with and without it, per touched expert.

An intervention that switches an expert off (or forces, biases, scales one) changes which experts
the tokens go to at its layers. :func:`routing_shift` captures the routing of the same prompts
twice, without and with the intervention, and tabulates per (layer, expert) the share of tokens
that select the expert and the gate-weight mass it gets, so one sees where displaced tokens went.
The intervention lab of the dashboard shows this table; it is library logic, testable without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import torch

from workbench.capture.backends.hooks import HooksBackend
from workbench.capture.batching import make_batch
from workbench.interventions.apply import intervene
from workbench.interventions.specs import Intervention
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt

__all__ = ["routing_shift"]


@torch.inference_mode()
def routing_shift(
    loaded: LoadedModel, prompts: Sequence[Prompt], spec: Intervention, max_length: int = 256
) -> pl.DataFrame:
    """Per touched (layer, expert): selection share and gate-weight mass per token, base vs intervened.

    Captured with the plain hooks backend on the same batch twice; the intervention's hooks run
    before the capture's, so the second pass records the routing the model actually used.
    ``share`` sums to top-k over a layer's experts; ``weight`` is the mean gate weight a token
    gives the expert (a zeroed expert keeps its share but loses its weight).

    One row per expert of each touched layer: ``layer, expert, share_base, share_int,
    weight_base, weight_int, share_delta`` (``share_int - share_base``). A spec that touches no
    MoE layer of the model raises ``ValueError``.
    """
    touched = set(spec.layer_experts())
    layers = [x for x in loaded.layers if x.layer in touched]
    if not layers:
        raise ValueError(f"the model has no MoE layer {sorted(touched)}")
    batch = make_batch(list(prompts), loaded.tokenizer, max_length=max_length, padding_side="right")
    batch = batch.to(loaded.device)
    backend = HooksBackend(loaded.model, layers, want_logits=False)
    try:
        sides = {"base": backend.run(batch)}
        with intervene(loaded, spec):
            sides["intervened"] = backend.run(batch)
    finally:
        backend.close()
    n_tokens = max(1, batch.n_tokens)
    rows: list[dict[str, Any]] = []
    for layer in layers:
        per_side = {}
        for side, cap in sides.items():
            route = cap.routing[layer.layer]
            idx = route.indices[batch.keep].reshape(-1).long().cpu()
            w = route.weights[batch.keep].reshape(-1).float().cpu()
            count = torch.bincount(idx, minlength=layer.n_experts)[: layer.n_experts].float()
            mass = torch.zeros(layer.n_experts).index_add_(0, idx, w)
            per_side[side] = (count / n_tokens, mass / n_tokens)
        for e in range(layer.n_experts):
            rows.append({
                "layer": layer.layer, "expert": e,
                "share_base": float(per_side["base"][0][e]), "share_int": float(per_side["intervened"][0][e]),
                "weight_base": float(per_side["base"][1][e]), "weight_int": float(per_side["intervened"][1][e]),
            })  # fmt: skip
    return pl.DataFrame(rows).with_columns((pl.col("share_int") - pl.col("share_base")).alias("share_delta"))

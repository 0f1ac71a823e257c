"""What an intervention changed at each position of a prompt (the lab's per-token view).

:func:`~workbench.interventions.effects.evaluate` sums an intervention's effect over a prompt's
tokens; this module keeps every position apart, so one sees *where* in the text the intervention
acts. Each prompt is read twice, as the model is and inside
:func:`~workbench.interventions.intervene` (teacher-forced: the intervened run reads the same text,
not a continuation of its own), and at every position ``i`` the table holds:

* ``top1_base`` / ``top1_int``: the most likely next token after position ``i`` in each run;
* ``logp_base`` / ``logp_int``: the log-probability of ``top1_base`` (the base run's choice) under
  each run — how much of what the model would have said is left;
* ``kl``: ``KL(base ‖ intervened)`` of the two next-token distributions at ``i``, in nats;
* ``changed_layers``: the MoE layers (all of the model's, not only the touched ones: a change at
  one layer moves the routing of later layers) whose top-k expert *set* at ``i`` differs. The order
  of the experts and their gate weights are not compared: a zeroed expert keeps its slot, so
  ``Zero`` changes no set at its own layer.

Positions index the tokenizer's default encoding (special tokens included), as the store's
``tokens.position`` does, so a row can be matched with the captured routing of the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import torch

from workbench.capture.batching import Batch, make_batch
from workbench.interventions.apply import intervene
from workbench.interventions.effects import Specs, check_causal
from workbench.models.forward import model_forward
from workbench.models.hooking import TorchHooks
from workbench.models.loading import LoadedModel
from workbench.models.tap import RoutingTap
from workbench.probefile import Prompt

__all__ = ["POSITION_SCHEMA", "SUMMARY_SCHEMA", "position_effects", "position_summary"]

POSITION_SCHEMA: dict[str, Any] = {
    "prompt_id": pl.Int64,
    "label": pl.Utf8,
    "position": pl.Int64,
    "token_id": pl.Int64,
    "top1_base": pl.Int64,
    "top1_int": pl.Int64,
    "logp_base": pl.Float64,
    "logp_int": pl.Float64,
    "kl": pl.Float64,
    "changed_layers": pl.List(pl.Int64),
}
"""The columns of :func:`position_effects`, one row per (prompt, position)."""

SUMMARY_SCHEMA: dict[str, Any] = {
    "prompt_id": pl.Int64,
    "label": pl.Utf8,
    "n_positions": pl.Int64,
    "top1_changed": pl.Int64,
    "routing_changed": pl.Int64,
    "max_kl": pl.Float64,
}
"""The columns of :func:`position_summary`, one row per prompt."""


def _selected(tap: RoutingTap, shape: tuple[int, int]) -> torch.Tensor:
    """The tap's top-k sets as a ``[B, T, E]`` membership mask (so sets compare regardless of order)."""
    indices = tap.routing().indices.long()
    member = torch.zeros(indices.shape[0], tap.layer.n_experts, dtype=torch.bool, device=indices.device)
    member.scatter_(1, indices, True)
    return member.reshape(*shape, -1)


def _one_side(
    hooks: TorchHooks, taps: list[RoutingTap], model: Any, batch: Batch
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Next-token log-probabilities ``[B, T, V]`` and each tap's membership mask, for one forward pass."""
    for tap in taps:
        tap.reset()
    logits = hooks.call(model_forward, model, batch)
    shape = (batch.input_ids.shape[0], batch.input_ids.shape[1])
    sets = [_selected(tap, shape) for tap in taps]
    for tap in taps:
        tap.reset()
    return logits.float().log_softmax(-1), sets


@torch.inference_mode()
def position_effects(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    specs: Specs,
    *,
    batch_size: int = 8,
    max_length: int = 256,
) -> pl.DataFrame:
    """One row per (prompt, position): top-1 next tokens, the base top-1's log-prob, KL and changed layers.

    The columns are :data:`POSITION_SCHEMA` (module docstring). Every position of a prompt has a
    row, its last one included (what the model would say next). Prompts longer than ``max_length``
    tokens are truncated (with a ``PromptTooLongWarning``), as a capture truncates them.
    """
    check_causal(loaded)
    layers = list(loaded.layers)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        batch = make_batch(chunk, loaded.tokenizer, max_length=max_length, padding_side="right").to(
            loaded.device
        )
        taps = [RoutingTap(layer, want_logits=False, want_input=False) for layer in layers]
        with TorchHooks(loaded.model, taps) as hooks:
            base, sets_base = _one_side(hooks, taps, loaded.model, batch)
            with intervene(loaded, specs):
                alt, sets_int = _one_side(hooks, taps, loaded.model, batch)
        top1_base, top1_int = base.argmax(-1), alt.argmax(-1)
        logp_base = base.gather(-1, top1_base[..., None])[..., 0]
        logp_int = alt.gather(-1, top1_base[..., None])[..., 0]
        kl = (base.exp() * (base - alt)).sum(-1).clamp_min(0)
        changed = torch.stack([(a != b).any(-1) for a, b in zip(sets_base, sets_int, strict=True)], -1)
        numbers = torch.tensor([layer.layer for layer in layers])
        for row, prompt in enumerate(chunk):
            n = batch.lengths[row]
            per_layer = changed[row, :n].cpu()
            columns = {
                "token_id": batch.input_ids[row, :n], "top1_base": top1_base[row, :n],
                "top1_int": top1_int[row, :n], "logp_base": logp_base[row, :n],
                "logp_int": logp_int[row, :n], "kl": kl[row, :n],
            }  # fmt: skip
            values = {k: v.cpu().tolist() for k, v in columns.items()}
            for i in range(n):
                rows.append({
                    "prompt_id": prompt.prompt_id, "label": prompt.label, "position": i,
                    **{k: v[i] for k, v in values.items()},
                    "changed_layers": numbers[per_layer[i]].tolist(),
                })  # fmt: skip
    return pl.DataFrame(rows, schema=POSITION_SCHEMA)


def position_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per prompt of a :func:`position_effects` table: its positions, how many changed top-1 and routing, max KL.

    ``top1_changed`` counts positions whose two top-1 tokens differ; ``routing_changed`` counts
    positions with at least one changed layer. Rows keep the prompts' first-seen order.
    """
    if table.height == 0:
        return pl.DataFrame(schema=SUMMARY_SCHEMA)
    return (
        table.group_by("prompt_id", "label", maintain_order=True)
        .agg(
            pl.len().cast(pl.Int64).alias("n_positions"),
            (pl.col("top1_base") != pl.col("top1_int")).sum().cast(pl.Int64).alias("top1_changed"),
            (pl.col("changed_layers").list.len() > 0).sum().cast(pl.Int64).alias("routing_changed"),
            pl.col("kl").max().alias("max_kl"),
        )
        .select(list(SUMMARY_SCHEMA))
    )

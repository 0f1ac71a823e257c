"""Expert similarity (docs/methods.md §7, "A Closer Look into MoE"): weights and outputs, merge candidates.

Two experts that compute the same function are redundant: they can be merged (or one pruned)
at little cost. Two views of "the same function":

* **Weight similarity** — cosine of the experts' flattened weights
  (:func:`workbench.interventions.expert_weights.expert_weight_similarity`). Cheap, needs no data, but
  blind to symmetries (two experts with permuted hidden units compute the same function and
  look dissimilar) and to scale.
* **Output similarity** (:func:`expert_output_similarity`) — the angular similarity
  ``1 − arccos(cos)/π`` of the outputs of experts a and b **on the same token inputs**, with
  every expert forced on (each expert is run on every token, whatever the router chose). The
  inputs are the hidden states that actually reach each MoE block when the model reads real
  text (the run's prompts). 1 = same direction, 0.5 = orthogonal, 0 = opposite.

**Per-token average, not flattened outputs.** For each token i we compute
``cos_i(a, b) = ⟨y_a(x_i), y_b(x_i)⟩ / (‖y_a(x_i)‖ ‖y_b(x_i)‖)`` and report the mean over tokens of
``1 − arccos(cos_i)/π`` (``output_angular``) and of ``cos_i`` (``output_cos``). Flattening the
``[tokens × hidden]`` outputs into one vector per expert would weight every token by its output
norm², so a handful of tokens with massive activations (BOS, delimiter tokens, super-expert
outliers) would decide the score; the per-token mean asks "how often, and how closely, do a and
b point the same way" with every token counting once. A token on which either output is exactly
zero has no direction and is left out of that pair (``n_tokens`` counts the tokens used).

**Unweighted outputs.** ``y_e`` is the expert's own output before the router's gate weight (and,
for shared experts, before any shared-expert gate such as Qwen2-MoE's sigmoid gate): gates
scale outputs and do not change their direction per token, so they would not change the cosine
anyway. Experts are computed with the per-expert forward of :mod:`workbench.models.expert_math`
(``W[e]`` slices of fused ``gate_up_proj``/``down_proj``, or each expert module called
directly), so every family ``--expert-stats`` supports works here with no per-architecture
code; other layouts raise :class:`~workbench.models.expert_math.ExpertStatsUnsupported`.

**Shared experts** (always on) are never mixed into E (docs/methods.md notation): they appear as
pseudo-experts ``n_experts + s`` with ``shared = True`` on every pair they are part of, so one
can see whether a routed expert duplicates the shared one. Their ``weight_cos`` is NaN (their
weights are laid out differently from the routed experts') and they get no ``merge_rank``
(merging an always-on expert with a routed one is not a merge).

**Uncertainty.** Tokens of one prompt are correlated, so the 95% CI is a prompt-cluster
percentile bootstrap of the ratio of sums ``Σ_p Σ_{i∈p} ang_i / Σ_p n_p``
(:func:`~workbench.analysis.stats.cluster_bootstrap`); it costs one small matrix product per
block of resamples over the per-prompt sums.

**Memory.** Nothing of size tokens × experts × hidden is ever held: prompts are processed in
batches; per MoE block only that batch's block inputs are kept, and expert outputs are computed
in token chunks of at most ``2**24`` (experts × max(hidden, experts)) elements. What is
accumulated is per-prompt sums over each expert pair — ``O(n_prompts · (E+S)²)`` per layer.

**Why in interventions.** It loads and runs the model (forcing every expert on), so it sits with
the code that runs models, above capture; ``workbench.analysis`` reads stored records only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from workbench.analysis.common import layer_info
from workbench.analysis.stats import cluster_bootstrap
from workbench.interventions.expert_weights import expert_weight_similarity
from workbench.store import Store

if TYPE_CHECKING:
    import torch
    from torch import nn

    from workbench.models.discovery import MoELayer
    from workbench.models.loading import LoadedModel

__all__ = [
    "MERGE_MIN_ANGULAR",
    "OUTPUT_SIMILARITY_COLUMNS",
    "SIMILARITY_COLUMNS",
    "expert_output_similarity",
    "expert_outputs",
    "expert_similarity",
]

OUTPUT_SIMILARITY_COLUMNS: tuple[str, ...] = (
    "layer", "expert_a", "expert_b", "shared", "output_cos", "output_angular", "ci_low", "ci_high",
    "n_tokens", "n_prompts",
)  # fmt: skip
SIMILARITY_COLUMNS: tuple[str, ...] = (
    "layer", "expert_a", "expert_b", "shared", "weight_cos", "output_cos", "output_angular", "ci_low",
    "ci_high", "n_tokens", "n_prompts", "merge_rank", "merge_candidate",
)  # fmt: skip
#: A routed pair is a merge candidate only when the lower end of the 95% CI of its output angular
#: similarity is at least this: outputs within 45° of each other on the average token (mean
#: cos ≈ 0.71). 0.5 is orthogonal, so the layer's "most similar pair" alone is no candidate.
MERGE_MIN_ANGULAR = 0.75

#: Largest number of elements (tokens × experts × max(hidden, experts)) of one output chunk.
_CHUNK_ELEMENTS = 1 << 24
#: Pairs per bootstrap call, so the (n_boot × pairs) replicate matrix stays small.
_BOOT_COLUMNS = 4096


def _routed_modules(experts: nn.Module) -> list[nn.Module] | None:
    from workbench.models.expert_math import expert_modules

    return expert_modules(experts)


def _n_routed(layer: MoELayer) -> int:
    """Number of routed experts that have weights; raises ExpertStatsUnsupported for unknown layouts."""
    from workbench.models.expert_math import ExpertStatsUnsupported

    experts = layer.experts
    if all(hasattr(experts, a) for a in ("gate_up_proj", "down_proj", "act_fn")):
        return int(experts.gate_up_proj.shape[0])  # type: ignore[index]
    modules = _routed_modules(experts)
    if modules is not None:
        return len(modules)
    raise ExpertStatsUnsupported(
        f"expert output similarity is not available for {type(experts).__name__} ({layer.path}): its "
        "experts are neither fused gate_up_proj/down_proj with an act_fn nor separate modules, so they "
        "cannot be run one by one. Use weight similarity only, or register a family whose experts can "
        "be sliced."
    )


def _call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(x)
    hidden: torch.Tensor = out[0] if isinstance(out, tuple) else out
    return hidden


def expert_outputs(layer: MoELayer, x: torch.Tensor, *, include_shared: bool = True) -> torch.Tensor:
    """Every expert's unweighted output on every token: ``[n_tokens, E (+ S), hidden]``.

    ``x`` is ``[n_tokens, hidden]`` (the MoE block's input). Routed experts come first in
    expert order, then the shared experts (pseudo-experts ``n_experts + s``). Fused experts are
    recomputed from their ``W[e]`` slices, module experts are called (module docstring).
    """
    import torch

    from workbench.models.expert_math import fused_hidden, fused_output

    n_routed = _n_routed(layer)
    modules = _routed_modules(layer.experts)
    outs: list[torch.Tensor] = []
    for e in range(n_routed):
        if modules is not None:
            outs.append(_call(modules[e], x))
        else:
            outs.append(fused_output(layer.experts, e, fused_hidden(layer.experts, e, x)))
    if include_shared:
        outs.extend(_call(m, x) for m in layer.shared)
    return torch.stack(outs, dim=1)


def _encode_batches(
    tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int | None
) -> Iterable[Any]:
    from workbench.capture.batching import make_batch
    from workbench.probefile import Prompt

    side = getattr(tokenizer, "padding_side", "right") or "right"
    for start in range(0, len(texts), batch_size):
        chunk = [Prompt(start + i, text, "") for i, text in enumerate(texts[start : start + batch_size])]
        yield make_batch(chunk, tokenizer, max_length=max_length, padding_side=side)


class _PairSums:
    """Per-prompt sums of per-token angular similarity, cosine and token counts over expert pairs."""

    def __init__(self, n_prompts: int, n_members: int, device: torch.device) -> None:
        import torch

        self.n_members = n_members
        self.iu = torch.triu_indices(n_members, n_members, offset=1, device=device)
        shape = (n_prompts, int(self.iu.shape[1]))
        self.angular = torch.zeros(shape, dtype=torch.float64, device=device)
        self.cosine = torch.zeros(shape, dtype=torch.float64, device=device)
        self.count = torch.zeros(shape, dtype=torch.float64, device=device)

    def add(self, y: torch.Tensor, prompt: torch.Tensor) -> None:
        """Add the outputs ``y [n, M, H]`` of ``n`` tokens belonging to prompts ``prompt [n]``."""
        import torch

        y = y.to(torch.float64)
        norm = y.norm(dim=-1)  # [n, M]
        valid = norm > 0
        u = y / torch.where(valid, norm, torch.ones_like(norm)).unsqueeze(-1)
        gram = torch.bmm(u, u.transpose(1, 2))  # [n, M, M]
        a, b = self.iu
        cos = gram[:, a, b].clamp(-1.0, 1.0)
        ok = valid[:, a] & valid[:, b]
        zero = torch.zeros((), dtype=torch.float64, device=y.device)
        ang = torch.where(ok, 1.0 - torch.arccos(cos) / math.pi, zero)
        self.angular.index_add_(0, prompt, ang)
        self.cosine.index_add_(0, prompt, torch.where(ok, cos, zero))
        self.count.index_add_(0, prompt, ok.to(torch.float64))


def _resolve(model: Any, tokenizer: Any, device: str | None) -> tuple[nn.Module, Any, list[MoELayer]]:
    """(module, tokenizer, MoE layers) from a LoadedModel, a name/path for load_model, or a module."""
    from torch import nn

    from workbench.models.discovery import find_moe_layers
    from workbench.models.loading import LoadedModel, load_model

    if isinstance(model, (str, Path)):
        model = load_model(model, device=device)
    if isinstance(model, LoadedModel):
        return model.model, tokenizer or model.tokenizer, model.layers
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("an in-memory model needs its tokenizer: pass tokenizer=..., or a LoadedModel")
        return model, tokenizer, find_moe_layers(model)
    raise TypeError(
        f"model must be a LoadedModel (workbench.models.loading.load_model), a model name or path, or an "
        f"nn.Module with tokenizer=...; got {type(model).__name__}"
    )


def expert_output_similarity(
    model: LoadedModel | nn.Module | str,
    inputs: Sequence[str],
    layers: Iterable[int] | None = None,
    *,
    tokenizer: Any = None,
    max_tokens: int = 4096,
    batch_size: int = 8,
    max_length: int | None = 512,
    include_shared: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """Mean per-token angular similarity of every pair of experts' outputs (module docstring).

    ``inputs`` are prompt texts (each one a bootstrap cluster), read in order until
    ``max_tokens`` real tokens have been seen (the last batch is cut there). ``layers`` selects
    MoE layers by the model's block index. One row per layer and distinct pair
    ``expert_a < expert_b`` (shared pseudo-experts included when ``include_shared``), sorted by
    layer, expert_a, expert_b; columns :data:`OUTPUT_SIMILARITY_COLUMNS`.
    """
    import torch

    from workbench.models.forward import model_forward

    module, tok, moe_layers = _resolve(model, tokenizer, None)
    if layers is not None:
        wanted = {int(x) for x in layers}
        moe_layers = [layer for layer in moe_layers if layer.layer in wanted]
    texts = list(inputs)
    if not texts:
        raise ValueError("expert output similarity needs at least one input text")
    members = {layer.layer: _n_routed(layer) for layer in moe_layers}  # raises for unknown layouts
    device = next(module.parameters()).device
    sums: dict[int, _PairSums] = {}
    for layer in moe_layers:
        n_members = members[layer.layer] + (layer.n_shared if include_shared else 0)
        sums[layer.layer] = _PairSums(len(texts), n_members, device)

    captured: dict[int, torch.Tensor] = {}

    def tap(index: int) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured[index] = (args[0] if args else kwargs["hidden_states"]).detach()

        return hook

    handles = [
        layer.block.register_forward_pre_hook(tap(layer.layer), with_kwargs=True) for layer in moe_layers
    ]
    seen = 0
    try:
        with torch.inference_mode():
            for batch in _encode_batches(tok, texts, batch_size, max_length):
                if seen >= max_tokens:
                    break
                captured.clear()
                batch = batch.to(device)
                model_forward(module, batch)
                keep = batch.keep
                prompt_of = torch.tensor(
                    [
                        p.prompt_id
                        for p, n in zip(batch.prompts, batch.lengths, strict=True)
                        for _ in range(n)
                    ],
                    device=device,
                )
                take = min(int(keep.numel()), max_tokens - seen)
                keep, prompt_of = keep[:take], prompt_of[:take]
                seen += take
                for layer in moe_layers:
                    hidden = captured[layer.layer]
                    x = hidden.reshape(-1, hidden.shape[-1])[keep]
                    acc = sums[layer.layer]
                    n_members = members[layer.layer] + (layer.n_shared if include_shared else 0)
                    step = max(1, _CHUNK_ELEMENTS // (n_members * max(int(x.shape[-1]), n_members)))
                    for start in range(0, int(x.shape[0]), step):
                        y = expert_outputs(layer, x[start : start + step], include_shared=include_shared)
                        acc.add(y, prompt_of[start : start + step])
    finally:
        for handle in handles:
            handle.remove()

    frames = [
        _layer_frame(layer, members[layer.layer], sums[layer.layer], n_boot=n_boot, seed=seed)
        for layer in moe_layers
    ]
    if not frames:
        return pl.DataFrame(schema=_OUTPUT_SCHEMA)
    return pl.concat(frames).sort("layer", "expert_a", "expert_b")


_OUTPUT_SCHEMA = {
    "layer": pl.Int32, "expert_a": pl.Int32, "expert_b": pl.Int32, "shared": pl.Boolean,
    "output_cos": pl.Float64, "output_angular": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
    "n_tokens": pl.Int64, "n_prompts": pl.Int64,
}  # fmt: skip


def _layer_frame(layer: MoELayer, n_routed: int, acc: _PairSums, *, n_boot: int, seed: int) -> pl.DataFrame:
    """The tidy rows of one layer from its per-prompt pair sums."""
    ang = acc.angular.cpu().numpy()
    cos = acc.cosine.cpu().numpy()
    cnt = acc.count.cpu().numpy()
    used = cnt.sum(axis=1) > 0  # prompts that contributed (the rest were cut by max_tokens)
    ang, cos, cnt = ang[used], cos[used], cnt[used]
    n_pairs = ang.shape[1]
    est, low, high = np.full(n_pairs, np.nan), np.full(n_pairs, np.nan), np.full(n_pairs, np.nan)
    for start in range(0, n_pairs, _BOOT_COLUMNS):
        cols = slice(start, start + _BOOT_COLUMNS)
        # the same integer seed draws the same prompt resamples for every block of pairs
        est[cols], low[cols], high[cols] = cluster_bootstrap(
            ang[:, cols], cnt[:, cols], n_boot=n_boot, seed=seed
        )
    total = cnt.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_cos = np.where(total > 0, cos.sum(axis=0) / np.where(total > 0, total, 1.0), np.nan)
    a, b = (t.cpu().numpy().astype(np.int64) for t in acc.iu)
    ids = np.concatenate([np.arange(n_routed), layer.n_experts + np.arange(acc.n_members - n_routed)])
    return pl.DataFrame(
        {
            "layer": np.full(n_pairs, layer.layer, np.int32),
            "expert_a": ids[a].astype(np.int32),
            "expert_b": ids[b].astype(np.int32),
            "shared": (a >= n_routed) | (b >= n_routed),
            "output_cos": mean_cos,
            "output_angular": est,
            "ci_low": low,
            "ci_high": high,
            "n_tokens": total.astype(np.int64),
            "n_prompts": (cnt > 0).sum(axis=0).astype(np.int64),
        },
        schema=_OUTPUT_SCHEMA,
    )


def _run_texts(store: Store, run_id: str, max_prompts: int) -> list[str]:
    """Up to ``max_prompts`` prompt texts of the run, round-robin over labels (balanced), by prompt id."""
    prompts = store.prompts(run_id).sort("prompt_id")
    if prompts.height == 0:
        raise ValueError(f"run {run_id!r} has no prompts to run the model on")
    ranked = prompts.with_columns(
        pl.col("prompt_id").rank("ordinal").over(pl.col("label").fill_null("")).alias("_rank")
    ).sort("_rank", "prompt_id")
    return [str(t) for t in ranked["text"].head(max_prompts).to_list()]


def expert_similarity(
    store: Store,
    run_id: str,
    model: LoadedModel | nn.Module | str | None = None,
    layers: Iterable[int] | None = None,
    *,
    tokenizer: Any = None,
    device: str | None = None,
    max_prompts: int = 64,
    max_tokens: int = 4096,
    batch_size: int = 8,
    include_shared: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """Weight and output similarity of every expert pair of the run's model, with merge ranks.

    The catalogued ``expert-similarity`` analysis (docs/methods.md §7). ``model`` is the model the run
    was captured from (a :class:`~workbench.models.loading.LoadedModel`, a name/path for
    ``load_model`` — loaded on ``device`` — or a module with ``tokenizer=``); its MoE layers must match the run's
    (same layer indices and expert counts), else ``ValueError``. The model reads up to
    ``max_prompts`` of the run's prompts (balanced over labels) and at most ``max_tokens``
    tokens; see :func:`expert_output_similarity`.

    One row per (layer, expert_a < expert_b), columns :data:`SIMILARITY_COLUMNS`:
    ``weight_cos`` (cosine of flattened weights; NaN for pairs with a shared pseudo-expert),
    ``output_cos`` / ``output_angular`` (mean per-token cosine / angular similarity of outputs)
    with the prompt-bootstrap CI of ``output_angular`` in ``ci_low``/``ci_high``, and
    ``merge_rank`` — 1 for the layer's most similar routed pair, by ``output_angular`` then
    ``weight_cos`` (null for pairs with a shared expert) — a rank, not a verdict: the top pair
    of a layer of unrelated experts is near-orthogonal. ``merge_candidate`` is True only for
    routed pairs whose CI lower bound ``ci_low`` is ≥ :data:`MERGE_MIN_ANGULAR`; without a CI
    (``n_boot=0`` or fewer than 2 prompts) no pair is proposed (not enough data to tell).
    """
    if model is None:
        raise ValueError("analysis 'expert-similarity' needs the model: give --model M (or model=...)")
    module, tok, moe_layers = _resolve(model, tokenizer, device)
    info = layer_info(store, run_id, layers)
    run_layers = {int(r["layer"]): int(r["n_experts"]) for r in info.iter_rows(named=True)}
    model_layers = {layer.layer: layer for layer in moe_layers}
    common = sorted(set(run_layers) & set(model_layers))
    mismatched = [x for x in common if model_layers[x].n_experts != run_layers[x]]
    if not common or mismatched:
        raise ValueError(
            f"the model does not match run {run_id!r}: the run has MoE layers {sorted(run_layers)} with "
            f"{sorted(set(run_layers.values()))} experts, the model {sorted(model_layers)} with "
            f"{sorted({layer.n_experts for layer in moe_layers})}; give the model the run was captured from"
        )
    texts = _run_texts(store, run_id, max_prompts)
    outputs = expert_output_similarity(
        module, texts, common, tokenizer=tok, max_tokens=max_tokens, batch_size=batch_size,
        include_shared=include_shared, n_boot=n_boot, seed=seed,
    )  # fmt: skip
    weights = []
    for x in common:
        sim = expert_weight_similarity(model_layers[x].experts).filter(pl.col("a") < pl.col("b"))
        weights.append(
            sim.select(
                pl.lit(x, pl.Int32).alias("layer"),
                pl.col("a").cast(pl.Int32).alias("expert_a"),
                pl.col("b").cast(pl.Int32).alias("expert_b"),
                pl.col("cosine").cast(pl.Float64).alias("weight_cos"),
            )
        )
    out = outputs.join(pl.concat(weights), on=["layer", "expert_a", "expert_b"], how="left").with_columns(
        pl.col("weight_cos").fill_null(math.nan)
    )
    ranked = (
        out.filter(~pl.col("shared"))
        .with_columns(pl.col("output_angular", "weight_cos").fill_nan(None))  # NaN would sort first
        .sort(
            ["layer", "output_angular", "weight_cos", "expert_a", "expert_b"],
            descending=[False, True, True, False, False],
            nulls_last=True,
        )
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("layer").alias("merge_rank"))
        .select("layer", "expert_a", "expert_b", "merge_rank")
    )
    out = out.join(ranked, on=["layer", "expert_a", "expert_b"], how="left").with_columns(
        (~pl.col("shared") & (pl.col("ci_low").fill_nan(None) >= MERGE_MIN_ANGULAR))
        .fill_null(False)
        .alias("merge_candidate")
    )
    return out.select(list(SIMILARITY_COLUMNS)).sort("layer", "expert_a", "expert_b")

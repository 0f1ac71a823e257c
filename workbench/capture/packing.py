"""From a batch's device tensors to the store's Arrow tables.

Two steps, split so the device never waits on the host:

1. :func:`to_host` (on the compute thread) selects the real tokens and starts one ``non_blocking``
   copy per tensor into pinned host memory, recording a CUDA event;
2. :func:`to_arrow` (on the writer thread) waits for that event and builds Arrow columns
   zero-copy from the host tensors' NumPy views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from workbench.capture.batching import Batch
from workbench.capture.generation import RESPONSE_META_KEY
from workbench.capture.modes import LogitsMode
from workbench.capture.records import BatchCapture


@dataclass
class HostBatch:
    """A batch's records on the host (possibly still being copied until ``event`` completes)."""

    batch: Batch
    layers: list[int]
    token_ids: torch.Tensor  # [n]
    nll: torch.Tensor  # [n]
    indices: list[torch.Tensor]  # per layer [n,k]
    weights: list[torch.Tensor]  # per layer [n,k]
    logits: list[torch.Tensor | None]  # per layer [n,E]
    stats: list[tuple[torch.Tensor, ...]] | None
    event: torch.cuda.Event | None
    n_experts: list[int] | None = None  # per layer, for shared pseudo-expert ids


def _host(t: torch.Tensor, pin: bool, home: torch.device | None = None) -> torch.Tensor:
    """``t`` on the host. The copy is asynchronous only from ``home`` (the batch's device, whose
    stream the batch's event covers); a tensor on another device (a model divided by a device_map)
    is copied synchronously."""
    if t.device.type == "cpu":
        return t
    if not pin or (home is not None and t.device != home):
        return t.to("cpu")
    out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
    out.copy_(t, non_blocking=True)
    return out


def _keep_on(keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The real-token index on ``t``'s device (layers of a divided model live on different devices)."""
    return keep if keep.device == t.device else keep.to(t.device)


def _per_layer(
    tensors: list[torch.Tensor], keep: torch.Tensor, dtype: torch.dtype, pin: bool, home: torch.device
) -> list[torch.Tensor]:
    """Select kept rows of each layer's tensor and copy them to the host in one transfer when shapes
    and devices allow (a model divided by a device_map has layers on several devices)."""
    selected = [t.index_select(0, _keep_on(keep, t)).to(dtype) for t in tensors]
    if len({t.shape for t in selected}) == 1 and len({t.device for t in selected}) == 1:
        return list(_host(torch.stack(selected), pin, home).unbind(0))
    return [_host(t, pin, home) for t in selected]


def to_host(batch: Batch, cap: BatchCapture, logits_mode: LogitsMode) -> HostBatch:
    """Select real tokens and start the device→host copies (no host sync on CPU or CUDA).

    The real-token index ``batch.keep`` was computed on the host when the batch was built, so no
    ``nonzero`` on the device (which would sync) is needed; all layers of a kind travel together.
    """
    keep = batch.keep
    home = batch.input_ids.device
    pin = home.type == "cuda"
    layers = sorted(cap.routing)
    routes = [cap.routing[layer] for layer in layers]
    indices = _per_layer([r.indices for r in routes], keep, torch.int16, pin, home)
    weights = _per_layer([r.weights for r in routes], keep, torch.float32, pin, home)
    logits: list[torch.Tensor | None]
    if logits_mode == "none" or any(r.logits is None for r in routes):
        logits = [None] * len(layers)
    else:
        # fp16 mode rounds to half precision on the device and ships half: half the bytes to copy, and
        # the store keeps them as 2-byte floats in its shards
        raw = [r.logits for r in routes if r.logits is not None]
        dtype = torch.float16 if logits_mode == "fp16" else torch.float32
        logits = list(_per_layer(raw, keep, dtype, pin, home))
    stats: list[tuple[torch.Tensor, ...]] | None = None
    n_experts = [cap.stats[layer].n_experts for layer in layers] if cap.stats else None
    if cap.stats:
        stats = []
        for layer in layers:
            s = cap.stats[layer]
            parts = [s.out_norm, s.zero_frac]
            if s.shared_norm is not None and s.shared_zero is not None:
                parts += [s.shared_norm, s.shared_zero]
            stats.append(tuple(_host(p.index_select(0, _keep_on(keep, p)).float(), pin, home) for p in parts))
    event = None
    if pin:
        event = torch.cuda.Event()
        event.record()
    return HostBatch(
        batch=batch,
        layers=layers,
        token_ids=_host(batch.input_ids.reshape(-1).index_select(0, keep), pin),
        nll=_host(cap.nll.reshape(-1).index_select(0, _keep_on(keep, cap.nll)).float(), pin, home),
        indices=indices,
        weights=weights,
        logits=logits,
        stats=stats,
        event=event,
        n_experts=n_experts,
    )


def _list_array(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.Array:
    n = values.size // width if width else 0
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=value_type))


def _positions(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    prompt_ids = np.repeat(np.array([p.prompt_id for p in batch.prompts], dtype=np.int32), batch.lengths)
    positions = np.concatenate([np.arange(n, dtype=np.int32) for n in batch.lengths])
    return prompt_ids, positions


def _meta(batch: Batch) -> list[str | None]:
    """Each prompt's ``meta`` as JSON; a generated response is added under :data:`RESPONSE_META_KEY`."""
    if batch.responses is None:
        return [None if p.meta is None else json.dumps(p.meta) for p in batch.prompts]
    return [
        json.dumps({**(p.meta or {}), RESPONSE_META_KEY: r.as_meta()})
        for p, r in zip(batch.prompts, batch.responses, strict=True)
    ]


def _segments(batch: Batch) -> pa.Array:
    """``tokens.segment`` of a generated batch: 'prompt' for the first ``n_prompt`` tokens of a row, then 'response'."""
    assert batch.n_prompt is not None
    labels = np.concatenate([np.arange(n) >= k for n, k in zip(batch.lengths, batch.n_prompt, strict=True)])
    return pa.DictionaryArray.from_arrays(
        pa.array(labels.astype(np.int8)), pa.array(["prompt", "response"])
    ).cast(pa.string())


def to_arrow(host: HostBatch, tokenizer: object) -> dict[str, pa.Table | None]:
    """Arrow tables (prompts, tokens, routing, expert_stats) for the store, without run_id."""
    if host.event is not None:
        host.event.synchronize()
    batch = host.batch
    prompt_ids, positions = _positions(batch)
    n, n_layers = prompt_ids.size, len(host.layers)
    token_ids = host.token_ids.numpy().astype(np.int32)
    tokens_text = tokenizer.convert_ids_to_tokens(token_ids.tolist())  # type: ignore[attr-defined]
    nll = host.nll.numpy()
    prompts = pa.table(
        {
            "prompt_id": pa.array([p.prompt_id for p in batch.prompts], pa.int32()),
            "text": pa.array([p.text for p in batch.prompts], pa.string()),
            "label": pa.array([p.label for p in batch.prompts], pa.string()),
            "pair_id": pa.array([p.pair_id for p in batch.prompts], pa.string()),
            "split": pa.array([p.split for p in batch.prompts], pa.string()),
            "meta": pa.array(_meta(batch), pa.string()),
            "n_tokens": pa.array(batch.lengths, pa.int32()),
            # no content_hash: the store computes it at ingest from the text and these token ids
        }
    )
    token_columns: dict[str, pa.Array | np.ndarray] = {
        "prompt_id": prompt_ids,
        "position": positions,
        "token_id": token_ids,
        "token": pa.array([str(t) for t in tokens_text], pa.string()),
        "nll": pa.array(nll, pa.float32(), mask=np.isnan(nll)),
    }
    if batch.n_prompt is not None:  # a prompt-only batch leaves segment to its default, 'prompt'
        token_columns["segment"] = _segments(batch)
    tokens = pa.table(token_columns)
    # rows ordered (prompt, position, layer): stack layers on axis 1 then flatten
    k = host.indices[0].shape[1]
    idx = np.stack([t.numpy() for t in host.indices], axis=1)  # [n, L, k]
    w = np.stack([t.numpy() for t in host.weights], axis=1)
    columns: dict[str, pa.Array | np.ndarray] = {
        "prompt_id": np.repeat(prompt_ids, n_layers),
        "position": np.repeat(positions, n_layers),
        "layer": np.tile(np.array(host.layers, dtype=np.int32), n),
        "experts": _list_array(idx, k, pa.int16()),
        "weights": _list_array(w, k, pa.float32()),
    }
    if host.logits[0] is not None:
        lg = np.stack([t.numpy() for t in host.logits if t is not None], axis=1)
        columns["logits"] = _list_array(
            lg, lg.shape[-1], pa.float16() if lg.dtype == np.float16 else pa.float32()
        )
    else:
        columns["logits"] = pa.nulls(n * n_layers, pa.list_(pa.float32()))
    routing = pa.table(columns)
    return {
        "prompts": prompts,
        "tokens": tokens,
        "routing": routing,
        "expert_stats": _stats_table(host, prompt_ids, positions),
    }


def _stats_table(host: HostBatch, prompt_ids: np.ndarray, positions: np.ndarray) -> pa.Table | None:
    if host.stats is None:
        return None
    parts: list[pa.Table] = []
    assert host.n_experts is not None
    for layer, idx, stat, n_experts in zip(
        host.layers, host.indices, host.stats, host.n_experts, strict=True
    ):
        ids = idx.numpy()
        k = ids.shape[1]
        parts.append(
            pa.table(
                {
                    "prompt_id": np.repeat(prompt_ids, k),
                    "position": np.repeat(positions, k),
                    "layer": np.full(ids.size, layer, np.int32),
                    "expert": ids.reshape(-1).astype(np.int16),
                    "out_norm": stat[0].numpy().reshape(-1),
                    "zero_frac": stat[1].numpy().reshape(-1),
                }
            )
        )
        if len(stat) == 4:
            s = stat[2].shape[1]
            parts.append(
                pa.table(
                    {
                        "prompt_id": np.repeat(prompt_ids, s),
                        "position": np.repeat(positions, s),
                        "layer": np.full(prompt_ids.size * s, layer, np.int32),
                        "expert": np.tile(
                            np.arange(n_experts, n_experts + s, dtype=np.int16), prompt_ids.size
                        ),
                        "out_norm": stat[2].numpy().reshape(-1),
                        "zero_frac": stat[3].numpy().reshape(-1),
                    }
                )
            )
    return pa.concat_tables(parts)

"""Held-out measurements of a zoo model: per-domain loss, refusal rates, routing-probe accuracy.

- :func:`domain_losses`: mean next-token NLL (nats) over held-out corpus rows of each domain.
- :func:`refusal_eval`: the ``refusal`` suite asked in the chat format, greedy continuations
  scored by :mod:`workbench.behaviour.judges`.
- :func:`routing_probe`: capture prompts through the workbench capture engine into a temporary
  DuckDB, build per-prompt, per-layer histograms of selected experts (counts over the prompt's
  tokens and top-k slots, normalised to sum 1) and cross-validate a logistic regression
  (StratifiedKFold 5, shuffled, seed 0; folds split prompts, never tokens).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from workbench.behaviour import chat
from workbench.behaviour.generate import greedy_continuations
from workbench.behaviour.judges import is_refusal
from workbench.data.corpus import iter_corpus
from workbench.probefile import Prompt


@torch.inference_mode()
def domain_losses(
    model: Any,
    tokenizer: Any,
    domains: Sequence[str],
    rows: int = 200,
    max_length: int = 128,
    batch_size: int = 32,
) -> dict[str, dict[str, float]]:
    """Per domain: mean token NLL over the first ``rows`` held-out rows (``<bos> text <eos>``)."""
    out: dict[str, dict[str, float]] = {}
    for domain in domains:
        texts = [r["text"] for r in iter_corpus(domain, split="heldout")][:rows]
        nll, count = 0.0, 0
        for start in range(0, len(texts), batch_size):
            ids = tokenizer(texts[start : start + batch_size])["input_ids"]
            ids = [[*x, tokenizer.eos_token_id][:max_length] for x in ids]
            width = max(map(len, ids))
            batch = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for i, x in enumerate(ids):
                batch[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            logits = model(input_ids=batch, attention_mask=mask).logits[:, :-1].float()
            target, valid = batch[:, 1:], mask[:, 1:].bool()
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            nll += float(losses[valid].sum())
            count += int(valid.sum())
        out[domain] = {"nll": nll / max(1, count), "rows": len(texts), "tokens": count}
    return out


def refusal_eval(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_new_tokens: int = 12
) -> dict[str, Any]:
    """Refusal rate per label of ``prompts`` (asked as :func:`chat.prompt`), and examples."""
    conts = greedy_continuations(
        model, tokenizer, [chat.prompt(p.text) for p in prompts], max_new_tokens=max_new_tokens
    )
    labels = sorted({p.label for p in prompts})
    rates: dict[str, float] = {}
    for label in labels:
        flags = [is_refusal(c) for p, c in zip(prompts, conts, strict=True) if p.label == label]
        rates[label] = sum(flags) / len(flags)
    examples = [
        {"label": p.label, "request": p.text, "continuation": c, "refusal": is_refusal(c)}
        for p, c in list(zip(prompts, conts, strict=True))[:6]
    ]
    counts = {label: sum(p.label == label for p in prompts) for label in labels}
    return {"rates": rates, "counts": counts, "max_new_tokens": max_new_tokens, "examples": examples}


def routing_histograms(routing: pl.DataFrame, prompts: pl.DataFrame, n_experts: int) -> dict[int, Any]:
    """Layer -> (X ``[n_prompts, n_experts]`` normalised expert counts, y labels), prompts in id order."""
    counts = (
        routing.select("prompt_id", "layer", "experts")
        .explode("experts")
        .group_by("prompt_id", "layer", "experts")
        .len()
    )
    ids = prompts.sort("prompt_id")["prompt_id"].to_list()
    row = {pid: i for i, pid in enumerate(ids)}
    y = np.array(prompts.sort("prompt_id")["label"].to_list())
    out: dict[int, Any] = {}
    for layer in sorted(counts["layer"].unique().to_list()):
        part = counts.filter(pl.col("layer") == layer)
        x = np.zeros((len(ids), n_experts))
        for pid, expert, n in part.select("prompt_id", "experts", "len").iter_rows():
            x[row[pid], expert] += n
        x /= np.maximum(x.sum(axis=1, keepdims=True), 1)
        out[int(layer)] = (x, y)
    return out


def cv_accuracy(x: Any, y: Any, folds: int = 5, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, x, y, cv=cv)))


def routing_probe(loaded: Any, prompts: Sequence[Prompt], db: str | Path | None = None) -> dict[str, Any]:
    """Capture ``prompts``, then the cross-validated probe accuracy per layer and over all layers."""
    from workbench.capture.engine import capture
    from workbench.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(db) if db is not None else Path(tmp) / "probe.duckdb"
        run = capture(loaded, list(prompts), path, progress=False)
        with Store(path) as store:
            routing = store.routing(run, logits=False)
            table = store.prompts(run)
    n_experts = loaded.layers[0].n_experts
    hists = routing_histograms(routing, table, n_experts)
    labels, counts = np.unique(table["label"].to_numpy(), return_counts=True)
    per_layer = {layer: cv_accuracy(x, y) for layer, (x, y) in hists.items()}
    x_all = np.concatenate([x for x, _ in hists.values()], axis=1)
    y_all = next(iter(hists.values()))[1]
    return {
        "per_layer": per_layer,
        "all_layers": cv_accuracy(x_all, y_all),
        "chance": float(counts.max() / counts.sum()),
        "labels": {str(k): int(v) for k, v in zip(labels, counts, strict=True)},
        "n_prompts": len(table),
    }

"""Per-prompt metrics that interventions are judged by: a behaviour margin, a gold answer's log-prob,
and exact match of a greedy continuation (docs/methods.md §5, §8, §9).

A :class:`Metric` says how a prompt is asked (``ask``) and how the next-token log-probabilities at
the answer position score it (``score``: one differentiable value per prompt, so the same metric
drives true ablation and the gradient-based attribution estimate).

* :func:`behaviour_margin`: ``log p(yes₀) − log p(no₀)`` of a :class:`Behaviour` (refusal).
* :func:`gold_logprob`: ``log p(first token of meta.gold)`` after the prompt, teacher-forced — the
  smooth version of a task's exact match (the ``tasks`` suite: brackets, arithmetic). The gold is
  tokenised on its own, so a tokenizer that would merge it with the prompt's last characters sees
  a slightly different split; the exact-match metric has no such caveat.
* :func:`exact_match`: share of prompts whose greedy continuation starts with ``meta.gold``
  (for numbers: not followed by another digit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workbench.behaviour.generate import greedy_continuations
from workbench.behaviour.registry import Behaviour
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt

__all__ = [
    "Metric",
    "as_metric",
    "behaviour_margin",
    "exact_match",
    "gold_logprob",
    "metric_values",
    "prompt_batches",
]


@dataclass(frozen=True)
class Metric:
    """How to ask a prompt and score the answer position's log-probabilities ``[B, V]`` (one value per prompt)."""

    name: str
    ask: Callable[[Prompt], str]
    score: Callable[[torch.Tensor, Sequence[Prompt]], torch.Tensor]


def _first_token(loaded: LoadedModel, text: str) -> int:
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{text!r} encodes to no tokens")
    return int(ids[0])


def behaviour_margin(loaded: LoadedModel, behaviour: Behaviour) -> Metric:
    """``log p(yes₀) − log p(no₀)`` where the behaviour's answer starts (positive: the behaviour)."""
    yes, no = _first_token(loaded, behaviour.yes), _first_token(loaded, behaviour.no)
    if yes == no:
        raise ValueError(f"behaviour {behaviour.name!r}: its two answers need different first tokens")
    return Metric(
        name=f"{behaviour.name}_margin",
        ask=lambda p: behaviour.ask(p.text),
        score=lambda lp, _: lp[:, yes] - lp[:, no],
    )


def _gold(prompt: Prompt) -> str:
    gold = (prompt.meta or {}).get("gold")
    if not isinstance(gold, str) or not gold:
        raise ValueError(f"prompt {prompt.prompt_id} ({prompt.label}) has no meta.gold answer to score")
    return gold


def gold_logprob(loaded: LoadedModel) -> Metric:
    """``log p(first token of meta.gold)`` right after the prompt."""

    def score(lp: torch.Tensor, prompts: Sequence[Prompt]) -> torch.Tensor:
        ids = torch.tensor([_first_token(loaded, _gold(p)) for p in prompts], device=lp.device)
        return lp.gather(1, ids[:, None])[:, 0]

    return Metric(name="gold_logprob", ask=lambda p: p.text, score=score)


def as_metric(loaded: LoadedModel, target: Metric | Behaviour) -> Metric:
    """A :class:`Metric` as is; a :class:`Behaviour` as its margin."""
    return target if isinstance(target, Metric) else behaviour_margin(loaded, target)


def prompt_batches(
    loaded: LoadedModel, prompts: Sequence[Prompt], metric: Metric, batch_size: int
) -> Iterator[tuple[list[Prompt], dict[str, torch.Tensor]]]:
    """Left-padded batches of the asked prompts (the answer position is every row's last)."""
    tok = loaded.tokenizer
    saved = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tok([metric.ask(p) for p in chunk], return_tensors="pt", padding=True)
            yield (
                chunk,
                {k: v.to(loaded.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")},
            )
    finally:
        tok.padding_side = saved


def last_logprobs(loaded: LoadedModel, enc: dict[str, Any]) -> torch.Tensor:
    """Log-probabilities of the next token at each row's last position, ``[B, V]`` in float32."""
    logits: torch.Tensor = loaded.model(**enc).logits[:, -1]
    return logits.float().log_softmax(-1)


@torch.inference_mode()
def metric_values(
    loaded: LoadedModel, prompts: Sequence[Prompt], metric: Metric, *, batch_size: int = 32
) -> np.ndarray:
    """The metric of every prompt, as float64."""
    out = [
        metric.score(last_logprobs(loaded, enc), chunk).cpu()
        for chunk, enc in prompt_batches(loaded, prompts, metric, batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def exact_match(loaded: LoadedModel, prompts: Sequence[Prompt], *, max_new_tokens: int = 6) -> np.ndarray:
    """1.0 where the greedy continuation starts with ``meta.gold`` (a number must not run on), else 0.0."""
    texts = greedy_continuations(loaded.model, loaded.tokenizer, [p.text for p in prompts], max_new_tokens)
    hits = []
    for prompt, text in zip(prompts, texts, strict=True):
        gold = _gold(prompt)
        ok = text.startswith(gold)
        if ok and gold.strip().lstrip("-").isdigit():
            rest = text[len(gold) :]
            ok = not (rest[:1].isdigit())
        hits.append(float(ok))
    return np.asarray(hits)

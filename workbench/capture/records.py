"""What a backend hands back for one batch: device tensors, no host syncs yet."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.models.decode import Routing
from workbench.models.expert_math import ExpertStats


@dataclass
class BatchCapture:
    """One batch's capture: routing per layer (flattened [B*T, ...]) and next-token NLL [B,T]."""

    routing: dict[int, Routing]
    nll: torch.Tensor
    stats: dict[int, ExpertStats] = field(default_factory=dict)


def next_token_nll(lm_logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NLL of the prediction made at each position: ``-log p(x[i+1] | x[<=i])``; NaN where undefined.

    The value at position i is the loss of the prediction the model makes *at* i, the same
    position whose routing is recorded, so routing and difficulty line up. The last real token of
    each row has no next token and gets NaN (stored as NULL).
    """
    logits = lm_logits[:, :-1]
    target = input_ids[:, 1:]
    # logsumexp - logit[target]: no [B,T,V] log-softmax tensor is materialised
    picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1).float()
    nll = torch.logsumexp(logits.float(), dim=-1) - picked
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    out = torch.full(input_ids.shape, float("nan"), device=lm_logits.device)
    out[:, :-1] = torch.where(valid, nll, torch.full_like(nll, float("nan")))
    return out

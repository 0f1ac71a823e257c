"""Greedy continuations: the text a behaviour is judged on (:mod:`workbench.behaviour.judges`).

Decoding is greedy and left-padded in batches, so a continuation depends only on its prompt and the
model; the scorers then read the new text only.

    from workbench.behaviour import chat
    from workbench.behaviour.generate import greedy_continuations
    outs = greedy_continuations(model, tokenizer, [chat.prompt(r) for r in requests], max_new_tokens=12)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["greedy_continuations"]


@torch.inference_mode()
def greedy_continuations(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 12, batch_size: int = 64
) -> list[str]:
    """Greedy decode ``max_new_tokens`` after each prompt (left-padded batches); returns the new text."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
            gen = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return out

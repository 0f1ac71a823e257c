"""A tiny MoE with a planted behaviour expert, for the intervention known-answer tests.

``planted_model()`` is a tiny random Qwen2-MoE (byte tokenizer) where, at MoE layer
``PLANT_LAYER``, every byte of the *first half* of the lowercase alphabet ("a".."m", label
``"early"``) routes to expert ``PLANT_EXPERT`` and no byte of the second half ("n".."z",
``"late"``) ever does: their embeddings carry a large ±u component and the router row of
the planted expert is aligned with u. The planted expert's output is scaled up, so removing it
must move the loss of ``early`` text and leave ``late`` text alone.
"""

from __future__ import annotations

import string

import torch

from workbench.models.loading import LoadedModel, load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt

PLANT_LAYER, PLANT_EXPERT = 0, 5
EARLY, LATE = string.ascii_lowercase[:13], string.ascii_lowercase[13:]


def _byte_id(ch: str) -> int:
    tok = byte_tokenizer()
    return int(tok(ch, add_special_tokens=False)["input_ids"][0])


@torch.no_grad()
def planted_model(seed: int = 0, strength: float = 30.0) -> LoadedModel:
    model = tiny_model("qwen2_moe", seed=seed)
    loaded = load_model(model, byte_tokenizer())
    layer = next(x for x in loaded.layers if x.layer == PLANT_LAYER)
    emb = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(emb.shape[1], generator=gen)
    u /= u.norm()
    for ch in EARLY + LATE:
        emb[_byte_id(ch)] += (1.0 if ch in EARLY else -1.0) * strength * u
    emb[loaded.tokenizer.bos_token_id] -= strength * u  # <bos> is shared by both labels: keep it off
    layer.router.weight[PLANT_EXPERT] = strength * u
    layer.experts.down_proj[PLANT_EXPERT] *= 2000.0
    return loaded


def prompts(n: int = 12, length: int = 24, seed: int = 0) -> list[Prompt]:
    """``n`` prompts of each label: random strings over the label's half of the alphabet."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for label, letters in (("early", EARLY), ("late", LATE)):
        for _ in range(n):
            idx = torch.randint(len(letters), (length,), generator=gen).tolist()
            text = "".join(letters[i] for i in idx)
            out.append(Prompt(prompt_id=len(out), text=text, label=label))
    return out


def gold_prompts(n: int = 12, length: int = 24, seed: int = 0) -> list[Prompt]:
    """:func:`prompts` with a ``meta.gold`` answer (the prompt's first letter), for task metrics.

    The planted model is random apart from the plant, so the gold is arbitrary: what the pruning
    test measures is how far its log-prob moves, not whether the model gets it right.
    """
    return [
        Prompt(prompt_id=p.prompt_id, text=p.text, label=p.label, meta={"gold": p.text[0]})
        for p in prompts(n, length, seed)
    ]

"""Capture of generated text (``capture --generate N``): continue each prompt, then read it whole.

Two passes per batch:

1. **Generate.** The prompts are left-padded and continued by ``model.generate`` for at most N new
   tokens, greedily (the argmax at each step) or, with ``sample``, drawn from the softmax of the
   logits divided by ``temperature``, cut to the ``top_p`` nucleus. Sampling draws from one
   generator *per prompt*, seeded from the run's seed and the prompt id, so a prompt's continuation
   does not depend on which prompts share its batch or on a resume. None of the model's own
   ``generation_config`` settings (repetition penalty, sampling defaults) apply: only its
   end-of-sequence ids. A row stops at its first EOS token, which is kept as the response's last
   token; otherwise it has N tokens.
2. **Read.** Prompt and response are padded into one batch and captured by one ordinary forward
   pass (the backend's). So each token's routing is that of the forward pass that *read* it, the
   same row a capture of the full token sequence as a plain prompt records (tested), and ``nll``
   keeps its definition: at position i the loss of the model's prediction of token i + 1. Over a
   response that is the model's surprise at its own next token (greedy: at its most likely token).

The routing recorded while generating (one forward per new token, with a KV cache) is not kept: it
is a different computation from reading the text, and its last token is never read at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from workbench.capture.batching import Batch, Response, pad_batch, pad_id
from workbench.models.forward import is_encoder_decoder

__all__ = [
    "RESPONSE_META_KEY",
    "PromptSampler",
    "check_generation",
    "continue_batch",
    "eos_ids",
    "prompt_seed",
    "strip_response",
]

#: The key of ``prompts.meta`` that holds a generated response (``text``, ``n_tokens``, ``stop``).
RESPONSE_META_KEY = "generated"


def check_generation(model: torch.nn.Module, name: str, generate: int, context: int | None) -> None:
    """Refuse a generating capture the model cannot do, before any run exists (``ValueError``)."""
    if is_encoder_decoder(model):
        raise ValueError(
            f"--generate continues a decoder-only model's text, and {name} is an encoder-decoder model (capture "
            "teacher-forces its decoder on the prompt): capture it without --generate"
        )
    if not callable(getattr(model, "generate", None)):
        raise ValueError(f"--generate needs a model with transformers' generate(); {name} has none")
    if context is not None and generate >= context:
        raise ValueError(
            f"--generate {generate} leaves no room for a prompt in the model's context of {context} tokens: "
            f"generate fewer than {context} tokens"
        )


def eos_ids(model: torch.nn.Module, tokenizer: Any) -> frozenset[int]:
    """The end-of-sequence ids: the model's generation config's (one or several), else the tokenizer's."""
    config = getattr(model, "generation_config", None)
    found = getattr(config, "eos_token_id", None)
    if found is None:
        found = getattr(tokenizer, "eos_token_id", None)
    if found is None:
        return frozenset()
    return frozenset(int(x) for x in (found if isinstance(found, Iterable) else [found]))


def prompt_seed(seed: int, prompt_id: int) -> int:
    """The sampling seed of one prompt: SHA-256 of the run's seed and the prompt id, as a 63-bit int."""
    digest = hashlib.sha256(f"{int(seed)}:{int(prompt_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class PromptSampler:
    """A logits processor that draws each row's next token from that row's own seeded generator.

    Given to ``model.generate`` with greedy decoding: it returns 0 at the drawn token and -inf
    elsewhere, so the argmax that follows takes the drawn token. The distribution is
    ``softmax(logits / temperature)`` restricted to the smallest set of most likely tokens whose
    probability reaches ``top_p`` (renormalised).
    """

    def __init__(self, prompt_ids: list[int], seed: int, temperature: float, top_p: float) -> None:
        self.seeds = [prompt_seed(seed, pid) for pid in prompt_ids]
        self.temperature = temperature
        self.top_p = top_p
        self._generators: list[torch.Generator] | None = None

    def _rows(self, device: torch.device) -> list[torch.Generator]:
        if self._generators is None:
            self._generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
        return self._generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            ordered, order = probs.sort(dim=-1, descending=True)
            before = ordered.cumsum(dim=-1) - ordered  # probability of the tokens ranked above each one
            ordered = ordered.masked_fill(before >= self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, ordered)
        gens = self._rows(scores.device)
        picks = torch.cat([torch.multinomial(probs[r], 1, generator=gens[r]) for r in range(probs.shape[0])])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, picks.unsqueeze(-1), 0.0)


@contextmanager
def _neutral_generation_config(
    model: Any, eos: frozenset[int], pad: int, max_new_tokens: int
) -> Iterator[Any]:
    """The model's ``generation_config`` replaced, for the block, by greedy decoding of ``max_new_tokens``
    that sets only the EOS and pad ids besides.

    transformers fills every setting the call leaves unset from the model's own generation config
    (a checkpoint's repetition penalty, ``do_sample``, ``top_k``...), which would silently change
    what "greedy" means from model to model.
    """
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig(
        eos_token_id=sorted(eos) or None,
        pad_token_id=pad,
        bos_token_id=getattr(saved, "bos_token_id", None),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
    )
    try:
        yield model.generation_config
    finally:
        model.generation_config = saved


def _response(new: list[int], eos: frozenset[int], tokenizer: Any) -> tuple[list[int], Response]:
    """One row's generated ids cut after its first EOS (kept), and its :class:`Response`."""
    stop = "length"
    for i, token in enumerate(new):
        if token in eos:
            new, stop = new[: i + 1], "eos"
            break
    text = tokenizer.decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return new, Response(text=str(text), n_tokens=len(new), stop=stop)


def continue_batch(
    model: Any,
    tokenizer: Any,
    batch: Batch,
    *,
    max_new_tokens: int,
    padding_side: str,
    device: torch.device,
    sample: bool = False,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Batch:
    """``batch`` (prompts, on the host) continued by up to ``max_new_tokens`` each: the batch to capture.

    The returned batch holds prompt and response of each row, padded on ``padding_side``, with
    ``n_prompt`` and ``responses`` set; see the module docstring for how the response is chosen.
    """
    for prompt in batch.prompts:
        if prompt.meta and RESPONSE_META_KEY in prompt.meta:
            raise ValueError(
                f"prompt {prompt.prompt_id}: its meta has a {RESPONSE_META_KEY!r} key, where capture --generate "
                "stores the response; rename that key in the probe file"
            )
    prompts = [batch.row_ids(r) for r in range(len(batch.prompts))]
    pad = pad_id(tokenizer)
    eos = eos_ids(model, tokenizer)
    left = pad_batch(batch.prompts, prompts, tokenizer, padding_side="left")
    processors = None
    if sample:
        from transformers import LogitsProcessorList

        sampler = PromptSampler([p.prompt_id for p in batch.prompts], seed, temperature, top_p)
        processors = LogitsProcessorList([sampler])
    with _neutral_generation_config(model, eos, pad, max_new_tokens) as config:
        out = model.generate(
            input_ids=left.input_ids.to(device),
            attention_mask=left.mask.to(device),
            generation_config=config,
            logits_processor=processors,
        )
    new_rows = out[:, left.input_ids.shape[1] :].tolist()
    sequences: list[list[int]] = []
    responses: list[Response] = []
    for ids, new in zip(prompts, new_rows, strict=True):
        kept, response = _response(new, eos, tokenizer)
        sequences.append(ids + kept)
        responses.append(response)
    return pad_batch(
        batch.prompts,
        sequences,
        tokenizer,
        padding_side=padding_side,
        n_prompt=[len(ids) for ids in prompts],
        responses=responses,
    )


def strip_response(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored prompt's ``meta`` without the response capture added: the prompt's own meta again."""
    if not meta or RESPONSE_META_KEY not in meta:
        return meta
    rest = {k: v for k, v in meta.items() if k != RESPONSE_META_KEY}
    return rest or None

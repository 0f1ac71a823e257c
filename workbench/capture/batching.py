"""Tokenise prompts into padded batches that remember where the real tokens are.

Positions index the tokenizer's default encoding of each text (its own special tokens included).
Both padding sides are handled: ``position_ids`` are computed from the attention mask so a
left-padded row sees the same positions as a right-padded one, and padding is masked out before
anything reaches the store. With ``--chat`` the text is first put in the tokenizer's chat template
(:func:`chat_encoder`), and positions index that encoding.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from types import TracebackType
from typing import Any

import torch

from workbench.probefile import Prompt


class PromptTooLongWarning(UserWarning):
    """A prompt was truncated to --max-length tokens, or to the model's context."""

    def __init__(self, message: str, prompt_id: int = -1) -> None:
        super().__init__(message)
        self.prompt_id = prompt_id


#: Turns a prompt's text into the token ids the model reads.
Encoder = Callable[[str], list[int]]


class ChatTemplateError(ValueError):
    """``--chat`` was asked for, and the tokenizer has no chat template."""


@dataclass(frozen=True)
class Response:
    """What generation added after a prompt: its text (special tokens kept) and why it stopped."""

    text: str
    n_tokens: int
    #: "eos": the model produced an end-of-sequence token (kept as the last token); "length": --generate N reached
    stop: str

    def as_meta(self) -> dict[str, Any]:
        return {"text": self.text, "n_tokens": self.n_tokens, "stop": self.stop}


def _warn_truncated(warning: PromptTooLongWarning) -> None:
    """Issue ``warning`` from the caller of :func:`make_batch`, as ``warnings.warn(stacklevel=2)`` there would,
    but without an entry in Python's per-module registry of warnings already shown.

    Each message names its prompt, so under the default filter that registry kept one entry per
    truncated prompt (about 270 bytes each) for the life of the process.
    """
    frame = sys._getframe(2)  # 0: here, 1: make_batch, 2: its caller
    warnings.warn_explicit(
        warning,
        PromptTooLongWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__"),
        registry=None,
    )


@dataclass
class TruncationTally:
    """Counts the :class:`PromptTooLongWarning` s issued inside ``with`` and keeps the first :attr:`keep`.

    For the CLI, which names a few truncated prompts and how many there were: a list of every caught
    warning grew by ~425 bytes per truncated prompt. Other warnings raised inside are dropped (the CLI
    printed none of them before either).
    """

    keep: int = 10
    count: int = 0
    first: list[PromptTooLongWarning] = field(default_factory=list)

    def __enter__(self) -> TruncationTally:
        self._catching = warnings.catch_warnings()
        self._catching.__enter__()
        warnings.simplefilter("always", PromptTooLongWarning)
        warnings.showwarning = self._show
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._catching.__exit__(exc_type, exc, tb)

    def _show(self, message: Warning | str, *args: Any, **kwargs: Any) -> None:
        if isinstance(message, PromptTooLongWarning):
            self.count += 1
            if len(self.first) < self.keep:
                self.first.append(message)

    def summary(self) -> str | None:
        """``N prompt(s) truncated: prompt_id a, b ... and M more (first: <its warning>)``, or None."""
        if not self.count:
            return None
        ids = ", ".join(str(w.prompt_id) for w in self.first)
        more = f" and {self.count - len(self.first)} more" if self.count > len(self.first) else ""
        return f"{self.count} prompt(s) truncated: prompt_id {ids}{more} (first: {self.first[0]})"


@dataclass
class Batch:
    """A padded batch; ``mask`` is 1 on real tokens. Row r holds ``prompts[r]``.

    A batch of generated text (``capture --generate``) also says where each row's response starts
    (``n_prompt``: the prompt's tokens come first) and what each response was (``responses``).
    """

    prompts: list[Prompt]
    input_ids: torch.Tensor  # [B,T] long
    mask: torch.Tensor  # [B,T] long
    position_ids: torch.Tensor  # [B,T] long
    lengths: list[int]
    keep: torch.Tensor  # [n_real] long: flat indices of real tokens, computed on the host
    n_prompt: list[int] | None = None
    responses: list[Response] | None = None

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)

    def row_ids(self, row: int) -> list[int]:
        """The real token ids of ``row``, in position order (host tensors)."""
        ids: list[int] = self.input_ids[row][self.mask[row].bool()].tolist()
        return ids

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.prompts,
            self.input_ids.to(device, non_blocking=True),
            self.mask.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.lengths,
            self.keep.to(device, non_blocking=True),
            self.n_prompt,
            self.responses,
        )


def encode(tokenizer: object, text: str) -> list[int]:
    """The tokenizer's default encoding of ``text`` (special tokens included)."""
    ids = tokenizer(text)["input_ids"]  # type: ignore[operator]
    return list(ids)


def chat_encoder(tokenizer: Any, model_name: str) -> Encoder:
    """Encode a prompt as a one-turn chat: the user's message and the assistant's turn opened.

    The text goes through the tokenizer's chat template (``add_generation_prompt=True``), and the
    result is encoded without adding special tokens again (the template writes its own, as
    transformers' ``apply_chat_template`` does). Raises :class:`ChatTemplateError` when the tokenizer
    has no template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"--chat needs a chat template, and the tokenizer of {model_name} has none: capture without --chat "
            "(and write the prompts in the model's chat format yourself), or set tokenizer.chat_template"
        )

    def encode_chat(text: str) -> list[int]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(str(rendered), add_special_tokens=False)["input_ids"])

    return encode_chat


def make_batch(
    prompts: list[Prompt],
    tokenizer: object,
    *,
    max_length: int | None,
    padding_side: str,
    limit: str = "--max-length",
    encoder: Encoder | None = None,
) -> Batch:
    """Tokenise and pad ``prompts``; truncates (with a warning) beyond ``max_length``.

    ``limit`` names where ``max_length`` came from in the warning ("--max-length", or "the model's
    context"); ``encoder`` replaces the tokenizer's default encoding (``--chat``).
    """
    encoded: list[list[int]] = []
    for prompt in prompts:
        ids = encoder(prompt.text) if encoder is not None else encode(tokenizer, prompt.text)
        if not ids:
            ids = [pad_id(tokenizer)]
        if max_length is not None and len(ids) > max_length:
            _warn_truncated(
                PromptTooLongWarning(
                    f"prompt {prompt.prompt_id} has {len(ids)} tokens; truncated to {limit} ({max_length} tokens)",
                    prompt.prompt_id,
                )
            )
            ids = ids[:max_length]
        encoded.append(ids)
    return pad_batch(prompts, encoded, tokenizer, padding_side=padding_side)


def pad_batch(
    prompts: list[Prompt],
    encoded: list[list[int]],
    tokenizer: object,
    *,
    padding_side: str,
    n_prompt: list[int] | None = None,
    responses: list[Response] | None = None,
) -> Batch:
    """Pad the token ids of ``prompts`` on ``padding_side`` into one :class:`Batch` (host tensors)."""
    width = max(len(ids) for ids in encoded)
    pad = pad_id(tokenizer)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        cols = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, cols] = torch.tensor(ids, dtype=torch.long)
        mask[row, cols] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    keep = torch.nonzero(mask.reshape(-1), as_tuple=True)[0]
    return Batch(
        prompts, input_ids, mask, position_ids, [len(ids) for ids in encoded], keep, n_prompt, responses
    )


def pad_id(tokenizer: object) -> int:
    """The id padding is filled with: the tokenizer's pad token, else its EOS, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0


def batches(
    prompts: Iterable[Prompt],
    tokenizer: object,
    *,
    batch_size: int,
    max_length: int | None,
    padding_side: str,
    limit: str = "--max-length",
    encoder: Encoder | None = None,
) -> Iterator[Batch]:
    """Stream batches from a (possibly endless) prompt iterator; holds one batch at a time."""
    it = iter(prompts)
    while chunk := list(islice(it, batch_size)):
        yield make_batch(
            chunk, tokenizer, max_length=max_length, padding_side=padding_side, limit=limit, encoder=encoder
        )

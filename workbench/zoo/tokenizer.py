"""A byte-level BPE tokenizer trained locally with `tokenizers`, deterministic for a given text list.

Special tokens ``<pad>`` (id 0), ``<bos>`` (1) and ``<eos>`` (2); the post-processor prepends
``<bos>`` to every encoded text (``<eos>`` is appended by the training code, not the tokenizer).
Its chat template is the chat format the zoo's models learn (:data:`workbench.behaviour.chat.CHAT_TEMPLATE`),
so ``capture --chat`` and ``apply_chat_template`` ask in that format.
Byte-level means every string is encodable: no unknown token exists.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

from workbench.behaviour.chat import CHAT_TEMPLATE

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` tokens (specials and the 256 bytes included).

    The result depends only on ``texts`` (their order included) and the arguments.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )

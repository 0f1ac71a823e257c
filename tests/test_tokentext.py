"""Readable tokens (workbench.tokentext): stored symbols decode to the text they stand for.

Checked against real tokenizers, built offline with ``tokenizers``: tiny-ref's own byte-level BPE
(datasets/tiny-ref), a GPT-2-style byte-level BPE whose merges split ``日`` and ``本`` across tokens,
and a SentencePiece-style BPE with byte fallback (``▁``, ``<0xE6>``). For each, the pieces of a
tokenised text joined give exactly what the tokenizer's own decoder gives, and each character is
shown once, on the token that completes it.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from token_support import tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from workbench.tokentext import (
    BEGINS,
    BROKEN,
    COMPLETES,
    DANGLES,
    EMPTY,
    MARKER_PATTERNS,
    PARTIAL,
    Scheme,
    byte_level_table,
    hover,
    scheme_of,
    sequence_pieces,
    sequence_texts,
    symbol_bytes,
    token_text,
    visible,
)

pytestmark = pytest.mark.unit

TEXTS = [
    "def f(x):\n    return x + 1\t# ok\r\n",
    "Le café était fermé; naïve façade.",
    "日本語のテキスト 🙂 and ÆØÅ",
    "  two  spaces, a tab\there, NBSP\u00a0and a zero\u200bwidth",
]


def _decoded(tok: Tokenizer, text: str) -> tuple[list[str], list[int], str]:
    enc = tok.encode(text)
    return list(enc.tokens), list(enc.ids), tok.decode(enc.ids, skip_special_tokens=False)


def _gpt2_style() -> Tokenizer:
    """A byte-level BPE on GPT-2's alphabet whose merges cut multi-byte characters mid-way.

    ``日`` is E6 97 A5 and ``本`` E6 9C AC: the merges ``æ+Ĺ`` and ``¥+æ`` make the tokens ``æĹ``
    (the first two bytes of 日) and ``¥æ`` (the last byte of 日 and the first of 本).
    """
    alphabet = sorted(byte_level_table(), key=lambda c: byte_level_table()[c])
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = [("Ġ", "t"), ("Ġt", "h"), ("æ", "Ĺ"), ("¥", "æ"), ("Ċ", "Ġ")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_style() -> Tokenizer:
    """A SentencePiece-style BPE: ``▁`` for a space, ASCII letters, and ``<0xNN>`` for every other byte."""
    pieces = ["<unk>", "▁", *map(chr, range(ord("a"), ord("z") + 1)), ".", ",", "é", "▁t", "▁th", "▁the"]
    vocab = {p: i for i, p in enumerate(pieces)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


@pytest.mark.parametrize(
    "make", [tokenizer, _gpt2_style, _sentencepiece_style], ids=["tiny-ref", "gpt2", "sp"]
)
@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_tokenizers_own_decoding(make: object, text: str) -> None:
    tok = make()  # type: ignore[operator]
    symbols, ids, want = _decoded(tok, text)
    scheme = scheme_of(symbols)
    assert scheme is (Scheme.SENTENCEPIECE if make is _sentencepiece_style else Scheme.BYTE_LEVEL)
    pieces = sequence_pieces(symbols, scheme, ids)
    assert "".join(p.text for p in pieces) == want
    shown = "".join(p.display for p in pieces)
    assert not set(shown) & {"Ġ", "Ċ", "ĉ", "▁"}  # no raw symbol characters left
    assert "\n" not in shown and " " not in shown and "\t" not in shown


def test_a_character_split_over_tokens_shows_once_where_it_completes() -> None:
    tok = _gpt2_style()
    symbols, ids, _ = _decoded(tok, "x 日本")
    assert symbols == ["x", "Ġ", "æĹ", "¥æ", "ľ", "¬"]
    pieces = sequence_pieces(symbols, Scheme.BYTE_LEVEL, ids)
    assert [p.display for p in pieces] == ["x", "·", PARTIAL, "日", PARTIAL, "本"]
    assert pieces[2].partial and not pieces[3].partial and pieces[3].carried == 2
    assert "begins a character" in hover(symbols[2], ids[2], Scheme.BYTE_LEVEL, pieces[2])
    assert "completes a character begun 2 byte(s) earlier" in hover(
        symbols[3], ids[3], Scheme.BYTE_LEVEL, pieces[3]
    )
    assert "bytes e6 97" in hover(symbols[2], ids[2], Scheme.BYTE_LEVEL)
    # Alone, a token that is not whole characters shows its bytes; a whole one reads as text.
    assert token_text("æĹ", Scheme.BYTE_LEVEL) == "\\xe6\\x97"
    assert token_text("æĹ¥", Scheme.BYTE_LEVEL) == "日"
    # A sequence that ends inside a character shows the unfinished bytes, nothing is dropped.
    assert sequence_texts(["x", "æĹ"], Scheme.BYTE_LEVEL) == ["x", "\\xe6\\x97"]
    # Held bytes that the next token does not complete: shown escaped there, and the hovers say so
    # (the "a later token completes" claim would be false here).
    held = sequence_pieces(["x", "æĹ", "a"], Scheme.BYTE_LEVEL, [1, 2, 3])
    assert [p.display for p in held] == ["x", PARTIAL, "\\xe6\\x97a"]
    assert [p.joins for p in held] == ["", DANGLES, BROKEN]
    assert "no later token makes a whole character" in hover("æĹ", 2, Scheme.BYTE_LEVEL, held[1])
    assert "follows 2 byte(s) that are not a whole character" in hover("a", 3, Scheme.BYTE_LEVEL, held[2])
    assert [p.joins for p in pieces] == ["", "", BEGINS, COMPLETES, BEGINS, COMPLETES]


def test_sentencepiece_byte_fallback_and_spaces() -> None:
    tok = _sentencepiece_style()
    symbols, ids, _ = _decoded(tok, "the 日")
    assert symbols == ["▁the", "▁", "<0xE6>", "<0x97>", "<0xA5>"]
    assert sequence_texts(symbols, Scheme.SENTENCEPIECE, ids) == ["·the", "·", PARTIAL, PARTIAL, "日"]
    assert symbol_bytes("<0x0A>", Scheme.SENTENCEPIECE) == b"\n"
    assert token_text("<0x0A>", Scheme.SENTENCEPIECE) == "⏎"


@settings(max_examples=60)
@given(st.text(st.characters(codec="utf-8"), max_size=30))
def test_any_text_round_trips_through_tiny_ref(text: str) -> None:
    tok = tokenizer()
    symbols, ids, want = _decoded(tok, text)  # type: ignore[arg-type]
    pieces = sequence_pieces(symbols, Scheme.BYTE_LEVEL, ids)  # a run's scheme: test_scheme_of
    assert "".join(p.text for p in pieces) == want
    assert all(p.display for p in pieces)  # every token shows something


def test_scheme_of() -> None:
    assert scheme_of([]) is Scheme.PLAIN
    assert scheme_of(["hello", None, "world"]) is Scheme.PLAIN
    assert scheme_of(["the", "Ġcat"]) is Scheme.BYTE_LEVEL
    assert scheme_of(["Ġcat", "▁the"]) is Scheme.SENTENCEPIECE  # ▁ never occurs in a byte-level symbol
    assert scheme_of(["<0x0A>"]) is Scheme.SENTENCEPIECE
    assert scheme_of(["<0x0A>x"]) is Scheme.PLAIN  # only a whole symbol is a byte fallback
    assert scheme_of(["<bos>", "Ã¡"]) is Scheme.BYTE_LEVEL  # "á" as byte-level BPE writes it
    assert scheme_of(["caf", "é"]) is Scheme.PLAIN  # one character whose lone byte is not UTF-8
    # The store fetches candidates with MARKER_PATTERNS: they must catch every symbol scheme_of acts on.
    for symbol in ("Ġcat", "ĊĠĠ", "▁the", "<0xE6>", "Ń", "Ã¡", "æĹ¥"):
        assert any(re.search(p, symbol) for p in MARKER_PATTERNS), symbol
    for symbol in ("plain text Ŕ", "café", "x<0x0A>"):  # Ŕ is U+0154, past the shifted range
        assert not any(re.search(p, symbol) for p in MARKER_PATTERNS), symbol


def test_the_byte_level_table_is_gpt2s() -> None:
    table = byte_level_table()
    assert len(table) == 256 and sorted(table.values()) == list(range(256))
    assert (table["Ġ"], table["Ċ"], table["ĉ"], table["!"], table["ÿ"]) == (0x20, 0x0A, 0x09, 0x21, 0xFF)
    assert table["Ń"] == 0xAD  # the soft hyphen is the last shifted byte


def test_visible_and_unnamed_tokens() -> None:
    assert visible("a b\n\tc\r") == "a·b⏎→c␍"
    assert visible("") == EMPTY
    assert visible("\x00\u200b\ufeff") == "\\u0000\\u200b\\ufeff"
    assert visible("x\u00a0y") == "x·y"
    assert token_text(None, Scheme.BYTE_LEVEL, 42) == "#42"  # imported runs store no symbol
    unnamed = sequence_pieces(["æĹ", None, "a"], Scheme.BYTE_LEVEL, [7, 8, 9])
    assert [p.display for p in unnamed] == [PARTIAL, "\\xe6\\x97#8", "a"]
    assert [p.joins for p in unnamed] == [DANGLES, BROKEN, ""]
    assert "no symbol stored" in hover(None, 8, Scheme.BYTE_LEVEL)
    assert sequence_texts([""], Scheme.PLAIN) == [EMPTY]

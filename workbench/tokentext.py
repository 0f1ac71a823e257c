"""Readable tokens: the text a tokenizer's stored symbol stands for, with whitespace made visible.

Why: the store keeps each token as the tokenizer's raw symbol (``tokens.token``, what
``convert_ids_to_tokens`` returns) and its id. Raw symbols are unreadable to people: byte-level
BPE writes a space as ``Ġ`` and a newline as ``Ċ`` (``ĊĠĠĠ`` is a newline and three spaces),
SentencePiece writes a space as ``▁`` and unknown bytes as ``<0x0A>``. A run's model may not be
loadable when it is viewed (another machine, a deleted checkpoint), so decoding works from the
symbol alone: byte-level BPE's byte ↔ character table is fixed (GPT-2's ``bytes_to_unicode``),
and SentencePiece symbols are UTF-8 text with two escapes.

Three schemes, told apart by the symbols a run holds (:func:`scheme_of`):

* ``byte-level`` (GPT-2, Llama 3, Qwen, tiny-ref): every character of a symbol is one byte;
* ``sentencepiece`` (Llama 2, Mistral, Gemma): ``▁`` is a space, ``<0xNN>`` one raw byte;
* ``plain``: the symbol is its own text (byte tokenizers, imported runs' readable symbols).

Display text (:func:`visible`) shows a space as ``·``, a newline as ``⏎``, a tab as ``→``, a
carriage return as ``␍``, other control characters as their ``\\uXXXX`` escape, and an empty token
as ``∅``. A token is not always whole characters: a byte-level token may hold the first two bytes of
``日`` and the next token its last byte. Alone (:func:`token_text`) such a token shows its bytes as
``\\xe6\\x97``; within a sequence (:func:`sequence_pieces`) a character is shown on the token that
completes it, and a token that completes no character shows :data:`PARTIAL` (its bytes are in the
hover text, :func:`hover`). Joining a sequence's pieces gives back exactly the decoded text.

Pure functions with no workbench imports: the bottom floor, usable by the store's readers, the
analyses, the notebook API, the reports, the CLI and the dashboard alike.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

__all__ = [
    "BEGINS",
    "BROKEN",
    "COMPLETES",
    "DANGLES",
    "EMPTY",
    "MARKER_PATTERNS",
    "PARTIAL",
    "Piece",
    "Scheme",
    "byte_level_table",
    "hover",
    "scheme_of",
    "sequence_pieces",
    "sequence_texts",
    "symbol_bytes",
    "token_text",
    "visible",
]

PARTIAL = "\ufffd"
"""Shown for a token whose bytes only begin a character that a later token completes."""
EMPTY = "∅"
"""Shown for a token that decodes to no text at all."""
_SPACE_MARKS = {" ": "·", "\n": "⏎", "\t": "→", "\r": "␍"}
_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SP_SPACE = "▁"


class Scheme(str, Enum):
    """How a tokenizer writes its symbols (see the module docstring)."""

    BYTE_LEVEL = "byte-level"
    SENTENCEPIECE = "sentencepiece"
    PLAIN = "plain"


@lru_cache(maxsize=1)
def byte_level_table() -> dict[str, int]:
    """Byte-level BPE's character → byte table (the inverse of GPT-2's ``bytes_to_unicode``).

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves; the other
    68 bytes (controls, space, DEL, the C1 range, NBSP, soft hyphen) take the characters U+0100 onward,
    in byte order: a space (0x20) is ``Ġ`` (U+0120), a newline (0x0A) is ``Ċ`` (U+010A).
    """
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in kept}
    shifted = [b for b in range(256) if b not in table.values()]
    table.update({chr(0x100 + i): b for i, b in enumerate(shifted)})
    return table


_SHIFTED_FIRST, _SHIFTED_LAST = 0x100, 0x143
MARKER_PATTERNS: tuple[str, ...] = (
    f"{_SP_SPACE}|^<0x[0-9A-Fa-f]{{2}}>$",
    "[\u0100-\u0143]",
    "[\u00c2-\u00f4][\u00a1-\u00bf\u0121-\u0142]",
)
"""Regular expressions (Python and DuckDB alike) for the symbols that tell a scheme apart: SentencePiece's
``▁`` or a whole byte fallback ``<0xNN>``; a shifted byte-level character (``Ġ``, ``Ċ`` ...); and a
byte-level UTF-8 lead byte followed by a continuation byte (``Ã©`` is ``é``). A store query fetches a
few symbols matching each (:func:`workbench.store.queries.marked_symbols`) for :func:`scheme_of`."""


def _byte_level_text(symbol: str) -> bool:
    """Whether ``symbol``, read as byte-level BPE, is whole UTF-8 text with a multi-byte character."""
    table = byte_level_table()
    if not symbol or any(c not in table for c in symbol):
        return False
    raw = bytes(table[c] for c in symbol)
    if max(raw) < 0x80:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def scheme_of(symbols: Iterable[str | None]) -> Scheme:
    """The scheme of a run whose tokens include ``symbols`` (any subset holding its marked symbols).

    SentencePiece when a symbol holds ``▁`` or is a byte fallback ``<0xNN>`` (byte-level BPE writes
    ``▁`` as three characters, so it never holds one). Byte-level when a symbol holds a shifted
    byte character (U+0100–U+0143: every byte-level space, newline or control byte), or reads as
    whole multi-byte UTF-8 when taken as bytes (``Ã©``: a plain or SentencePiece ``é`` is one
    character, whose lone byte is not UTF-8). Plain otherwise: a byte-level run whose text is ASCII
    without spaces or newlines reads as plain, which decodes its symbols identically.
    """
    seen_byte_level = False
    for symbol in symbols:
        if not symbol:
            continue
        if _SP_SPACE in symbol or _FALLBACK.fullmatch(symbol):
            return Scheme.SENTENCEPIECE
        seen_byte_level = (
            seen_byte_level
            or any(_SHIFTED_FIRST <= ord(c) <= _SHIFTED_LAST for c in symbol)
            or _byte_level_text(symbol)
        )
    return Scheme.BYTE_LEVEL if seen_byte_level else Scheme.PLAIN


def symbol_bytes(symbol: str, scheme: Scheme) -> bytes:
    """The bytes of text that ``symbol`` stands for under ``scheme``.

    Byte-level: each character's byte (a character outside the table, as in an added token such
    as ``<|im_start|>``'s neighbours in a chat vocabulary, is its own UTF-8). SentencePiece: a byte
    fallback is its byte, otherwise the UTF-8 of the symbol with ``▁`` as a space. Plain: its UTF-8.
    """
    if scheme is Scheme.BYTE_LEVEL:
        table = byte_level_table()
        return b"".join(bytes([table[c]]) if c in table else c.encode() for c in symbol)
    if scheme is Scheme.SENTENCEPIECE:
        fallback = _FALLBACK.fullmatch(symbol)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return symbol.replace(_SP_SPACE, " ").encode()
    return symbol.encode()


def _escape(ch: str) -> str:
    if ch in _SPACE_MARKS:
        return _SPACE_MARKS[ch]
    if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch == "\ufeff":
        return f"\\u{ord(ch):04x}"
    if ch.isspace():  # NBSP, ideographic space ...: whitespace, but not an ASCII space
        return "·"
    return ch


def visible(text: str) -> str:
    """``text`` with its whitespace and invisible characters shown (``·`` ``⏎`` ``→`` ``␍``, ``\\uXXXX``)."""
    if not text:
        return EMPTY
    return "".join(_escape(ch) for ch in text)


def _unnamed(token_id: int | None) -> str:
    return f"#{token_id}" if token_id is not None else "?"


def token_text(symbol: str | None, scheme: Scheme, token_id: int | None = None) -> str:
    """One token's display text, decoded alone: bytes that are not whole UTF-8 characters show as ``\\xNN``.

    A token without a stored symbol (a run imported from a serving engine) shows ``#<id>``.
    """
    if symbol is None:
        return _unnamed(token_id)
    raw = symbol_bytes(symbol, scheme)
    return visible(raw.decode("utf-8", errors="backslashreplace"))


BEGINS, DANGLES, COMPLETES, BROKEN = "begins", "dangles", "completes", "broken"
"""How a token takes part in a character split across tokens (:attr:`Piece.joins`): it only begins
one that a later token completes; it only begins bytes that no later token makes whole (they show as
``\\xNN`` on the next token); it completes one begun earlier; it follows held bytes that were not
a whole character (shown here as ``\\xNN``)."""


@dataclass(frozen=True)
class Piece:
    """One token of a decoded sequence.

    ``text`` is the text completed by this token (joined over the sequence, the decoded text),
    ``raw`` the token's own bytes, ``carried`` how many held bytes of earlier tokens it takes on,
    ``display`` what a view shows, and ``joins`` how it takes part in a split character
    (:data:`BEGINS` ... :data:`BROKEN`, "" when it does not).
    """

    text: str
    raw: bytes
    carried: int
    display: str
    joins: str = ""

    @property
    def partial(self) -> bool:
        """Whether the token completes no character: its bytes wait for a later token."""
        return not self.text and bool(self.raw)


def _incomplete_tail(buf: bytes) -> int:
    """How many trailing bytes of ``buf`` are a valid but unfinished UTF-8 character (0 if none)."""
    for back in range(1, min(4, len(buf)) + 1):
        lead = buf[-back]
        if lead & 0xC0 == 0x80:  # a continuation byte: look further back for the lead
            continue
        need = _char_length(lead)
        return back if need > back else 0
    return 0


def _char_length(lead: int) -> int:
    """The length of the UTF-8 character a lead byte announces (1 for anything that is not a lead)."""
    return 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4 if lead & 0xF8 == 0xF0 else 1


def _whole_first_character(buf: bytes) -> bool:
    """Whether ``buf`` starts with one whole, valid UTF-8 character."""
    need = _char_length(buf[0])
    try:
        buf[:need].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(buf) >= need


def sequence_pieces(
    symbols: Sequence[str | None], scheme: Scheme, token_ids: Sequence[int | None] | None = None
) -> list[Piece]:
    """The tokens of one sequence decoded together, so a character split over tokens reads whole.

    Bytes that begin a character are held until the token that completes it, which shows the whole
    character; a token left with no text shows :data:`PARTIAL`. Bytes that cannot be UTF-8 show
    as ``\\xNN``. A token without a stored symbol shows ``#<id>`` and ends any held character.
    """
    ids = list(token_ids) if token_ids is not None else [None] * len(symbols)
    rows: list[tuple[str, bytes, int, str]] = []  # text, raw, carried, display
    joins: list[str] = []
    waiting: list[int] = []  # rows that only began the held character, until it is resolved
    held = b""
    for i, symbol in enumerate(symbols):
        if symbol is None:  # an unnamed token ends any held character (its bytes show escaped)
            flushed = held.decode("utf-8", errors="backslashreplace")
            shown = visible(flushed) + _unnamed(ids[i]) if flushed else _unnamed(ids[i])
            rows.append((flushed, b"", len(held), shown))
            joins.append(BROKEN if held else "")
            for w in waiting:
                joins[w] = DANGLES
            waiting, held = [], b""
            continue
        raw = symbol_bytes(symbol, scheme)
        buf = held + raw
        keep = 0 if i == len(symbols) - 1 else min(_incomplete_tail(buf), len(buf))
        text = buf[: len(buf) - keep].decode("utf-8", errors="backslashreplace")
        display = visible(text) if text else (PARTIAL if raw else EMPTY)
        joins.append("")
        if held and text:  # the held character is decided here
            whole = _whole_first_character(buf)
            joins[-1] = COMPLETES if whole else BROKEN
            for w in waiting:
                joins[w] = BEGINS if whole else DANGLES
            waiting = []
        rows.append((text, raw, len(held), display))
        if not text and raw:
            waiting.append(len(rows) - 1)
        held = buf[len(buf) - keep :]
    return [Piece(*row, joins=j) for row, j in zip(rows, joins, strict=True)]


def sequence_texts(
    symbols: Sequence[str | None], scheme: Scheme, token_ids: Sequence[int | None] | None = None
) -> list[str]:
    """The display text of each token of one sequence (:func:`sequence_pieces`)."""
    return [p.display for p in sequence_pieces(symbols, scheme, token_ids)]


def hover(symbol: str | None, token_id: int | None, scheme: Scheme, piece: Piece | None = None) -> str:
    """Hover text naming a token exactly: id, raw symbol and bytes, and any split character.

    e.g. ``token id 301 · symbol 'Ġe' · bytes 20 65``. With a :class:`Piece` of a sequence, also
    says how it takes part in a character split across tokens (:attr:`Piece.joins`).
    """
    head = f"token id {token_id if token_id is not None else '?'}"
    if symbol is None:
        return f"{head} · no symbol stored"
    raw = symbol_bytes(symbol, scheme)
    text = f"{head} · symbol {symbol!r} · bytes {raw.hex(' ') or '(none)'}"
    notes = {
        BEGINS: " · begins a character that a later token completes",
        DANGLES: " · begins bytes that no later token makes a whole character",
        COMPLETES: f" · completes a character begun {piece.carried if piece else 0} byte(s) earlier",
        BROKEN: f" · follows {piece.carried if piece else 0} byte(s) that are not a whole character",
    }
    return text + (notes.get(piece.joins, "") if piece is not None else "")

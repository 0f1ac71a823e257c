"""The prompt content hash (``prompts.content_hash``, schema v3): what makes two runs' prompts "the same".

A prompt's hash is the SHA-256 (hex) of its text **and** its token ids, so the same text under a
different tokenisation is a different prompt. The byte string hashed is::

    <UTF-8 byte length of text> ":" <text> ":" <token ids in position order, comma-separated>

(the length prefix keeps text and ids apart whatever the text holds). The store computes it in
SQL at ingest (from the batch's ``prompts.text`` and ``tokens.token_id``) and in the v3
migration (from the stored rows); :func:`prompt_content_hash` is the same definition in Python,
used by tests (capture leaves the hash to the store). A prompt whose stored tokens do not add up to its ``n_tokens``
(or hold a NULL token id) gets NULL: its content is unknown, and comparisons refuse it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["hash_sql", "prompt_content_hash", "token_ids_sql"]


def prompt_content_hash(text: str | None, token_ids: Iterable[int]) -> str:
    """SHA-256 hex of a prompt's text and token ids (module docstring); NULL text counts as ""."""
    body = text or ""
    ids = ",".join(str(int(t)) for t in token_ids)
    data = f"{len(body.encode('utf-8'))}:{body}:{ids}".encode()
    return hashlib.sha256(data).hexdigest()


def token_ids_sql(tokens: str, keys: str = "prompt_id") -> str:
    """Per-prompt token aggregate of table/view ``tokens``: ``keys, n, n_ids, ids``.

    ``tokens`` and ``keys`` are identifiers chosen by the store, never user input.
    """
    return (
        f"SELECT {keys}, count(*) AS n, count(token_id) AS n_ids,"
        " string_agg(token_id::VARCHAR, ',' ORDER BY position) AS ids"
        f" FROM {tokens} GROUP BY {keys}"
    )


def hash_sql(prompt: str, agg: str) -> str:
    """SQL expression of the content hash for prompt alias ``prompt`` joined to token aggregate ``agg``.

    NULL when the aggregate's token count differs from ``n_tokens`` or a token id is NULL.
    """
    text = f"coalesce({prompt}.text, '')"
    n = f"coalesce({agg}.n, 0)"
    return (
        f"CASE WHEN {n} = coalesce({prompt}.n_tokens, {n}) AND {n} = coalesce({agg}.n_ids, 0)"
        f" THEN sha256(strlen({text})::VARCHAR || ':' || {text} || ':' || coalesce({agg}.ids, ''))"
        " END"
    )

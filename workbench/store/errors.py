"""Exceptions raised by the store.

Every failure the store can explain is a :class:`StoreError` (or a subclass) whose
message says what happened *and* what the user can do about it, so the CLI and the
dashboard can show it verbatim instead of a raw DuckDB traceback.
"""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation failed for a reason the user can act on."""


class StoreLockedError(StoreError):
    """Another process holds the DuckDB file: it writes to it, or reads it while this process wants to write."""


class UnknownRunError(StoreError, KeyError):
    """A run id was asked for that is not in the store.

    Also a :class:`KeyError`, so ``except KeyError`` in mapping-like code still works.
    """

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class SchemaVersionError(StoreError):
    """The file's schema version cannot be used by this code in this mode."""

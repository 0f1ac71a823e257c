"""``--set KEY=VALUE`` options of ``moe-workbench analyse``: parsed against the analysis's own defaults.

Each value is read as the type of the option's default: ``n_perm=20000`` an int, ``noise=0.02`` a
float, ``p_levels=0.5,0.8,0.9`` a tuple of floats, ``renorm=true`` a bool. Options whose default is
None (``layers``) take a number, a comma list of numbers, or text. Unknown keys and unreadable
values raise ``ValueError`` saying what the analysis accepts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

__all__ = ["parse_settings"]

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _scalar(text: str, like: Any) -> Any:
    """``text`` as the type of ``like`` (None: int, else float, else the text itself)."""
    if isinstance(like, bool):
        low = text.strip().lower()
        if low not in _TRUE | _FALSE:
            raise ValueError(f"expected true or false, got {text!r}")
        return low in _TRUE
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, str):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _value(text: str, default: Any, many: bool) -> Any:
    if many and not isinstance(default, list | tuple):  # e.g. layers (default None): always a list
        return [_scalar(x.strip(), None) for x in text.split(",") if x.strip()]
    if isinstance(default, list | tuple):
        like = default[0] if default else None
        items = tuple(_scalar(x.strip(), like) for x in text.split(",") if x.strip())
        return list(items) if isinstance(default, list) else items
    if default is None and "," in text:
        return [_scalar(x.strip(), None) for x in text.split(",") if x.strip()]
    return _scalar(text, default)


def parse_settings(
    pairs: Iterable[str], options: Mapping[str, Any], analysis: str, many: Collection[str] = ()
) -> dict[str, Any]:
    """``["n_perm=20000", ...]`` → ``{"n_perm": 20000}``, checked against ``options`` (name → default).

    Options named in ``many`` take a comma list even when their default is None (``layers=3`` → ``[3]``).
    """
    out: dict[str, Any] = {}
    accepted = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "none"
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}; {analysis} accepts: {accepted}")
        if key not in options:
            raise ValueError(f"{analysis} has no option {key!r}; it accepts (with defaults): {accepted}")
        try:
            out[key] = _value(text.strip(), options[key], key in many)
        except ValueError as exc:
            raise ValueError(f"--set {pair!r}: {exc} (default {options[key]!r})") from None
    return out

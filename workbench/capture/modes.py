"""How router logits are stored: the one declaration of the ``--logits`` choices.

``LogitsMode`` is the type, :data:`LOGITS_MODES` its values (derived from the type, in order),
:func:`logits_mode` the check that turns a user string into one. The capture options, the
packing step and the CLI's ``--logits`` choices all come from here, so adding a mode is one
edit. This module imports nothing heavy (no torch), so the CLI can build its options from it
without loading the capture stack.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["DEFAULT_LOGITS_MODE", "LOGITS_MODES", "LogitsMode", "logits_mode"]

#: ``fp32``: raw logits as captured; ``fp16``: rounded to half precision on the device and stored as
#: 2-byte floats (readers still see the store's ``FLOAT[]`` column); ``none``: no logits column values.
LogitsMode = Literal["fp32", "fp16", "none"]

#: The modes, in declaration order (what ``--logits`` accepts).
LOGITS_MODES: tuple[LogitsMode, ...] = get_args(LogitsMode)

#: What a capture stores unless told otherwise.
DEFAULT_LOGITS_MODE: LogitsMode = "fp16"


def logits_mode(value: str) -> LogitsMode:
    """``value`` as a :data:`LogitsMode`; ``ValueError`` naming the choices when it is not one."""
    if value not in LOGITS_MODES:
        raise ValueError(
            f"logits must be {', '.join(LOGITS_MODES[:-1])} or {LOGITS_MODES[-1]}, got {value!r}"
        )
    return value  # narrowed to LogitsMode by the membership test above

"""Capture engine: backends (hooks, nnsight, transformer_lens), batching, the streaming writer.

``workbench.capture`` is both this package and the function ``wb.capture(model, probes, db)``:
importing any submodule makes the package the ``capture`` attribute of ``workbench``
(replacing the function), so the package itself is callable and forwards to
:func:`workbench.capture.engine.capture`.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> str:
        from workbench.capture.engine import capture

        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

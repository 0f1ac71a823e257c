"""``python -m workbench.capture``: the capture command, as torchrun starts it.

``torchrun --nproc-per-node N -m workbench.capture --model M --probe P --db DB`` takes exactly the
options of ``moe-workbench capture``: this module hands its arguments to that command, which sees
the torchrun environment and captures data-parallel (workbench/capture/distributed.py). This entry
shim is the one module of ``workbench.capture`` that imports the CLI: an entry point sits on top of
the house whatever folder holds it, and nothing imports it (pyproject's layers contract names
this one exception).
"""

from __future__ import annotations

import sys

from workbench.cli import app

if __name__ == "__main__":
    app(["capture", *sys.argv[1:]], prog_name="python -m workbench.capture")

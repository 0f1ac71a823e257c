"""``python -m workbench.capture``: the capture command, as torchrun starts it.

``torchrun --nproc-per-node N -m workbench.capture --model M --probe P --db DB`` takes exactly the
options of ``moe-workbench capture``: this module hands its arguments to that command, which sees
the torchrun environment and captures data-parallel (workbench/capture/distributed.py);
``... -m workbench.capture resume --db DB --run-id RUN`` resumes a tensor-parallel run. This entry
shim is the one module of ``workbench.capture`` that imports the CLI: an entry point sits on top of
the house whatever folder holds it, and nothing imports it (pyproject's layers contract names
this one exception).
"""

from __future__ import annotations

import sys

from workbench.cli import app

if __name__ == "__main__":
    if sys.argv[1:2] == ["resume"]:  # torchrun ... -m workbench.capture resume --db DB --run-id RUN
        app(["resume", *sys.argv[2:]], prog_name="python -m workbench.capture resume")
    else:
        app(["capture", *sys.argv[1:]], prog_name="python -m workbench.capture")

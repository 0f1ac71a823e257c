"""Child process for the kill test: captures slowly and reports each committed batch on stdout."""

from __future__ import annotations

import sys
import time

from workbench.capture.engine import capture
from workbench.store import Store

_original = Store.write_batch


def _reporting(self: Store, run_id: str, **tables: object) -> None:
    _original(self, run_id, **tables)  # type: ignore[arg-type]
    print("committed", tables["prompts"].num_rows, flush=True)  # type: ignore[union-attr]
    time.sleep(0.2)  # leave the parent time to kill us mid-run


Store.write_batch = _reporting  # type: ignore[method-assign]

if __name__ == "__main__":
    probe, db, run_id = sys.argv[1:4]
    capture("tiny:qwen2_moe", probe, db, run_id=run_id, batch_size=4, write_rows=1, progress=False)
    print("finished", flush=True)

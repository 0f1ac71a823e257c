"""Child process for the kill tests: captures slowly and reports each batch write (``writing``) and its
commit (``committed N``) on stdout, so the parent can kill it at a chosen point of the write schedule."""

from __future__ import annotations

import sys
import time

import torch

from workbench.capture.engine import capture
from workbench.store import Store

_original = Store.write_batch


def _reporting(self: Store, run_id: str, **tables: object) -> None:
    print("writing", flush=True)  # a parent killing now lands during this batch's write (or just after)
    _original(self, run_id, **tables)  # type: ignore[arg-type]
    print("committed", tables["prompts"].num_rows, flush=True)  # type: ignore[union-attr]
    time.sleep(0.2)  # leave the parent time to kill us between batches


Store.write_batch = _reporting  # type: ignore[method-assign]
torch.set_num_threads(1)  # as the test process (tests/conftest.py): the same float summation order, so
# the rows it writes equal, bit for bit, those a resume or a clean capture in the test process writes

if __name__ == "__main__":
    probe, db, run_id = sys.argv[1:4]
    capture("tiny:qwen2_moe", probe, db, run_id=run_id, batch_size=4, write_rows=1, progress=False)
    print("finished", flush=True)

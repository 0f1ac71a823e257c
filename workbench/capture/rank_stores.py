"""Rank stores: where the ranks of a data-parallel capture commit their batches until rank 0 absorbs them.

DuckDB allows one writing process per file, so each rank of ``torchrun -m workbench.capture`` writes
its own store (``DB.ranks/<run>/rank-R.duckdb``) with the engine's usual exactly-once batches. Both
the end of a parallel capture and ``resume`` absorb them into the main store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from workbench.store import Store, queries

__all__ = ["ABSORB_PROMPTS", "absorb_rank_stores", "rank_store_dir"]

#: prompts moved from a rank store into the main store per transaction (bounds memory)
ABSORB_PROMPTS = 256


def rank_store_dir(db: str | Path, run_id: str) -> Path:
    """Where the ranks of run ``run_id`` keep their stores until rank 0 absorbs them."""
    return Path(f"{db}.ranks") / run_id


def absorb_rank_stores(main: Store, db: str | Path, run_id: str) -> int:
    """Move the prompts the rank stores of ``run_id`` committed into ``main``; returns how many.

    A rank store comes over whole in one transaction, its routing shards linked, not rewritten
    (``Store.absorb_run``). If ``main`` already holds some of its prompts, the rest come over in
    chunks of atomic ``write_batch`` calls instead, so absorbing twice writes nothing twice. The rank
    stores are deleted after all of them are in.
    """
    folder = rank_store_dir(db, run_id)
    if not folder.exists():
        return 0
    moved = 0
    for path in sorted(folder.glob("rank-*.duckdb")):
        with Store(path, read_only=True) as rank:
            if run_id not in set(rank.runs()["run_id"].to_list()):
                continue
            have = main.done_prompt_ids(run_id)
            committed = rank.done_prompt_ids(run_id)
        if not committed & have:  # the usual case: the whole rank store in one transaction, shards linked
            moved += main.absorb_run(path, run_id)
            continue
        with Store(path, read_only=True) as rank:  # a rank store half taken in by an older release
            todo = sorted(committed - have)
            for start in range(0, len(todo), ABSORB_PROMPTS):
                ids = todo[start : start + ABSORB_PROMPTS]
                main.write_batch(run_id, **queries.batch_tables(rank, run_id, ids))
                moved += len(ids)
    shutil.rmtree(folder)
    parent = folder.parent
    if parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
    return moved

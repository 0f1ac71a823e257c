"""An error raised by a batch's COMMIT loses nothing and says what it means (issue 15 item 6).

DuckDB checkpoints right after a commit once its log passes 16 MiB; when that checkpoint fails (it
did, out of memory, while it merged row groups of long prompt texts) DuckDB raises from the COMMIT
although the batch is committed, and invalidates the database. The writer used to delete the
batch's routing shard, which the committed manifest lists: the store then refused to open. Here
the COMMIT is made to fail both ways, after committing and without.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import duckdb
import pytest

from workbench.capture.engine import capture, resume
from workbench.capture.integrity import UnverifiedResumeWarning
from workbench.models.loading import LoadedModel, load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt
from workbench.store import Store, StoreError, ingest

pytestmark = pytest.mark.integration

FAILING_WRITE = 3  # the third of six writes: two batches are committed before it

Transaction = Callable[[duckdb.DuckDBPyConnection], AbstractContextManager[None]]


def _commit_fails(committed: bool) -> Transaction:
    """``ingest.transaction`` whose COMMIT of write number :data:`FAILING_WRITE` raises, after committing or not."""
    real = ingest.transaction
    calls = 0

    @contextmanager
    def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        nonlocal calls
        calls += 1
        if calls != FAILING_WRITE:
            with real(con):
                yield
            return
        con.execute("BEGIN TRANSACTION")
        yield
        if committed:
            con.execute("COMMIT")
            raise duckdb.FatalException(
                "FATAL Error: Transaction COMMIT succeeded and is durable, but the autocheckpoint failed. "
                "Reopen the database instance to recover.\n\nPossible solutions: ..."
            )
        con.execute("ROLLBACK")
        raise duckdb.IOException("IO Error: Could not write to the write-ahead log: No space left on device")

    return transaction


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(tiny_model("qwen2_moe"), byte_tokenizer())


PROMPTS = [Prompt(prompt_id=i, text=f"prompt number {i}", label="ab"[i % 2]) for i in range(12)]


def _shard_files(db: Path) -> set[str]:
    root = db.with_name(db.name + ".shards")
    return {p.relative_to(root).as_posix() for p in root.glob("*/*.parquet")}


@pytest.mark.parametrize(
    ("committed", "message"),
    [
        (
            True,
            "batch for run 'r' was committed, but DuckDB failed right after (FATAL Error: Transaction COMMIT",
        ),
        (
            False,
            "batch for run 'r' may or may not have been committed: DuckDB failed at the commit (IO Error:",
        ),
    ],
    ids=["committed", "not-committed"],
)
def test_a_failed_commit_keeps_the_store_whole_and_the_run_resumable(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed: bool, message: str
) -> None:
    db = tmp_path / "s.duckdb"
    with monkeypatch.context() as patch:
        patch.setattr(ingest, "transaction", _commit_fails(committed))
        with pytest.raises(StoreError) as raised:
            capture(loaded, PROMPTS, db, run_id="r", progress=False, batch_size=2, write_rows=1)
    text = str(raised.value)
    assert text.startswith(message), text
    assert text.endswith("; resume the run (it keeps every prompt that was committed and captures the rest)")
    assert "\n" not in text  # DuckDB's "Possible solutions" lines stay out of the one-line message
    with Store(db) as store:  # opens: every shard the manifest lists is there (an unlisted one is swept)
        listed = {r[0] for r in store.con.execute("SELECT path FROM routing_shards").fetchall()}
        assert _shard_files(db) == listed
        stored = {i for (i,) in store.con.execute("SELECT prompt_id FROM prompts").fetchall()}
        routed = {i for (i,) in store.con.execute("SELECT DISTINCT prompt_id FROM routing").fetchall()}
        assert (
            routed == stored
        )  # every stored prompt has its routing rows, and no routing row lacks its prompt
        # the batch of prompts 4 and 5 is the failing write's; the writer may commit batches queued after it
        assert {0, 1, 2, 3} <= stored
        assert {4, 5} <= stored if committed else not {4, 5} & stored
        assert store.run("r")["status"] == "failed"
    with pytest.warns(UnverifiedResumeWarning):  # prompts from Python: the run recorded no probe digest
        resume(db, "r", model=loaded, probes=PROMPTS, progress=False)
    with Store(db) as store:
        assert store.run("r")["status"] == "complete"
        ids = store.con.execute("SELECT prompt_id FROM prompts ORDER BY prompt_id").fetchall()
        assert [i for (i,) in ids] == list(range(12))
        per_prompt = store.con.execute(
            "SELECT count(DISTINCT prompt_id), count(*) FROM routing WHERE run_id = 'r'"
        ).fetchall()[0]
        tokens = store.con.execute("SELECT count(*) FROM tokens WHERE run_id = 'r'").fetchall()[0][0]
        assert per_prompt == (
            12,
            tokens * len(loaded.layers),
        )  # one routing row per token and layer, none twice

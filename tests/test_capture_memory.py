"""Capture bounds DuckDB's memory while it writes, and gives the old limit back (issue 15 item 6).

DuckDB keeps the blocks it wrote cached up to its limit (80% of RAM by default), so a long capture
grew with the run. These tests pin the mechanism: the limit holds during every write and is
restored afterwards, also when the capture fails. (A peak-RSS comparison at two sizes is not here
yet: see docs/reliability.md.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workbench.capture.engine import CaptureOptions, capture
from workbench.models.loading import load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt
from workbench.store import Store, StoreError

pytestmark = pytest.mark.integration


def _limit(store: Store) -> str:
    return str(store.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])


def test_the_limit_holds_during_every_write_and_the_default_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model(tiny_model("qwen2_moe"), byte_tokenizer())
    prompts = [Prompt(prompt_id=i, text=f"prompt {i}", label="a") for i in range(6)]
    seen: list[str] = []
    write = Store.write_batch

    def spy(self: Store, *args: Any, **kwargs: Any) -> None:
        seen.append(_limit(self))
        write(self, *args, **kwargs)

    monkeypatch.setattr(Store, "write_batch", spy)
    with Store(tmp_path / "s.duckdb") as store:
        before = _limit(store)
        capture(loaded, prompts, store, progress=False, batch_size=2, write_rows=1, store_memory_mib=48)
        assert seen and set(seen) == {"48.0 MiB"}, seen
        assert _limit(store) == before


def test_a_hand_set_limit_is_restored_after_a_failed_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model(tiny_model("qwen2_moe"), byte_tokenizer())

    def broken(self: Store, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Store, "write_batch", broken)
    with Store(tmp_path / "s.duckdb") as store:
        store.con.execute("SET memory_limit = '3GiB'")
        with pytest.raises(OSError, match="disk full"):
            capture(loaded, [Prompt(prompt_id=0, text="x", label="a")], store, progress=False)
        assert _limit(store) == "3.0 GiB"


def test_too_small_a_limit_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match=r"store_memory_mib must be >= 32, got 16"):
        CaptureOptions(store_memory_mib=16)
    refused = pytest.raises(StoreError, match=r"whole number of MiB >= 32, got 8")
    with Store(":memory:") as store, refused, store.memory_limit(8):
        pass

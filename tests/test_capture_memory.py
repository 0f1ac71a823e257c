"""Capture's memory is bounded by its settings, not by the run (issue 15 item 6).

DuckDB keeps the blocks it wrote cached up to its limit (80% of RAM by default), so capture writes
under ``store_memory_mib``: the limit holds during every write and is restored afterwards, also when
the capture fails. And the peak resident set does not grow with the number of prompts: a child
process (tests/peak_child.py) captures N and then 4N prompts of 1 MB texts into fresh stores and
reports each run's peak. What legitimately grows per prompt is under a hundred bytes
(docs/reliability.md, "Memory during a long capture"); the rest is bounded by settings that both
runs reach: DuckDB's pool holds at most ``store_memory_mib`` (N texts fill it), the coalescing write
buffer at most ``write_rows`` routing rows (one batch here). The texts are long because that is
what grew: every DuckDB checkpoint merged the run's new rows into the ``prompts`` row group and
rewrote it whole, about 1.3 MiB of peak per 1 MB prompt, until DuckDB ran out of memory
mid-checkpoint and invalidated the store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workbench.capture.engine import CaptureOptions, capture
from workbench.models.loading import load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt
from workbench.store import Store, StoreError
from workbench.store.memory import MIN_MEMORY_MIB

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


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


TEXT_BYTES = 1_000_000
PEAK_STORE_MIB = MIN_MEMORY_MIB
N = 32  # N texts (32 MB) fill DuckDB's 32 MiB pool, so both runs peak with a full pool

#: What legitimately grows per prompt, measured (docs/reliability.md: ~60 bytes), with room to spare
LEGIT_BYTES_PER_PROMPT = 1024


@pytest.mark.skipif(sys.platform != "linux", reason="reads and resets the peak in /proc/self (Linux only)")
def test_peak_rss_is_flat_from_n_to_4n_prompts(tmp_path: Path) -> None:
    args = [str(tmp_path), str(TEXT_BYTES), str(PEAK_STORE_MIB), str(N), str(4 * N)]
    done = subprocess.run(
        [sys.executable, str(HERE / "peak_child.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (small, peak_small), (large, peak_large) = json.loads(done.stdout.strip().splitlines()[-1])
    assert (small, large) == (N, 4 * N)
    # the bound: the prompts in between may add their legitimate state; and DuckDB's pool, at its limit
    # in both runs, may be anywhere between empty (just evicted) and full at the moment each run peaks
    bound = (large - small) * LEGIT_BYTES_PER_PROMPT / 2**20 + PEAK_STORE_MIB
    growth = peak_large - peak_small
    assert growth <= bound, (
        f"capture's peak grew {growth:.1f} MiB from {small} to {large} prompts of {TEXT_BYTES:,} characters "
        f"({peak_small:.0f} to {peak_large:.0f} MiB); the bound is {bound:.1f} MiB"
    )

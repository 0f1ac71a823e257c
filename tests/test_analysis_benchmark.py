"""Smoke test of benchmarks/analysis.py at a tiny size: every analysis runs and agrees with pandas.

No timing assertions: the numbers of the 1M-token run are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.analysis import SUPPORTED_NEEDS, run  # noqa: E402
from benchmarks.analysis_pandas import BASELINES  # noqa: E402
from workbench.catalog import ANALYSES  # noqa: E402


def test_tiny_benchmark_agrees_with_pandas(tmp_path: Path) -> None:
    args = argparse.Namespace(tokens=12_000, repeats=1, seed=0, cache_dir=str(tmp_path), only=None)
    _, rows, _, _ = run(args)
    by_name = {r.name: r for r in rows}
    assert set(by_name) == set(ANALYSES)
    for name, row in by_name.items():
        if set(ANALYSES[name].needs) - SUPPORTED_NEEDS:
            assert row.note.startswith("skipped"), row
            continue
        assert not row.note, (name, row.note)
        assert row.result is not None and row.result.height > 0, name
        if name in BASELINES:
            assert row.agree is True, (name, row.max_diff)
    # the pandas baselines check catalogued analyses that run from a store (a new analysis may come
    # without one); most of them have one
    assert set(BASELINES) <= {n for n, s in ANALYSES.items() if set(s.needs) <= SUPPORTED_NEEDS}
    assert len(BASELINES) >= len(ANALYSES) // 2

"""Smoke test of benchmarks/capture.py: --quick runs every row and prints the table (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "capture.py"

EXPECTED_ROWS = (
    "bare_forward",
    "ours_capture",
    "routing_check",
    "nnsight_trace",
    "hf_router_logits_executemany",
    "tl_bridge_run_with_cache",
    "ingest_logits_fp16",
    "ingest_logits_fp32",
    "ingest_logits_none",
    "ingest_logits_fp16_coalesced",
    "ingest_logits_none_coalesced",
)


def test_quick_benchmark_prints_every_row(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for name in EXPECTED_ROWS:
        row = [line for line in lines if line.split(" ", 1)[0] == name]
        assert row, f"row {name!r} missing from:\n{proc.stdout}"
        # every baseline ran (quick mode builds the TL bridge and the nnsight trace offline)
        assert "failed" not in row[0] and "not built" not in row[0], row[0]
    assert "reproduce: python benchmarks/capture.py" in proc.stdout
    assert "EXTRAPOLATED" in proc.stdout  # the executemany row says it is extrapolated

"""Smoke test of benchmarks/writer.py: --quick replays every case and prints sane fields (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "writer.py"


def _number(text: str) -> float:
    return float(text.replace(",", "").rstrip("x"))


def test_quick_writer_benchmark_prints_sane_fields(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.writer import FIELDS
    finally:
        sys.path.remove(str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--experts", "8,16", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("# reproduce: python benchmarks/writer.py") for line in lines)
    header = [line for line in lines if line.split()[:1] == ["case"]]
    assert header and header[0].split() == list(FIELDS), header
    rows = [dict(zip(FIELDS, line.split(), strict=True)) for line in lines if line.startswith("e")]
    cases = {r["case"] for r in rows}
    assert cases == {"e8_fp16", "e8_none", "e16_fp16", "e16_none"}, proc.stdout
    for case in cases:
        mine = [r for r in rows if r["case"] == case]
        assert [r["check_tok/s"] == "unthrottled" for r in mine] == [True, False], mine
        free, check = mine
        n_experts = int(case[1:].split("_")[0])
        assert _number(free["rows"]) >= 20_000
        assert _number(free["rows/s"]) > 0
        assert _number(free["rows/cpu_s"]) > 0
        assert _number(free["target_B/row"]) == 2 * n_experts + 24
        # a row holds at least its 8 expert ids (int16) and weights (float32), and every file counts
        assert 8 * 6 <= _number(free["bytes/row"]) < 100_000
        # the largest forward rate is the sustained row rate over the 4 layers
        assert _number(free["max_fwd_tok/s"]) == pytest.approx(_number(free["rows/s"]) / 4, rel=0.01, abs=1)
        # the check runs at 0.9 x that maximum and reports its lag behind the forward schedule
        assert _number(check["check_tok/s"]) == pytest.approx(0.9 * _number(free["max_fwd_tok/s"]), rel=0.01)
        assert _number(check["lag"]) >= 0.99
        assert _number(check["wall/ideal"]) >= _number(check["lag"]) - 0.01
        assert check["keeps_up"] == ("yes" if _number(check["lag"]) <= 1.15 else "no")
    # with logits the rows are wider on disk than without
    by_case = {r["case"]: _number(r["bytes/row"]) for r in rows if r["check_tok/s"] == "unthrottled"}
    assert by_case["e16_fp16"] > by_case["e16_none"]
    assert list(tmp_path.iterdir()) == []  # every store was removed after it was measured

"""Smoke test of benchmarks/scaling.py: one small size, every analysis and page measured, the table rendered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scaling
from workbench.catalog import ANALYSES

pytestmark = pytest.mark.integration


def test_one_small_size_measures_every_analysis_and_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scaling.jsonl"
    assert (
        scaling.main(
            ["--tokens", "3000", "--out", str(out), "--workdir", str(tmp_path), "--page-repeats", "1"]
        )
        == 0
    )
    (result,) = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {n for n, s in ANALYSES.items() if "model" not in s.needs and "contrast" not in s.needs}
    assert set(result["analyses"]) == expected
    assert all(isinstance(t, float) and t > 0 for t in result["analyses"].values()), result["analyses"]
    assert (
        set(result["pages"])
        == set(result["pages_warm_p95"])
        == {"runs", "routing", "specialisation", "health", "coactivation", "expert"}
    )
    assert result["rows"] == 3000 * result["layers"] and result["store_mb"] > 0
    assert set(result["analyses_peak_mib"]) == expected
    assert list(tmp_path.glob("scaling-*")) == []  # the store and its shards were removed
    table = capsys.readouterr().out
    for name in expected:
        assert f"| analysis `{name}`, s | " in table
    assert scaling.main(["--render", str(out)]) == 0

"""Check that a refactor changed no analysis result: snapshot every analysis of a store, then compare.

    # the old code, from a clean worktree of the old commit (PYTHONPATH puts it before the editable install)
    git worktree add --detach /tmp/old OLD_COMMIT
    (cd /tmp/old && PYTHONPATH=/tmp/old python /path/to/.ci/analysis_snapshot.py snap demo_copy.duckdb /tmp/snap_old)
    # the new code
    python .ci/analysis_snapshot.py snap demo.duckdb /tmp/snap_new
    python .ci/analysis_snapshot.py compare /tmp/snap_old /tmp/snap_new

``snap`` runs every registered analysis on every run of the store (compare analyses against another
run; model-running ones with ``tiny-ref``) and writes one Parquet table per (analysis, run) and the
status of each (``ok`` or the error's type and message: an error must stay the same too).
``compare`` reports any difference in status, columns, rows or values (floats to 1e-9 relative).
Give each side its own copy of the store: both open it.

Used for issue 13 (no behaviour change): the demo store, a815712 against the refactored tree,
42 (analysis, run) pairs, 0 differences.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def snap(db: str, out: Path) -> None:
    import workbench

    try:  # the old layout first: with an editable install, a missing subpackage resolves to the other tree
        from workbench.analysis.registry import ANALYSES, run_analysis  # type: ignore[import-not-found]
    except ImportError:
        from workbench.catalog import ANALYSES, run_analysis
    from workbench.models.loading import load_model
    from workbench.store import Store

    print(f"workbench from {workbench.__file__}; analyses from {run_analysis.__module__}")
    out.mkdir(parents=True, exist_ok=True)
    store = Store(db, read_only=True)
    run_ids = store.runs()["run_id"].to_list()
    model: Any = None
    status: dict[str, str] = {}
    for name, spec in sorted(ANALYSES.items()):
        needs = set(spec.needs)
        for rid in run_ids:
            key = f"{name}__{rid}"
            kwargs: dict[str, Any] = {}
            compare = None
            if "compare" in needs:
                others = [r for r in run_ids if r != rid]
                if not others:
                    continue
                compare = others[0]
            if "model" in needs:
                model = model or load_model("tiny-ref")
                kwargs["model"] = model
            try:
                run_analysis(name, store, rid, compare=compare, **kwargs).write_parquet(out / f"{key}.parquet")
                status[key] = "ok"
            except Exception as exc:  # recorded: an analysis that refused before must refuse the same way
                status[key] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
            print(key, status[key][:100], flush=True)
    (out / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True))


def compare(a: Path, b: Path) -> int:
    import numpy as np
    import polars as pl

    sa = json.loads((a / "status.json").read_text())
    sb = json.loads((b / "status.json").read_text())
    bad = 0
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            print("status differs", key, sa.get(key), "|", sb.get(key))
            bad += 1
            continue
        if sa[key] != "ok":
            continue
        x, y = pl.read_parquet(a / f"{key}.parquet"), pl.read_parquet(b / f"{key}.parquet")
        if x.columns != y.columns or x.height != y.height:
            print("shape differs", key, x.columns, y.columns, x.height, y.height)
            bad += 1
            continue
        for col in x.columns:
            u, v = x[col], y[col]
            if u.dtype.is_float():
                same = np.allclose(u.to_numpy(), v.to_numpy(), rtol=1e-9, atol=1e-12, equal_nan=True)
            else:
                same = u.equals(v, null_equal=True)
            if not same:
                print("values differ", key, col)
                bad += 1
    print(f"compared {len(set(sa) | set(sb))} (analysis, run) pairs; {bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("snap", "compare"):
        sys.exit(__doc__)
    if sys.argv[1] == "snap":
        snap(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))

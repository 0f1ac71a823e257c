"""Tests for workbench.store: bulk ingest, streamed reads, parameterised readers, export, deletion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from store_support import make_batch, new_run

from workbench import store
from workbench.store import Store, StoreError
from workbench.store.errors import UnknownRunError

pytestmark = pytest.mark.unit


def test_ingest_is_bulk_arrow_not_executemany(st: Store) -> None:
    src = Path(store.__file__).parent
    for module in src.glob("*.py"):
        assert ".executemany(" not in module.read_text(), module
    run_id = new_run(st)
    batch = make_batch(list(range(1000)), n_pos=100, logits_every=1)  # 1000 * 100 * 2 layers
    assert batch["routing"].num_rows == 200_000
    st.write_batch(run_id, prompts=batch["prompts"], tokens=batch["tokens"], routing=batch["routing"])
    assert st.sql("SELECT count(*) AS n FROM routing WHERE run_id = ?", [run_id])["n"][0] == 200_000
    streamed = list(st.iter_routing(run_id, layers=[3], batch_rows=30_000, logits=False))
    assert sum(f.height for f in streamed) == 100_000 and len(streamed) >= 4


def test_iter_routing_streams_the_sorted_rows_whatever_the_write_order(st: Store) -> None:
    """Batches written out of prompt order: the ordered stream equals routing() row for row, across
    batch boundaries; the unordered stream has the same rows."""
    run_id = new_run(st)
    # 800k rows: more than the ~0.5M-row sorted ranges iter_routing reads at a time
    for ids in (list(range(2000, 4000)), list(range(0, 2000)), list(range(4000, 5000))):
        st.write_batch(run_id, **make_batch(ids, n_pos=80, logits_every=3))
    whole = st.routing(run_id)
    assert whole.height == 5000 * 80 * 2
    for batch_rows in (70_000, 300_000, 1_000_000):
        frames = list(st.iter_routing(run_id, batch_rows=batch_rows))
        assert all(f.height <= batch_rows for f in frames)
        assert pl.concat(frames).equals(whole)
    loose = pl.concat(st.iter_routing(run_id, ordered=False, logits=False))
    keys = ["prompt_id", "position", "layer"]
    assert loose.sort(keys).equals(whole.drop("logits").sort(keys))


# -- readers -----------------------------------------------------------------------------
def test_parameterised_filters(st: Store) -> None:
    run_id = new_run(st)
    labels: list[str | None] = ["O'Brien", "plain", "x' OR '1'='1", None]
    st.write_batch(run_id, **make_batch([0, 1, 2, 3], labels=labels))
    assert st.prompts(run_id, labels=["O'Brien"])["prompt_id"].to_list() == [0]
    assert st.prompts(run_id, labels="O'Brien")["prompt_id"].to_list() == [0]
    assert st.prompts(run_id, labels=["x' OR '1'='1"])["prompt_id"].to_list() == [2]
    assert st.prompts(run_id, labels=["x"]).height == 0
    assert st.prompts(run_id, labels=[]).height == 0
    assert st.prompts(run_id).height == 4

    r = st.routing(run_id, labels=["O'Brien", "plain"], layers=[7])
    assert r.columns == ["prompt_id", "position", "layer", "label", "experts", "weights", "logits"]
    assert set(r["label"].to_list()) == {"O'Brien", "plain"}
    assert set(r["layer"].to_list()) == {7} and r.height == 6
    assert r.select("prompt_id", "position").rows() == sorted(r.select("prompt_id", "position").rows())
    assert set(st.routing(run_id, prompt_ids=[np.int64(3)])["prompt_id"].to_list()) == {3}
    assert st.routing(run_id, prompt_ids=[]).height == 0
    assert st.tokens(run_id, prompt_ids=[1, 2])["prompt_id"].unique().sort().to_list() == [1, 2]


def test_iter_logits_streams_only_rows_with_logits_and_filters_labels(st: Store) -> None:
    run_id = new_run(st)
    labels: list[str | None] = ["O'Brien", "plain", "x' OR '1'='1", None]
    st.write_batch(run_id, **make_batch([0, 1, 2, 3], labels=labels))
    keys = ["prompt_id", "position", "layer"]
    want = st.routing(run_id, layers=[3]).filter(pl.col("logits").is_not_null()).select(*keys, "logits")
    got = pl.concat(pl.from_arrow(b) for b in st.iter_logits(run_id, [3], batch_rows=2))  # type: ignore[misc]
    assert got.columns == [*keys, "logits"] and got.sort(keys).equals(want.sort(keys)) and got.height == 12
    assert list(st.iter_logits(run_id, [7])) == []  # make_batch gives layer 7 no logits
    quoted = pl.concat(pl.from_arrow(b) for b in st.iter_logits(run_id, [3, 7], ["x' OR '1'='1"]))  # type: ignore[misc]
    assert set(quoted["label"].to_list()) == {"x' OR '1'='1"} and set(quoted["prompt_id"].to_list()) == {2}
    with pytest.raises(UnknownRunError):
        st.iter_logits("nope", [3])


def test_export_parquet_round_trips_row_counts(st: Store, tmp_path: Path) -> None:
    run_id = new_run(st)
    other = new_run(st, "other")
    st.write_batch(run_id, **make_batch([0, 1]))
    st.write_batch(other, **make_batch([0]))
    iv = st.create_intervention(run_id, kind="ablate", spec={"layer": 3, "experts": [1]})
    st.write_evaluations(iv, pa.table({"label": ["math"], "metric": ["nll_delta"], "value": [0.12]}))
    mid = st.write_resonance(
        run_id, pa.table({"layer": [3, 3], "expert": [0, 1], "rd": [0.1, -0.2]}), target="math", control="code",
        method="rd",
    )  # fmt: skip
    stored = st.resonance(map_id=mid)
    assert stored["rd"].to_list() == [0.1, -0.2] and stored["span"].to_list() == ["all", "all"]
    assert stored["effect"].null_count() == 2 and set(stored["target"]) == {"math"}
    with pytest.raises(StoreError, match="already exists"):
        st.write_resonance(
            run_id, pa.table({"layer": [3], "expert": [0]}), target="a", control="b", method="rd", map_id=mid
        )
    with pytest.raises(StoreError, match="unexpected columns"):
        st.write_resonance(
            run_id, pa.table({"layer": [3], "expert": [0], "oops": [1]}), target="a", control="b", method="rd"
        )
    files = st.export_parquet(run_id, tmp_path / "export")
    names = {f.stem for f in files}
    assert names == {
        "runs",
        "layers",
        "prompts",
        "tokens",
        "routing",
        "expert_stats",
        "interventions",
        "resonance",
        "evaluations",
    }
    expected = {"runs": 1, "layers": 2, "prompts": 2, "tokens": 6, "routing": 12, "expert_stats": 12,
                "interventions": 1, "evaluations": 1, "resonance": 2}  # fmt: skip
    for f in files:
        table = pq.read_table(f)
        assert table.num_rows == expected[f.stem], f.stem
        if "run_id" in table.column_names:
            assert set(table["run_id"].to_pylist()) <= {run_id}
    runs = pq.read_table(tmp_path / "export" / "runs.parquet")
    assert json.loads(runs["config"][0].as_py()) == {"batch_size": 4, "dtype": "float32"}
    routing = pq.read_table(tmp_path / "export" / "routing.parquet")
    assert routing.schema.field("experts").type == pa.list_(pa.int16())


def test_interventions_and_delete_run(st: Store) -> None:
    run_id, keep = new_run(st, "gone"), new_run(st, "keep")
    st.write_batch(run_id, **make_batch([0, 1]))
    st.write_batch(keep, **make_batch([0]))
    iv = st.create_intervention(run_id, kind="ablate", spec={"layer": 3}, intervention_id="iv-1")
    st.write_evaluations(
        iv, pl.DataFrame({"label": ["O'Brien"], "metric": ["acc"], "value": [0.5], "n": [10]})
    )
    assert st.interventions(run_id)["intervention_id"].to_list() == ["iv-1"]
    ev = st.evaluations(run_id=run_id)
    assert ev["value"].to_list() == [0.5] and ev["n"].to_list() == [10]
    with pytest.raises(StoreError, match="already exists"):
        st.create_intervention(run_id, kind="ablate", spec={}, intervention_id="iv-1")
    st.delete_run(run_id)
    for table in ("runs", "layers", "prompts", "tokens", "routing", "expert_stats", "interventions"):
        assert st.sql(f"SELECT count(*) AS n FROM {table} WHERE run_id = 'gone'")["n"][0] == 0, table
    assert st.evaluations().height == 0
    assert st.done_prompt_ids(keep) == {0} and st.routing(keep).height == 6
    with pytest.raises(UnknownRunError):
        st.delete_run(run_id)


def test_module_open_and_in_memory() -> None:
    with store.open(":memory:") as st:
        run_id = new_run(st)
        st.write_batch(run_id, **make_batch([0]))
        assert st.path is None and st.routing(run_id).height == 6
    with pytest.raises(StoreError, match="in-memory"):
        store.open(":memory:", read_only=True)

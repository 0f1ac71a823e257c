"""Capture of a model divided by a ``device_map`` (transformers/accelerate placement and offload).

On a machine without GPUs the division that can be tested is offload: some blocks' weights live
on disk (or stay on the CPU as offloaded state) and are brought in for each forward by
accelerate's hooks. The records must be those of the undivided model, row for row, and bad maps
must be refused before any run exists.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from workbench.capture.engine import capture
from workbench.models.loading import ModelLoadError, load_model, parse_device_map
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt
from workbench.store import Store

pytestmark = pytest.mark.integration

PROMPTS = [
    Prompt(i, text, label)
    for i, (text, label) in enumerate(
        [
            ("the experts of a divided model route as before", "a"),
            ("offloaded weights come back for each forward", "b"),
            ("short", "a"),
            ("a somewhat longer prompt with more tokens in it, to pad the batch", "b"),
        ]
    )
]


def _rows(db: Path, run: str) -> pl.DataFrame:
    with Store(db, read_only=True) as store:
        return store.routing(run).sort("prompt_id", "position", "layer")


def _tokens(db: Path, run: str) -> pl.DataFrame:
    with Store(db, read_only=True) as store:
        return store.tokens(run).sort("prompt_id", "position")


def _assert_same_records(db: Path, a: str, b: str) -> None:
    x, y = _rows(db, a), _rows(db, b)
    assert x.height == y.height > 0
    assert x["experts"].to_list() == y["experts"].to_list()
    for col in ("weights", "logits"):
        np.testing.assert_array_equal(
            np.asarray(x[col].to_list(), dtype=np.float64), np.asarray(y[col].to_list(), dtype=np.float64)
        )
    tx, ty = _tokens(db, a), _tokens(db, b)
    assert tx.equals(ty)


def _half_on_disk(n_layers: int) -> dict[str, str | int]:
    placement: dict[str, str | int] = {"model.embed_tokens": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    placement["model.rotary_emb"] = "cpu"
    for i in range(n_layers):
        placement[f"model.layers.{i}"] = "disk" if i % 2 else "cpu"
    return placement


@pytest.mark.parametrize(
    ("arch", "backend"), [("qwen2_moe", "hooks"), ("mixtral", "hooks"), ("qwen2_moe", "nnsight")]
)
def test_disk_offloaded_capture_equals_the_undivided_model(tmp_path: Path, arch: str, backend: str) -> None:
    model = tiny_model(arch)
    db = tmp_path / "runs.duckdb"
    opts: dict[str, Any] = {"logits": "fp32", "expert_stats": True, "backend": backend, "progress": False}
    whole = capture(load_model(copy.deepcopy(model), byte_tokenizer()), PROMPTS, db, **opts)
    placement = _half_on_disk(model.config.num_hidden_layers)
    loaded = load_model(model, byte_tokenizer(), device_map=placement, offload_folder=tmp_path / "offload")
    assert any((tmp_path / "offload").iterdir()), "the odd blocks were offloaded to disk"
    offloaded = dict(loaded.model.named_parameters())
    assert any(v.device.type == "meta" for k, v in offloaded.items() if k.startswith("model.layers.1.")), (
        "block 1's weights are not held in memory"
    )
    divided = capture(loaded, PROMPTS, db, **opts)
    _assert_same_records(db, whole, divided)
    with Store(db, read_only=True) as store:
        config = store.run(divided)["config"]
        assert store.run(whole)["config"]["device_map"] is None
        stats = [
            store.sql("SELECT * EXCLUDE (run_id) FROM expert_stats WHERE run_id = ? ORDER BY ALL", [r])
            for r in (whole, divided)
        ]
    assert config["device_map"] == placement
    assert stats[0].height > 0 and stats[0].equals(stats[1])


def test_capture_options_place_a_named_model(tmp_path: Path) -> None:
    """The run's options carry the map (so resume divides the model again the same way)."""
    db = tmp_path / "runs.duckdb"
    whole = capture("tiny:qwen2_moe", PROMPTS, db, progress=False)
    placement = _half_on_disk(tiny_model("qwen2_moe").config.num_hidden_layers)
    divided = capture(
        "tiny:qwen2_moe",
        PROMPTS,
        db,
        progress=False,
        device_map=json.dumps(placement),
        offload_folder=str(tmp_path / "offload"),
    )
    _assert_same_records(db, whole, divided)
    with Store(db, read_only=True) as store:
        info = store.run(divided)
    assert json.loads(info["config"]["options"]["device_map"]) == placement
    assert info["config"]["device_map"] == placement


def test_auto_device_map_on_a_cpu_machine_equals_the_undivided_model(tmp_path: Path) -> None:
    model = tiny_model("qwen2_moe")
    db = tmp_path / "runs.duckdb"
    whole = capture(load_model(copy.deepcopy(model), byte_tokenizer()), PROMPTS, db, progress=False)
    divided = capture(load_model(model, byte_tokenizer(), device_map="auto"), PROMPTS, db, progress=False)
    _assert_same_records(db, whole, divided)


def test_parse_device_map_accepts_names_json_and_files(tmp_path: Path) -> None:
    assert parse_device_map("auto") == "auto"
    assert parse_device_map('{"": "cpu"}') == {"": "cpu"}
    f = tmp_path / "map.json"
    f.write_text('{"model.layers.0": "disk", "": 0}')
    assert parse_device_map(str(f)) == {"model.layers.0": "disk", "": 0}
    for bad, hint in [
        ("everywhere", "auto"),
        ('{"model.layers.0": "gpu9"}', "gpu9"),
        ("[1, 2]", "object"),
        ('{"model.layers.0": ', "JSON"),
    ]:
        with pytest.raises(ModelLoadError, match=hint):
            parse_device_map(bad)


def test_bad_maps_are_refused_before_any_run(tmp_path: Path) -> None:
    model = tiny_model("qwen2_moe")
    with pytest.raises(ModelLoadError, match="offload_folder"):
        load_model(copy.deepcopy(model), byte_tokenizer(), device_map={"": "disk"})
    with pytest.raises(ModelLoadError, match=r"model\.nowhere"):
        load_model(copy.deepcopy(model), byte_tokenizer(), device_map={"model.nowhere": "cpu", "": "cpu"})
    with pytest.raises(ModelLoadError, match="device and a device_map"):
        load_model(copy.deepcopy(model), byte_tokenizer(), device="cpu", device_map="auto")


def test_cli_capture_with_a_device_map_file_and_its_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app

    runner = CliRunner()
    probe = tmp_path / "p.jsonl"
    probe.write_text("".join(json.dumps({"text": p.text, "label": p.label}) + "\n" for p in PROMPTS))
    placement = tmp_path / "map.json"
    placement.write_text(json.dumps(_half_on_disk(tiny_model("qwen2_moe").config.num_hidden_layers)))
    db = tmp_path / "runs.duckdb"
    base = ["capture", "--model", "tiny:qwen2_moe", "--probe", str(probe), "--db", str(db), "--quiet"]
    whole = runner.invoke(app, [*base, "--run-id", "whole"])
    assert whole.exit_code == 0, whole.output
    divided = runner.invoke(
        app,
        [
            *base,
            "--run-id",
            "divided",
            "--device-map",
            str(placement),
            "--offload-folder",
            str(tmp_path / "o"),
        ],
    )
    assert divided.exit_code == 0, divided.output
    _assert_same_records(db, "whole", "divided")
    no_folder = runner.invoke(app, [*base, "--run-id", "x", "--device-map", str(placement)])
    assert no_folder.exit_code != 0 and "--offload-folder" in no_folder.output
    both = runner.invoke(app, [*base, "--run-id", "y", "--device-map", "auto", "--device", "cpu"])
    assert both.exit_code != 0 and "not both" in both.output
    typo = runner.invoke(app, [*base, "--run-id", "z", "--device-map", "autoo"])
    assert typo.exit_code != 0 and "strategy" in typo.output
    with Store(db, read_only=True) as store:
        assert set(store.runs()["run_id"]) == {"whole", "divided"}, "a refused capture left a run behind"

"""``import-routing``: vLLM and SGLang routed-expert outputs, built to each engine's format, become one ids-only run.

No engine runs here: every input is written by hand in the shape the engine's source produces
(docs/import-routing.md names the files). SGLang: base64 of little-endian int32 ``[tokens,
num_hidden_layers, top_k]`` in ``meta_info.routed_experts``; vLLM: nested lists in
``prompt_routed_experts`` / ``choices[i].routed_experts`` (OpenAI server) or
``outputs[i].routed_experts`` (an offline ``RequestOutput``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from workbench.capture.import_routing import RoutingImportError, import_routing
from workbench.catalog import ANALYSES, run_analysis
from workbench.cli import app
from workbench.reports.build import compute_sections
from workbench.store import Store

pytestmark = pytest.mark.unit

E, K = 8, 2


def _planted(rng: np.random.Generator, rows: int, n_axis: int, dense: tuple[int, ...] = ()) -> np.ndarray:
    """[rows, n_axis, K] distinct ids per (row, layer); ``dense`` entries all zero, as engines leave them."""
    arr = np.stack([[rng.choice(E, K, replace=False) for _ in range(n_axis)] for _ in range(rows)])
    arr[:, list(dense), :] = 0
    return arr.astype(np.int64)


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype="<i4").tobytes()).decode("ascii")


def _sglang_record(
    arr: np.ndarray, prompt_ids: list[int], output_ids: list[int], **wrap: Any
) -> dict[str, Any]:
    """A ``/generate`` response wrapped with its request: what SGLang returns, exactly."""
    response = {
        "text": "generated",
        "output_ids": output_ids,
        "meta_info": {
            "id": "req",
            "finish_reason": {"type": "length", "length": len(output_ids)},
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(output_ids),
            "cached_tokens": 0,
            "routed_experts": _b64(arr),
        },
    }
    return {"request": {"text": "a prompt", "input_ids": prompt_ids, "return_routed_experts": True},
            "response": response, **wrap}  # fmt: skip


def _write(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _stored(st: Store, run: str, prompt_id: int) -> dict[tuple[int, int], list[int]]:
    df = st.routing(run, prompt_ids=[prompt_id])
    return {(p, lay): list(e) for p, lay, e in df.select("position", "layer", "experts").iter_rows()}


def _sglang_file(
    tmp_path: Path, rng: np.random.Generator, n: int = 6, dense: tuple[int, ...] = (0,)
) -> tuple[Path, list[np.ndarray]]:
    planted, records = [], []
    for i in range(n):
        prompt, output = list(range(100 + i, 105 + i)), [7, 8, 9]
        arr = _planted(rng, len(prompt) + len(output) - 1, 4, dense)  # seqlen - 1 rows
        planted.append(arr)
        records.append(_sglang_record(arr, prompt, output, label="t" if i % 2 else "c", pair_id=f"p{i // 2}"))
    return _write(tmp_path / "sglang.jsonl", records), planted


def test_sglang_base64_rows_equal_the_planted_ids(tmp_path: Path) -> None:
    path, planted = _sglang_file(tmp_path, np.random.default_rng(1))
    with Store(tmp_path / "runs.duckdb") as st:
        res = import_routing(st, path, "sglang", num_layers=4, top_k=K, n_experts=E, model="m")
        info = st.run(res.run_id)
        assert info["status"] == "complete" and info["n_experts"] == E and info["top_k"] == K
        cfg = info["config"]
        assert cfg["format"] == "sglang" and cfg["ids_only"] is True
        assert cfg["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert cfg["layer_axis"]["dropped"] == [0]  # the all-zero dense block
        assert st.layers(res.run_id)["layer"].to_list() == [1, 2, 3]
        for pid, arr in enumerate(planted):
            rows = _stored(st, res.run_id, pid)
            assert len(rows) == arr.shape[0] * 3
            for (pos, layer), ids in rows.items():
                assert ids == arr[pos, layer].tolist()
        tokens = st.tokens(res.run_id, prompt_ids=[0])
        assert tokens["token_id"].to_list() == [
            100,
            101,
            102,
            103,
            104,
            7,
            8,
        ]  # the last token is never routed
        routing = st.routing(res.run_id)
        assert routing["weights"].null_count() == routing.height == routing["logits"].null_count()
        assert st.prompts(res.run_id)["label"].to_list() == ["c", "t"] * 3


def test_layers_option_maps_an_moe_only_axis_to_model_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arr = _planted(rng, 4, 3)
    path = _write(tmp_path / "s.jsonl", [_sglang_record(arr, [1, 2, 3], [4, 5])])
    with Store(tmp_path / "runs.duckdb") as st:
        res = import_routing(st, path, "sglang", num_layers=3, top_k=K, n_experts=E, layers=[1, 3, 5])
        assert res.layers == (1, 3, 5)
        rows = _stored(st, res.run_id, 0)
        assert rows[(2, 3)] == arr[2, 1].tolist() and rows[(0, 5)] == arr[0, 2].tolist()


def test_model_config_gives_shape_experts_and_dense_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arr = _planted(rng, 5, 4, dense=(0,))
    path = _write(tmp_path / "s.jsonl", [_sglang_record(arr, [1, 2, 3], [4, 5, 6])])
    config = {"architectures": ["DeepseekV3ForCausalLM"], "num_hidden_layers": 4, "num_experts_per_tok": K,
              "n_routed_experts": 16, "first_k_dense_replace": 1, "moe_layer_freq": 1}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    with Store(tmp_path / "runs.duckdb") as st:
        res = import_routing(st, path, "sglang", model_config=tmp_path / "config.json")
        info = st.run(res.run_id)
        assert (info["n_experts"], info["architecture"], res.layers) == (
            16,
            "DeepseekV3ForCausalLM",
            (1, 2, 3),
        )


def test_vllm_openai_response_prompt_and_choice_parts(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    prompt, gen = [11, 12, 13, 14], [21, 22, 23]
    p_arr, c_arr = _planted(rng, len(prompt), 2), _planted(rng, len(gen) - 1, 2)
    full = {"id": "cmpl-1", "object": "text_completion", "model": "m", "prompt_token_ids": prompt,
            "prompt_routed_experts": p_arr.tolist(), "usage": {"prompt_tokens": 4, "completion_tokens": 3},
            "choices": [{"index": 0, "text": "x", "token_ids": gen, "finish_reason": "length",
                         "routed_experts": c_arr.tolist()}]}  # fmt: skip
    only_gen = {**full, "prompt_routed_experts": None}  # an endpoint without the prompt part
    path = _write(tmp_path / "v.jsonl", [{"request": {"prompt": "hello"}, "response": full}, only_gen])
    with Store(tmp_path / "runs.duckdb") as st:
        res = import_routing(st, path, "vllm", n_experts=E)
        both = np.concatenate([p_arr, c_arr])
        rows = _stored(st, res.run_id, 0)
        assert len(rows) == both.shape[0] * 2
        assert all(ids == both[pos, layer].tolist() for (pos, layer), ids in rows.items())
        assert st.tokens(res.run_id, prompt_ids=[0])["token_id"].to_list() == [11, 12, 13, 14, 21, 22]
        late = _stored(st, res.run_id, 1)  # generated tokens only: positions start after the prompt
        assert sorted({pos for pos, _ in late}) == [4, 5] and late[(5, 1)] == c_arr[1, 1].tolist()
        assert st.prompts(res.run_id)["text"].to_list() == ["hello", None]


def test_vllm_offline_request_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arr = _planted(rng, 3 + 2 - 1, 3)
    record = {"request_id": "0", "prompt": "hi there", "prompt_token_ids": [5, 6, 7],
              "outputs": [{"index": 0, "text": "ok", "token_ids": [8, 9], "routed_experts": arr.tolist(),
                           "finish_reason": "stop"}]}  # fmt: skip
    with Store(tmp_path / "runs.duckdb") as st:
        res = import_routing(st, _write(tmp_path / "o.jsonl", [record]), "vllm")
        assert st.run(res.run_id)["n_experts"] == int(arr.max()) + 1 and res.notes  # inferred, with a note
        assert all(ids == arr[p, lay].tolist() for (p, lay), ids in _stored(st, res.run_id, 0).items())


def _nothing_written(db: Path) -> bool:
    with Store(db) as st:
        return st.runs().height == 0


@pytest.mark.parametrize(
    ("lines", "fmt", "kwargs", "message"),
    [
        ([json.dumps({"outputs": [{"routed_experts": [[[1, 2]]]}]}), "{not json"], "vllm", {}, "line 2: not valid JSON"),
        ([json.dumps({"choices": [{"routed_experts": [[[1, 2]], [[3]]]}]})], "vllm", {}, "line 1: choices[0]"),
        ([json.dumps({"choices": [{"token_ids": [1]}]})], "vllm", {}, "both missing"),
        ([json.dumps({"foo": 1})], "vllm", {}, "not a vLLM output"),
        ([json.dumps({"meta_info": {"routed_experts": _b64(np.zeros(5))}})], "sglang",
         {"num_layers": 2, "top_k": 2}, "not a whole number of tokens"),
        ([json.dumps({"meta_info": {"prompt_tokens": 2}})], "sglang", {"num_layers": 2, "top_k": 2},
         "no meta_info.routed_experts"),
        ([json.dumps({"meta_info": {"routed_experts": "!!"}})], "sglang", {"num_layers": 1, "top_k": 1},
         "not valid base64"),
        ([""], "vllm", {}, "holds no records"),
        ([json.dumps({"meta_info": {"routed_experts": _b64(np.zeros(4))}})], "sglang", {}, "carries no shape"),
    ],
)  # fmt: skip
def test_bad_input_is_named_and_writes_nothing(
    tmp_path: Path, lines: list[str], fmt: Any, kwargs: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    db = tmp_path / "runs.duckdb"
    with (
        Store(db) as st,
        pytest.raises(RoutingImportError, match=message.replace("[", r"\[").replace("]", r"\]")),
    ):
        import_routing(st, path, fmt, **kwargs)
    assert _nothing_written(db)


def test_ids_beyond_the_expert_count_name_the_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    good, bad = _planted(rng, 2, 2), _planted(rng, 2, 2)
    bad[1, 0] = [3, 9]
    path = _write(tmp_path / "s.jsonl", [_sglang_record(good, [1, 2], [3]), _sglang_record(bad, [1, 2], [3])])
    db = tmp_path / "runs.duckdb"
    with Store(db) as st, pytest.raises(RoutingImportError, match="line 2: expert id 9 is not below"):
        import_routing(st, path, "sglang", num_layers=2, top_k=K, n_experts=E)
    assert _nothing_written(db)


def test_a_failure_while_ingesting_leaves_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _sglang_file(tmp_path, np.random.default_rng(7))
    db = tmp_path / "runs.duckdb"
    calls = {"n": 0}
    with Store(db) as st:
        original = st.write_batch

        def flaky(*args: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("disk full")
            original(*args, **kwargs)

        monkeypatch.setattr(st, "write_batch", flaky)
        with pytest.raises(RuntimeError, match="disk full"):
            import_routing(st, path, "sglang", num_layers=4, top_k=K, n_experts=E, chunk=2)
    assert calls["n"] == 2 and _nothing_written(db)


def test_every_analysis_works_or_says_what_is_missing(tmp_path: Path) -> None:
    path, _ = _sglang_file(tmp_path, np.random.default_rng(8), n=12)
    with Store(tmp_path / "runs.duckdb") as st:
        run = import_routing(st, path, "sglang", num_layers=4, top_k=K, n_experts=E).run_id
        outcome: dict[str, str] = {}
        for name, spec in ANALYSES.items():
            try:
                df = run_analysis(
                    name, st, run, compare=run if spec.is_compare else None, n_boot=20, n_perm=20
                )
            except TypeError:  # an analysis without resampling options
                try:
                    df = run_analysis(name, st, run, compare=run if spec.is_compare else None)
                except ValueError as exc:
                    outcome[name] = f"refused: {exc}"
                    continue
            except ValueError as exc:
                outcome[name] = f"refused: {exc}"
                continue
            floats = [c for c in df.columns if df[c].dtype.is_float() and c != "ftri"]
            assert not any(df[c].is_nan().any() for c in floats), (name, df)
            outcome[name] = "ok"
        for name in ("load", "balance", "specialisation", "coactivation", "pathways", "fixed-partners",
                     "degradation", "resonance", "drift", "vocab", "mutual-information", "probe"):  # fmt: skip
            assert outcome[name] == "ok", (name, outcome[name])
        for name in ("esft", "underfitting", "agreement"):
            assert "expert ids only" in outcome[name], outcome[name]
        for name in ("router-confidence", "tcess", "dynamic-k"):
            assert "no router logits" in outcome[name], outcome[name]
        assert st.routing(run).height and outcome["expert-similarity"].startswith("refused")
        ftri = run_analysis("resonance", st, run, n_boot=0, n_perm=0)["ftri"]
        assert ftri.null_count() == ftri.len()  # unknown, never a number made of NULL weights
        with pytest.raises(ValueError, match="no gate weights"):
            run_analysis("resonance", st, run, method="ftri", n_boot=0, n_perm=0)
        _, sections = compute_sections(st, run)
    by_name = {s.name: s for s in sections}
    for name in ("esft", "underfitting", "agreement", "router-confidence", "tcess", "dynamic-k"):
        assert by_name[name].status == "skipped" and "expert ids only" in by_name[name].reason, name
    assert by_name["load"].status == "ok" and by_name["coactivation"].status == "ok"
    assert not math.isnan(float(by_name["load"].table["f"].sum()))  # type: ignore[index]


def test_cli_imports_and_reports_bad_lines(tmp_path: Path) -> None:
    path, _ = _sglang_file(tmp_path, np.random.default_rng(9), n=2)
    db = tmp_path / "runs.duckdb"
    runner = CliRunner()
    ok = runner.invoke(app, ["import-routing", "--format", "sglang", str(path), "--db", str(db), "--run", "r1",
                             "--num-layers", "4", "--top-k", "2", "--experts", "8", "--layers", "1-3"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().splitlines()[-1] == "r1"
    bad = _write(tmp_path / "bad.jsonl", [{"choices": []}])
    fail = runner.invoke(app, ["import-routing", "-f", "vllm", str(bad), "--db", str(db)])
    assert fail.exit_code == 2 and "line 1" in fail.output and "nothing was written" in fail.output
    with Store(db) as st:
        assert st.runs()["run_id"].to_list() == ["r1"] and st.layers("r1")["layer"].to_list() == [1, 2, 3]

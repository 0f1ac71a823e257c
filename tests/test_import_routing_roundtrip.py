"""A tiny-ref capture's expert ids, written in SGLang's format and imported, give the same ``load`` and ``coactivation``.

No engine runs: the captured ids are packed exactly as SGLang returns them (base64 of a
little-endian int32 ``[prompt + generated - 1, num_hidden_layers, top_k]`` array in
``meta_info.routed_experts``), one ``/generate`` response per prompt, with one generated token so
that every captured position is a routed row.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from workbench.capture.engine import capture
from workbench.capture.import_routing import import_routing
from workbench.catalog import run_analysis
from workbench.probefile import Prompt
from workbench.store import Store

pytestmark = pytest.mark.integration

TEXTS = [("code", "def f(x): return x + 1"), ("prose", "The cat sat on the mat."), ("math", "2 + 2 = 4"),
         ("code", "for i in range(3): print(i)"), ("prose", "It rained all day."), ("math", "3 * 7 = 21")]  # fmt: skip


def _as_sglang(st: Store, run: str, path: Path) -> None:
    """Write each captured prompt as SGLang's ``/generate`` response (the last token stands for the generated one)."""
    layers = st.layers(run)["layer"].to_list()
    n_layers, top_k = max(layers) + 1, int(st.run(run)["top_k"])
    prompts = st.prompts(run)
    with open(path, "w", encoding="utf-8") as fh:
        for pid, text, label in prompts.select("prompt_id", "text", "label").iter_rows():
            rows = st.routing(run, prompt_ids=[pid]).sort("position", "layer")
            ids = st.tokens(run, prompt_ids=[pid]).sort("position")["token_id"].to_list()
            n = len(ids)
            arr = np.zeros((n, n_layers, top_k), dtype="<i4")  # dense blocks would stay zero, as in SGLang
            for pos, layer, experts in rows.select("position", "layer", "experts").iter_rows():
                arr[pos, layer] = experts
            response = {"text": "", "output_ids": [0],
                        "meta_info": {"id": str(pid), "prompt_tokens": n, "completion_tokens": 1,
                                      "routed_experts": base64.b64encode(arr.tobytes()).decode("ascii")}}  # fmt: skip
            record = {"request": {"text": text, "input_ids": ids}, "response": response, "label": label}
            fh.write(json.dumps(record) + "\n")


def test_sglang_round_trip_of_a_capture_gives_the_same_load_and_coactivation(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    captured = capture(
        "tiny-ref", [Prompt(i, t, lab) for i, (lab, t) in enumerate(TEXTS)], db, progress=False
    )
    with Store(db) as st:
        info = st.run(captured)
        path = tmp_path / "sglang.jsonl"
        _as_sglang(st, captured, path)
        n_layers = max(st.layers(captured)["layer"].to_list()) + 1
        imported = import_routing(
            st,
            path,
            "sglang",
            num_layers=n_layers,
            top_k=int(info["top_k"]),
            n_experts=int(info["n_experts"]),
        ).run_id
        assert st.layers(imported)["layer"].to_list() == st.layers(captured)["layer"].to_list()
        a = st.routing(captured).select("prompt_id", "position", "layer", "experts")
        b = st.routing(imported).select("prompt_id", "position", "layer", "experts")
        assert_frame_equal(a, b)
        # same text and token ids: the two runs' prompts match by content hash
        match = st.match_prompts(captured, imported)
        assert match.n_shared == len(TEXTS) and match.identical
        for name in ("load", "coactivation"):
            left = run_analysis(name, st, captured)
            right = run_analysis(name, st, imported)
            assert left.height > 0
            assert_frame_equal(left, right, check_exact=True)
        assert st.routing(imported)["weights"].null_count() == b.height
        assert pl.Series(st.routing(captured)["weights"]).null_count() == 0

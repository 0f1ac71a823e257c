"""Capture engine: records, padding, NLL, logits precision, truncation, expert stats, streaming."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from workbench.capture.batching import PromptTooLongWarning
from workbench.capture.engine import capture
from workbench.models.loading import load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt, read_probe_file
from workbench.store import Store

pytestmark = pytest.mark.integration

TEXTS = ["hello world", "a much longer prompt, about code and things", "x", "Der Hund schläft."]


def _prompts(texts: list[str] = TEXTS) -> list[Prompt]:
    return [Prompt(i, t, "code" if i % 2 else "prose") for i, t in enumerate(texts)]


def _routing(db: Path, run: str) -> pl.DataFrame:
    with Store(db, read_only=True) as store:
        return store.routing(run).sort(["prompt_id", "position", "layer"])


def _loaded(model_type: str = "qwen2_moe", padding_side: str = "right"):
    return load_model(tiny_model(model_type), byte_tokenizer(padding_side))


def test_records_match_tokenizer_and_have_no_padding(db: Path) -> None:
    loaded = _loaded()
    run = capture(loaded, _prompts(), db, batch_size=3, progress=False)
    tok = byte_tokenizer()
    with Store(db, read_only=True) as store:
        tokens = store.tokens(run).sort(["prompt_id", "position"])
        routing = store.routing(run)
        info = store.run(run)
        layers = store.layers(run)
    assert info["status"] == "complete"
    for i, text in enumerate(TEXTS):
        ids = tok(text)["input_ids"]
        got = tokens.filter(pl.col("prompt_id") == i)
        assert got["token_id"].to_list() == ids  # positions index the default encoding, <bos> included
        assert got["position"].to_list() == list(range(len(ids)))
    assert tokens["token_id"].to_list().count(tok.pad_token_id) == 0
    assert routing.height == tokens.height * len(loaded.layers)
    assert layers["layer"].to_list() == [0, 1]
    assert layers["module_path"].to_list() == ["model.layers.0.mlp", "model.layers.1.mlp"]
    w = np.array(routing["weights"].to_list())
    assert np.all(np.diff(w, axis=1) <= 0), "experts must be stored in descending weight"
    assert np.array(routing["experts"].to_list()).max() < 8


def test_left_right_and_unpadded_batches_agree(tmp_path: Path) -> None:
    runs = {}
    for name, side, bs in [("right", "right", 4), ("left", "left", 4), ("single", "right", 1)]:
        db = tmp_path / f"{name}.duckdb"
        runs[name] = _routing(
            db, capture(_loaded(padding_side=side), _prompts(), db, batch_size=bs, progress=False)
        )
    base = runs["single"]
    for name in ("right", "left"):
        other = runs[name]
        assert other["experts"].to_list() == base["experts"].to_list(), name
        np.testing.assert_allclose(
            np.array(other["weights"].to_list()), np.array(base["weights"].to_list()), atol=1e-5
        )
        np.testing.assert_allclose(
            np.array(other["logits"].to_list()), np.array(base["logits"].to_list()), atol=2e-3
        )


def test_nll_is_next_token_loss(db: Path) -> None:
    loaded = _loaded()
    run = capture(loaded, _prompts(), db, batch_size=2, logits="fp32", progress=False)
    tok = byte_tokenizer()
    with Store(db, read_only=True) as store:
        tokens = store.tokens(run)
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            logits = loaded.model(input_ids=ids).logits[0]
        expected = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none").numpy()
        got = tokens.filter(pl.col("prompt_id") == i).sort("position")["nll"].to_list()
        assert got[-1] is None  # the last token predicts nothing
        np.testing.assert_allclose(np.array(got[:-1], dtype=float), expected, rtol=1e-4, atol=1e-4)


def test_logits_precision_modes(tmp_path: Path) -> None:
    loaded = _loaded()
    out = {}
    for mode in ("fp32", "fp16", "none"):
        db = tmp_path / f"{mode}.duckdb"
        out[mode] = _routing(db, capture(loaded, _prompts(), db, logits=mode, progress=False))
    fp32 = np.array(out["fp32"]["logits"].to_list(), dtype=np.float32)
    fp16 = np.array(out["fp16"]["logits"].to_list(), dtype=np.float32)
    np.testing.assert_array_equal(fp16, fp32.astype(np.float16).astype(np.float32))
    assert out["none"]["logits"].null_count() == out["none"].height
    assert out["none"]["experts"].to_list() == out["fp32"]["experts"].to_list()


def test_logits_are_raw_router_logits(db: Path) -> None:
    loaded = _loaded()
    run = capture(loaded, _prompts(TEXTS[:1]), db, logits="fp32", progress=False)
    tok = byte_tokenizer()
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        layer.router.register_forward_pre_hook(lambda _m, a, i=layer.layer: seen.__setitem__(i, a[0]))
        for layer in loaded.layers
    ]
    with torch.no_grad():
        loaded.model(input_ids=torch.tensor([tok(TEXTS[0])["input_ids"]]))
    for h in hooks:
        h.remove()
    routing = _routing(db, run)
    for layer in loaded.layers:
        x = seen[layer.layer].reshape(-1, 64)
        expected = (x @ layer.router.weight.T).detach()
        got = np.array(routing.filter(pl.col("layer") == layer.layer)["logits"].to_list())
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_max_length_truncates_with_warning(db: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = capture(_loaded(), _prompts(), db, max_length=5, progress=False)
    assert any(issubclass(w.category, PromptTooLongWarning) for w in caught)
    with Store(db, read_only=True) as store:
        prompts = store.prompts(run)
    assert prompts["n_tokens"].max() == 5


def test_probe_file_fields_reach_the_store(db: Path, probe_file: Path) -> None:
    run = capture(_loaded(), probe_file, db, progress=False)
    with Store(db, read_only=True) as store:
        prompts = store.prompts(run).sort("prompt_id")
        info = store.run(run)
    expected = read_probe_file(probe_file)
    assert prompts["prompt_id"].to_list() == [p.prompt_id for p in expected]
    assert prompts["label"].to_list() == [p.label for p in expected]
    assert prompts["pair_id"].to_list()[:2] == ["a", "a"]
    assert prompts["split"].to_list()[2] == "test"
    assert info["probe"] == str(probe_file)
    assert info["config"]["options"]["batch_size"] == 16


@pytest.mark.parametrize("model_type", ["qwen2_moe", "mixtral"])
def test_expert_stats_match_independent_expert_outputs(db: Path, model_type: str) -> None:
    loaded = _loaded(model_type)
    run = capture(loaded, _prompts(TEXTS[:2]), db, expert_stats=True, progress=False)
    tok = byte_tokenizer()
    layer = loaded.layers[1]
    hidden: list[torch.Tensor] = []
    h = layer.block.register_forward_pre_hook(lambda _m, a: hidden.append(a[0]))
    with torch.no_grad():
        loaded.model(input_ids=torch.tensor([tok(TEXTS[0])["input_ids"]]))
    h.remove()
    x = hidden[0].reshape(-1, 64)
    with Store(db, read_only=True) as store:
        stats = store.expert_stats(run).filter((pl.col("prompt_id") == 0) & (pl.col("layer") == 1))
    routed = stats.filter(pl.col("expert") < layer.n_experts).sort(["position"], maintain_order=True)
    assert routed.height == x.shape[0] * layer.top_k
    for row in routed.iter_rows(named=True):
        e, pos = row["expert"], row["position"]
        # independent: run the model's own experts module with only expert e at weight 1
        with torch.no_grad():
            y = layer.experts(x[pos : pos + 1], torch.tensor([[e]]), torch.tensor([[1.0]]))
        assert row["out_norm"] == pytest.approx(float(y.norm()), rel=1e-4)
        assert 0.0 <= row["zero_frac"] <= 1.0
    shared = stats.filter(pl.col("expert") >= layer.n_experts)
    assert shared.height == (x.shape[0] * layer.n_shared)
    if layer.n_shared:  # pseudo-expert ids n_experts + s, values from the shared module itself
        assert set(shared["expert"].to_list()) == {layer.n_experts}
        row = shared.sort("position").row(0, named=True)
        with torch.no_grad():
            y = layer.shared[0](x[row["position"] : row["position"] + 1])
        assert row["out_norm"] == pytest.approx(float(y.norm()), rel=1e-4)


def test_streaming_keeps_memory_bounded_by_the_batch(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt generator never runs more than a few batches ahead of what is committed."""
    committed = 0
    lead: list[int] = []
    original = Store.write_batch

    def counting(self: Store, run_id: str, **tables: object) -> None:
        nonlocal committed
        original(self, run_id, **tables)  # type: ignore[arg-type]
        committed += tables["prompts"].num_rows  # type: ignore[union-attr]

    monkeypatch.setattr(Store, "write_batch", counting)

    def endless(n: int):
        for i in range(n):
            lead.append(i + 1 - committed)
            yield Prompt(i, f"prompt number {i} " * (1 + i % 5), "gen")

    batch_size, pending = 8, 2
    capture(
        _loaded(),
        endless(600),
        db,
        batch_size=batch_size,
        max_pending=pending,
        write_rows=1,
        logits="none",
        progress=False,
    )
    assert committed == 600
    # in flight: the batch being read + the one computing + `pending` queued + the one being written
    assert max(lead) <= batch_size * (pending + 3)


def test_coalesced_writes_are_bounded_and_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several batches go into one write, never more than write_rows rows (plus one batch)."""
    writes: list[int] = []
    original = Store.write_batch

    def counting(self: Store, run_id: str, **tables: object) -> None:
        original(self, run_id, **tables)  # type: ignore[arg-type]
        writes.append(tables["routing"].num_rows)  # type: ignore[union-attr]

    monkeypatch.setattr(Store, "write_batch", counting)
    prompts = [Prompt(i, f"text {i} " * (1 + i % 4), "gen") for i in range(50)]
    db = tmp_path / "c.duckdb"
    run = capture(_loaded(), prompts, db, batch_size=4, write_rows=300, progress=False)
    writes, coalesced = [], list(writes)
    reference = _routing(
        tmp_path / "r.duckdb",
        capture(_loaded(), prompts, tmp_path / "r.duckdb", write_rows=1, batch_size=4, progress=False),
    )
    assert len(writes) == 13  # reference: one write per batch
    assert 1 < len(coalesced) < 13  # 13 batches coalesced into fewer writes
    assert max(coalesced) < 300 + max(writes)  # a write stops at the first batch past the bound
    got = _routing(db, run)
    assert got.height == reference.height and got["experts"].to_list() == reference["experts"].to_list()


def test_capture_writes_the_content_hash_and_comparisons_match_on_it(tmp_path: Path) -> None:
    from workbench.analysis.compare import routing_drift
    from workbench.store.content import prompt_content_hash

    db = tmp_path / "hash.duckdb"
    loaded = _loaded()
    tok = byte_tokenizer()
    full = capture(loaded, _prompts(), db, batch_size=3, progress=False)
    shuffled = [Prompt(10 + i, p.text, p.label) for i, p in enumerate(reversed(_prompts()))]
    again = capture(loaded, shuffled, db, batch_size=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTooLongWarning)
        short = capture(loaded, _prompts(), db, max_length=5, progress=False)
    with Store(db, read_only=True) as store:
        hashes = dict(store.prompts(full).select("text", "content_hash").iter_rows())
        assert hashes == {t: prompt_content_hash(t, tok(t)["input_ids"]) for t in TEXTS}
        same = routing_drift(store, full, again, n_boot=50)  # same prompts, other ids and order
        assert same["overlap"].to_list() == pytest.approx([1.0, 1.0])
        assert same["n_shared"][0] == len(TEXTS)
        # truncation changes the tokens: only the prompts that fit in 5 tokens are shared
        fits = sum(len(tok(t)["input_ids"]) <= 5 for t in TEXTS)
        assert 0 < fits < len(TEXTS)
        assert store.match_prompts(full, short).n_shared == fits

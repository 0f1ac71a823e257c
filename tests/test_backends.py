"""The nnsight and TransformerLens backends produce the same records as the hooks backend.

Each backend runs on its own fresh copy of the same tiny model (same seed), under
``torch.inference_mode()``, on the same padded batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from workbench.capture.backends import make_backend
from workbench.capture.backends.tl_backend import TESTED_ARCHITECTURES, TransformerLensUnsupportedError
from workbench.capture.batching import Batch, make_batch
from workbench.capture.records import BatchCapture
from workbench.models.discovery import find_moe_layers
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt

pytestmark = pytest.mark.integration

TEXTS = ["The quick brown fox jumps over the lazy dog.", "2 + 2 = 4", "Hallo Welt!", "x"]
ATOL = 1e-5

#: DeepSeek-V2/V3 multi-head latent attention needs consistent head sizes in the tiny config.
OVERRIDES: dict[str, dict[str, Any]] = {
    "deepseek_v3": {"head_dim": 8, "num_key_value_heads": 4, "qk_head_dim": 16},
}
NNSIGHT_ARCHS = [
    "qwen2_moe",
    "mixtral",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "gpt_oss",
    "glm4_moe",
    "granitemoe",
]
TL_ARCHS = ["qwen2_moe", "mixtral", "qwen3_moe", "olmoe", "glm4_moe", "gpt_oss"]
#: expert stats are recomputed from fused weights; GPT-OSS experts are left out (no act_fn)
STATS_ARCHS = {"qwen2_moe", "mixtral", "qwen3_moe", "olmoe"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models are fastest on one thread (and oversubscribed CPUs make many threads crawl)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(padding_side: str = "right") -> Batch:
    prompts = [Prompt(i, text, "demo") for i, text in enumerate(TEXTS)]
    return make_batch(prompts, byte_tokenizer(), max_length=None, padding_side=padding_side)


def _model(arch: str) -> torch.nn.Module:
    return tiny_model(arch, seed=0, **OVERRIDES.get(arch, {}))


def _capture(backend: str, arch: str, batch: Batch, **options: Any) -> BatchCapture:
    model = _model(arch)
    runner = make_backend(backend, model, find_moe_layers(model), **options)
    try:
        with torch.inference_mode():
            return runner.run(batch)
    finally:
        runner.close()


def assert_same(expected: BatchCapture, got: BatchCapture, mask: torch.Tensor | None = None) -> None:
    """Records equal on every row, or only on the real tokens of ``mask`` (padding is never stored).

    TransformerLens computes attention eagerly, and padded query rows (all keys masked) come out
    differently from SDPA's, so TransformerLens is compared on real tokens only.
    """
    rows = slice(None) if mask is None else mask.reshape(-1).bool()
    assert sorted(got.routing) == sorted(expected.routing)
    for layer, want in expected.routing.items():
        have = got.routing[layer]
        assert torch.equal(have.indices[rows], want.indices[rows]), f"layer {layer}: experts differ"
        torch.testing.assert_close(have.weights[rows], want.weights[rows], atol=ATOL, rtol=0)
        if want.logits is None:
            assert have.logits is None
        else:
            assert have.logits is not None
            torch.testing.assert_close(have.logits[rows], want.logits[rows], atol=ATOL, rtol=0)
    torch.testing.assert_close(got.nll, expected.nll, atol=ATOL, rtol=0, equal_nan=True)
    assert sorted(got.stats) == sorted(expected.stats)
    for layer, want_stats in expected.stats.items():
        have_stats = got.stats[layer]
        torch.testing.assert_close(have_stats.out_norm[rows], want_stats.out_norm[rows], atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(have_stats.zero_frac[rows], want_stats.zero_frac[rows], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", NNSIGHT_ARCHS)
def test_nnsight_matches_hooks(arch: str) -> None:
    batch = _batch()
    options = {"expert_stats": arch in STATS_ARCHS}
    expected = _capture("hooks", arch, batch, **options)
    got = _capture("nnsight", arch, batch, **options)
    assert_same(expected, got)
    has_next = (batch.mask[:, :-1] * batch.mask[:, 1:]).bool()
    assert torch.isfinite(got.nll[:, :-1][has_next]).all()


@pytest.mark.parametrize("arch", TL_ARCHS)
def test_transformer_lens_matches_hooks(arch: str) -> None:
    batch = _batch()
    options = {"expert_stats": arch in STATS_ARCHS}
    expected = _capture("hooks", arch, batch, **options)
    got = _capture("transformer_lens", arch, batch, **options)
    assert_same(expected, got, batch.mask)
    assert type(_model(arch)).__name__ in TESTED_ARCHITECTURES  # the error message lists what is tested


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_left_padding_and_no_logits(backend: str) -> None:
    batch = _batch("left")
    expected = _capture("hooks", "qwen2_moe", batch, want_logits=False)
    got = _capture(backend, "qwen2_moe", batch, want_logits=False)
    assert all(route.logits is None for route in got.routing.values())
    assert_same(expected, got, batch.mask if backend == "transformer_lens" else None)


def test_backends_run_many_batches_and_stay_consistent() -> None:
    """One backend object serves several batches; nothing leaks from one batch into the next."""
    first, second = (
        _batch(),
        make_batch(
            [Prompt(9, "another batch, longer than the first rows", "demo")],
            byte_tokenizer(),
            max_length=None,
            padding_side="right",
        ),
    )
    captures: dict[str, list[BatchCapture]] = {}
    for backend in ("hooks", "nnsight", "transformer_lens"):
        model = _model("mixtral")
        runner = make_backend(backend, model, find_moe_layers(model))
        with torch.inference_mode():
            captures[backend] = [runner.run(first), runner.run(second), runner.run(first)]
        runner.close()
    for backend in ("nnsight", "transformer_lens"):
        for batch, expected, got in zip(
            (first, second, first), captures["hooks"], captures[backend], strict=True
        ):
            assert_same(expected, got, batch.mask if backend == "transformer_lens" else None)


def test_transformer_lens_leaves_the_callers_model_alone() -> None:
    model = _model("qwen2_moe")
    layers = find_moe_layers(model)
    kinds = [type(module).__name__ for module in model.modules()]
    batch = _batch()
    with torch.inference_mode():
        before = make_backend("hooks", model, layers).run(batch)
        tl = make_backend("transformer_lens", model, layers)
        tl.run(batch)
        tl.close()
        hooks = make_backend("hooks", model, layers)
        after = hooks.run(batch)
        hooks.close()
    assert [type(module).__name__ for module in model.modules()] == kinds
    assert_same(before, after)


@pytest.mark.parametrize(
    ("arch", "why"),
    [("granitemoe", "MoERouterBridge"), ("jamba", "LinearBridge"), ("phimoe", "no adapter")],
)
def test_transformer_lens_unsupported_is_clear(arch: str, why: str) -> None:
    model = _model(arch)
    with pytest.raises(TransformerLensUnsupportedError) as info:
        make_backend("transformer_lens", model, find_moe_layers(model))
    message = str(info.value)
    assert type(model).__name__ in message
    assert why in message
    assert "Qwen2MoeForCausalLM" in message and "MixtralForCausalLM" in message


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_engine_capture_matches_hooks(backend: str, tmp_path: Any) -> None:
    """Through the full engine and store: the same rows as a hooks run."""
    from workbench.capture.engine import capture

    try:
        from workbench.store import Store
    except ImportError as exc:  # pragma: no cover - the store is built elsewhere
        pytest.skip(f"store not available: {exc}")
    prompts = [Prompt(i, text, "demo") for i, text in enumerate(TEXTS)]
    db = tmp_path / "runs.duckdb"
    runs = {}
    for name in ("hooks", backend):
        runs[name] = capture(
            _model("qwen2_moe"),
            prompts,
            db,
            tokenizer=byte_tokenizer(),
            backend=name,
            batch_size=3,
            logits="fp32",
            progress=False,
        )
    with Store(db) as store:
        tables = {}
        for name, run_id in runs.items():
            assert store.run(run_id)["status"] == "complete"
            routing = store.routing(run_id).sort(["prompt_id", "position", "layer"])
            tokens = store.tokens(run_id).sort(["prompt_id", "position"])
            tables[name] = (routing.drop("run_id", strict=False), tokens.drop("run_id", strict=False))
    (want_routing, want_tokens), (got_routing, got_tokens) = tables["hooks"], tables[backend]
    assert got_routing.height == want_routing.height > 0
    assert got_routing["experts"].to_list() == want_routing["experts"].to_list()
    for column in ("weights", "logits"):
        want = torch.tensor(want_routing[column].to_list())
        got = torch.tensor(got_routing[column].to_list())
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert got_tokens["token_id"].to_list() == want_tokens["token_id"].to_list()
    want_nll = torch.tensor(want_tokens["nll"].fill_null(float("nan")).to_list())
    got_nll = torch.tensor(got_tokens["nll"].fill_null(float("nan")).to_list())
    torch.testing.assert_close(got_nll, want_nll, atol=ATOL, rtol=0, equal_nan=True)

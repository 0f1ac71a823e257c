"""The load-time routing self-check refuses adapters that do not record what the module applies.

Each wrong family below is registered against a real (tiny) transformers block; the check must
refuse it with a message naming the check, the block class, the transformers version and the
escape hatch, and leave the model's parameters bit for bit as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn
from typer.testing import CliRunner

from workbench.capture.engine import capture
from workbench.cli import app
from workbench.interventions import Ablate, intervene
from workbench.models import families as fam
from workbench.models.discovery import find_moe_layers
from workbench.models.family import RoutingFamily
from workbench.models.loading import load_model
from workbench.models.registry import lookup, register_adapter, unregister_adapter
from workbench.models.routing_check import RoutingCheckError, check_routing
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt
from workbench.store import Store

pytestmark = pytest.mark.integration


@contextmanager
def registered(block_class: str, family: RoutingFamily) -> Iterator[None]:
    """Register ``family`` for ``block_class`` for the duration; the original comes back in finally."""
    original = fam.BLOCK_FAMILIES.get(block_class)
    register_adapter(block_class, family, overwrite=True)
    try:
        yield
    finally:
        if original is None:
            unregister_adapter(block_class)
        else:
            register_adapter(block_class, original, overwrite=True)


def _block_class(model_type: str) -> tuple[nn.Module, str]:
    model = tiny_model(model_type)
    return model, type(find_moe_layers(model)[0].block).__name__


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def _wrong(model_type: str, change: dict[str, object]) -> tuple[nn.Module, str, RoutingFamily]:
    model, block = _block_class(model_type)
    family = find_moe_layers(model)[0].family
    return model, block, replace(family, name=f"{family.name}-wrong", **change)  # type: ignore[arg-type]


def _refusal(model: nn.Module, block: str, family: RoutingFamily) -> str:
    before = _snapshot(model)
    with registered(block, family):
        layers = find_moe_layers(model)
        assert layers[0].family == family
        with pytest.raises(RoutingCheckError) as info:
            check_routing(model, layers, force=True)
    _assert_same(model, before)  # restored also when the check fails
    message = str(info.value)
    for part in ("routing self-check", block, transformers.__version__, "--skip-routing-check"):
        assert part in message, (part, message)
    return message


@pytest.mark.parametrize(
    "model_type", ["qwen2_moe", "mixtral", "deepseek_v3", "llama4", "switch_transformers", "gpt_oss", "dbrx"]
)
def test_check_passes_on_correct_families_and_restores_the_model(model_type: str) -> None:
    model = tiny_model(model_type)
    before = _snapshot(model)
    results = check_routing(model, find_moe_layers(model), force=True)
    assert results and all(r.rows > 0 and r.decoded_by != "skipped" for r in results)
    _assert_same(model, before)


WRONG = {
    "expert-argument positions swapped": (
        "qwen2_moe",
        {"experts_arg_positions": (2, 1), "experts_kwarg_names": ("top_k_weights", "top_k_index")},
        "(a)",
    ),
    "renormalising router declared non-renormalising": ("mixtral", {"renorm": False}, "(b)"),
    "sigmoid router declared softmax": ("deepseek_v3", {"score_fn": "softmax"}, "(b)"),
    "spurious scale": ("mixtral", {"scale_attrs": ("num_experts_per_tok",)}, "(b)"),
    "weights read from the router's pre-renorm scores": ("qwen2_moe", {"renorm": True}, "(b)"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_check_refuses_a_deliberately_wrong_family(case: str) -> None:
    model_type, change, which = WRONG[case]
    model, block, family = _wrong(model_type, change)
    if case.startswith("weights read"):  # only wrong where the tiny config does not renormalise
        assert not getattr(model.config, "norm_topk_prob", False)
    message = _refusal(model, block, family)
    assert which in message, message
    # only (a) may say the stored routing is wrong; under (b) the records are right, the recipe is not
    assert ("captured routing would be wrong" in message) == (which == "(a)"), message


def test_check_catches_the_transformers_5_25_longcat_flash_regression() -> None:
    """Under 5.24 LongCat-Flash's experts received the chosen ids; 5.25 moves identity-expert choices to
    dummy ids with weight 0 before the experts call, so the 5.24 recipe (read the experts' arguments)
    records the wrong experts. The fixed family reads the router and passes."""
    model, block = _block_class("longcat_flash")
    recipe_524 = replace(fam.LONGCAT, name="longcat-5.24", selection="experts_args")
    message = _refusal(model, block, recipe_524)
    assert "(a) the experts the module applied differ" in message
    assert check_routing(model, find_moe_layers(model), force=True)


def test_check_catches_the_transformers_5_25_minicpm5_moe_regression() -> None:
    """MiniCPM5-MoE is new in 5.25. Without its own entry the generic TopKRouter rule adopted it with
    the softmax recipe and recorded wrong routing; the block applies sigmoid scores with a selection
    bias, groups and routed scaling (DeepSeek-V3). The rule's recipe is refused."""
    model, block = _block_class("minicpm5_moe")
    from workbench.models.family import DEFAULT_FAMILY

    message = _refusal(model, block, replace(DEFAULT_FAMILY, name="topk-softmax-5.24"))
    assert "(b)" in message
    assert check_routing(model, find_moe_layers(model), force=True)


class _HalvingBlock(nn.Module):
    """A Mixtral-like block whose experts receive half the weights its router returns: a block that
    does not apply what its router says. Only the module's own output can reveal it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.gate, self.experts = inner.gate, inner.experts

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.reshape(-1, hidden.shape[-1])
        _, weights, indices = self.gate(x)
        return self.experts(x, indices, weights * 0.5).reshape(hidden.shape)


def test_ground_truth_comes_from_the_module_not_the_router() -> None:
    model = tiny_model("mixtral")
    layer = find_moe_layers(model)[0]
    parent = model.get_submodule(layer.path.rsplit(".", 1)[0])
    setattr(parent, layer.path.rsplit(".", 1)[1], _HalvingBlock(layer.block))
    from_router = replace(fam.SOFTMAX_RENORM, name="mixtral-from-router", selection="router")
    with registered("_HalvingBlock", from_router):
        layers = [x for x in find_moe_layers(model) if type(x.block).__name__ == "_HalvingBlock"]
        with pytest.raises(RoutingCheckError, match=r"\(a\) the experts the module applied differ"):
            check_routing(model, layers, force=True)
    with registered("_HalvingBlock", replace(from_router, selection="experts_args")):
        layers = [x for x in find_moe_layers(model) if type(x.block).__name__ == "_HalvingBlock"]
        # the weights are read where they are applied, but the recipe no longer reproduces them
        with pytest.raises(RoutingCheckError, match=r"\(b\) the family's recipe"):
            check_routing(model, layers, force=True)


def test_nllb_is_skipped_with_its_stated_reason() -> None:
    model = tiny_model("nllb-moe")
    results = check_routing(model, find_moe_layers(model), force=True)
    assert results and all(r.decoded_by == "skipped" and "upstream bug" in r.skipped for r in results)


def _prompts() -> list[Prompt]:
    return [Prompt(i, t, "x") for i, t in enumerate(["hello world", "two plus two"])]


def test_capture_refuses_before_creating_a_run_and_skip_is_recorded(db: Path) -> None:
    loaded = load_model(tiny_model("mixtral"), byte_tokenizer())
    block = type(loaded.layers[0].block).__name__
    wrong = replace(loaded.layers[0].family, name="wrong", renorm=False)
    with registered(block, wrong):
        loaded.layers = find_moe_layers(loaded.model)
        with pytest.raises(RoutingCheckError, match="routing self-check"):
            capture(loaded, _prompts(), db, progress=False)
        with Store(db) as store:
            assert store.runs().height == 0  # nothing left behind
        run = capture(loaded, _prompts(), db, progress=False, skip_routing_check=True)
    with Store(db, read_only=True) as store:
        config = store.run(run)["config"]
    assert config["options"]["skip_routing_check"] is True
    assert config["routing_check"]["skipped"] is True


def test_capture_records_the_check_in_the_run_config(db: Path) -> None:
    run = capture(load_model(tiny_model("qwen2_moe"), byte_tokenizer()), _prompts(), db, progress=False)
    with Store(db, read_only=True) as store:
        check = store.run(run)["config"]["routing_check"]
    assert check["skipped"] is False and check["transformers"] == transformers.__version__
    assert [b["block_class"] for b in check["blocks"]] == ["Qwen2MoeSparseMoeBlock"]


def test_cli_capture_refuses_with_a_clear_message_and_skips_on_request(tmp_path: Path) -> None:
    probe = tmp_path / "p.jsonl"
    probe.write_text('{"text": "hello world", "label": "a"}\n', encoding="utf-8")
    db = tmp_path / "runs.duckdb"
    args = ["capture", "--model", "tiny:mixtral", "--probe", str(probe), "--db", str(db), "-q"]
    wrong = replace(fam.SOFTMAX_RENORM, name="wrong", renorm=False)
    runner = CliRunner()
    with registered("MixtralSparseMoeBlock", wrong):
        refused = runner.invoke(app, args)
        assert refused.exit_code != 0
        assert "routing self-check failed" in refused.output and "Traceback" not in refused.output
        skipped = runner.invoke(app, [*args, "--skip-routing-check"])
    assert skipped.exit_code == 0, skipped.output


def test_intervene_checks_first_and_can_skip() -> None:
    model = tiny_model("mixtral")
    layers = find_moe_layers(model)
    wrong = replace(layers[0].family, name="wrong", renorm=False)
    with registered("MixtralSparseMoeBlock", wrong):
        with pytest.raises(RoutingCheckError), intervene(model, Ablate({layers[0].layer: [0]})):
            pass
        with intervene(model, Ablate({layers[0].layer: [0]}), skip_routing_check=True) as run:
            assert run.layers == [layers[0].layer]
    assert lookup(layers[0].block) == fam.SOFTMAX_RENORM


def test_expert_stats_refuse_identity_experts_before_a_run(db: Path) -> None:
    """LongCat-Flash's identity experts own no weights: --expert-stats says so up front, no run is left."""
    from workbench.models.expert_math import ExpertStatsUnsupported

    loaded = load_model(tiny_model("longcat_flash"), byte_tokenizer())
    with pytest.raises(ExpertStatsUnsupported, match="parameter-free"):
        capture(loaded, _prompts(), db, progress=False, expert_stats=True)
    with Store(db) as store:
        assert store.runs().height == 0
    assert capture(loaded, _prompts(), db, progress=False)  # without expert stats it captures

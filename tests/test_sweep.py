"""The conformance sweep over every MoE text architecture of the installed transformers.

One sweep per pytest session (tiny random models, two right-padded prompts, the hooks backend; the
``sweep_results`` fixture of tests/conftest.py, shared with tests/test_interventions_sweep.py) feeds
all tests; ``pytest -rA`` shows the table of architectures that do not pass, with their reasons.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.conformance.supported import Result, check_architecture, render
from workbench.models.discovery import find_moe_layers
from workbench.models.families import BLOCK_FAMILIES
from workbench.models.tiny import tiny_model

pytestmark = pytest.mark.integration

MIN_PASSING = 55
DOCS_TEXT = (Path(__file__).resolve().parents[1] / "docs" / "supported-models.md").read_text(encoding="utf-8")

#: Important families, checked one by one (a failure names the architecture and its reason).
IMPORTANT = [
    "qwen2_moe",
    "mixtral",
    "deepseek_v3",
    "llama4",
    "switch_transformers",
    "nllb-moe",
    "gpt_oss",
    "dbrx",
    "olmoe",
    "qwen3_moe",
    "gemma4_text",
    "phimoe",
]


@pytest.fixture
def results(sweep_results: dict[str, Result]) -> dict[str, Result]:
    """The session's sweep (tests/conftest.py), by model type."""
    return sweep_results


def test_sweep_passes_enough_architectures(results: dict[str, Result]) -> None:
    passed = sorted(mt for mt, r in results.items() if r.status == "pass")
    not_passing = [r for r in results.values() if r.status != "pass"]
    print(f"\n{len(passed)}/{len(results)} MoE text architectures pass the conformance sweep")
    print(f"{'architecture':30s} {'status':12s} reason")
    for r in not_passing:
        print(f"{r.model_type:30s} {r.status:12s} {r.reason}")
    assert len(passed) >= MIN_PASSING, f"only {len(passed)} pass: {passed}"


def test_every_non_passing_architecture_has_a_reason(results: dict[str, Result]) -> None:
    doc = render(list(results.values()))
    for r in results.values():
        if r.status != "pass":
            assert r.reason, r.model_type
            assert f"`{r.model_type}` ({r.status}): " in doc


def test_no_architecture_fails_unexpectedly(results: dict[str, Result]) -> None:
    """Everything either passes or is a known, explained exclusion (unsupported)."""
    failing = {mt: r.reason for mt, r in results.items() if r.status == "fail"}
    assert not failing, failing


@pytest.mark.parametrize("model_type", IMPORTANT)
def test_important_family_passes(results: dict[str, Result], model_type: str) -> None:
    result = results.get(model_type) or check_architecture(model_type)
    assert result.status == "pass", f"{model_type}: {result.reason}"


#: Architectures new in transformers 5.25 (ergo, kolibri1_1, minicpm5_moe, param2moe) and the one
#: whose routing changed in 5.25 (longcat_flash), with the family each must be resolved to: a
#: structural rule adopting them with the default softmax family would be wrong.
FIXED_IN_5_25 = [
    ("ergo", "sigmoid-bias-renorm-scaled"),
    ("kolibri1_1", "kolibri"),
    ("minicpm5_moe", "deepseek-v3-sigmoid-group"),
    ("param2moe", "deepseek-v3-sigmoid-group"),
    ("longcat_flash", "longcat"),
]


@pytest.mark.parametrize(("model_type", "family"), FIXED_IN_5_25)
def test_architectures_new_or_changed_in_5_25_pass_with_their_family(
    results: dict[str, Result], model_type: str, family: str
) -> None:
    result = results.get(model_type) or check_architecture(model_type)
    assert result.status == "pass", f"{model_type}: {result.reason}"
    assert result.families == [family]


def test_longcat_records_identity_and_real_experts_from_the_router() -> None:
    """Since 5.25 LongCat hands its experts dummy ids for identity experts: the router is the source.

    The tiny model has 8 real and 8 zero-compute experts; both kinds must be recorded, identity
    experts as ids >= n_routed_experts with non-zero weight.
    """
    from workbench.capture.backends.hooks import HooksBackend
    from workbench.conformance.supported import sweep_batch

    assert BLOCK_FAMILIES["LongcatFlashMoE"].selection == "router"
    model = tiny_model("longcat_flash")
    layers = find_moe_layers(model)
    backend = HooksBackend(model, layers, expert_stats=False, want_logits=False)
    try:
        with torch.inference_mode():
            capture = backend.run(sweep_batch())
    finally:
        backend.close()
    n_routed = model.config.n_routed_experts
    indices = torch.cat([capture.routing[x.layer].indices.reshape(-1) for x in layers])
    weights = torch.cat([capture.routing[x.layer].weights.reshape(-1) for x in layers])
    assert (indices < n_routed).any() and (indices >= n_routed).any()
    assert (weights[indices >= n_routed] > 0).all()


def test_a_block_without_adapter_is_unsupported_and_capture_still_refuses_it() -> None:
    """No adapter for a model's MoE blocks: the sweep says "no adapter yet", discovery still refuses."""
    from workbench.models.registry import UnknownArchitectureError, register_adapter, unregister_adapter

    original = BLOCK_FAMILIES["ErgoMoE"]
    unregister_adapter("ErgoMoE")
    try:
        result = check_architecture("ergo")
        with pytest.raises(
            UnknownArchitectureError, match="ErgoMoE, but no adapter describes how they route"
        ):
            find_moe_layers(tiny_model("ergo"))
    finally:
        register_adapter("ErgoMoE", original, overwrite=True)
    assert result.status == "unsupported"
    assert result.reason.startswith("no adapter yet: ") and "ErgoMoE" in result.reason
    assert result.blocks == ["ErgoMoE"]
    assert check_architecture("ergo").status == "pass"  # restored


@pytest.mark.parametrize(
    ("model_type", "n_shared"),
    [("qwen2_moe", 1), ("deepseek_v3", 1), ("llama4", 1), ("ernie4_5_vl_moe", 1), ("mixtral", 0)],
)
def test_shared_experts_are_found(model_type: str, n_shared: int) -> None:
    layers = find_moe_layers(tiny_model(model_type))
    assert {layer.n_shared for layer in layers} == {n_shared}


@pytest.mark.parametrize("model_type", ["switch_transformers", "nllb-moe"])
def test_encoder_decoder_layers_are_numbered_decoder_after_encoder(
    results: dict[str, Result], model_type: str
) -> None:
    model = tiny_model(model_type)
    layers = find_moe_layers(model)
    encoder = [x for x in layers if x.stack == "encoder"]
    decoder = [x for x in layers if x.stack == "decoder"]
    assert encoder and decoder
    assert max(x.layer for x in encoder) < min(x.layer for x in decoder)
    assert len({x.layer for x in layers}) == len(layers)
    assert results[model_type].stacks == "encoder+decoder"


@pytest.mark.parametrize("model_type", ["switch_transformers", "nllb-moe"])
def test_capacity_drops_are_recorded_with_weight_zero(results: dict[str, Result], model_type: str) -> None:
    """The sweep shrinks capacities so tokens are dropped; they pass with their expert at weight 0."""
    assert results[model_type].status == "pass"
    assert results[model_type].dropped > 0


def test_llama4_and_probability_routers_are_described_as_data() -> None:
    assert BLOCK_FAMILIES["Llama4TextMoe"].router_output == "scores_logits"
    assert BLOCK_FAMILIES["Gemma4TextDecoderLayer"].score_fn == "probs"
    assert BLOCK_FAMILIES["Gemma4TextDecoderLayer"].router_input_norm == "norm"


def test_zero_initialised_routers_get_random_weights() -> None:
    model = tiny_model("deepseek_v3")
    layer = find_moe_layers(model)[0]
    assert torch.count_nonzero(layer.router.weight) > 0
    assert torch.count_nonzero(layer.router.e_score_correction_bias) > 0  # a buffer, not a parameter


def test_a_wrong_recipe_is_caught() -> None:
    """Negative control: declaring Mixtral without renormalisation makes check (b) fail."""
    from dataclasses import replace

    from workbench.models.registry import register_adapter

    original = BLOCK_FAMILIES["MixtralSparseMoeBlock"]
    register_adapter("MixtralSparseMoeBlock", replace(original, renorm=False), overwrite=True)
    try:
        result = check_architecture("mixtral")
    finally:
        register_adapter("MixtralSparseMoeBlock", original, overwrite=True)
    assert result.status == "fail" and "(b)" in result.reason


def test_tiny_model_is_reproducible_where_the_architecture_leaves_weights_unset() -> None:
    """Qwen3-Omni's talker does not initialise its fused experts: built twice, the weights must still match."""
    first, second = (dict(tiny_model("qwen3_omni_moe_talker_text").named_parameters()) for _ in range(2))
    experts = [k for k in first if "experts" in k]
    assert experts and all(torch.isfinite(first[k]).all() for k in first)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_sweep_diff_marks_what_a_release_broke() -> None:
    """make test-latest's report: a documented pass that no longer passes is NEWLY BROKEN."""
    from workbench.conformance.sweep_diff import compare, documented_status

    doc = render(
        [Result("mixtral", "pass"), Result("doge", "unsupported", "why"), Result("jetmoe", "fail", "x")]
    )
    documented = documented_status(doc)
    assert documented == {"mixtral": "pass", "doge": "unsupported", "jetmoe": "fail"}
    now = [Result("mixtral", "fail", "(b) weights differ"), Result("doge", "unsupported", "why")]
    now.append(Result("ergo", "unsupported", "no adapter yet: ErgoMoE"))
    changes = {c.result.model_type: c for c in compare(now, documented)}
    assert changes["mixtral"].newly_broken and "NEWLY BROKEN" in changes["mixtral"].line()
    assert not changes["doge"].newly_broken and not changes["doge"].new_not_passing
    assert changes["ergo"].new_not_passing and "NEW, NOT PASSING" in changes["ergo"].line()
    assert documented_status(DOCS_TEXT)["qwen2_moe"] == "pass"  # the real table parses

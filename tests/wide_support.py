"""A run at a realistic expert count (E = 256, top-8), shared by the tests that need one.

Real MoEs route over 128-256 experts (Qwen3-30B-A3B, DeepSeek-V3); the tiny test models have 8.
:func:`capture_wide_run` builds a random-init Qwen2-MoE with 256 experts, top-8 and 4 layers at a
small hidden size (32), and captures it with expert stats on 72 labelled prompts (the first 12 of
each label of ``probes/domains.jsonl``): enough for every records-only analysis, every dashboard
page and the report to meet E = 256 without a big model. The analyses test
(``test_large_expert_counts.py``) and the dashboard/report test at that width
(``test_dashboard_wide_browser.py``) both build their run here, so they see the same data.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from workbench.capture.engine import capture
from workbench.models.loading import LoadedModel, load_model
from workbench.models.tiny import byte_tokenizer, model_class, randomise_routers, tiny_config
from workbench.probefile import Prompt, iter_probe_file

ROOT = Path(__file__).resolve().parents[1]
N_EXPERTS, TOP_K, N_LAYERS = 256, 8, 4
PROMPTS_PER_LABEL = 12
"""Prompts per label of the domains suite (6 labels: 72 prompts)."""


def wide_prompts() -> list[Prompt]:
    """The first :data:`PROMPTS_PER_LABEL` prompts of each label of the domains suite, renumbered."""
    rows = list(iter_probe_file(ROOT / "probes" / "domains.jsonl"))
    by_label = {
        label: list(group)
        for label, group in itertools.groupby(
            sorted(rows, key=lambda p: p.label or ""), key=lambda p: p.label
        )
    }
    picked = [p for group in by_label.values() for p in group[:PROMPTS_PER_LABEL]]
    return [Prompt(i, p.text, p.label) for i, p in enumerate(picked)]


def wide_model(n_layers: int = N_LAYERS) -> LoadedModel:
    """The E = 256 random-init Qwen2-MoE (4 layers unless told, hidden 32, byte tokenizer), seeded: always the same weights."""
    config = tiny_config(
        "qwen2_moe",
        num_experts=N_EXPERTS,
        num_experts_per_tok=TOP_K,
        num_hidden_layers=n_layers,
        hidden_size=32,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=16,
        intermediate_size=16,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = model_class(config)(config)
    randomise_routers(model, 0)
    return load_model(model.eval(), byte_tokenizer())


def capture_wide_run(
    db: Path,
    run_id: str | None = None,
    model: LoadedModel | None = None,
    prompts: list[Prompt] | None = None,
) -> str:
    """Capture :func:`wide_model` (or ``model``) on :func:`wide_prompts` (or ``prompts``) into ``db`` with
    expert stats; returns the run id."""
    loaded = wide_model() if model is None else model
    chosen = wide_prompts() if prompts is None else prompts
    run: str = capture(loaded, chosen, db, run_id=run_id, expert_stats=True, progress=False)
    return run

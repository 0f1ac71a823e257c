"""Captured expert ids stay aligned with their weights, through sorting, packing and the store.

A misalignment (ids sorted but weights not, or a shift between the two arrays) keeps every value
plausible, so these tests check each stored (expert, weight) pair against an independent
recomputation from the stored fp32 logits, on tokens whose top-k weights all differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.capture.engine import capture
from workbench.models.decode import sort_descending
from workbench.models.loading import load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt
from workbench.store import Store

pytestmark = pytest.mark.integration


def test_sort_descending_moves_ids_with_their_weights() -> None:
    idx = torch.tensor([[5, 1, 7], [2, 9, 4]])
    w = torch.tensor([[0.1, 0.7, 0.2], [0.3, 0.3, 0.4]])
    got_idx, got_w = sort_descending(idx, w)
    assert got_idx.tolist() == [[1, 7, 5], [4, 2, 9]]  # ties: lower id first
    assert torch.allclose(got_w, torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.3, 0.3]]))
    pairs_before = {(int(i), round(float(x), 6)) for i, x in zip(idx.flatten(), w.flatten(), strict=True)}
    pairs_after = {
        (int(i), round(float(x), 6)) for i, x in zip(got_idx.flatten(), got_w.flatten(), strict=True)
    }
    assert pairs_before == pairs_after


def test_stored_weights_belong_to_their_experts(db: Path) -> None:
    """Mixtral routes softmax top-k, renormalised: recompute each stored expert's weight from its
    stored logits and compare pair by pair (top-3 of 8 so a shifted or reversed array shows)."""
    model = tiny_model("mixtral", num_experts_per_tok=3)
    prompts = [Prompt(i, t, "x") for i, t in enumerate(["alignment matters", "ids and weights, together"])]
    run = capture(load_model(model, byte_tokenizer()), prompts, db, logits="fp32", progress=False)
    with Store(db, read_only=True) as store:
        rows = store.routing(run)
    assert rows.height > 0
    checked = 0
    for experts, weights, logits in zip(rows["experts"], rows["weights"], rows["logits"], strict=True):
        z = torch.tensor(list(logits), dtype=torch.float64)
        probs = torch.softmax(z, dim=-1)
        ids = list(experts)
        expected = probs[ids] / probs[ids].sum()
        assert np.all(np.diff(np.asarray(weights)) <= 1e-7), "weights are stored in descending order"
        np.testing.assert_allclose(np.asarray(weights), expected.numpy(), rtol=1e-4, atol=1e-6)
        assert set(ids) == set(torch.topk(probs, len(ids)).indices.tolist())
        checked += len(set(np.round(np.asarray(weights), 5))) == len(ids)  # all weights distinct
    assert checked > 0, "no token with distinct weights: the test would not see a misalignment"

"""Synthetic runs for the analysis benchmark, written through the store as a capture would write them.

Run ``bench-a`` holds routing with fp16-rounded router logits, tokens with NLL, labelled prompts and
``expert_stats`` for the selected experts; run ``bench-b`` is a second "capture" of the same prompts
(perturbed logits, no logits stored) so that ``drift`` has something to compare. Planted structure:

* label ``t`` favours experts ``(3t + l) % E`` and ``(3t + l + 1) % E`` at layer ``l`` (specialisation,
  ESFT, TCESS, MI, probe, degradation);
* every token id prefers expert ``(7 · id) % E`` (vocabulary specialisation);
* expert ``(2l + 5) % E`` follows expert ``(2l + 4) % E`` (co-activation, fixed partners);
* a per-prompt random effect (so prompt-cluster CIs are wider than token-level ones);
* expert 7 of the middle layer has rare huge output norms (super experts).

Prompts are generated and written in chunks of about ``chunk_tokens`` tokens, so memory stays bounded
whatever ``tokens`` is. The database is cached under a name derived from the parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from workbench.store import Store, move_store, remove_store

RUN_A = "bench-a"
RUN_B = "bench-b"
#: Bump when the generator changes so that stale cached databases are not reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Workload:
    tokens: int = 1_000_000
    layers: int = 8
    experts: int = 16
    top_k: int = 2
    labels: int = 6
    prompt_len: int = 500
    vocab: int = 2000
    seed: int = 0
    chunk_tokens: int = 120_000

    @property
    def n_prompts(self) -> int:
        return max(2 * self.labels, round(self.tokens / self.prompt_len))

    @property
    def label_names(self) -> list[str]:
        return [f"domain{t}" for t in range(self.labels)]

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return (
            f"{self.tokens:,} tokens × {self.layers} layers × {self.experts} experts, top-{self.top_k}, "
            f"{self.n_prompts:,} prompts of ~{self.prompt_len} tokens, {self.labels} labels (1 in 50 prompts "
            f"unlabelled), fp16 logits; {self.tokens * self.layers:,} routing rows per run"
        )


def _lists(values: np.ndarray) -> pa.ListArray:
    n_rows, width = values.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(n_rows + 1, dtype=np.int32) * width), pa.array(values.ravel())
    )


def _lengths(w: Workload, rng: np.random.Generator) -> np.ndarray:
    raw = rng.integers(int(0.6 * w.prompt_len), int(1.4 * w.prompt_len) + 1, w.n_prompts).astype(np.float64)
    lengths = np.maximum(1, np.floor(raw * w.tokens / raw.sum())).astype(np.int64)
    lengths[: w.tokens - int(lengths.sum())] += 1  # the rounding remainder (< n_prompts)
    assert int(lengths.sum()) == w.tokens
    return lengths


def _label_of(i: int, w: Workload) -> str | None:
    return None if i % 50 == 49 else w.label_names[i % w.labels]


def _routing(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts in descending score and their renormalised softmax weights."""
    top = np.argpartition(-z, k - 1, axis=1)[:, :k]
    zt = np.take_along_axis(z, top, axis=1)
    order = np.argsort(-zt, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    zt = np.take_along_axis(zt, order, axis=1)
    wt = np.exp(zt - zt[:, :1])
    return top.astype(np.int16), (wt / wt.sum(axis=1, keepdims=True)).astype(np.float32)


def _chunk(
    w: Workload, rng: np.random.Generator, first: int, lengths: np.ndarray
) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """Tables of prompts ``first .. first + len(lengths) - 1`` for run A and run B."""
    n_p, n_l, n_e, k = lengths.size, w.layers, w.experts, w.top_k
    pids = np.arange(first, first + n_p, dtype=np.int32)
    labels = [_label_of(int(i), w) for i in pids]
    code = np.array([-1 if x is None else int(x[len("domain") :]) for x in labels])
    pid_tok = np.repeat(pids, lengths)
    pos_tok = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    n_t = pid_tok.size
    code_tok = np.repeat(code, lengths)
    token_id = rng.integers(0, w.vocab, n_t).astype(np.int32)
    z = rng.standard_normal((n_t, n_l, n_e), dtype=np.float32)
    z += np.repeat(rng.normal(0, 0.3, (n_p, n_l, n_e)).astype(np.float32), lengths, axis=0)
    for layer in range(n_l):
        lab = code_tok >= 0
        for off in (0, 1):
            z[lab, layer, (3 * code_tok[lab] + layer + off) % n_e] += 1.2
        z[np.arange(n_t), layer, (7 * token_id) % n_e] += 0.8
        z[:, layer, (2 * layer + 5) % n_e] += 0.7 * z[:, layer, (2 * layer + 4) % n_e]
    z = z.reshape(n_t * n_l, n_e)
    z16 = z.astype(np.float16).astype(np.float32)
    experts, weights = _routing(z16, k)
    pi = np.exp(z16 - z16.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    top_mass = np.sort(pi, axis=1)[:, -k:].sum(axis=1).reshape(n_t, n_l).mean(axis=1)
    nll = (1.0 + 3.0 * (1.0 - top_mass) + rng.gamma(2.0, 0.3, n_t)).astype(np.float32)
    index = {
        "prompt_id": np.repeat(pid_tok, n_l),
        "position": np.repeat(pos_tok, n_l),
        "layer": np.tile(np.arange(n_l, dtype=np.int32), n_t),
    }
    prompts = pa.table({
        "prompt_id": pa.array(pids, pa.int32()), "text": [f"synthetic prompt {i}" for i in pids],
        "label": pa.array(labels, pa.string()), "pair_id": pa.nulls(n_p, pa.string()),
        "split": ["test"] * n_p, "meta": pa.nulls(n_p, pa.string()), "n_tokens": pa.array(lengths, pa.int32()),
    })  # fmt: skip
    tokens = pa.table({
        "prompt_id": pid_tok, "position": pos_tok, "token_id": token_id,
        "token": pa.array([f"t{x}" for x in token_id], pa.string()), "nll": nll,
    })  # fmt: skip
    norms = rng.lognormal(0.0, 0.25, experts.shape).astype(np.float32)
    spike = (index["layer"][:, None] == n_l // 2) & (experts == 7) & (rng.random(experts.shape) < 0.002)
    norms[spike] *= 50.0
    stats = pa.table({
        "prompt_id": np.repeat(index["prompt_id"], k), "position": np.repeat(index["position"], k),
        "layer": np.repeat(index["layer"], k), "expert": experts.ravel(), "out_norm": norms.ravel(),
        "zero_frac": rng.beta(2.0, 8.0, experts.size).astype(np.float32),
    })  # fmt: skip
    run_a = {
        "prompts": prompts,
        "tokens": tokens,
        "routing": pa.table(
            {**index, "experts": _lists(experts), "weights": _lists(weights), "logits": _lists(z16)}
        ),
        "expert_stats": stats,
    }
    experts_b, weights_b = _routing(z16 + rng.normal(0, 0.5, z16.shape).astype(np.float32), k)
    run_b = {
        "prompts": prompts,
        "tokens": tokens,
        "routing": pa.table({**index, "experts": _lists(experts_b), "weights": _lists(weights_b)}),
    }
    return run_a, run_b


def build(w: Workload, path: Path) -> None:
    """Write runs A and B of workload ``w`` into a fresh store at ``path``, chunk by chunk."""
    rng = np.random.default_rng(w.seed)
    lengths = _lengths(w, rng)
    layer_rows = [
        {"layer": x, "module_path": f"model.layers.{x}.mlp", "n_experts": w.experts, "top_k": w.top_k,
         "n_shared": 0, "score_fn": "softmax"}
        for x in range(w.layers)
    ]  # fmt: skip
    with Store(path) as st:
        for run_id in (RUN_A, RUN_B):
            st.create_run(
                model="synthetic", architecture="Synthetic", probe="domains", n_experts=w.experts,
                top_k=w.top_k, config=asdict(w), layers=layer_rows, run_id=run_id,
            )  # fmt: skip
        start = 0
        while start < lengths.size:
            stop = start + 1
            while stop < lengths.size and int(lengths[start : stop + 1].sum()) <= w.chunk_tokens:
                stop += 1
            run_a, run_b = _chunk(w, rng, start, lengths[start:stop])
            st.write_batch(RUN_A, **run_a)
            st.write_batch(RUN_B, **run_b)
            start = stop
        for run_id in (RUN_A, RUN_B):
            st.set_status(run_id, "complete")


def cached_db(w: Workload, cache_dir: Path) -> tuple[Path, bool]:
    """The cached database of ``w`` (built on first use); returns ``(path, built_now)``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"analysis-{w.tokens}-{w.key()}.duckdb"
    if path.exists():
        return path, False
    tmp = path.with_suffix(f".tmp{os.getpid()}.duckdb")
    remove_store(tmp)
    build(w, tmp)
    move_store(tmp, path)  # the file and its routing shards
    return path, True

"""Comparing runs and experts (docs/methods.md §7): routing drift and expert weight similarity.

* **Routing drift / router saturation** (OLMoE), :func:`routing_drift`: for two runs over the
  same tokens, per layer the mean of ``|S ∩ S'| / k`` over the tokens present in both runs.
  Prompts are matched on their content hash (text and token ids, ``Store.match_prompts``),
  never on row index or prompt id, then tokens on ``(position, layer)``: a pair of runs that
  shares no prompt is refused (``PromptMismatchError``, a ``ValueError``), as is a run whose
  prompts have no hash; a partial overlap is computed on the shared prompts only, and the
  table says how many (``n_shared``, ``n_prompts_a``, ``n_prompts_b``; the sentence is
  :func:`drift_coverage`). ``k = max(|S|, |S'|)`` per token (the top-k
  of the two runs normally agree). 1 = identical routing; two independent uniform top-k
  routers give ``k/E`` in expectation (``E|S ∩ S'| = k²/E``), reported as ``chance``. The 95%
  CI is a prompt-cluster percentile bootstrap of the ratio of sums (``Σ_p overlap_p /
  Σ_p tokens_p``). Raises ``ValueError`` when the shared prompts share no routed tokens.
* **Expert weight similarity** ("A Closer Look into MoE"), :func:`expert_weight_similarity`:
  cosine similarity of the flattened weights of every pair of experts of one layer, from a
  fused experts module (``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``, as in
  recent transformers) or a sequence of per-expert modules (a ``ModuleList``, a ``ModuleDict``
  as in Switch Transformers, or a plain list: all parameters of each expert, in
  ``named_parameters`` order, concatenated). The Gram matrix is accumulated tensor by
  tensor in float64 on the weights' device, so no ``E × P`` copy is materialised.
  :func:`merge_candidates` lists the most similar distinct pairs whose cosine reaches
  :data:`MERGE_MIN_COSINE` (none when every pair is near-orthogonal). Output similarity, and the
  registered ``expert-similarity`` analysis that joins both, live in
  :mod:`workbench.analysis.expert_similarity`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from workbench.analysis.stats import cluster_bootstrap
from workbench.store import Store
from workbench.store.matching import PAIRS_SQL, coverage

__all__ = [
    "DRIFT_COLUMNS", "MERGE_MIN_COSINE", "drift_coverage", "expert_weight_similarity", "merge_candidates",
    "routing_drift",
]  # fmt: skip

DRIFT_COLUMNS: tuple[str, ...] = (
    "layer", "overlap", "ci_low", "ci_high", "chance", "n_tokens", "n_prompts",
    "n_shared", "n_prompts_a", "n_prompts_b",
)  # fmt: skip


def routing_drift(
    store: Store,
    run_a: str,
    run_b: str,
    layers: Iterable[int] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """Mean top-k overlap ``|S ∩ S'| / k`` per layer between two runs (module docstring).

    One row per layer with matched tokens, sorted by layer. ``chance`` = ``k/E`` from run A's
    ``layers`` table (NaN for a layer it does not describe).
    """
    info = store.layers(run_a)  # raise UnknownRunError for unknown runs
    store.layers(run_b)
    match = store.match_prompts(run_a, run_b)  # refuses disjoint runs and runs without hashes
    clause, values = "", []
    if layers is not None:
        values = [int(x) for x in layers]
        clause = f" AND a.layer IN ({', '.join('?' for _ in values)})" if values else " AND FALSE"
    layer_list = None if layers is None else [int(x) for x in layers]
    # the in-step scan is only valid when every prompt of both runs pairs with its own prompt_id
    per_prompt = _aligned_overlap(store, run_a, run_b, layer_list) if match.identical else None
    if per_prompt is None:  # join the shared prompts' tokens in DuckDB
        per_prompt = _joined_overlap(store, run_a, run_b, clause, values)
    if per_prompt.height == 0:
        raise ValueError(
            f"runs {run_a!r} and {run_b!r} share {match.n_shared} prompts but no routed tokens"
            f"{' in the selected layers' if layers is not None else ''} (matched on position and layer); "
            "drift needs two captures of the same prompts at the same layers"
        )
    return _drift_rows(per_prompt, info, n_boot=n_boot, seed=seed).with_columns(
        pl.lit(match.n_shared, pl.Int64).alias("n_shared"),
        pl.lit(match.n_a, pl.Int64).alias("n_prompts_a"),
        pl.lit(match.n_b, pl.Int64).alias("n_prompts_b"),
    )


def drift_coverage(df: pl.DataFrame, run_a: str, run_b: str) -> str:
    """The sentence saying how many prompts a :func:`routing_drift` table was computed on."""
    row = df.row(0, named=True)
    return coverage(run_a, run_b, int(row["n_shared"]), int(row["n_prompts_a"]), int(row["n_prompts_b"]))


def _joined_overlap(store: Store, run_a: str, run_b: str, clause: str, values: list[int]) -> pl.DataFrame:
    """Per (layer, prompt of A): matched tokens ``n`` and Σ overlap over the shared prompts, joined in DuckDB."""
    return store.sql(
        "SELECT a.layer, a.prompt_id, count(*) AS n,"
        " sum(len(list_intersect(a.experts, b.experts)) / greatest(len(a.experts), len(b.experts), 1))"
        " AS overlap"
        f" FROM ({PAIRS_SQL}) m"
        " JOIN routing a ON a.run_id = ? AND a.prompt_id = m.pid_a"
        " JOIN routing b ON b.run_id = ? AND b.prompt_id = m.pid_b"
        " AND a.position = b.position AND a.layer = b.layer"
        f" WHERE TRUE{clause}"
        " GROUP BY a.layer, a.prompt_id ORDER BY a.layer, a.prompt_id",
        [run_a, run_b, run_a, run_b, *values],
    )


def _aligned_frames(
    left: Iterator[pl.DataFrame], right: Iterator[pl.DataFrame]
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Equal-length slices of two frame streams, in step; a shorter stream ends with an empty slice."""
    buf_l: pl.DataFrame | None = None
    buf_r: pl.DataFrame | None = None
    while True:
        if buf_l is None or buf_l.height == 0:
            buf_l = next(left, None)
        if buf_r is None or buf_r.height == 0:
            buf_r = next(right, None)
        if buf_l is None or buf_r is None:
            rest = buf_l if buf_l is not None else buf_r
            if rest is not None and rest.height:  # one stream has rows the other lacks
                yield (rest, rest.clear()) if rest is buf_l else (rest.clear(), rest)
            return
        n = min(buf_l.height, buf_r.height)
        yield buf_l.slice(0, n), buf_r.slice(0, n)
        buf_l, buf_r = buf_l.slice(n), buf_r.slice(n)


def _aligned_overlap(store: Store, run_a: str, run_b: str, layers: list[int] | None) -> pl.DataFrame | None:
    """Per (layer, prompt) ``n`` and Σ overlap from two unsorted scans read in step, or None.

    Two captures of the same prompts are normally stored in the same (prompt, position,
    layer) order, so row i of one run is row i of the other: then no join is needed, and the
    overlap ``|S ∩ S'| / max(|S|, |S'|, 1)`` (distinct common ids, list lengths as stored) is
    counted in numpy. Every row's key is checked; on the first mismatch (or a NULL list or a
    negative id, which the SQL path handles) this gives up and returns None.
    """
    e_max = max([1, *store.layers(run_a)["n_experts"].to_list(), *store.layers(run_b)["n_experts"].to_list()])
    rows_per_batch = min(1 << 18, max(1 << 12, (1 << 23) // e_max))  # two (rows × ids) bool matrices
    kw: dict[str, Any] = {"layers": layers, "logits": False, "batch_rows": rows_per_batch, "ordered": False}
    parts: list[pl.DataFrame] = []
    for a, b in _aligned_frames(store.iter_routing(run_a, **kw), store.iter_routing(run_b, **kw)):
        if a.height != b.height:
            return None
        for col in ("prompt_id", "position", "layer"):
            if not np.array_equal(a[col].to_numpy(), b[col].to_numpy()):
                return None
        if a["experts"].null_count() or b["experts"].null_count():
            return None
        len_a = a["experts"].list.len().to_numpy().astype(np.int64)
        len_b = b["experts"].list.len().to_numpy().astype(np.int64)
        ids_a = np.asarray(a["experts"].explode().drop_nulls().to_numpy(), dtype=np.int64)
        ids_b = np.asarray(b["experts"].explode().drop_nulls().to_numpy(), dtype=np.int64)
        if ids_a.size != len_a.sum() or ids_b.size != len_b.sum():
            return None
        if (ids_a.size and ids_a.min() < 0) or (ids_b.size and ids_b.min() < 0):
            return None
        width = int(max(ids_a.max(initial=-1), ids_b.max(initial=-1))) + 1
        if width > 2 * e_max + 64:  # ids far beyond the layers' experts: let DuckDB do it
            return None
        rows = np.arange(a.height)
        in_a = np.zeros((a.height, max(width, 1)), dtype=bool)
        in_b = np.zeros_like(in_a)
        in_a[np.repeat(rows, len_a), ids_a] = True
        in_b[np.repeat(rows, len_b), ids_b] = True
        common = np.count_nonzero(in_a & in_b, axis=1)
        overlap = common / np.maximum(np.maximum(len_a, len_b), 1)
        parts.append(
            pl.DataFrame({"layer": a["layer"], "prompt_id": a["prompt_id"], "overlap": overlap})
            .group_by("layer", "prompt_id")
            .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("overlap").sum())
        )
    if not parts:
        return pl.DataFrame(
            schema={"layer": pl.Int32, "prompt_id": pl.Int32, "n": pl.Int64, "overlap": pl.Float64}
        )
    return (
        pl.concat(parts)
        .group_by("layer", "prompt_id")
        .agg(pl.col("n").sum(), pl.col("overlap").sum())
        .sort("layer", "prompt_id")
        .select("layer", "prompt_id", "n", "overlap")
    )


def _drift_rows(per_prompt: pl.DataFrame, info: pl.DataFrame, *, n_boot: int, seed: int) -> pl.DataFrame:
    """One row per layer: overlap, bootstrap CI, chance, token and prompt counts."""
    chance = {
        int(layer): (k / e if e else math.nan)
        for layer, e, k in info.select("layer", "n_experts", "top_k").iter_rows()
    }
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for (layer,), part in per_prompt.group_by(["layer"], maintain_order=True):
        num = part["overlap"].to_numpy().astype(np.float64)
        den = part["n"].to_numpy().astype(np.float64)
        est, low, high = cluster_bootstrap(num, den, n_boot=n_boot, seed=rng)
        rows.append({
            "layer": int(layer),  # type: ignore[call-overload]
            "overlap": float(est[0]), "ci_low": float(low[0]), "ci_high": float(high[0]),
            "chance": chance.get(int(layer), math.nan),  # type: ignore[call-overload]
            "n_tokens": int(den.sum()), "n_prompts": int(part.height),
        })  # fmt: skip
    schema = {
        "layer": pl.Int32, "overlap": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
        "chance": pl.Float64, "n_tokens": pl.Int64, "n_prompts": pl.Int64,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema).sort("layer")


def _expert_tensors(experts: Any) -> tuple[int, list[Any]]:
    """(E, list of tensors each shaped [E, ...]) or per-expert parameter lists, normalised to [E, P_j]."""
    import torch

    if hasattr(experts, "gate_up_proj") and hasattr(experts, "down_proj"):
        tensors = []
        for name in ("gate_up_proj", "down_proj"):
            value = getattr(experts, name)
            weight = value.weight if isinstance(value, torch.nn.Module) else value
            if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
                raise TypeError(f"fused experts module: {name} must be a 3-D tensor [E, ., .]")
            tensors.append(weight.detach().reshape(weight.shape[0], -1))
        n = int(tensors[0].shape[0])
        if int(tensors[1].shape[0]) != n:
            raise ValueError("gate_up_proj and down_proj disagree on the number of experts")
        return n, tensors
    if isinstance(experts, torch.nn.ModuleDict):  # Switch Transformers: experts["expert_0"], ...
        modules: Sequence[Any] = list(experts.values())
    elif isinstance(experts, torch.nn.Module) and not isinstance(experts, torch.nn.ModuleList):
        raise TypeError(
            "expected a fused experts module (gate_up_proj, down_proj) or a sequence of expert modules, "
            f"got {type(experts).__name__}"
        )
    else:
        modules = list(experts)
    if not modules:
        raise ValueError("no experts given")
    per_expert = [[p.detach().reshape(-1) for _, p in m.named_parameters()] for m in modules]
    shapes = {tuple(int(p.numel()) for p in ps) for ps in per_expert}
    if len(shapes) != 1:
        raise ValueError("experts have different parameter shapes; cannot compare flattened weights")
    n_params = len(per_expert[0])
    return len(modules), [torch.stack([ps[j] for ps in per_expert]) for j in range(n_params)]


def expert_weight_similarity(model_layer_experts: Any) -> pl.DataFrame:
    """Cosine similarity of flattened expert weights: tidy ``(a, b, cosine)``, all E×E pairs.

    Accepts a fused experts module (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``) or a
    sequence / ``ModuleList`` of per-expert modules. Sorted by a, b; the diagonal is 1 (NaN for
    an all-zero expert).
    """
    import torch

    n, tensors = _expert_tensors(model_layer_experts)
    gram = torch.zeros((n, n), dtype=torch.float64)
    with torch.no_grad():
        for t in tensors:
            x = t.to(torch.float64)
            gram += (x @ x.T).cpu()
    g = gram.numpy()
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = g / np.outer(norms, norms)
    cos = np.clip(cos, -1.0, 1.0)
    a, b = np.meshgrid(np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32), indexing="ij")
    return pl.DataFrame({"a": a.ravel(), "b": b.ravel(), "cosine": cos.ravel().astype(np.float64)})


#: Weight cosine a pair must reach to be proposed for merging. Independent random weight
#: vectors have cosine ≈ 0 in high dimension, so the most similar pair of unrelated experts is
#: still near-orthogonal; 0.5 (an angle of 60°) is the least that says "alike".
MERGE_MIN_COSINE = 0.5


def merge_candidates(sim: pl.DataFrame, top: int = 5, min_cosine: float = MERGE_MIN_COSINE) -> pl.DataFrame:
    """Up to ``top`` distinct pairs (``a < b``) with cosine ≥ ``min_cosine``, most similar first.

    Empty when no pair clears the threshold: near-orthogonal experts are not merge candidates.
    """
    return (
        sim.filter(
            (pl.col("a") < pl.col("b")) & pl.col("cosine").is_not_nan() & (pl.col("cosine") >= min_cosine)
        )
        .sort(["cosine", "a", "b"], descending=[True, False, False])
        .head(top)
    )

"""The vectorised fast paths of the logit and resampling analyses against the straightforward maths.

Random data with ties (logits on the fp16 grid) and NaN rows, as stored runs have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal
from scipy.stats import rankdata, spearmanr
from synthetic import lists, prompt_tables

from workbench.analysis.agreement import scorer_scores
from workbench.analysis.common import BatchLogits, map_ordered, sorted_index, transposed_f64
from workbench.analysis.confidence import (
    _confidence_rows,
    _entropy_margin_rows,
    _entropy_margin_sorted,
    _fragile_sorted,
    _keyed_normals,
    _row_ids,
    _topk_changed,
    router_confidence,
)
from workbench.analysis.dynamic import _k_levels, _Tokens, dynamic_k, k_at_p
from workbench.analysis.dynamic_stats import spearman_from_counts as _spearman_from_counts
from workbench.analysis.relevance import _tcess_sums
from workbench.analysis.scores import router_scores, router_scores_t
from workbench.analysis.specialisation import domain_specialisation
from workbench.analysis.stats import one_blas_thread, percentile_interval
from workbench.store import Store, summaries

pytestmark = pytest.mark.unit

FNS = ("softmax", "sigmoid", "sqrtsoftplus", "probs")


def _logits(rng: np.random.Generator, n: int, e: int, *, nan_rows: int = 0) -> np.ndarray:
    """float32 logits on the fp16 grid (so ties occur), with ``nan_rows`` rows holding a NaN."""
    z = rng.normal(0.0, 2.0, size=(n, e)).astype(np.float16).astype(np.float32)
    z[rng.choice(n, n // 10, replace=False), 1] = z[:, 0][: n // 10]  # explicit ties
    if nan_rows:
        z[rng.choice(n, nan_rows, replace=False), rng.integers(0, e)] = np.nan
    return z


def _probs(rng: np.random.Generator, n: int, e: int) -> np.ndarray:
    p = rng.dirichlet(np.ones(e), size=n).astype(np.float32)
    p[: n // 4, 2] = p[: n // 4, 3]  # ties
    return p


@pytest.mark.parametrize("fn", FNS)
def test_router_scores_t_matches_router_scores(fn: str) -> None:
    rng = np.random.default_rng(0)
    z = (_probs(rng, 500, 8) if fn == "probs" else _logits(rng, 500, 8, nan_rows=5)).astype(np.float64)
    for normalise in (True, False):
        expect = router_scores(z, fn, normalise=normalise)
        got = router_scores_t(transposed_f64(z), fn, normalise=normalise).T
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("k", [1, 2, 8])
def test_entropy_margin_sorted_matches_row_wise(fn: str, k: int) -> None:
    rng = np.random.default_rng(1)
    z = _probs(rng, 2000, 8) if fn == "probs" else _logits(rng, 2000, 8)
    ent, margin = _entropy_margin_rows(z.astype(np.float64), k, fn)
    got_ent, got_margin = _entropy_margin_sorted(transposed_f64(np.sort(z, axis=1)), k, fn)
    np.testing.assert_allclose(got_ent, ent, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_margin, margin, rtol=1e-12, atol=1e-15)


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return _row_ids(np.arange(n) // 100, np.arange(n) % 100, np.zeros(n, np.int32), seed)


def test_keyed_normals_are_standard_normal_and_reproducible() -> None:
    ids = _ids(200_000)
    eps = _keyed_normals(ids, 3)
    assert abs(eps.mean()) < 0.01 and abs(eps.std() - 1.0) < 0.01 and np.abs(eps).max() < 9.0
    np.testing.assert_array_equal(eps[::7], _keyed_normals(ids[::7], 3))  # order and batching do not matter
    other = _keyed_normals(ids, 4)
    assert abs(np.corrcoef(eps, other)[0, 1]) < 0.01
    assert not np.array_equal(_ids(10, seed=1), _ids(10, seed=0))


def test_confidence_rows_handles_nan_rows_like_row_wise() -> None:
    rng = np.random.default_rng(2)
    z = _logits(rng, 3000, 8, nan_rows=30)
    out = _confidence_rows(z, 2, "softmax", 0.01, _ids(3000))
    ent, margin = _entropy_margin_rows(z.astype(np.float64), 2, "softmax")
    np.testing.assert_allclose(out[:, 0], ent, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out[:, 1], margin, rtol=1e-12, atol=1e-15)  # NaN where row-wise is NaN
    again = _confidence_rows(z[::-1], 2, "softmax", 0.01, _ids(3000)[::-1])[::-1]
    np.testing.assert_array_equal(out[:, 2], again[:, 2])  # a row's noise depends on its id only
    assert not _confidence_rows(z, 2, "softmax", 0.0, _ids(3000))[:, 2].any()


def test_fragility_band_skips_only_tokens_that_cannot_flip() -> None:
    """Tokens left without noise do not flip even under the worst perturbation with |ε| <= 9."""
    rng = np.random.default_rng(3)
    sigma, k = 0.01, 2
    z = _logits(rng, 20000, 8)
    zt = transposed_f64(np.sort(z, axis=1))
    flipped, undecided = _fragile_sorted(zt, k, sigma, _ids(z.shape[0]))
    a, b = zt[-k], zt[-k - 1]
    skipped = ~undecided & (a - b > 9 * sigma * (np.abs(a) + np.abs(b)))
    assert skipped.mean() > 0.3 and not flipped[skipped].any()
    # Worst case: every insider pushed down and every outsider pushed up by 9σ|z|.
    z64 = z.astype(np.float64)
    order = np.argsort(-z64, axis=1, kind="stable")
    inside = np.zeros_like(z64, dtype=bool)
    np.put_along_axis(inside, order[:, :k], True, axis=1)
    eps = np.where(inside, -9.0, 9.0) * np.sign(z64)
    worst = _topk_changed(z64, z64 * (1.0 + sigma * eps), k)
    assert not worst[skipped].any()


def test_fragility_rate_matches_full_noise() -> None:
    """The band draws estimate the same flip rate as perturbing every logit."""
    rng = np.random.default_rng(4)
    base = _logits(rng, 400, 8)
    z = np.repeat(base, 100, axis=0)  # each token 100 times: per-token flip probabilities matter
    fast = _confidence_rows(z, 2, "softmax", 0.05, _ids(z.shape[0]))[:, 2]
    z64 = z.astype(np.float64)
    full = _topk_changed(z64, z64 * (1.0 + 0.05 * np.random.default_rng(2).standard_normal(z.shape)), 2)
    se = np.sqrt(2 * full.mean() * (1 - full.mean()) / z.shape[0])
    assert 0.01 < full.mean() < 0.5
    assert abs(fast.mean() - full.mean()) < 4 * se
    per_token = np.abs(fast.reshape(400, 100).mean(axis=1) - full.reshape(400, 100).mean(axis=1))
    assert per_token.max() < 0.3


@pytest.mark.parametrize("fn", FNS)
def test_k_levels_matches_k_at_p(fn: str) -> None:
    rng = np.random.default_rng(5)
    z = _probs(rng, 3000, 8) if fn == "probs" else _logits(rng, 3000, 8, nan_rows=20)
    if fn == "probs":
        z[:10, 0] = -0.1  # negative "probabilities": the cumulative sum is not monotone
        z[10:15, 1] = np.nan
    levels = [0.3, 0.5, 0.9, 1.0]
    got = _k_levels(z, fn, levels)
    scores = router_scores(z.astype(np.float64), fn)
    for i, p in enumerate(levels):
        np.testing.assert_array_equal(got[i], k_at_p(scores, p))


def test_spearman_from_counts_matches_scipy() -> None:
    rng = np.random.default_rng(6)
    for n in (3, 10, 500):
        k = rng.integers(1, 5, n)
        nll = np.round(rng.exponential(1.0, n), 1)  # ties
        counts = np.bincount(k - 1, minlength=4)
        y = rankdata(nll) - (n + 1) / 2.0
        got = _spearman_from_counts(counts, np.bincount(k - 1, weights=y, minlength=4), float(y @ y))
        assert got == pytest.approx(float(spearmanr(k, nll).statistic), abs=1e-12)
    assert np.isnan(_spearman_from_counts(np.array([0, 5, 0]), np.zeros(3), 4.0))  # k constant
    assert np.isnan(_spearman_from_counts(np.array([2, 3]), np.zeros(2), 0.0))  # NLL constant


def _dynamic_store(path: Path) -> tuple[str, pl.DataFrame]:
    """Two layers, 12 prompts (labels a/b and one NULL), NaN NLLs, and NULL logits in layer 1."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(5, 30, 12)
    labels: list[str | None] = ["a", "b"] * 5 + [None, "a"]
    n_tok = int(lengths.sum())
    nll = np.round(rng.exponential(2.0, n_tok), 1)
    nll[rng.choice(n_tok, 6, replace=False)] = np.nan
    prompts, tokens, pid_tok, pos_tok = prompt_tables(labels, lengths, nll=nll)  # type: ignore[arg-type]
    tokens = tokens.set_column(4, "nll", pa.array(np.where(np.isnan(nll), None, nll), pa.float32()))
    layers = (0, 1)
    e = 6
    z = _logits(rng, n_tok * 2, e)
    rows = pa.table({
        "prompt_id": np.repeat(pid_tok, 2), "position": np.repeat(pos_tok, 2),
        "layer": np.tile(np.array(layers, np.int32), n_tok),
        "experts": lists(np.argsort(-z, axis=1)[:, :2].astype(np.int16)),
        "weights": lists(np.full((n_tok * 2, 2), 0.5, np.float32)),
        "logits": pa.array([None if (i % 2 == 1 and i % 7 == 3) else row.tolist() for i, row in enumerate(z)],
                           pa.list_(pa.float32())),
    })  # fmt: skip
    layer_rows = [
        {
            "layer": x,
            "module_path": f"m.{x}",
            "n_experts": e,
            "top_k": 2,
            "n_shared": 0,
            "score_fn": "softmax",
        }
        for x in layers
    ]
    with Store(path) as st:
        run = st.create_run(
            model="synthetic", architecture="Synthetic", probe="dyn", n_experts=e, top_k=2,
            config={}, layers=layer_rows, run_id="dyn",
        )  # fmt: skip
        st.write_batch(run, prompts=prompts, tokens=tokens, routing=rows)
        st.set_status(run, "complete")
    flat = pl.DataFrame({
        "layer": np.tile(np.array(layers), n_tok), "label": [labels[p] for p in np.repeat(pid_tok, 2)],
        "nll": np.repeat(np.where(np.isnan(nll), None, nll), 2), "z": [r.tolist() for r in z],
        "has": [not (i % 2 == 1 and i % 7 == 3) for i in range(n_tok * 2)],
    })  # fmt: skip
    return run, flat


def test_dynamic_k_matches_straightforward_reference(tmp_path: Path) -> None:
    """Layer 1 misses some logits, so its label groups hold other tokens than layer 0's."""
    run, flat = _dynamic_store(tmp_path / "dyn.duckdb")
    with Store(tmp_path / "dyn.duckdb", read_only=True) as st:
        df = dynamic_k(st, run, (0.5, 0.9))
    flat = flat.filter(pl.col("has"))
    for row in df.iter_rows(named=True):
        part = flat.filter((pl.col("layer") == row["layer"]) & pl.col("label").eq_missing(row["label"]))
        k = k_at_p(router_scores(np.array(part["z"].to_list()), "softmax"), row["p"])
        assert row["n_tokens"] == k.size
        assert row["mean_k"] == k.mean()
        assert row["k_counts"] == np.bincount(k - 1, minlength=6).tolist()
        nll = part["nll"].to_numpy().astype(np.float64)
        ok = ~np.isnan(nll)
        assert row["n_nll"] == int(ok.sum())
        expect = float(spearmanr(k[ok], nll[ok]).statistic) if ok.sum() >= 3 else float("nan")
        if np.isnan(expect):
            assert np.isnan(row["spearman_nll"])
        else:
            assert row["spearman_nll"] == pytest.approx(expect, abs=1e-12)


def test_dynamic_k_summary_holds_a_layers_own_ranks(tmp_path: Path) -> None:
    """Layer 1's groups are ranked on their own rows; the run's ``dynamic`` summary keeps those sums exactly."""
    run, _ = _dynamic_store(tmp_path / "dyn.duckdb")
    with Store(tmp_path / "dyn.duckdb", read_only=True) as st:
        assert summaries.DYNAMIC in summaries.valid_parts(st.con, run)
        fast = dynamic_k(st, run)
        with summaries.row_path():
            slow = dynamic_k(st, run)
    assert fast.filter(pl.col("layer") == 1)["spearman_nll"].is_not_nan().sum() > 0
    assert_frame_equal(fast, slow, check_exact=True)


def test_token_index_falls_back_to_search() -> None:
    class _Fake:
        def sql(self, query: str, params: list[object]) -> pl.DataFrame:
            return pl.DataFrame({"prompt_id": [0, 0, 0, 2, 2], "position": [0, 1, 5, 3, 4], "nll": [1.0] * 5})

    tokens = _Tokens(_Fake(), "r", np.array([0, 1, 2]))  # type: ignore[arg-type]
    pid = np.array([0, 0, 0, 2, 2, 1, 0])
    pos = np.array([0, 5, 1, 4, 3, 0, 2])
    key = (pid.astype(np.int64) << 32) + pos
    got = tokens.index(sorted_index(np.array([0, 1, 2]), pid), key, pos)
    np.testing.assert_array_equal(got, [0, 2, 1, 4, 3, -1, -1])


@pytest.mark.parametrize("r", [None, 0.1])
def test_tcess_sums_match_indicator_products(r: float | None) -> None:
    rng = np.random.default_rng(8)
    z = _logits(rng, 20000, 8)
    group = rng.integers(0, 5, z.shape[0])
    got = _tcess_sums(z, "softmax", group, 5, r)
    pi = router_scores(z.astype(np.float64), "softmax")
    onehot = (group[None, :] == np.arange(5)[:, None]).astype(np.float64)
    keep = np.ones_like(pi) if r is None else (pi >= r).astype(np.float64)
    np.testing.assert_allclose(got.sums, onehot @ (pi * keep), rtol=1e-12)
    if r is not None:
        np.testing.assert_array_equal(got.kept, onehot @ keep)
    np.testing.assert_array_equal(got.n_rows, onehot.sum(axis=1))


def test_batch_logits_from_arrow_and_polars_agree() -> None:
    arr = pa.array([[1.0, 2.0], None, [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32()))
    for column, source in ((arr, arr), (pl.Series(arr), arr), (arr.slice(2), arr.slice(2))):
        logits = BatchLogits(column)
        expect = [r for r in source.to_pylist() if r is not None]
        rows = np.flatnonzero(logits.lengths == 2)
        np.testing.assert_array_equal(logits.rows(rows, 2), expect)
    sliced = BatchLogits(arr.slice(2))
    np.testing.assert_array_equal(sliced.matrix(2), [[3.0, 4.0], [5.0, 6.0]])
    assert BatchLogits(arr).matrix(2) is None  # the NULL row has no values


def test_map_ordered_keeps_order() -> None:
    assert list(map_ordered(lambda x: x * x, range(50))) == [x * x for x in range(50)]
    assert list(map_ordered(lambda x: -x, range(5), workers=1)) == [0, -1, -2, -3, -4]


def test_sorted_index_dense_and_sparse() -> None:
    for ids in (np.array([3, 4, 7, 9]), np.array([1, 10**9])):
        values = np.concatenate([ids, ids[::-1]])
        np.testing.assert_array_equal(ids[sorted_index(ids, values)], values)


def test_percentiles_match_nanquantile() -> None:
    rng = np.random.default_rng(9)
    reps = rng.random((1000, 6))
    np.testing.assert_array_equal(
        percentile_interval(reps, 0.025), np.nanquantile(reps, [0.025, 0.975], axis=0)
    )
    reps[::7, 2] = np.nan
    np.testing.assert_array_equal(
        percentile_interval(reps, 0.025), np.nanquantile(reps, [0.025, 0.975], axis=0)
    )


def test_one_blas_thread_is_reentrant_across_threads() -> None:
    """As domain_specialisation uses it: held by the caller, re-entered by the worker threads."""
    from threadpoolctl import threadpool_info

    def blas() -> list[int]:
        return [x["num_threads"] for x in threadpool_info() if x["user_api"] == "blas"]

    before = blas()
    seen: list[list[int]] = []

    def nested(_: int) -> None:
        with one_blas_thread(), one_blas_thread():
            np.ones((50, 50)) @ np.ones((50, 50))
        seen.append(blas())

    with one_blas_thread():
        inside = blas()
        list(map_ordered(nested, range(4)))
        assert blas() == inside
    assert all(n == 1 for n in inside) and len(seen) == 4
    assert blas() == before


def test_router_confidence_is_deterministic_across_batching_and_layers(tmp_path: Path) -> None:
    """Keyed noise: the fragility does not depend on batch size, streaming order or layer selection."""
    run, _ = _dynamic_store(tmp_path / "conf.duckdb")
    with Store(tmp_path / "conf.duckdb", read_only=True) as st:
        small = router_confidence(st, run, batch_rows=37, noise=0.05)
        large = router_confidence(st, run, noise=0.05)
        one = router_confidence(st, run, layers=[1], noise=0.05)
        other_seed = router_confidence(st, run, noise=0.05, seed=1)
    assert small["fragility"].to_list() == large["fragility"].to_list()
    assert one["fragility"].to_list() == large.filter(pl.col("layer") == 1)["fragility"].to_list()
    np.testing.assert_allclose(small["entropy"].to_numpy(), large["entropy"].to_numpy(), rtol=1e-12)
    assert large["fragility"].to_list() != other_seed["fragility"].to_list()


def test_agreement_lift_is_domain_specialisations_lift(tmp_path: Path) -> None:
    run, _ = _dynamic_store(tmp_path / "agree.duckdb")
    with Store(tmp_path / "agree.duckdb", read_only=True) as st:
        scores, note = scorer_scores(st, run)
        spec = domain_specialisation(st, run, n_boot=0, n_perm=0)
    assert note is None
    joined = scores.join(
        spec.select("layer", "expert", "label", pl.col("lift").alias("spec")), on=["layer", "expert", "label"]
    )
    assert joined.height == spec.height == scores.height > 0
    assert joined["lift"].to_list() == joined["spec"].to_list()  # the same bits

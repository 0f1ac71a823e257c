"""Known-answer tests for ESFT relevance, TCESS, vocabulary specialisation and routing information (docs/methods.md §2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from synthetic import save_run, skeleton

from workbench.analysis.information import routing_mutual_information, routing_probe
from workbench.analysis.relevance import esft_scores, expert_top_tokens, tcess, vocab_specialisation
from workbench.store import Store

pytestmark = pytest.mark.unit

E, K = 8, 2
LABELS = ("code", "math", "prose")
#: layer 0: uniform random; 1: each label planted on its own expert; 2: expert 3 always top-1
#: for everyone (weight 0.9); 3: top-1 is token_id % E.
RANDOM, PLANTED, DOMINANT, VOCAB = 0, 1, 2, 3
LAYERS = (RANDOM, PLANTED, DOMINANT, VOCAB)
PLANT = {"code": 5, "math": 2, "prose": 7}
PLANT_PROB = 0.9
SHARED = E  # a shared pseudo-expert appended to every selection; must never be counted


def _write_run(path: Path, *, seed: int = 1, n_per_label: int = 20, n_pos: int = 20) -> tuple[str, dict]:
    rng = np.random.default_rng(seed)
    labels = [lab for lab in LABELS for _ in range(n_per_label)]
    sk = skeleton(labels, rng.integers(n_pos // 2, n_pos + 1, size=len(labels)), LAYERS)
    n_rows, pos, lay = sk.n_rows, sk.pos, sk.lay
    lab = np.asarray(labels)[sk.pid]
    experts = np.argsort(rng.random((n_rows, E)), axis=1)[:, :K].astype(np.int16)

    def force_top1(mask: np.ndarray, top1: np.ndarray) -> None:
        experts[mask, 0] = top1
        second = (top1 + 1 + rng.integers(0, E - 1, size=top1.size)) % E
        experts[mask, 1] = second

    for name, e in PLANT.items():
        hit = (lab == name) & (lay == PLANTED) & (rng.random(n_rows) < PLANT_PROB)
        force_top1(hit, np.full(int(hit.sum()), e))
    force_top1(lay == DOMINANT, np.full(int((lay == DOMINANT).sum()), 3))
    force_top1(lay == VOCAB, pos[lay == VOCAB] % E)
    weights = np.tile(np.array([0.7, 0.3], np.float32), (n_rows, 1))
    weights[lay == DOMINANT] = [0.9, 0.1]
    all_experts = np.hstack([experts, np.full((n_rows, 1), SHARED, np.int16)])
    all_weights = np.hstack([weights, np.ones((n_rows, 1), np.float32)])
    logits = rng.normal(0, 1.5, size=(n_rows, E)).astype(np.float32)
    run = save_run(
        path,
        sk,
        experts=all_experts,
        weights=all_weights,
        n_experts=E,
        top_k=K,
        run_id=f"run-{seed}",
        logits=logits,
    )
    return run, {"lay": lay, "lab": lab, "logits": logits}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str, dict]]:
    path = tmp_path_factory.mktemp("relevance") / "run.duckdb"
    run, truth = _write_run(path)
    with Store(path, read_only=True) as st:
        yield st, run, truth


def test_esft_planted_expert_tops_gs_and_tsr(synthetic: tuple[Store, str, dict]) -> None:
    st, run, _ = synthetic
    df = esft_scores(st, run)
    assert df.height == len(LAYERS) * E * len(LABELS)
    assert df["expert"].max() == E - 1  # the shared pseudo-expert is excluded
    for name, e in PLANT.items():
        part = df.filter((pl.col("layer") == PLANTED) & (pl.col("label") == name))
        for col in ("gs", "tsr"):
            assert part.sort(col, descending=True)["expert"][0] == e
        assert part.filter(pl.col("expert") == e)["in_set_gs"].item()
        assert part.filter(pl.col("expert") == e)["in_set_tsr"].item()
    # TSR sums to 1 over experts (k selections / k); GS sums to the routed gate mass (0.7 + 0.3).
    sums = df.group_by("layer", "label").agg(pl.col("tsr").sum(), pl.col("gs").sum())
    assert np.allclose(sums["tsr"].to_numpy(), 1.0)
    assert np.allclose(sums["gs"].to_numpy(), 1.0, atol=1e-5)


def test_esft_sets_are_normalised_per_layer(synthetic: tuple[Store, str, dict]) -> None:
    st, run, _ = synthetic
    df = esft_scores(st, run, p=0.2)
    sizes = df.group_by("layer", "label").agg(pl.col("in_set_gs").sum().alias("n_gs"))
    dominant = sizes.filter(pl.col("layer") == DOMINANT)
    assert (dominant["n_gs"] == 1).all()
    assert (df.filter((pl.col("layer") == DOMINANT) & pl.col("in_set_gs"))["expert"] == 3).all()
    # Uniform routing: each expert has share ~1/8 < 0.2, so two experts are needed.
    assert (sizes.filter(pl.col("layer") == RANDOM)["n_gs"] == 2).all()
    # The random layer's sets do not depend on which other layers are analysed.
    alone = esft_scores(st, run, layers=[RANDOM], p=0.2)
    both = df.filter(pl.col("layer") == RANDOM)
    assert alone["in_set_gs"].to_list() == both["in_set_gs"].to_list()
    assert alone["in_set_tsr"].to_list() == both["in_set_tsr"].to_list()
    # Within a layer the set is minimal: its share reaches p, and dropping its smallest member does not.
    for (layer, label), part in df.group_by("layer", "label"):
        gs = part["gs"].to_numpy()
        chosen = np.sort(gs[part["in_set_gs"].to_numpy()])
        assert chosen.sum() / gs.sum() >= 0.2 - 1e-9, (layer, label)
        assert chosen[1:].sum() / gs.sum() < 0.2, (layer, label)


def test_tcess_matches_numpy(synthetic: tuple[Store, str, dict]) -> None:
    st, run, truth = synthetic
    z = truth["logits"].astype(np.float64)
    pi = np.exp(z - z.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    df = tcess(st, run)
    thr = tcess(st, run, layers=[PLANTED], r=0.2)
    for layer in (RANDOM, PLANTED):
        for name in LABELS:
            mask = (truth["lay"] == layer) & (truth["lab"] == name)
            got = df.filter((pl.col("layer") == layer) & (pl.col("label") == name)).sort("expert")
            np.testing.assert_allclose(got["tcess"].to_numpy(), pi[mask].mean(axis=0), rtol=1e-9)
            if layer == PLANTED:
                sub = pi[mask]
                keep = sub >= 0.2
                expect = (sub * keep).sum(axis=0) / keep.sum(axis=0)
                got_r = thr.filter(pl.col("label") == name).sort("expert")
                np.testing.assert_allclose(got_r["tcess"].to_numpy(), expect, rtol=1e-9)
                assert got_r["n_counted"].to_list() == keep.sum(axis=0).tolist()


def test_tcess_without_logits_says_how_to_capture(tmp_path: Path) -> None:
    path = tmp_path / "nologits.duckdb"
    with Store(path) as st:
        run = st.create_run(
            model="s", architecture="S", probe="p", n_experts=E, top_k=K, config={},
            layers=[{"layer": 0, "module_path": "m.0", "n_experts": E, "top_k": K}], run_id="r",
        )  # fmt: skip
        with pytest.raises(ValueError, match="--logits"):
            tcess(st, run)


def test_vocab_specialisation(synthetic: tuple[Store, str, dict]) -> None:
    st, run, _ = synthetic
    df = vocab_specialisation(st, run)
    by_layer = dict(zip(df["layer"].to_list(), df["vocab_specialisation"].to_list(), strict=True))
    assert by_layer[VOCAB] == pytest.approx(1.0)
    assert by_layer[DOMINANT] == pytest.approx(1.0)
    assert 1 / E < by_layer[RANDOM] < 0.35
    top = expert_top_tokens(st, run, VOCAB, 4)
    assert set(top["token_id"].to_list()) == {4, 12}  # positions run 0..19
    assert (top["share"] == 1.0).all()
    assert top["token"].to_list()[0].startswith("t")


def test_mutual_information_and_probe(synthetic: tuple[Store, str, dict]) -> None:
    st, run, _ = synthetic
    mi = routing_mutual_information(st, run, layers=[RANDOM, PLANTED])
    mi_by = dict(zip(mi["layer"].to_list(), mi["mi_norm"].to_list(), strict=True))
    assert mi_by[PLANTED] > 0.3
    assert mi_by[RANDOM] < 0.05
    assert mi["h_label"][0] == pytest.approx(np.log(3), abs=0.02)
    probe = routing_probe(st, run, layers=[RANDOM, PLANTED])
    rows = {r["layer"]: r for r in probe.iter_rows(named=True)}
    assert rows[PLANTED]["chance"] == pytest.approx(1 / 3)
    assert rows[PLANTED]["accuracy"] > 0.9
    assert rows[RANDOM]["accuracy"] < 0.6
    assert rows[PLANTED]["n_prompts"] == 60


def _probe_as_first_written(st: Store, run: str, layer: int, folds: int, seed: int) -> np.ndarray:
    """Per-fold accuracies of the probe as it was first written: histograms counted from the token
    rows, string labels, ``make_pipeline`` + ``cross_val_score`` (on one BLAS thread: on a busy
    machine its default threads make this reference the slowest part of the test)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    rows = st.sql(
        "SELECT r.prompt_id, r.experts, p.label FROM routing r JOIN prompts p"
        " ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id"
        " WHERE r.run_id = ? AND r.layer = ? AND p.label IS NOT NULL",
        [run, layer],
    )
    label_of = dict(zip(rows["prompt_id"].to_list(), rows["label"].to_list(), strict=True))
    pids = sorted(label_of)
    x = np.zeros((len(pids), E))
    for pid, experts in zip(rows["prompt_id"].to_list(), rows["experts"].to_list(), strict=True):
        for e in experts:
            if e < E:
                x[pids.index(pid), e] += 1
    x /= x.sum(axis=1, keepdims=True)
    y = np.array([label_of[p] for p in pids], dtype=object)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with threadpool_limits(limits=1, user_api="blas"):
        return np.asarray(cross_val_score(model, x, y, cv=cv, scoring="accuracy"))


@pytest.mark.parametrize(("folds", "seed", "layers"), [(5, 0, LAYERS), (3, 7, (RANDOM,))])
def test_probe_gives_the_first_versions_bits(
    synthetic: tuple[Store, str, dict], folds: int, seed: int, layers: tuple[int, ...]
) -> None:
    """Integer label codes, one BLAS/OpenMP thread, fits on two threads: the same accuracies to the bit
    (issue 14 item 7), at every layer, planted or chance-level, and BLAS threads as they were after."""
    from threadpoolctl import threadpool_info

    st, run, _ = synthetic
    blas_before = [x["num_threads"] for x in threadpool_info() if x["user_api"] == "blas"]
    probe = routing_probe(st, run, layers=layers, folds=folds, seed=seed)
    assert [x["num_threads"] for x in threadpool_info() if x["user_api"] == "blas"] == blas_before
    assert probe["layer"].to_list() == list(layers)
    for row in probe.iter_rows(named=True):
        scores = _probe_as_first_written(st, run, row["layer"], folds, seed)
        assert (row["accuracy"], row["accuracy_std"]) == (scores.mean(), scores.std()), row
        assert row["n_folds"] == folds and row["n_prompts"] == 60
    accuracy = dict(zip(probe["layer"].to_list(), probe["accuracy"].to_list(), strict=True))
    assert accuracy[RANDOM] < 0.6
    assert accuracy.get(PLANTED, 1.0) > 0.9  # the planted truth is still found

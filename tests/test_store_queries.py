"""The named store queries (workbench/store/queries/) against plain-Python recomputation on a planted store.

One small store is planted with every feature the queries look at: two MoE layers with different
expert counts, shared pseudo-expert ids (``>= n_experts``), a negative id, unlabelled prompts,
pairs, NULL logits, ``expert_stats`` with negative norms, and a second run holding some of the
same prompts under other prompt ids. Each query's output is compared with the same quantity
computed in Python from the planted rows, for all layers, one layer and none.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from workbench.store import Store, queries
from workbench.store.queries import TokenSpan
from workbench.store.queries.filters import in_layers

pytestmark = pytest.mark.unit

N_EXPERTS = {2: 4, 5: 6}  # layer -> routed experts; ids >= n_experts are shared pseudo-experts
LABELS = ["harm", "ok", None, "harm", "ok", "harm", "O'Brien; DROP TABLE prompts"]
PAIRS = ["p0", "p0", None, "p1", "p1", None, "p2"]
LENGTHS = [3, 4, 2, 5, 3, 4, 2]
LAYER_SETS: list[list[int] | None] = [None, [5], []]


@dataclass
class Plant:
    """What was written: routing rows, tokens and expert_stats rows, as plain Python."""

    routing: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    stats: list[dict[str, Any]] = field(default_factory=list)
    label: dict[int, str | None] = field(default_factory=dict)


def _lists(values: list[list[Any]] | list[Any], kind: pa.DataType) -> pa.Array:
    return pa.array(values, pa.list_(kind))


def _write(st: Store, run_id: str, pids: list[int], src: list[int], seed: int) -> Plant:
    """Write prompts ``src`` (indices into the constants) under prompt ids ``pids`` with random routing."""
    rng = np.random.default_rng(seed)
    plant = Plant(label={p: LABELS[i] for p, i in zip(pids, src, strict=True)})
    layers = [{"layer": x, "module_path": f"m.{x}", "n_experts": e, "top_k": 2} for x, e in N_EXPERTS.items()]
    st.create_run(
        model="m", architecture="A", probe="p", n_experts=6, top_k=2, config={}, layers=layers, run_id=run_id
    )
    prompts = pa.table({
        "prompt_id": pa.array(pids, pa.int32()), "text": [f"text {i}" for i in src],
        "label": pa.array([LABELS[i] for i in src], pa.string()),
        "pair_id": pa.array([PAIRS[i] for i in src], pa.string()), "split": ["s"] * len(src),
        "meta": pa.array([None] * len(src), pa.string()), "n_tokens": pa.array([LENGTHS[i] for i in src], pa.int32()),
    })  # fmt: skip
    tok_rows, route_rows = [], []
    for pid, i in zip(pids, src, strict=True):
        for pos in range(LENGTHS[i]):
            tid = (i * 7 + pos) % 5
            tok = {
                "prompt_id": pid,
                "position": pos,
                "token_id": tid,
                "token": f"w{tid}",
                "nll": float(pos) / 4,
            }
            tok_rows.append(tok)
            plant.tokens[(pid, pos)] = tok
            for layer, n_exp in N_EXPERTS.items():
                experts = [int(x) for x in rng.permutation(n_exp + 1)[:2]]  # may include the shared id n_exp
                if (pid, pos, layer) == (pids[0], 1, 2):
                    experts = [-1, experts[1]]  # a negative id: "routed" (< n_experts) like any other
                weights = [float(np.float32(w)) for w in rng.random(2)]
                logits = (
                    None if (pid + pos) % 3 == 0 else [float(np.float32(x)) for x in rng.normal(size=n_exp)]
                )
                row = {"prompt_id": pid, "position": pos, "layer": layer, "experts": experts}
                route_rows.append({**row, "weights": weights, "logits": logits})
                for e in sorted({*[x for x in experts if 0 <= x < n_exp], n_exp}):
                    norm = float(np.float32(rng.normal() * 3))
                    zero = float(np.float32(rng.random()))
                    plant.stats.append({**row, "expert": e, "out_norm": norm, "zero_frac": zero})
    plant.routing = route_rows
    routing = pa.table({
        "prompt_id": pa.array([r["prompt_id"] for r in route_rows], pa.int32()),
        "position": pa.array([r["position"] for r in route_rows], pa.int32()),
        "layer": pa.array([r["layer"] for r in route_rows], pa.int32()),
        "experts": _lists([r["experts"] for r in route_rows], pa.int16()),
        "weights": _lists([r["weights"] for r in route_rows], pa.float32()),
        "logits": _lists([r["logits"] for r in route_rows], pa.float32()),
    })  # fmt: skip
    stats = pa.table({
        "prompt_id": pa.array([s["prompt_id"] for s in plant.stats], pa.int32()),
        "position": pa.array([s["position"] for s in plant.stats], pa.int32()),
        "layer": pa.array([s["layer"] for s in plant.stats], pa.int32()),
        "expert": pa.array([s["expert"] for s in plant.stats], pa.int16()),
        "out_norm": pa.array([s["out_norm"] for s in plant.stats], pa.float32()),
        "zero_frac": pa.array([s["zero_frac"] for s in plant.stats], pa.float32()),
    })  # fmt: skip
    tokens = pa.table({
        "prompt_id": pa.array([t["prompt_id"] for t in tok_rows], pa.int32()),
        "position": pa.array([t["position"] for t in tok_rows], pa.int32()),
        "token_id": pa.array([t["token_id"] for t in tok_rows], pa.int32()),
        "token": [t["token"] for t in tok_rows], "nll": pa.array([t["nll"] for t in tok_rows], pa.float32()),
    })  # fmt: skip
    st.write_batch(run_id, prompts=prompts, tokens=tokens, routing=routing, expert_stats=stats)
    st.set_status(run_id, "complete")
    return plant


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Plant, Plant]:
    path = tmp_path_factory.mktemp("queries") / "q.duckdb"
    with Store(path) as st:
        q = _write(st, "q", list(range(7)), list(range(7)), seed=1)
        q2 = _write(st, "q2", [14, 13, 12, 11, 10], [4, 3, 2, 1, 0], seed=2)  # prompt i again as 10 + i
    return path, q, q2


@pytest.fixture
def st(planted: tuple[Path, Plant, Plant]) -> Any:
    with Store(planted[0], read_only=True) as s:
        yield s


@pytest.fixture
def q(planted: tuple[Path, Plant, Plant]) -> Plant:
    return planted[1]


def _keep(layers: Iterable[int] | None, layer: int) -> bool:
    return layers is None or layer in layers


def _routed(row: dict[str, Any]) -> list[int]:
    return [e for e in row["experts"] if e < N_EXPERTS[row["layer"]]]


def _as_dict(df: Any, keys: list[str], values: list[str]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    out = {tuple(r[k] for k in keys): tuple(r[v] for v in values) for r in df.iter_rows(named=True)}
    assert len(out) == df.height, "keys are not unique"
    return out


def _close(got: dict[Any, tuple[Any, ...]], want: dict[Any, tuple[Any, ...]]) -> None:
    assert got.keys() == want.keys()
    for key, values in want.items():
        assert got[key] == pytest.approx(values, rel=1e-6, abs=1e-9), key


# -- prompts and tokens ------------------------------------------------------------------------
def test_prompt_labels_distinct_and_paired_labels(st: Store, q: Plant) -> None:
    every = queries.prompt_labels(st, "q")
    assert every["prompt_id"].to_list() == sorted(q.label) and every["label"].to_list() == LABELS
    labelled = queries.prompt_labels(st, "q", labelled_only=True)
    assert labelled["prompt_id"].to_list() == [p for p in sorted(q.label) if q.label[p] is not None]
    named = sorted({x for x in LABELS if x is not None})
    assert queries.distinct_labels(st, "q") == [*named, None]  # NULL sorts last
    paired = {lab for lab, pair in zip(LABELS, PAIRS, strict=True) if pair and lab}
    assert sorted(queries.paired_labels(st, "q")) == sorted(paired)


def test_pair_first_labels_counts_the_first_member_of_each_pair(st: Store) -> None:
    first: dict[str, str | None] = {}
    for pid, pair in enumerate(PAIRS):
        if pair is not None and pair not in first:
            first[pair] = LABELS[pid]
    want = Counter(first.values())
    got = queries.pair_first_labels(st, "q")
    assert dict(zip(got["label"].to_list(), got["n"].to_list(), strict=True)) == want
    assert got["n"].to_list() == sorted(want.values(), reverse=True)


def test_contrast_prompts_with_a_quote_in_the_label(st: Store) -> None:
    control = LABELS[6]  # a label with a quote and SQL in it only works as a parameter
    got = queries.contrast_prompts(st, "q", "harm", control)
    want = [(p, LABELS[p] == "harm", PAIRS[p]) for p in range(7) if LABELS[p] in ("harm", control)]
    assert list(got.iter_rows()) == want


def test_token_nll_and_strings(st: Store, q: Plant) -> None:
    nll = _as_dict(queries.token_nll(st, "q"), ["prompt_id", "position"], ["nll"])
    _close(nll, {k: (t["nll"],) for k, t in q.tokens.items()})
    names = _as_dict(queries.token_strings(st, "q"), ["token_id"], ["token"])
    assert names == {(t["token_id"],): (t["token"],) for t in q.tokens.values()}


# -- routing counts ------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", LAYER_SETS)
def test_row_counts(st: Store, q: Plant, layers: list[int] | None) -> None:
    rows = [r for r in q.routing if _keep(layers, r["layer"])]
    assert queries.n_logit_rows(st, "q", layers) == sum(r["logits"] is not None for r in rows)
    per_layer = _as_dict(queries.tokens_per_layer(st, "q", layers), ["layer"], ["n"])
    assert per_layer == {(k,): (n,) for k, n in Counter(r["layer"] for r in rows).items()}
    for labelled_only in (False, True):
        mine = [r for r in rows if not labelled_only or q.label[r["prompt_id"]] is not None]
        got = queries.tokens_per_prompt(st, "q", layers, labelled_only=labelled_only)
        want = Counter((r["prompt_id"], r["layer"]) for r in mine)
        assert _as_dict(got, ["prompt_id", "layer"], ["n_tokens"]) == {k: (n,) for k, n in want.items()}
        got = queries.selections_per_prompt(st, "q", layers, labelled_only=labelled_only)
        want = Counter((r["prompt_id"], r["layer"], e) for r in mine for e in r["experts"])
        assert _as_dict(got, ["prompt_id", "layer", "expert"], ["n"]) == {k: (n,) for k, n in want.items()}


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_selections_per_layer(st: Store, q: Plant, layers: list[int] | None) -> None:
    want = Counter((r["layer"], e) for r in q.routing if _keep(layers, r["layer"]) for e in r["experts"])
    got = queries.selections_per_layer(st, "q", layers)
    assert _as_dict(got, ["layer", "expert"], ["n"]) == {k: (n,) for k, n in want.items()}


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_labelled_counts_and_gate_mass(st: Store, q: Plant, layers: list[int] | None) -> None:
    rows = [r for r in q.routing if _keep(layers, r["layer"]) and q.label[r["prompt_id"]] is not None]
    lab = q.label
    counts = queries.label_token_counts(st, "q", layers)
    want = Counter((r["layer"], lab[r["prompt_id"]]) for r in rows)
    assert list(counts.select("layer", "label").iter_rows()) == sorted(want)  # ordered by layer, label
    assert _as_dict(counts, ["layer", "label"], ["n_tokens"]) == {k: (n,) for k, n in want.items()}
    totals = Counter(lab[r["prompt_id"]] for r in rows)
    got = queries.label_token_totals(st, "q", layers)
    assert _as_dict(got, ["label"], ["n_tokens"]) == {(k,): (n,) for k, n in totals.items()}
    sel = Counter((r["layer"], lab[r["prompt_id"]], e) for r in rows for e in r["experts"])
    got = queries.labelled_selections(st, "q", layers)
    assert _as_dict(got, ["layer", "label", "expert"], ["n"]) == {k: (n,) for k, n in sel.items()}
    mass: dict[tuple[Any, ...], float] = defaultdict(float)
    for r in rows:
        for e, w in zip(r["experts"], r["weights"], strict=True):
            mass[(r["prompt_id"], r["layer"], lab[r["prompt_id"]], e)] += w
    got = queries.labelled_gate_mass(st, "q", layers)
    _close(
        _as_dict(got, ["prompt_id", "layer", "label", "expert"], ["mass"]), {k: (v,) for k, v in mass.items()}
    )


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_label_gate_sums_and_prompt_expert_counts(st: Store, q: Plant, layers: list[int] | None) -> None:
    rows = [r for r in q.routing if _keep(layers, r["layer"]) and q.label[r["prompt_id"]] is not None]
    sums: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0])
    per_prompt: Counter[tuple[Any, ...]] = Counter()
    for r in rows:
        label = q.label[r["prompt_id"]]
        for e, w in zip(r["experts"], r["weights"], strict=True):
            if e < N_EXPERTS[r["layer"]]:
                sums[(r["layer"], label, e)][0] += w
                sums[(r["layer"], label, e)][1] += 1
                per_prompt[(r["layer"], r["prompt_id"], e)] += 1
    got = queries.label_gate_sums(st, "q", layers)
    _close(_as_dict(got, ["layer", "label", "expert"], ["w", "n"]), {k: tuple(v) for k, v in sums.items()})
    got = queries.prompt_expert_counts(st, "q", layers)  # labelled prompts only; the label is left out
    assert "label" not in got.columns
    keys = ["layer", "prompt_id", "expert"]
    assert _as_dict(got, keys, ["n"]) == {k: (n,) for k, n in per_prompt.items()}


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_top1_label_counts_and_token_maxima(st: Store, q: Plant, layers: list[int] | None) -> None:
    rows = [r for r in q.routing if _keep(layers, r["layer"]) and _routed(r)]
    labelled = Counter(
        (r["layer"], q.label[r["prompt_id"]], _routed(r)[0])
        for r in rows
        if q.label[r["prompt_id"]] is not None
    )
    got = queries.top1_label_counts(st, "q", layers)
    assert _as_dict(got, ["layer", "label", "expert"], ["n"]) == {k: (n,) for k, n in labelled.items()}
    per_id: dict[tuple[int, int], Counter[int]] = defaultdict(Counter)
    for r in rows:
        per_id[(r["layer"], q.tokens[(r["prompt_id"], r["position"])]["token_id"])][_routed(r)[0]] += 1
    want = {k: (max(c.values()), sum(c.values())) for k, c in per_id.items()}
    got = queries.top1_token_maxima(st, "q", layers)
    assert _as_dict(got, ["layer", "token_id"], ["n_max", "n_x"]) == want


@pytest.mark.parametrize("n_experts", [4, 2])
def test_top1_token_counts_at_one_layer(st: Store, q: Plant, n_experts: int) -> None:
    want: Counter[tuple[int, int]] = Counter()
    for r in q.routing:
        below = [e for e in r["experts"] if e < n_experts]
        if r["layer"] == 2 and below:
            want[(q.tokens[(r["prompt_id"], r["position"])]["token_id"], below[0])] += 1
    got = queries.top1_token_counts(st, "q", 2, n_experts)
    assert _as_dict(got, ["token_id", "expert"], ["n"]) == {k: (n,) for k, n in want.items()}


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_pair_counts(st: Store, q: Plant, layers: list[int] | None) -> None:
    rows = [r for r in q.routing if _keep(layers, r["layer"])]
    n_tok = Counter(r["layer"] for r in rows)
    single: Counter[tuple[int, int]] = Counter()
    pairs: Counter[tuple[int, int, int]] = Counter()
    for r in rows:
        chosen = set(_routed(r))
        single.update((r["layer"], a) for a in chosen)
        pairs.update((r["layer"], a, b) for a in chosen for b in chosen if a != b)
    got = queries.pair_counts(st, "q", layers)
    assert list(got.select("layer", "a", "b").iter_rows()) == sorted(pairs)
    want = {(x, a, b): (n, single[(x, a)], single[(x, b)], n_tok[x]) for (x, a, b), n in pairs.items()}
    assert _as_dict(got, ["layer", "a", "b"], ["n_ab", "n_a", "n_b", "n_tokens"]) == want


def test_top1_transitions(st: Store, q: Plant) -> None:
    first = {(r["prompt_id"], r["position"], r["layer"]): r["experts"][0] for r in q.routing}
    want: Counter[tuple[int, int, int, int]] = Counter()
    for (pid, pos, layer), e in first.items():
        nxt = first.get((pid, pos, 5))
        if layer == 2 and nxt is not None and e < N_EXPERTS[2] and nxt < N_EXPERTS[5]:
            want[(2, 5, e, nxt)] += 1
    got = queries.top1_transitions(st, "q")
    keys = ["layer_from", "layer_to", "expert_from", "expert_to"]
    assert _as_dict(got, keys, ["n"]) == {k: (n,) for k, n in want.items()}


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_matched_overlap_pairs_prompts_on_content(
    planted: tuple[Path, Plant, Plant], st: Store, layers: list[int] | None
) -> None:
    _, q, q2 = planted
    other_id = {i: 10 + i for i in range(5)}  # q2 holds prompt i of q under id 10 + i
    theirs = {(r["prompt_id"], r["position"], r["layer"]): r["experts"] for r in q2.routing}
    acc: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0, 0.0])
    for r in q.routing:
        pid = r["prompt_id"]
        if pid in other_id and _keep(layers, r["layer"]):
            b = theirs[(other_id[pid], r["position"], r["layer"])]
            acc[(r["layer"], pid)][0] += 1
            acc[(r["layer"], pid)][1] += len(set(r["experts"]) & set(b)) / max(len(r["experts"]), len(b), 1)
    got = queries.matched_overlap(st, "q", "q2", layers)
    assert list(got.select("layer", "prompt_id").iter_rows()) == sorted(acc)
    _close(_as_dict(got, ["layer", "prompt_id"], ["n", "overlap"]), {k: tuple(v) for k, v in acc.items()})


# -- contrast sets over a span -------------------------------------------------------------------
SPANS = ["all", "first:2", "last:2", "positions:1-2"]


def _in_span(span: str, pos: int, n_tokens: int) -> bool:
    if span == "first:2":
        return pos < 2
    if span == "last:2":
        return pos >= n_tokens - 2
    if span == "positions:1-2":
        return 1 <= pos <= 2
    return True


@pytest.mark.parametrize("span", SPANS)
def test_span_counts_and_selections(st: Store, q: Plant, span: str) -> None:
    rows = [
        r for r in q.routing
        if q.label[r["prompt_id"]] in ("harm", "ok") and _in_span(span, r["position"], LENGTHS[r["prompt_id"]])
        and r["layer"] == 5
    ]  # fmt: skip
    parsed = TokenSpan.parse(span)
    got = queries.span_token_counts(st, "q", "harm", "ok", parsed, [5])
    want = Counter((r["prompt_id"], r["layer"]) for r in rows)
    assert _as_dict(got, ["prompt_id", "layer"], ["n"]) == {k: (n,) for k, n in want.items()}
    sums: dict[tuple[int, int, int], list[float]] = defaultdict(lambda: [0, 0.0])
    for r in rows:
        for e, w in zip(r["experts"], r["weights"], strict=True):
            sums[(r["prompt_id"], r["layer"], e)][0] += 1
            sums[(r["prompt_id"], r["layer"], e)][1] += w
    got = queries.span_selections(st, "q", "harm", "ok", parsed, [5])
    _close(
        _as_dict(got, ["prompt_id", "layer", "expert"], ["n", "g"]), {k: tuple(v) for k, v in sums.items()}
    )
    per_token: dict[tuple[str, bool], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        key = (q.tokens[(r["prompt_id"], r["position"])]["token"], q.label[r["prompt_id"]] == "harm")
        per_token[key][0] += 1
        per_token[key][1] += int(3 in r["experts"])
    got = queries.span_token_selections(st, "q", layer=5, expert=3, target="harm", control="ok", span=parsed)
    assert _as_dict(got, ["token", "is_target"], ["n", "n_sel"]) == {
        k: tuple(v) for k, v in per_token.items()
    }


def test_token_span_grammar() -> None:
    assert TokenSpan.parse(None) == TokenSpan.parse("all") == TokenSpan()
    assert TokenSpan.parse(" last:3 ") == TokenSpan("last", hi=3)
    assert TokenSpan.parse("positions:2-4").condition() == ("r.position BETWEEN ? AND ?", [2, 4])
    assert TokenSpan.parse("first:1").condition() == ("r.position < ?", [1])
    for bad in ("tail", "last:-1", "positions:4-2", "first:1; DROP TABLE routing"):
        with pytest.raises(ValueError, match="span"):
            TokenSpan.parse(bad)


def test_layer_column_must_be_on_the_allow_list() -> None:
    assert in_layers([1, 2], "r.layer") == (" AND r.layer IN (?, ?)", [1, 2])
    assert in_layers([], "layer") == (" AND FALSE", [])
    with pytest.raises(ValueError, match="is not one of"):
        in_layers([1], "layer; DROP TABLE routing")


# -- expert_stats ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", LAYER_SETS)
def test_expert_stats_queries(st: Store, q: Plant, layers: list[int] | None) -> None:
    assert queries.n_expert_stats_rows(st, "q") == len(q.stats)
    rows = [s for s in q.stats if _keep(layers, s["layer"])]
    groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for s in rows:
        groups[(s["layer"], s["expert"])].append(s)
    got = queries.expert_norm_maxima(st, "q", layers)
    want = {k: (max(abs(s["out_norm"]) for s in v), len(v)) for k, v in groups.items()}
    _close(_as_dict(got, ["layer", "expert"], ["max_out_norm", "n_tokens"]), want)
    got = queries.expert_stats_means(st, "q", layers)
    want = {
        k: (float(np.mean([s["zero_frac"] for s in v])), float(np.mean([s["out_norm"] for s in v])), len(v))
        for k, v in groups.items()
    }
    _close(_as_dict(got, ["layer", "expert"], ["mean_zero_frac", "mean_out_norm", "n_tokens"]), want)
    labelled = [s for s in rows if q.label[s["prompt_id"]] is not None]
    mass: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0, 0])
    totals: dict[Any, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for s in labelled:
        label = q.label[s["prompt_id"]]
        shared = s["expert"] >= N_EXPERTS[s["layer"]]
        if shared:
            mass[(s["layer"], label, s["expert"])][0] += s["out_norm"]
            mass[(s["layer"], label, s["expert"])][1] += 1
        totals[label][0] += s["out_norm"] if shared else 0.0
        totals[label][1] += s["out_norm"]
    got = queries.shared_norm_mass(st, "q", layers)
    _close(_as_dict(got, ["layer", "label", "expert"], ["mass", "n"]), {k: tuple(v) for k, v in mass.items()})
    got = queries.shared_norm_totals(st, "q", layers)
    _close(
        _as_dict(got, ["label"], ["shared_norm", "total_norm"]), {(k,): tuple(v) for k, v in totals.items()}
    )

"""Straightforward pandas baselines of the workbench analyses (the point estimates only).

The data are read from the same DuckDB file into flat pandas frames once (:func:`load`: one row per
token × layer, the top-k lists and logits spread into columns ``e0..``, ``w0..``, ``z0..``), which is
how one would start in a notebook; the baselines then compute each analysis' core quantity with
ordinary pandas / numpy idioms. None of them resamples (no bootstrap / permutation): where the
workbench does more work than its baseline, :data:`BASELINES` says so in ``computes``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

Frames = dict[str, pd.DataFrame]


def load(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str, n_experts: int, top_k: int) -> Frames:
    """Flat pandas frames of both runs: ``routing`` (A, with logits), ``routing_b``, prompts, tokens, stats."""
    e_cols = ", ".join(f"experts[{j + 1}] AS e{j}" for j in range(top_k))
    w_cols = ", ".join(f"weights[{j + 1}] AS w{j}" for j in range(top_k))
    z_cols = ", ".join(f"logits[{j + 1}] AS z{j}" for j in range(n_experts))
    q = "SELECT prompt_id, position, layer, {} FROM routing WHERE run_id = ?"
    return {
        "routing": con.execute(q.format(f"{e_cols}, {w_cols}, {z_cols}"), [run_a]).df(),
        "routing_b": con.execute(q.format(e_cols), [run_b]).df(),
        "prompts": con.execute("SELECT prompt_id, label FROM prompts WHERE run_id = ?", [run_a]).df(),
        "tokens": con.execute(
            "SELECT prompt_id, position, token_id, nll FROM tokens WHERE run_id = ?", [run_a]
        ).df(),
        "stats": con.execute(
            "SELECT prompt_id, position, layer, expert, out_norm, zero_frac FROM expert_stats WHERE run_id = ?",
            [run_a],
        ).df(),
    }


def _ecols(rt: pd.DataFrame) -> list[str]:
    return [c for c in rt.columns if c.startswith("e") and c[1:].isdigit()]


def _zcols(rt: pd.DataFrame) -> list[str]:
    return [c for c in rt.columns if c.startswith("z") and c[1:].isdigit()]


def _labelled(d: Frames) -> pd.DataFrame:
    labels = d["prompts"].set_index("prompt_id")["label"]
    rt = d["routing"].assign(label=d["routing"]["prompt_id"].map(labels))
    return rt[rt["label"].notna()]


def _long(rt: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """One row per selection: ``layer, *extra, expert`` (and ``weight`` when present)."""
    parts = []
    for c in _ecols(rt):
        cols = {"layer": rt["layer"], **{x: rt[x] for x in extra}, "expert": rt[c]}
        if f"w{c[1:]}" in rt.columns:
            cols["weight"] = rt[f"w{c[1:]}"]
        parts.append(pd.DataFrame(cols))
    return pd.concat(parts, ignore_index=True)


def _pi(rt: pd.DataFrame) -> np.ndarray:
    z = rt[_zcols(rt)].to_numpy(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def load_share(d: Frames) -> pd.DataFrame:
    rt = d["routing"]
    k = len(_ecols(rt))
    n = _long(rt, []).groupby(["layer", "expert"]).size().rename("n").reset_index()
    n["f"] = n["n"] / n["layer"].map(rt.groupby("layer").size() * k)
    return n


def balance(d: Frames) -> pd.DataFrame:
    f = load_share(d).pivot(index="layer", columns="expert", values="f").fillna(0.0)
    p = f.to_numpy()
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(axis=1) / np.log(p.shape[1])
    return pd.DataFrame({"layer": f.index, "cv": p.std(axis=1) / p.mean(axis=1), "entropy_norm": ent})


def confidence(d: Frames) -> pd.DataFrame:
    rt = d["routing"]
    k = len(_ecols(rt))
    pi = _pi(rt)
    ranked = -np.sort(-pi, axis=1)
    ent = -(pi * np.log(np.where(pi > 0, pi, 1.0))).sum(axis=1)
    frame = pd.DataFrame({"layer": rt["layer"], "entropy": ent, "margin": ranked[:, k - 1] - ranked[:, k]})
    return frame.groupby("layer", as_index=False).mean()


def super_max(d: Frames) -> pd.DataFrame:
    s = d["stats"]
    return (
        s.assign(a=s["out_norm"].abs())
        .groupby(["layer", "expert"], as_index=False)["a"]
        .max()
        .rename(columns={"a": "max_out_norm"})
    )


def share(d: Frames) -> pd.DataFrame:
    rt = _labelled(d)
    n = _long(rt, ["label"]).groupby(["layer", "label", "expert"]).size().rename("n").reset_index()
    tot = rt.groupby(["layer", "label"]).size().rename("n_tokens").reset_index()
    n = n.merge(tot, on=["layer", "label"])
    n["share"] = n["n"] / n["n_tokens"]
    return n


def vocab(d: Frames, min_count: int = 5) -> pd.DataFrame:
    rt = d["routing"][["prompt_id", "position", "layer", "e0"]].merge(
        d["tokens"][["prompt_id", "position", "token_id"]], on=["prompt_id", "position"]
    )
    n = rt.groupby(["layer", "token_id", "e0"]).size().rename("n").reset_index()
    per = n.groupby(["layer", "token_id"])["n"].agg(["max", "sum"]).reset_index()
    per = per[per["sum"] >= min_count]
    per["r"] = per["max"] / per["sum"]
    return per.groupby("layer", as_index=False)["r"].mean().rename(columns={"r": "vocab_specialisation"})


def esft(d: Frames) -> pd.DataFrame:
    rt = _labelled(d)
    k = len(_ecols(rt))
    g = (
        _long(rt, ["label"])
        .groupby(["layer", "label", "expert"])["weight"]
        .agg(["sum", "size"])
        .reset_index()
    )
    g = g.merge(rt.groupby(["layer", "label"]).size().rename("n_tokens").reset_index(), on=["layer", "label"])
    g["gs"] = g["sum"] / g["n_tokens"]
    g["tsr"] = g["size"] / (g["n_tokens"] * k)
    return g


def tcess(d: Frames) -> pd.DataFrame:
    rt = _labelled(d)
    pi = pd.DataFrame(_pi(rt), index=rt.index)
    pi["layer"], pi["label"] = rt["layer"], rt["label"]
    wide = pi.groupby(["layer", "label"]).mean()
    out = wide.stack().rename("tcess").reset_index()
    return out.rename(columns={out.columns[2]: "expert"})


def mutual_information(d: Frames) -> pd.DataFrame:
    rt = _labelled(d)
    rows = []
    for layer, part in rt.groupby("layer"):
        p = pd.crosstab(part["label"], part["e0"]).to_numpy(np.float64)
        p = p / p.sum()
        outer = p.sum(axis=1, keepdims=True) @ p.sum(axis=0, keepdims=True)
        nz = p > 0
        rows.append({"layer": layer, "mi": float((p[nz] * np.log(p[nz] / outer[nz])).sum())})
    return pd.DataFrame(rows)


def probe(d: Frames, folds: int = 5, seed: int = 0) -> pd.DataFrame:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    hist = (
        _long(_labelled(d), ["prompt_id", "label"]).groupby(["layer", "prompt_id", "label", "expert"]).size()
    )
    rows = []
    for layer, part in hist.groupby(level="layer"):
        x = part.droplevel("layer").unstack("expert", fill_value=0).sort_index()
        x = x.div(x.sum(axis=1), axis=0)
        y = x.index.get_level_values("label").to_numpy(dtype=object)
        n_splits = int(min(folds, pd.Series(y).value_counts().min()))
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        rows.append({"layer": layer, "accuracy": cross_val_score(model, x.to_numpy(), y, cv=cv).mean()})
    return pd.DataFrame(rows)


def collapse(d: Frames) -> pd.DataFrame:
    return (
        d["stats"]
        .groupby(["layer", "expert"], as_index=False)[["zero_frac", "out_norm"]]
        .mean()
        .rename(columns={"zero_frac": "mean_zero_frac", "out_norm": "mean_out_norm"})
    )


def degradation(d: Frames) -> pd.DataFrame:
    sh = share(d).pivot_table(index=["layer", "expert"], columns="label", values="share", fill_value=0.0)
    u = sh.div(sh.sum(axis=1), axis=0)
    ent = -(u * np.log(u.where(u > 0, 1.0))).sum(axis=1)
    out = pd.DataFrame({"concentration": 1 - ent / np.log(u.shape[1]), "dominant_share": u.max(axis=1)})
    return out.reset_index()


def pairs(d: Frames) -> pd.DataFrame:
    rt = d["routing"]
    ec = _ecols(rt)
    parts = [pd.DataFrame({"layer": rt["layer"], "a": rt[a], "b": rt[b]}) for a in ec for b in ec if a != b]
    return (
        pd.concat(parts, ignore_index=True).groupby(["layer", "a", "b"]).size().rename("n_ab").reset_index()
    )


def fixed_partners(d: Frames, coverage: float = 0.5) -> pd.DataFrame:
    p = pairs(d).sort_values(["layer", "a", "n_ab"], ascending=[True, True, False])
    g = p.groupby(["layer", "a"])["n_ab"]
    p["before"] = g.cumsum() - p["n_ab"]
    p["total"] = g.transform("sum")
    p["in"] = p["before"] < coverage * p["total"]
    return (
        p.groupby(["layer", "a"], as_index=False)["in"]
        .sum()
        .rename(columns={"a": "expert", "in": "n_partners"})
    )


def pathways(d: Frames) -> pd.DataFrame:
    top1 = d["routing"].pivot(index=["prompt_id", "position"], columns="layer", values="e0")
    layers = list(top1.columns)
    parts = []
    for a, b in itertools.pairwise(layers):
        n = top1.groupby([a, b]).size().rename("n").reset_index()
        n.columns = ["expert_from", "expert_to", "n"]
        parts.append(n.assign(layer_from=a, layer_to=b))
    return pd.concat(parts, ignore_index=True)


def dynamic_k(d: Frames, levels: tuple[float, ...] = (0.5, 0.9)) -> pd.DataFrame:
    rt = d["routing"]
    cum = np.cumsum(-np.sort(-_pi(rt), axis=1), axis=1)
    label = rt["prompt_id"].map(d["prompts"].set_index("prompt_id")["label"])
    parts = []
    for p in levels:
        k = (cum < p - 1e-9).sum(axis=1) + 1
        k = np.minimum(k, cum.shape[1])
        frame = pd.DataFrame({"layer": rt["layer"], "label": label, "k": k})
        m = frame.groupby(["layer", "label"], dropna=False, as_index=False)["k"].mean()
        parts.append(m.assign(p=p).rename(columns={"k": "mean_k"}))
    return pd.concat(parts, ignore_index=True)


def agreement(d: Frames) -> pd.DataFrame:
    keys = ["layer", "expert", "label"]
    sh = share(d)
    sh["lift"] = sh["share"]  # lift = share / (k/E): same ranks
    es = esft(d)
    joined = sh[[*keys, "lift"]].merge(es[[*keys, "gs", "tsr"]], on=keys).merge(tcess(d), on=keys)
    rows = []
    scorers = ["lift", "gs", "tsr", "tcess"]
    for label, part in joined.groupby("label"):
        rho = part[scorers].corr(method="spearman")
        for i, a in enumerate(scorers):
            for b in scorers[i + 1 :]:
                rows.append({"label": label, "scorer_a": a, "scorer_b": b, "spearman": rho.loc[a, b]})
    return pd.DataFrame(rows)


def drift(d: Frames) -> pd.DataFrame:
    ec = _ecols(d["routing"])
    m = d["routing"][["prompt_id", "position", "layer", *ec]].merge(
        d["routing_b"], on=["prompt_id", "position", "layer"], suffixes=("_a", "_b")
    )
    hits = sum((m[f"{a}_a"] == m[f"{b}_b"]).astype(np.int64) for a in ec for b in ec)
    return m.assign(overlap=hits / len(ec)).groupby("layer", as_index=False)["overlap"].mean()


@dataclass(frozen=True)
class Baseline:
    fn: Callable[[Frames], pd.DataFrame]
    keys: tuple[str, ...]
    values: tuple[str, ...]
    computes: str
    fill_zero: bool = False  # workbench rows missing from the baseline are zeros (unused experts)


BASELINES: dict[str, Baseline] = {
    "load": Baseline(
        load_share, ("layer", "expert"), ("f",), "f per (layer, expert); wb adds 1000-rep bootstrap CI", True
    ),
    "balance": Baseline(
        balance, ("layer",), ("cv", "entropy_norm"), "CV and normalised entropy of f per layer"
    ),
    "router-confidence": Baseline(
        confidence,
        ("layer",),
        ("entropy", "margin"),
        "mean softmax entropy and margin; wb adds fragility (noise)",
    ),
    "super-experts": Baseline(
        super_max, ("layer", "expert"), ("max_out_norm",), "max |out_norm| per (layer, expert)"
    ),
    "specialisation": Baseline(
        share,
        ("layer", "expert", "label"),
        ("share",),
        "share per (layer, expert, label); wb adds 1000 boot + 1000 perm + BH",
        True,
    ),
    "vocab": Baseline(
        vocab, ("layer",), ("vocab_specialisation",), "top-1 token-id specialisation (join tokens)"
    ),
    "esft": Baseline(
        esft, ("layer", "expert", "label"), ("gs", "tsr"), "ESFT GS and TSR; wb adds expert sets", True
    ),
    "tcess": Baseline(
        tcess, ("layer", "expert", "label"), ("tcess",), "mean softmax π per (layer, expert, label)"
    ),
    "mutual-information": Baseline(mutual_information, ("layer",), ("mi",), "plug-in I(top-1 expert; label)"),
    "probe": Baseline(probe, ("layer",), ("accuracy",), "per-prompt histograms + the same sklearn 5-fold CV"),
    "collapse": Baseline(
        collapse, ("layer", "expert"), ("mean_zero_frac", "mean_out_norm"), "mean zero_frac, out_norm"
    ),
    "degradation": Baseline(
        degradation, ("layer", "expert"), ("concentration", "dominant_share"), "label concentration of usage"
    ),
    "coactivation": Baseline(pairs, ("layer", "a", "b"), ("n_ab",), "ordered pair counts n_ab"),
    "pathways": Baseline(
        pathways,
        ("layer_from", "layer_to", "expert_from", "expert_to"),
        ("n",),
        "top-1 transition counts (pivot)",
    ),
    "fixed-partners": Baseline(
        fixed_partners, ("layer", "expert"), ("n_partners",), "pairs → partners covering 50%"
    ),
    "dynamic-k": Baseline(
        dynamic_k,
        ("layer", "label", "p"),
        ("mean_k",),
        "mean k_p per (layer, label, p); wb adds Spearman vs NLL",
    ),
    "agreement": Baseline(
        agreement,
        ("label", "scorer_a", "scorer_b"),
        ("spearman",),
        "share/ESFT/TCESS in pandas + Spearman per label",
    ),
    "drift": Baseline(
        drift, ("layer",), ("overlap",), "merge A/B on (prompt, pos, layer), mean overlap; wb adds boot CI"
    ),
}

"""A run's tokens as readable text: its token scheme, a prompt's decoded tokens with their routing,
and an expert's example contexts (Neuronpedia-style).

Decoding is :mod:`workbench.tokentext`'s, from the stored symbols alone (the model need not be
loadable). The scheme is told once per run from a few tell-tale symbols (:func:`token_scheme`).

**Example contexts** (:func:`expert_contexts`): for an expert at a layer, the ``n`` tokens where it
was selected with the highest gate weight, each with a window of decoded text around it and its
prompt's label; a seeded random sample of ``n`` of its selections, so a reader can see whether the
top ones are typical; and the label mix of both sets next to that of all its selections. One
scan of the layer's routing rows answers all three (:mod:`workbench.store.queries.contexts`),
then one small join reads the windows: about a second at a million tokens (benchmarks/contexts.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from workbench.analysis.common import layer_info
from workbench.store import Store, queries
from workbench.tokentext import MARKER_PATTERNS, Scheme, hover, scheme_of, sequence_pieces, token_text

__all__ = [
    "ExpertContexts",
    "decode_tokens",
    "expert_contexts",
    "prompt_tokens",
    "token_scheme",
    "with_token_text",
]

UNLABELLED = "(no label)"
"""How a prompt without a label is named in the label mix."""


def token_scheme(store: Store, run_id: str) -> Scheme:
    """How the run's tokenizer writes its symbols (:func:`workbench.tokentext.scheme_of`).

    Told from the first few thousand symbols DuckDB reads (any text with a space names its scheme);
    only when those look plain are all the run's symbols searched for a tell-tale one (one scan).
    """
    found = scheme_of(queries.first_symbols(store, run_id))
    if found is not Scheme.PLAIN:
        return found
    return scheme_of(queries.marked_symbols(store, run_id, MARKER_PATTERNS))


def with_token_text(frame: pl.DataFrame, scheme: Scheme) -> pl.DataFrame:
    """``frame`` (columns ``token`` and ``token_id``, one row per token id) plus ``text``: each decoded alone."""
    texts = [
        token_text(symbol, scheme, token_id)
        for symbol, token_id in zip(frame["token"].to_list(), frame["token_id"].to_list(), strict=True)
    ]
    return frame.with_columns(pl.Series("text", texts, dtype=pl.Utf8))


def decode_tokens(tokens: pl.DataFrame, scheme: Scheme) -> pl.DataFrame:
    """``tokens`` (``prompt_id, position, token_id, token``) plus ``text`` and ``hover``, by prompt and position.

    Each prompt is decoded as one sequence, so a character split over tokens shows whole on the token
    that completes it (:func:`workbench.tokentext.sequence_pieces`); ``hover`` names the token exactly.
    """
    ordered = tokens.sort("prompt_id", "position")
    texts: list[str] = []
    hovers: list[str] = []
    for part in ordered.partition_by("prompt_id", maintain_order=True):
        symbols = part["token"].to_list()
        ids = part["token_id"].to_list()
        pieces = sequence_pieces(symbols, scheme, ids)
        texts.extend(p.display for p in pieces)
        hovers.extend(hover(s, i, scheme, p) for s, i, p in zip(symbols, ids, pieces, strict=True))
    return ordered.with_columns(
        pl.Series("text", texts, dtype=pl.Utf8), pl.Series("hover", hovers, dtype=pl.Utf8)
    )


def _prompt_token_rows(store: Store, run_id: str, prompt_id: int) -> pl.DataFrame:
    tokens = store.tokens(run_id, prompt_ids=[int(prompt_id)])
    if tokens.height == 0:
        ids = store.sql(
            "SELECT min(prompt_id) AS lo, max(prompt_id) AS hi, count(*) AS n FROM prompts WHERE run_id = ?",
            [run_id],
        ).row(0, named=True)
        have = f"its prompt ids run {ids['lo']}..{ids['hi']}" if ids["n"] else "it has no prompts yet"
        raise ValueError(f"run {run_id!r} has no tokens for prompt {prompt_id}; {have}")
    return tokens


def prompt_tokens(store: Store, run_id: str, prompt_id: int, *, long: bool = False) -> pl.DataFrame:
    """One prompt's decoded tokens with their routing.

    Wide (default), one row per token: ``position, token_id, token`` (the raw symbol), ``text``
    (decoded, visible whitespace), ``segment``, ``nll``, then per MoE layer ``L<layer>`` (the top-k
    experts, highest weight first) and ``L<layer>_w`` (their gate weights). ``long=True``: one row per
    (token, layer) with ``layer, experts, weights`` instead, for grouping and plotting.
    """
    store.layers(run_id)  # an unknown run raises the store's error, listing the runs
    tokens = _prompt_token_rows(store, run_id, prompt_id)
    decoded = decode_tokens(tokens, token_scheme(store, run_id))
    keep = [c for c in ("position", "token_id", "token", "text", "segment", "nll") if c in decoded.columns]
    base = decoded.select(keep)
    routing = store.routing(run_id, prompt_ids=[int(prompt_id)], logits=False).select(
        "position", "layer", "experts", "weights"
    )
    if long:
        return base.join(routing, on="position", how="left").sort("position", "layer")
    wide = base
    for layer in sorted(set(routing["layer"].to_list())):
        part = routing.filter(pl.col("layer") == layer).select(
            "position", pl.col("experts").alias(f"L{layer}"), pl.col("weights").alias(f"L{layer}_w")
        )
        wide = wide.join(part, on="position", how="left")
    return wide.sort("position")


@dataclass(frozen=True)
class ExpertContexts:
    """An expert's example contexts (:func:`expert_contexts`).

    ``top`` and ``sample`` have columns ``rank, prompt_id, position, label, weight, token_id, token,
    before, text, after, hover`` (``text`` the token, ``before``/``after`` the decoded window around
    it); ``labels`` has ``label, n_top, n_sample, n_all`` and the matching ``share_*``; ``n_selected``
    counts all the expert's selections at the layer; ``by_weight`` is False for a run without gate
    weights (then ``top`` is simply the first selections by prompt and position).
    """

    layer: int
    expert: int
    top: pl.DataFrame
    sample: pl.DataFrame
    labels: pl.DataFrame
    n_selected: int
    by_weight: bool
    seed: int
    window: int


SPLIT_MARGIN = 3
"""Extra tokens decoded either side of a window: a UTF-8 character spans at most 4 bytes, so a character
cut by the window's edge is read whole from them (then they are dropped)."""


def _windows(store: Store, run_id: str, picks: pl.DataFrame, window: int, scheme: Scheme) -> pl.DataFrame:
    """``prompt_id, position, token_id, token, before, text, after, hover`` for each picked (prompt, position)."""
    reach = window + SPLIT_MARGIN
    rows = queries.token_windows(
        store, run_id, picks["prompt_id"].to_list(), picks["position"].to_list(), reach, reach
    )
    out: list[dict[str, object]] = []
    for part in rows.partition_by("prompt_id", "centre", maintain_order=True):
        symbols, ids = part["token"].to_list(), part["token_id"].to_list()
        positions = part["position"].to_list()
        centre = int(part["centre"][0])
        pieces = sequence_pieces(symbols, scheme, ids)
        at = positions.index(centre)
        shown = [i for i, p in enumerate(positions) if abs(p - centre) <= window]
        out.append(
            {
                "prompt_id": int(part["prompt_id"][0]),
                "position": centre,
                "token_id": ids[at],
                "token": symbols[at],
                "before": "".join(pieces[i].display for i in shown if i < at),
                "text": pieces[at].display,
                "after": "".join(pieces[i].display for i in shown if i > at),
                "hover": hover(symbols[at], ids[at], scheme, pieces[at]),
            }
        )
    schema = {
        "prompt_id": pl.Int64, "position": pl.Int64, "token_id": pl.Int64, "token": pl.Utf8,
        "before": pl.Utf8, "text": pl.Utf8, "after": pl.Utf8, "hover": pl.Utf8,
    }  # fmt: skip
    return pl.DataFrame(out, schema=schema)


def _label_mix(picked: pl.DataFrame, per_prompt: pl.DataFrame) -> pl.DataFrame:
    """``label, n_top, n_sample, n_all, share_top, share_sample, share_all``, most frequent overall first."""
    named = pl.col("label").fill_null(UNLABELLED)
    counts = [
        picked.filter(pl.col("pick") == pick).group_by(named).agg(pl.len().cast(pl.Int64).alias(f"n_{pick}"))
        for pick in ("top", "sample")
    ]
    mix = per_prompt.group_by(named).agg(pl.col("n").sum().cast(pl.Int64).alias("n_all"))
    for part in counts:
        mix = mix.join(part, on="label", how="left")
    mix = mix.with_columns(pl.col("n_top", "n_sample").fill_null(0))
    return (
        mix.with_columns(
            (pl.col(f"n_{x}") / pl.col(f"n_{x}").sum()).fill_nan(None).alias(f"share_{x}")
            for x in ("top", "sample", "all")
        )
        .sort(["n_all", "label"], descending=[True, False])
        .select("label", "n_top", "n_sample", "n_all", "share_top", "share_sample", "share_all")
    )


def expert_contexts(
    store: Store, run_id: str, layer: int, expert: int, *, n: int = 10, window: int = 8, seed: int = 0
) -> ExpertContexts:
    """The top-``n`` contexts of (``layer``, ``expert``) by gate weight, a seeded sample of ``n``, and their label mix.

    ``window`` tokens either side of each token are decoded around it. The sample is drawn by a
    hash of (prompt, position, ``seed``) over all the expert's selections at the layer, so it does
    not favour high weights; the same store and seed draw the same sample.
    """
    info = layer_info(store, run_id, [layer])
    if info.height == 0:
        raise ValueError(
            f"run {run_id!r} has no MoE layer {layer}; layers: {store.layers(run_id)['layer'].to_list()}"
        )
    n_experts = int(info["n_experts"][0])
    if not 0 <= expert < n_experts:
        raise ValueError(f"layer {layer} has experts 0..{n_experts - 1}, not {expert}")
    if n < 1 or window < 0:
        raise ValueError(f"n must be at least 1 and window at least 0 (got n={n}, window={window})")
    found = queries.expert_contexts(store, run_id, layer, expert, n, seed).join(
        queries.prompt_labels(store, run_id), on="prompt_id", how="left"
    )
    picked = found.filter(pl.col("pick") != "count")
    per_prompt = found.filter(pl.col("pick") == "count")
    scheme = token_scheme(store, run_id)
    windows = _windows(store, run_id, picked, window, scheme) if picked.height else None

    def part(pick: str) -> pl.DataFrame:
        rows = picked.filter(pl.col("pick") == pick).drop("pick", "n")
        rows = rows.with_columns(pl.col("prompt_id", "position").cast(pl.Int64))
        if windows is None:  # the expert is never selected at the layer: no rows, the same columns
            joined = rows.with_columns(
                pl.lit(None, pl.Int64).alias("token_id"),
                *(pl.lit(None, pl.Utf8).alias(c) for c in ("token", "before", "text", "after", "hover")),
            )
        else:
            joined = rows.join(windows, on=["prompt_id", "position"], how="left")
        return joined.select(
            "rank",
            "prompt_id",
            "position",
            "label",
            "weight",
            "token_id",
            "token",
            "before",
            "text",
            "after",
            "hover",
        ).sort("rank")

    return ExpertContexts(
        layer=layer,
        expert=expert,
        top=part("top"),
        sample=part("sample"),
        labels=_label_mix(picked, per_prompt),
        n_selected=int(per_prompt["n"].sum()) if per_prompt.height else 0,
        by_weight=queries.has_gate_weights(store, run_id),
        seed=seed,
        window=window,
    )

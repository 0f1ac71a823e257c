"""Measured effects of an intervention on the same prompts (docs/methods.md §8).

For each prompt, the model runs twice — as it is and inside :func:`~workbench.interventions.intervene`
— and the workbench measures, per predicted token: the NLL of the actual next token (its change
is ``nll_delta``), ``KL(base ‖ intervened)`` of the next-token distributions, and whether the two
argmax predictions agree (``top1_agreement``). With a :class:`~workbench.behaviour.registry.Behaviour`
it also decodes a greedy continuation of each request both ways, judges it (``behaviour_rate``,
its change ``behaviour_delta``) and measures the behaviour margin (``margin_delta``).

Every summary is per label with a 95% prompt-cluster bootstrap CI (tokens of a prompt are
resampled together): token metrics are ratios of sums over prompts, behaviour metrics are means
over prompts. :func:`record` writes the spec and the summary into the store's ``interventions``
and ``evaluations`` tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from workbench.analysis.stats import cluster_bootstrap
from workbench.behaviour.registry import Behaviour
from workbench.interventions.apply import intervene
from workbench.interventions.specs import Intervention
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt

__all__ = [
    "Evaluation",
    "behaviour_effects",
    "check_causal",
    "evaluate",
    "generation_diff",
    "record",
    "summarise",
    "token_effects",
]

Specs = Intervention | Sequence[Intervention]


def _encode(loaded: LoadedModel, texts: Sequence[str], max_length: int, side: str) -> dict[str, torch.Tensor]:
    tok = loaded.tokenizer
    saved = tok.padding_side
    tok.padding_side = side
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    finally:
        tok.padding_side = saved
    return {k: v.to(loaded.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def check_causal(loaded: LoadedModel) -> None:
    """Refuse an encoder-decoder model: effects are measured on a decoder-only language model's next tokens."""
    if getattr(getattr(loaded.model, "config", None), "is_encoder_decoder", False):
        raise ValueError(
            f"{loaded.name}: effect measurement needs a decoder-only language model; "
            "encoder-decoder models are not supported here yet"
        )


@torch.inference_mode()
def token_effects(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    specs: Specs,
    *,
    batch_size: int = 16,
    max_length: int = 256,
    backend: str = "hooks",
) -> pl.DataFrame:
    """Per prompt: ``n_tokens`` predicted, summed ``nll_base``/``nll_int``, summed ``kl`` and ``top1`` agreements."""
    check_causal(loaded)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = _encode(loaded, [p.text for p in chunk], max_length, "right")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        base = loaded.model(**enc).logits[:, :-1].float().log_softmax(-1)
        with intervene(loaded, specs, backend=backend):  # type: ignore[arg-type]
            alt = loaded.model(**enc).logits[:, :-1].float().log_softmax(-1)
        target, valid = ids[:, 1:], mask[:, 1:].bool()
        nll_b = -base.gather(-1, target[..., None])[..., 0]
        nll_i = -alt.gather(-1, target[..., None])[..., 0]
        kl = (base.exp() * (base - alt)).sum(-1)
        agree = (base.argmax(-1) == alt.argmax(-1)).float()
        for j, prompt in enumerate(chunk):
            v = valid[j]
            rows.append({
                "prompt_id": prompt.prompt_id, "label": prompt.label, "n_tokens": int(v.sum()),
                "nll_base": float(nll_b[j][v].sum()), "nll_int": float(nll_i[j][v].sum()),
                "kl": float(kl[j][v].clamp_min(0).sum()), "top1": float(agree[j][v].sum()),
            })  # fmt: skip
    return pl.DataFrame(rows)


def _first_token(loaded: LoadedModel, text: str) -> int:
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"behaviour answer {text!r} encodes to no tokens")
    return int(ids[0])


@torch.inference_mode()
def _margins_and_greedy(
    loaded: LoadedModel, asked: Sequence[str], behaviour: Behaviour, batch_size: int, max_length: int
) -> tuple[list[float], list[str]]:
    yes, no = _first_token(loaded, behaviour.yes), _first_token(loaded, behaviour.no)
    tok = loaded.tokenizer
    margins: list[float] = []
    texts: list[str] = []
    for start in range(0, len(asked), batch_size):
        enc = _encode(loaded, asked[start : start + batch_size], max_length, "left")
        last = loaded.model(**enc).logits[:, -1].float().log_softmax(-1)
        margins.extend((last[:, yes] - last[:, no]).tolist())
        gen = loaded.model.generate(  # type: ignore[operator]
            **enc, max_new_tokens=behaviour.max_new_tokens, do_sample=False,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
        texts.extend(tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return margins, texts


def behaviour_effects(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    specs: Specs,
    behaviour: Behaviour,
    *,
    batch_size: int = 32,
    max_length: int = 256,
    backend: str = "hooks",
) -> pl.DataFrame:
    """Per prompt: greedy continuations, judged, and the behaviour margin, without and with the intervention."""
    check_causal(loaded)
    asked = [behaviour.ask(p.text) for p in prompts]
    m_base, t_base = _margins_and_greedy(loaded, asked, behaviour, batch_size, max_length)
    with intervene(loaded, specs, backend=backend):  # type: ignore[arg-type]
        m_int, t_int = _margins_and_greedy(loaded, asked, behaviour, batch_size, max_length)
    return pl.DataFrame({
        "prompt_id": [p.prompt_id for p in prompts], "label": [p.label for p in prompts],
        "text_base": t_base, "text_int": t_int,
        "flag_base": [behaviour.judge(t) for t in t_base], "flag_int": [behaviour.judge(t) for t in t_int],
        "margin_base": m_base, "margin_int": m_int,
    })  # fmt: skip


@torch.inference_mode()
def generation_diff(
    loaded: LoadedModel,
    texts: Sequence[str],
    specs: Specs,
    *,
    max_new_tokens: int = 24,
    seed: int | None = None,
    temperature: float = 1.0,
    batch_size: int = 1,
) -> pl.DataFrame:
    """Side-by-side continuations without and with the intervention: greedy, or sampled with ``seed``.

    With a seed both sides draw from the same generator state, so a difference is the
    intervention's, not the sampler's. ``batch_size`` > 1 generates that many texts at once
    (left-padded; both sides see the same batches): much faster for many prompts, and the same
    continuations up to floating-point rounding, which can flip a near-tie.
    """
    check_causal(loaded)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    tok = loaded.tokenizer
    sides: dict[str, list[str]] = {}
    for side in ("base", "int"):
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            enc = _encode(loaded, texts[start : start + batch_size], 100_000, "left")
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id}
            if seed is None:
                kwargs["do_sample"] = False
            else:
                torch.manual_seed(seed)
                kwargs.update(do_sample=True, temperature=temperature, top_k=0)
            if side == "int":
                with intervene(loaded, specs):
                    gen = loaded.model.generate(**enc, **kwargs)  # type: ignore[operator]
            else:
                gen = loaded.model.generate(**enc, **kwargs)  # type: ignore[operator]
            out.extend(tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        sides[side] = out
    return pl.DataFrame({
        "prompt": list(texts), "base": sides["base"], "intervened": sides["int"],
        "same": [a == b for a, b in zip(sides["base"], sides["int"], strict=True)],
        "mode": ["greedy" if seed is None else f"sampled(seed={seed})"] * len(texts),
    })  # fmt: skip


def _ci(num: np.ndarray, den: np.ndarray, seed: int) -> tuple[float, float, float]:
    est, lo, hi = cluster_bootstrap(num, den, n_boot=1000, seed=seed)
    return float(est[0]), float(lo[0]), float(hi[0])


def summarise(
    tokens: pl.DataFrame | None, behaviour: pl.DataFrame | None = None, *, seed: int = 0
) -> pl.DataFrame:
    """Per (label, metric): value with a 95% prompt-bootstrap CI and ``n`` prompts (the evaluations rows)."""
    rows: list[dict[str, Any]] = []
    if tokens is not None and tokens.height:
        for label in sorted(tokens["label"].unique().to_list()):
            sub = tokens.filter(pl.col("label") == label)
            den = sub["n_tokens"].to_numpy().astype(float)
            for metric, num in (
                ("nll_delta", (sub["nll_int"] - sub["nll_base"]).to_numpy()),
                ("kl", sub["kl"].to_numpy()),
                ("top1_agreement", sub["top1"].to_numpy()),
                ("nll_base", sub["nll_base"].to_numpy()),
            ):
                value, lo, hi = _ci(num.astype(float), den, seed)
                rows.append(
                    {
                        "label": label,
                        "metric": metric,
                        "value": value,
                        "ci_low": lo,
                        "ci_high": hi,
                        "n": sub.height,
                    }
                )
    if behaviour is not None and behaviour.height:
        for label in sorted(behaviour["label"].unique().to_list()):
            sub = behaviour.filter(pl.col("label") == label)
            ones = np.ones(sub.height)
            base = sub["flag_base"].cast(pl.Float64).to_numpy()
            alt = sub["flag_int"].cast(pl.Float64).to_numpy()
            for metric, num in (
                ("behaviour_rate_base", base),
                ("behaviour_rate", alt),
                ("behaviour_delta", alt - base),
                ("margin_delta", (sub["margin_int"] - sub["margin_base"]).to_numpy()),
            ):
                value, lo, hi = _ci(num.astype(float), ones, seed)
                rows.append(
                    {
                        "label": label,
                        "metric": metric,
                        "value": value,
                        "ci_low": lo,
                        "ci_high": hi,
                        "n": sub.height,
                    }
                )
    schema = {
        "label": pl.Utf8,
        "metric": pl.Utf8,
        "value": pl.Float64,
        "ci_low": pl.Float64,
        "ci_high": pl.Float64,
        "n": pl.Int32,
    }
    return pl.DataFrame(rows, schema=schema)


@dataclass
class Evaluation:
    """One intervention's effects: the per-label ``summary`` and the per-prompt tables behind it."""

    specs: list[Intervention]
    summary: pl.DataFrame
    tokens: pl.DataFrame | None
    behaviour: pl.DataFrame | None

    def metric(self, metric: str, label: str) -> float:
        """The summary value of ``metric`` for ``label`` (KeyError naming what exists)."""
        hit = self.summary.filter((pl.col("metric") == metric) & (pl.col("label") == label))
        if hit.height == 0:
            have = sorted(
                set(zip(self.summary["label"].to_list(), self.summary["metric"].to_list(), strict=True))
            )
            raise KeyError(f"no {metric!r} for label {label!r}; have {have}")
        return float(hit["value"][0])


def evaluate(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    specs: Specs,
    *,
    behaviour: Behaviour | None = None,
    behaviour_prompts: Sequence[Prompt] | None = None,
    batch_size: int = 16,
    max_length: int = 256,
    backend: str = "hooks",
    seed: int = 0,
) -> Evaluation:
    """Token effects on ``prompts`` and, with ``behaviour``, behaviour effects on ``behaviour_prompts`` (default: the same)."""
    if not prompts and not behaviour_prompts:
        raise ValueError("no prompts to evaluate the intervention on")
    items = [specs] if isinstance(specs, Intervention) else list(specs)
    tokens = (
        token_effects(loaded, prompts, items, batch_size=batch_size, max_length=max_length, backend=backend)
        if prompts
        else None
    )
    beh = None
    if behaviour is not None:
        asked = list(behaviour_prompts if behaviour_prompts is not None else prompts)
        beh = behaviour_effects(loaded, asked, items, behaviour, batch_size=batch_size, backend=backend)
    return Evaluation(items, summarise(tokens, beh, seed=seed), tokens, beh)


def record(
    store: Any,
    run_id: str,
    evaluation: Evaluation,
    *,
    kind: str | None = None,
    meta: dict[str, Any] | None = None,
) -> str:
    """Write the intervention (its specs as JSON) and its summary rows into the store; returns its id."""
    spec = {"specs": [s.to_dict() for s in evaluation.specs], **(meta or {})}
    kinds = "+".join(sorted({s.kind for s in evaluation.specs}))
    iid: str = store.create_intervention(run_id, kind=kind or kinds, spec=spec)
    rows = evaluation.summary.with_columns(pl.lit(json.dumps(meta or {})).alias("meta"))
    store.write_evaluations(iid, rows)
    return iid

"""Intervention lab: switch experts off (or on, or nudge them) and see what changes.

What one run of the lab does, on the attached model (``serve --model M``):

1. builds one intervention spec from the choices (:func:`make_spec`: layer, experts, semantics);
2. measures it with :func:`workbench.interventions.effects.evaluate` on the prompts — a typed
   prompt or the first ``n`` prompts of a label of the run — giving per-label NLL/KL/top-1
   deltas with prompt-bootstrap CIs, and the refusal score when the prompts are the run's
   refusal contrast set (:func:`behaviour_for`);
3. decodes a greedy continuation of every prompt both ways
   (:func:`~workbench.interventions.effects.generation_diff`, in batches), paged in the result;
4. reads every prompt once more both ways and keeps each position apart
   (:func:`workbench.interventions.position_effects.position_effects`): top-1 next tokens, the base
   top-1's log-prob under both, KL and the layers whose top-k set changed, shown for one chosen prompt
   at a time (:mod:`dashboards.views.lab_positions`);
5. captures the routing of the same prompts with and without the intervention at the touched
   layers (:func:`workbench.interventions.routing_shift.routing_shift`), so one sees where the displaced tokens went;
6. compares its NLL change per token with the same intervention on distinct random expert sets
   of the same shape (:func:`random_controls`; any few experts forced on, or switched off, move
   the NLL), with an empirical p and its floor;
7. saves the evaluation into the store (:func:`save_result`), opening it writable only for that
   write; a store locked by a capture is reported, not fatal.

The result is rendered by :mod:`dashboards.views.lab_result`.

The functions take the model and prompts directly, so tests run them on a small planted model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl
from dash import html

from dashboards import data
from dashboards.components import message
from dashboards.jobs import MODEL_LOCK
from dashboards.views.bounds import (
    BIAS_RANGE,
    LAB_PROMPTS,
    MAX_PROMPT_CHARS,
    SCALE_RANGE,
    count_within,
    number_within,
    text_within,
)
from dashboards.views.lab_positions import decode_positions, token_text
from dashboards.views.lab_result import SHIFT_PROMPTS, LabResult, lab_result
from workbench.behaviour.registry import REFUSAL, REFUSAL_CHATML, Behaviour
from workbench.interventions import Bias, Force, Intervention, Reroute, Scale, Zero
from workbench.interventions.controls import ExpertSet, run_with_controls, versus_controls
from workbench.interventions.effects import evaluate, generation_diff, record, token_effects
from workbench.interventions.position_effects import position_effects
from workbench.interventions.routing_shift import routing_shift
from workbench.interventions.specs import expert_map
from workbench.models.loading import LoadedModel
from workbench.probefile import Prompt
from workbench.store import Store, StoreError, StoreLockedError

__all__ = [
    "SEMANTICS",
    "TYPED",
    "LabResult",
    "behaviour_for",
    "expert_options",
    "lab_job",
    "lab_prompts",
    "lab_result",
    "layer_options",
    "make_spec",
    "random_controls",
    "run_lab",
    "save_result",
]

SEMANTICS: dict[str, str] = {
    "zero": "zero — keeps its top-k slot with weight 0",
    "zero-renorm": "zero + renorm — weight 0, the others rescaled",
    "reroute": "reroute — logit −inf, the next expert takes the slot",
    "force": "force — always in the top-k",
    "bias": "bias δ — δ added to its router logit",
    "scale": "scale s — its output × s",
}
"""Lab semantics (value → label); ``bias`` and ``scale`` take the value field (δ, s)."""

TYPED = "__typed__"
"""Label-set value meaning "the typed prompt"."""

Progress = Callable[[int, int, str], None]
STEPS = 5
"""The lab job's steps, for its progress bar (the page's ``max``)."""


def make_spec(
    semantics: str,
    layer: Any,
    experts: Sequence[Any] | None,
    value: Any = None,
    loaded: LoadedModel | None = None,
) -> Intervention:
    """The spec for ``semantics`` on ``experts`` of ``layer`` (``value``: δ for bias, s for scale).

    ``value`` must be finite and within :data:`~dashboards.views.bounds.BIAS_RANGE` /
    :data:`~dashboards.views.bounds.SCALE_RANGE`; given ``loaded``, the layer must be one of its MoE
    layers and the experts within its expert count.
    """
    if not isinstance(semantics, str) or semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {', '.join(SEMANTICS)}, not {semantics!r}")
    if layer is None:
        raise ValueError("pick a layer")
    at = count_within(layer, (0, 1_000_000), "the layer", 0)
    if experts is not None and not isinstance(experts, (list, tuple)):
        raise ValueError(f"the experts must be a list of expert numbers, not {type(experts).__name__}")
    chosen = sorted({count_within(e, (0, 1_000_000), "an expert", 0) for e in experts or []})
    if not chosen:
        raise ValueError("pick at least one expert")
    if loaded is not None:
        _check_experts(loaded, at, chosen)
    experts_map = expert_map({at: chosen})
    if semantics in ("bias", "scale"):
        if value is None or value == "":
            raise ValueError(f"{semantics} needs a value ({'δ' if semantics == 'bias' else 's'})")
        if semantics == "bias":
            return Bias(experts_map, delta=number_within(value, BIAS_RANGE, "the bias δ"))
        return Scale(experts_map, s=number_within(value, SCALE_RANGE, "the scale s"))
    if semantics == "zero":
        return Zero(experts_map)
    if semantics == "zero-renorm":
        return Zero(experts_map, renorm=True)
    return Reroute(experts_map) if semantics == "reroute" else Force(experts_map)


def _check_experts(loaded: LoadedModel, layer: int, experts: Sequence[int]) -> None:
    """Refuse a layer the model has no MoE block at, or experts beyond that layer's count."""
    found = next((x for x in loaded.layers if x.layer == layer), None)
    if found is None:
        have = ", ".join(str(x.layer) for x in loaded.layers)
        raise ValueError(f"layer {layer} is not a MoE layer of {loaded.name} (its MoE layers: {have})")
    beyond = [e for e in experts if e >= found.n_experts]
    if beyond:
        raise ValueError(
            f"layer {layer} has {found.n_experts} experts (0 to {found.n_experts - 1}); there is no expert "
            + ", ".join(str(e) for e in beyond)
        )


def layer_options(loaded: LoadedModel) -> list[dict[str, Any]]:
    """Dropdown options for the model's MoE layers (its experts and top-k in the label)."""
    return [
        {"label": f"layer {x.layer} ({x.n_experts} experts, top-{x.top_k})", "value": x.layer}
        for x in loaded.layers
    ]


def expert_options(loaded: LoadedModel, layer: Any) -> list[dict[str, Any]]:
    """Dropdown options for the experts of ``layer`` (none for an unknown layer)."""
    found = next((x for x in loaded.layers if layer is not None and x.layer == int(layer)), None)
    return [] if found is None else [{"label": f"expert {e}", "value": e} for e in range(found.n_experts)]


def lab_prompts(db: str, run: str | None, choice: str | None, text: str | None, n: Any) -> list[Prompt]:
    """The prompts to run on: the typed ``text`` (``choice`` = TYPED), or the first ``n`` of a label.

    The typed prompt has at most :data:`~dashboards.views.bounds.MAX_PROMPT_CHARS` characters and
    ``n`` is within :data:`~dashboards.views.bounds.LAB_PROMPTS` (None: 8).
    """
    if choice in (None, TYPED):
        if text is None or (isinstance(text, str) and not text.strip()):
            raise ValueError("type a prompt, or pick a label set of the run")
        typed = text_within(text, MAX_PROMPT_CHARS, "the typed prompt")
        return [Prompt(prompt_id=0, text=typed, label="typed")]
    if not isinstance(choice, str):
        raise ValueError(f"the label set must be a label name, not {type(choice).__name__}")
    count = count_within(n, LAB_PROMPTS, "prompts per label", 8)
    if not run:
        raise ValueError("pick a run to take its labelled prompts from")
    rows = data.prompts(db, run, label=choice).sort("prompt_id").head(count)
    if rows.height == 0:
        raise ValueError(f"run {run} has no prompts labelled {choice!r}")
    return [
        Prompt(prompt_id=int(r["prompt_id"]), text=str(r["text"]), label=str(r["label"]))
        for r in rows.iter_rows(named=True)
    ]


def behaviour_for(
    db: str, run: str | None, prompts: Sequence[Prompt], loaded: LoadedModel
) -> Behaviour | None:
    """Refusal when the prompts come from the run's refusal contrast set, else None.

    A run is a refusal run when its probe names refusal and its pairs form a contrast set
    (target, control); the behaviour is then scored on the prompts of either label. SmolLM2
    models are asked in their own ChatML format, everything else in tiny-ref's chat format.
    """
    if not run or not prompts:
        return None
    pair = data.contrast(db, run)
    probe = str(data.run_info(db, run).get("probe") or "")
    if pair is None or "refusal" not in probe.lower() or not {p.label for p in prompts} & set(pair):
        return None
    return REFUSAL_CHATML if "smollm" in str(loaded.name).lower() else REFUSAL


def random_controls(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    chosen: ExpertSet,
    make: Callable[[ExpertSet], Intervention],
    *,
    n_controls: int = 10,
    seed: int = 0,
) -> tuple[pl.DataFrame, dict[str, float]]:
    """NLL change per token of ``make(chosen)`` and of ``make(s)`` for distinct random sets ``s`` like it.

    The sets have as many experts as ``chosen`` on each of its layers, never ``chosen`` itself
    (all of them when fewer exist: :func:`workbench.interventions.controls.random_sets`); the
    comparison is :func:`~workbench.interventions.controls.versus_controls` (p with its floor).
    """
    n_experts = {x.layer: x.n_experts for x in loaded.layers}

    def nll_delta(experts: ExpertSet) -> float:
        table = token_effects(loaded, list(prompts), make(experts))
        return float((table["nll_int"] - table["nll_base"]).sum() / max(int(table["n_tokens"].sum()), 1))

    table = run_with_controls(nll_delta, chosen, n_experts, n_controls=n_controls, seed=seed)
    return table, versus_controls(table)


def run_lab(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    spec: Intervention,
    *,
    behaviour: Behaviour | None = None,
    n_diff: int | None = None,
    max_new_tokens: int = 16,
    progress: Progress | None = None,
    controls_for: Callable[[ExpertSet], Intervention] | None = None,
    n_controls: int = 10,
) -> LabResult:
    """Evaluate ``spec`` on ``prompts`` (module docstring: effects, generations, per-token view, routing
    shift); ``progress(i, n, what)``.

    ``n_diff`` limits the greedy generations to the first prompts (None: every prompt). ``controls_for``
    builds the same intervention on another expert set: given, the spec's NLL change is compared
    with ``n_controls`` random sets of its shape (:func:`random_controls`).
    """
    if not prompts:
        raise ValueError("no prompts to run the intervention on")
    say = progress or (lambda i, n, what: None)
    say(0, STEPS, "measuring NLL / KL / top-1" + (f" and {behaviour.name}" if behaviour else ""))
    evaluation = evaluate(loaded, list(prompts), spec, behaviour=behaviour, batch_size=8)
    generated = list(prompts[:n_diff])
    say(1, STEPS, f"greedy generations of {len(generated)} prompt(s), base vs intervened")
    texts = [behaviour.ask(p.text) if behaviour else p.text for p in generated]
    diff = generation_diff(loaded, texts, spec, max_new_tokens=max_new_tokens, batch_size=8)
    diff = diff.with_columns(
        pl.Series("prompt_id", [p.prompt_id for p in generated]),
        pl.Series("label", [p.label for p in generated]),
    )
    say(2, STEPS, "what changed at each position")
    positions = decode_positions(position_effects(loaded, prompts, spec), lambda i: token_text(loaded, i))
    say(3, STEPS, "routing shift at the touched layers")
    shift = routing_shift(loaded, prompts[:SHIFT_PROMPTS], spec)
    controls = versus = None
    if controls_for is not None:
        say(4, STEPS, f"the same on {n_controls} random expert sets of the same shape")
        chosen = {int(k): sorted(int(e) for e in v) for k, v in spec.layer_experts().items()}
        controls, versus = random_controls(loaded, prompts, chosen, controls_for, n_controls=n_controls)
    say(STEPS, STEPS, "done")
    return LabResult(
        spec, list(prompts), evaluation, diff, shift, behaviour.name if behaviour else None, controls, versus,
        positions, [x.layer for x in loaded.layers],
    )  # fmt: skip


def save_result(
    db: str, run: str | None, result: LabResult, attempts: int = 8, wait_s: float = 0.25
) -> html.Div:
    """Record the evaluation in the store (``record``) and say where; or say why it was not saved.

    The store is opened writable for this write only. Readers in other processes are waited out
    by the store itself (up to ``MOE_WORKBENCH_LOCK_WAIT``, 30 s); a process holding it for writing
    (a capture) is reported at once (the results on the page stay); a read of this same server
    holding the file read-only is waited out for ``attempts`` × ``wait_s`` seconds.
    """
    if not run:
        return message("Not saved: no run chosen (interventions are recorded against a run of the store).")
    labels = sorted({p.label for p in result.prompts})
    meta = {"source": "dashboard-lab", "labels": labels, "n_prompts": len(result.prompts)}
    last: Exception | None = None
    for _ in range(attempts):
        try:
            with Store(db) as store:
                iid = record(store, run, result.evaluation, meta=meta)
            return message(
                f"Saved as intervention {iid} of run {run} (store tables interventions, evaluations)."
            )
        except StoreLockedError as exc:
            return message(f"Not saved — the store is locked: {exc}", "warning")
        except StoreError as exc:  # this server is reading the file right now: try again shortly
            last = exc
            time.sleep(wait_s)
    return message(
        f"Not saved: the store stayed busy ({last}). Run the intervention again to retry.", "warning"
    )


def lab_job(
    db: str,
    loaded: LoadedModel,
    run: str | None,
    layer: Any,
    experts: Sequence[Any] | None,
    semantics: str,
    value: Any,
    labels: str | None,
    n: Any,
    text: str | None,
    *,
    progress: Progress | None = None,
) -> html.Div:
    """The whole lab callback: spec and prompts from the choices, the run (holding the model
    lock), the store write, and the rendered result."""
    spec = make_spec(semantics, layer, experts, value, loaded)
    prompts = lab_prompts(db, run, labels, text, n)
    behaviour = behaviour_for(db, run, prompts, loaded)
    if not MODEL_LOCK.acquire(blocking=False):
        if progress:
            progress(0, STEPS, "waiting for another job on the model")
        MODEL_LOCK.acquire()
    try:
        result = run_lab(
            loaded, prompts, spec, behaviour=behaviour, progress=progress,
            controls_for=lambda s: make_spec(semantics, layer, s[int(layer)], value, loaded),
        )  # fmt: skip
    finally:
        MODEL_LOCK.release()
    return lab_result(result, save_result(db, run, result))

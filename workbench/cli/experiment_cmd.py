"""`moe-workbench experiment`: the recorded experiments (the MoTE experiment, docs/methods.md §5, §8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import app, fail, note, scratch_dir, user_errors
from workbench.cli.tables import print_frame

experiment_app = typer.Typer(
    help="Recorded experiments: run them (into a scratch folder, or --out docs/experiments/... to record them).",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


QUICK: dict[str, Any] = {
    "doses": "1,4",
    "controls": 5,
    "semantics": "zero",
    "pairs": 16,
    "domain_prompts": 12,
    "scorers": "rd,ftri,causal,attribution",
}
"""--quick: a first look in minutes (two doses, five random sets, 16 pairs, no greedy search)."""
FULL: dict[str, Any] = {
    "doses": "1,2,4,8",
    "controls": 10,
    "semantics": "zero,reroute",
    "pairs": 96,
    "domain_prompts": 60,
    "scorers": "rd,ftri,causal,attribution,causal-greedy",
}
"""The recorded run's sizes (docs/experiments/mote.md)."""


@experiment_app.command("mote")
def mote(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model speaking tiny-ref's chat format.")
    ] = "tiny-ref",
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Markdown write-up; a .json with every table goes next to it. Default: a new scratch folder "
            "(~/.cache/moe-workbench/scratch/mote-TIME/, or $MOE_WORKBENCH_SCRATCH), so the recorded "
            "docs/experiments/mote.md changes only when you say --out docs/experiments/mote.md.",
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help=f"A first look in minutes: doses {QUICK['doses']}, {QUICK['controls']} random sets, "
            f"{QUICK['pairs']} pairs, {QUICK['domain_prompts']} domain prompts, semantics {QUICK['semantics']}, "
            f"scorers {QUICK['scorers']} (an option given explicitly still wins).",
        ),
    ] = False,
    doses: Annotated[
        str | None,
        typer.Option("--doses", help=f"Numbers of experts switched off, comma-separated [{FULL['doses']}]."),
    ] = None,
    controls: Annotated[
        int | None,
        typer.Option(
            "--controls", help=f"Random expert sets per point and per forced set (≥ 5) [{FULL['controls']}]."
        ),
    ] = None,
    semantics: Annotated[
        str | None,
        typer.Option(
            "--semantics", help=f"zero, zero-renorm, reroute (comma-separated) [{FULL['semantics']}]."
        ),
    ] = None,
    pairs: Annotated[
        int | None,
        typer.Option("--pairs", help=f"Pairs in each half (selection, evaluation) [{FULL['pairs']}]."),
    ] = None,
    domain_prompts: Annotated[
        int | None,
        typer.Option(
            "--domain-prompts", help=f"Held-out domain prompts for the NLL cost [{FULL['domain_prompts']}]."
        ),
    ] = None,
    behaviour: Annotated[
        str,
        typer.Option("--behaviour", help="refusal (tiny-ref's chat format) or refusal-chatml (SmolLM2's)."),
    ] = "refusal",
    scorers: Annotated[
        str | None,
        typer.Option(
            "--scorers",
            help=f"Comma-separated subset of rd, ftri, causal, attribution, causal-greedy [{FULL['scorers']}].",
        ),
    ] = None,
    card: Annotated[
        bool | None,
        typer.Option(
            "--card/--no-card",
            help="With tiny-ref: put the headline into its model card (datasets/tiny-ref). Default: only "
            "with --out (a recorded run), never for a scratch run.",
        ),
    ] = None,
    eval_probe: Annotated[
        Path | None,
        typer.Option(
            "--eval-probe",
            help="Judge on this probe file's harmful/benign pairs (e.g. probes/refusal-confirmatory.jsonl) "
            "instead of the refusal suite's evaluation half; experts are still chosen on probes/refusal.jsonl. "
            "Refused if it shares a prompt with the selection half.",
        ),
    ] = None,
    eval_pairs: Annotated[
        int | None, typer.Option("--eval-pairs", help="Pairs to judge on (default: --pairs).")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Where the JSON goes (default: next to --out).")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cpu)."),
    ] = None,
) -> None:
    """Do the experts picked by resonance (rd, fTRI), by causal ablation or by attribution control refusal?

    Splits the refusal contrast set into a selection and an evaluation half, switches off each
    scorer's top-N experts, and compares the refusal rate with random expert sets of the same size
    on the same layers. Prints each step with the time so far and an estimate of the time left.
    Example: moe-workbench experiment mote --model tiny-ref --quick
    (the recorded run: moe-workbench experiment mote --model tiny-ref --out docs/experiments/mote.md)
    """
    from workbench.interventions.mote import SCORERS, SEMANTICS, MoteConfig, run_mote
    from workbench.interventions.mote_report import to_json, to_markdown
    from workbench.models.loading import load_model

    sizes = QUICK if quick else FULL
    doses = doses if doses is not None else sizes["doses"]
    controls = controls if controls is not None else sizes["controls"]
    semantics = semantics if semantics is not None else sizes["semantics"]
    pairs = pairs if pairs is not None else sizes["pairs"]
    domain_prompts = domain_prompts if domain_prompts is not None else sizes["domain_prompts"]
    scorers = scorers if scorers is not None else sizes["scorers"]
    try:
        dose_list = tuple(int(x) for x in doses.split(","))
    except ValueError:
        fail(f"--doses must be integers separated by commas, got {doses!r}")
    from workbench.behaviour.registry import BEHAVIOURS

    if behaviour not in BEHAVIOURS:
        fail(f"unknown behaviour {behaviour!r}; available: {', '.join(BEHAVIOURS)}")
    chosen = tuple(s.strip() for s in semantics.split(","))
    unknown = [s for s in chosen if s not in SEMANTICS]
    if unknown:
        fail(f"unknown semantics {unknown}; available: {', '.join(SEMANTICS)}")
    config = MoteConfig(
        doses=dose_list,
        semantics=chosen,
        n_controls=controls,
        n_select=pairs,
        n_eval=pairs if eval_pairs is None else eval_pairs,
        n_domain=domain_prompts,
        behaviour=behaviour,
        scorers=tuple(x.strip() for x in scorers.split(",")),
        eval_probe=None if eval_probe is None else str(eval_probe),
    )
    recorded = out_file is not None
    try:
        loaded = load_model(model, device=device)
        if out_file is None:
            out_file = scratch_dir("mote") / "mote.md"
            note(f"writing to the scratch folder {out_file.parent} (--out FILE to record the run elsewhere)")
        result = run_mote(loaded, config, log=note)
    except user_errors() as exc:
        fail(str(exc))
    assert out_file is not None  # for the type checker: set above, or fail exited
    command = f"moe-workbench experiment mote --model {model} --doses {doses} --controls {controls} " \
        f"--semantics {semantics} --pairs {pairs} --domain-prompts {domain_prompts} --behaviour {behaviour} --scorers {scorers}"  # fmt: skip
    if eval_probe is not None:
        command += f" --eval-probe {eval_probe}" + (
            "" if eval_pairs is None else f" --eval-pairs {eval_pairs}"
        )
    json_path = out_file.with_suffix(".json") if json_file is None else json_file
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(to_markdown(result, model, command), encoding="utf-8")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(to_json(result), encoding="utf-8")
    if (card if card is not None else recorded) and model == "tiny-ref":
        _update_card(result, full=set(config.scorers) == set(SCORERS))
    print_frame(result.agreement, more=None)
    print_frame(
        result.summary.select("scorer", "semantics", "n", "chosen", "control_mean", "z", "p"), more=None
    )
    note(f"wrote {out_file} and {json_path}")


def _update_card(result: object, full: bool) -> None:
    """A full run replaces the card's MoTE headline; a partial run (a rerun) is added below it."""
    from dataclasses import asdict

    from workbench.interventions.mote import MoteResult
    from workbench.interventions.mote_report import headline
    from workbench.zoo.card import MOTE_FILE, write_card
    from workbench.zoo.tiny_ref import model_dir

    assert isinstance(result, MoteResult)
    path = model_dir() / MOTE_FILE
    data: dict[str, Any]
    if full:
        data = headline(result)
    elif path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        scorers = list(result.config.scorers)
        kept = [r for r in data.get("reruns", []) if list(r["config"]["scorers"]) != scorers]
        data["reruns"] = [
            *kept,
            {
                "config": asdict(result.config),
                "summary": result.summary.to_dicts(),
                "outcomes": result.outcomes.to_dicts(),
            },
        ]
    else:
        return  # a rerun without a full run to add it to
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    note(f"updated {write_card(model_dir(), remeasure=False)}")

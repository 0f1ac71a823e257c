"""`moe-workbench experiment`: the recorded experiments (the MoTE experiment, docs/methods.md §5, §8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import app, fail, note, show, user_errors

experiment_app = typer.Typer(
    help="Recorded experiments: run them, and write their numbers to docs/experiments/.", no_args_is_help=True
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("mote")
def mote(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model speaking tiny-ref's chat format.")
    ] = "tiny-ref",
    out_file: Annotated[
        Path, typer.Option("--out", help="Markdown write-up; a .json with every table goes next to it.")
    ] = Path("docs/experiments/mote.md"),
    doses: Annotated[
        str, typer.Option("--doses", help="Numbers of experts switched off, comma-separated.")
    ] = "1,2,4,8",
    controls: Annotated[
        int, typer.Option("--controls", help="Random expert sets per point and per forced set (≥ 5).")
    ] = 10,
    semantics: Annotated[
        str, typer.Option("--semantics", help="zero, zero-renorm, reroute (comma-separated).")
    ] = "zero,reroute",
    pairs: Annotated[int, typer.Option("--pairs", help="Pairs in each half (selection, evaluation).")] = 96,
    domain_prompts: Annotated[
        int, typer.Option("--domain-prompts", help="Held-out domain prompts for the NLL cost.")
    ] = 60,
    behaviour: Annotated[
        str,
        typer.Option("--behaviour", help="refusal (tiny-ref's chat format) or refusal-chatml (SmolLM2's)."),
    ] = "refusal",
    scorers: Annotated[
        str,
        typer.Option(
            "--scorers", help="Comma-separated subset of rd, ftri, causal, attribution, causal-greedy."
        ),
    ] = "rd,ftri,causal,attribution,causal-greedy",
    card: Annotated[
        bool, typer.Option("--card/--no-card", help="With tiny-ref: put the headline into its model card.")
    ] = True,
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
) -> None:
    """Do the experts picked by resonance (rd, fTRI), by causal ablation or by attribution control refusal?

    Splits the refusal contrast set into a selection and an evaluation half, switches off each
    scorer's top-N experts, and compares the refusal rate with random expert sets of the same size
    on the same layers. Example: moe-workbench experiment mote --model tiny-ref
    """
    from workbench.interventions.mote import SCORERS, SEMANTICS, MoteConfig, run_mote
    from workbench.interventions.mote_report import to_json, to_markdown
    from workbench.models.loading import load_model

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
    try:
        result = run_mote(load_model(model), config, log=note)
    except user_errors() as exc:
        fail(str(exc))
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
    if card and model == "tiny-ref":
        _update_card(result, full=set(config.scorers) == set(SCORERS))
    show(result.agreement)
    show(result.summary.select("scorer", "semantics", "n", "chosen", "control_mean", "z", "p"))
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

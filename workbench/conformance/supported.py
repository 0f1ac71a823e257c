"""The conformance sweep: every MoE text architecture of the installed transformers, checked.

Architectures are enumerated programmatically: every model type of transformers' CONFIG_MAPPING
whose default config (or its text sub-config) declares experts (a field naming ``expert``/``moe``)
is built as a tiny random model (:mod:`workbench.models.tiny`; multimodal configs become their text
model) and is an MoE architecture when the built model holds expert parameters. For each, on two
right-padded prompts, through the ``hooks`` capture backend:

(a) the captured logits equal a recomputation from the router's input (captured by a separate
    hook here) and the router's own linear weight/bias (:func:`scores.recompute_logits`);
(b) the captured top-k experts and applied weights equal the family's declared recipe applied to
    the captured logits (:func:`scores.expected_topk`), as sets (order-insensitive) within tolerance;
(c) the captured module paths equal an independent enumeration of the modules holding expert
    parameters, and each layer number is the block index in its path (decoder after encoder);
(d) the load-time routing self-check (:mod:`routing_check`) passes: the experts and weights each
    block class applied, measured by ablation, equal what the adapter records (see docs/capture.md).

An architecture that cannot be checked is ``unsupported`` with a stated reason, never ``fail``: its
blocks are known and deliberately not adapted (listed with the reason), its MoE blocks have no
adapter yet (the reason starts "no adapter yet: " and names the block classes; capture refuses such
a model with an error saying what was found), or it is not a token-input text model. ``fail`` means
a check above disagrees, or a tiny model with expert parameters does not build or has no MoE layers.

``python -m workbench.conformance.supported`` writes docs/supported-models.md.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from workbench.capture.backends.hooks import HooksBackend
from workbench.capture.batching import Batch, make_batch
from workbench.models.discovery import MoELayer, find_moe_layers
from workbench.models.families import BLOCK_FAMILIES, UNSUPPORTED_BLOCKS
from workbench.models.family import CONVENTIONS
from workbench.models.registry import UnknownArchitectureError, lookup
from workbench.models.routing_check import RoutingCheckError, check_routing
from workbench.models.scores import RoutingContext, expected_topk, recompute_logits, score_name
from workbench.models.tiny import (
    NotATextModelError,
    TinyConfigError,
    byte_tokenizer,
    text_config_of,
    tiny_model,
)
from workbench.probefile import Prompt

Status = Literal["pass", "fail", "unsupported"]
TEXTS = ["The quick brown fox jumps over the lazy dog, twice.", "2 + 2 = 4"]
ATOL = 1e-4
_DECLARES_EXPERTS = re.compile(r"expert|moe", re.IGNORECASE)
#: Sweep-only config changes: small capacities so Switch and NLLB-MoE drop tokens (weight 0).
SWEEP_OVERRIDES: dict[str, dict[str, Any]] = {
    "switch_transformers": {"expert_capacity": 6},
    "nllb-moe": {"moe_eval_capacity_token_fraction": 0.1},
}
#: How the reason of an architecture whose MoE blocks no adapter describes begins (status
#: ``unsupported``: a known gap, not a conformance failure; capture still refuses such a model
#: with :class:`UnknownArchitectureError`). The block class names follow.
NO_ADAPTER = "no adapter yet: "
#: Instance names that families declare are not text MoE layers (vision experts): not expected.
SKIPPED_NAMES = frozenset(name for fam in BLOCK_FAMILIES.values() for name in fam.skip_names)


@dataclass
class Result:
    """One architecture's outcome; ``status`` is pass, fail or unsupported (with ``reason``)."""

    model_type: str
    status: Status
    reason: str = ""
    blocks: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    score_fns: list[str] = field(default_factory=list)
    n_shared: int = 0
    stacks: str = "decoder-only"
    text_of: str = ""
    layers: list[tuple[int, str]] = field(default_factory=list)
    dropped: int = 0  # real-token expert slots captured with weight 0 (capacity drops)


def declares_experts(model_type: str) -> bool:
    """Whether the default (text) config of ``model_type`` has a field about experts/MoE."""
    try:
        config = text_config_of(model_type)
    except Exception:  # an unbuildable config is reported by the sweep
        return True
    fields = config.to_dict()
    names = [*fields, *(k for v in fields.values() if isinstance(v, dict) for k in v if isinstance(k, str))]
    return any(_DECLARES_EXPERTS.search(n) for n in names)


def candidate_model_types() -> list[str]:
    """Model types of CONFIG_MAPPING whose config declares experts (sorted)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return sorted(mt for mt in CONFIG_MAPPING if declares_experts(mt))


def _expert_named(name: str, module: nn.Module) -> bool:
    leaf = name.rsplit(".", 1)[-1].lower()
    return "shared" not in leaf and ("expert" in leaf or "expert" in type(module).__name__.lower())


def expert_holders(model: nn.Module) -> set[str]:
    """Paths of MoE blocks found independently of the registry: who holds expert parameters.

    An expert module is one named ``*expert*`` (not ``shared``) that owns parameters itself (fused
    3-D or 2-D weights) or is a ModuleList/ModuleDict of per-expert modules. Its block is the
    nearest ancestor that is not itself expert-named.
    """
    modules = dict(model.named_modules())
    holders: set[str] = set()
    for name, module in modules.items():
        if not name or not _expert_named(name, module) or isinstance(module, nn.modules.conv._ConvNd):
            continue
        owns = any(True for _ in module.parameters(recurse=False))
        container = isinstance(module, (nn.ModuleList, nn.ModuleDict)) and len(module) > 1
        if not (owns or container):
            continue
        path = name
        while "." in path and _expert_named(path, modules[path]):
            path = path.rsplit(".", 1)[0]
        if path != name or not _expert_named(path, modules[path]):
            holders.add(path)
    return holders


def expected_layer_number(model: nn.Module, path: str) -> int:
    """The block index in ``path`` (outermost ModuleList), decoder blocks after the encoder's."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if parts[i].isdigit() and isinstance(model.get_submodule(prefix), nn.ModuleList):
            index = int(parts[i])
            if "decoder" in parts[:i]:
                encoder = ".".join("encoder" if p == "decoder" else p for p in parts[:i])
                try:
                    index += len(model.get_submodule(encoder))  # type: ignore[arg-type]
                except AttributeError:
                    pass
            return index
    raise ValueError(f"{path}: no block index")


def sweep_batch() -> Batch:
    """The sweep's two right-padded prompts (:data:`TEXTS`), byte-tokenized, as one capture batch."""
    prompts = [Prompt(i, text, "sweep") for i, text in enumerate(TEXTS)]
    return make_batch(prompts, byte_tokenizer(), max_length=None, padding_side="right")


class _RouterInputs:
    """Our own hooks (separate from the backend's): each router's input and extra arguments."""

    def __init__(self, layers: list[MoELayer]) -> None:
        self.seen: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.handles = [
            layer.router.register_forward_pre_hook(self._hook(layer.layer), with_kwargs=True)
            for layer in layers
        ]

    def _hook(self, number: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.seen[number] = (args, kwargs)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _compare_selection(
    got_idx: torch.Tensor, got_w: torch.Tensor, exp_idx: torch.Tensor, exp_w: torch.Tensor, pi: torch.Tensor
) -> str:
    """'' when the expert sets and weights agree per row (near-ties in π excused), else why not."""
    g_order, e_order = got_idx.argsort(dim=-1), exp_idx.argsort(dim=-1)
    g_idx, e_idx = got_idx.gather(-1, g_order), exp_idx.gather(-1, e_order)
    g_w, e_w = got_w.float().gather(-1, g_order), exp_w.float().gather(-1, e_order)
    bad_set = (g_idx != e_idx).any(dim=-1)
    bad_w = ~torch.isclose(g_w, e_w, atol=ATOL, rtol=1e-3).all(dim=-1)
    bad = bad_set | bad_w
    if not bad.any():
        return ""
    k = got_idx.shape[-1]
    if k < pi.shape[-1]:  # excuse rows where the k-th and (k+1)-th scores tie
        top = pi.float().topk(k + 1, dim=-1).values
        bad &= (top[:, k - 1] - top[:, k]).abs() > 1e-6
    if not bad.any():
        return ""
    row = int(bad.nonzero()[0])
    what = "expert sets" if bool(bad_set[row]) else "weights"
    return (
        f"{what} differ on {int(bad.sum())}/{bad.numel()} rows, e.g. row {row}: captured "
        f"{g_idx[row].tolist()} {[round(x, 5) for x in g_w[row].tolist()]} vs expected "
        f"{e_idx[row].tolist()} {[round(x, 5) for x in e_w[row].tolist()]}"
    )


def _check_layer(model: nn.Module, layer: MoELayer, route: Any, inputs: Any, batch: Any) -> str:
    """'' when layer ``layer`` passes checks (a) and (b), else the first reason it does not."""
    config = getattr(model, "config", None)
    args, kwargs = inputs
    x = args[0] if args else kwargs["hidden_states"]
    fam = layer.family
    if route.logits is None:
        return "no logits captured"
    logits = route.logits.float()
    try:
        recomputed = recompute_logits(fam, layer.router, x, config)
    except LookupError as exc:
        return f"(a) {exc}"
    if recomputed.shape != logits.shape or not torch.allclose(
        recomputed, logits, atol=ATOL, rtol=1e-3, equal_nan=True
    ):
        diff = (recomputed - logits).abs().max().item() if recomputed.shape == logits.shape else "shape"
        return f"(a) logits differ from the router-input recomputation (max |Δ| {diff})"
    ctx = RoutingContext(
        router=layer.router,
        block=layer.block,
        config=config,
        top_k=layer.top_k,
        batch_shape=tuple(batch.input_ids.shape),
        token_ids=batch.input_ids.reshape(-1),
        padding_mask=args[1] if len(args) > 1 else kwargs.get("padding_mask"),
    )
    exp_idx, exp_w = expected_topk(fam, logits, ctx)
    real = batch.mask.reshape(-1).bool()  # padding never reaches the store; compare real tokens
    why = _compare_selection(
        route.indices[real], route.weights[real], exp_idx[real], exp_w[real], logits[real]
    )
    return f"(b) {why}" if why else ""


def _describe(result: Result, model: nn.Module, layers: list[MoELayer]) -> None:
    config = getattr(model, "config", None)
    result.blocks = sorted({type(layer.block).__name__ for layer in layers})
    result.families = sorted({layer.family.name for layer in layers})
    result.score_fns = sorted({score_name(layer.family, layer.router, config) for layer in layers})
    result.n_shared = max(layer.n_shared for layer in layers)
    stacks = {layer.stack for layer in layers}
    result.stacks = "encoder+decoder" if "encoder" in stacks else "decoder-only"
    result.layers = [(layer.layer, layer.path) for layer in layers]


def check_architecture(model_type: str, seed: int = 0) -> Result:
    """Build a tiny ``model_type`` and run the conformance checks (a)–(c) on it."""
    result = Result(model_type, "fail")
    try:
        text = text_config_of(model_type)
    except TinyConfigError as exc:
        result.status, result.reason = "unsupported", _short(exc)
        return result
    if text.model_type != model_type:
        result.text_of = text.model_type
    if not isinstance(text.to_dict().get("vocab_size"), int):
        result.status, result.reason = "unsupported", "not a text model (its config has no vocabulary)"
        return result
    try:
        model = tiny_model(model_type, seed=seed, **SWEEP_OVERRIDES.get(model_type, {}))
    except NotATextModelError as exc:
        result.status, result.reason = "unsupported", f"not a token-input text model: {_short(exc)}"
        return result
    except Exception as exc:  # every failure is a row of the report
        result.reason = f"tiny model does not build: {type(exc).__name__}: {_short(exc)}"
        return result
    holders = {path for path in expert_holders(model) if path.rsplit(".", 1)[-1] not in SKIPPED_NAMES}
    try:
        layers = find_moe_layers(model)
    except (UnknownArchitectureError, ValueError) as exc:  # ValueError: NoMoELayersError
        known = sorted({type(m).__name__ for m in model.modules()} & set(UNSUPPORTED_BLOCKS))
        if known:
            result.status, result.blocks = "unsupported", known
            result.reason = f"{known[0]}: {UNSUPPORTED_BLOCKS[known[0]]}"
        elif isinstance(exc, UnknownArchitectureError):
            result.status, result.blocks = "unsupported", _unadapted_blocks(model, holders)
            result.reason = NO_ADAPTER + ", ".join(result.blocks)
        else:
            result.status = "fail" if holders else "unsupported"
            result.reason = _short(exc)
        return result
    _describe(result, model, layers)
    result.reason = _run_checks(result, model, layers, holders, HooksBackend)
    result.status = "fail" if result.reason else "pass"
    return result


def _unadapted_blocks(model: nn.Module, holders: set[str]) -> list[str]:
    """Class names of the MoE blocks no adapter describes (those discovery refused), sorted.

    A block is one with an ``experts`` child, as discovery sees it, that the registry does not
    resolve or whose declared router child is missing; the expert holders' classes are the fallback.
    """
    refused: set[str] = set()
    for module in model.modules():
        if not isinstance(getattr(module, "experts", None), nn.Module):
            continue
        family = lookup(module)
        if family is None or not any(
            isinstance(getattr(module, a, None), nn.Module) for a in family.router_attrs
        ):
            refused.add(type(module).__name__)
    return sorted(refused or {type(model.get_submodule(path)).__name__ for path in holders})


def _run_checks(
    result: Result, model: nn.Module, layers: list[MoELayer], holders: set[str], backend_cls: Any
) -> str:
    paths = {layer.path for layer in layers}
    if paths != holders:
        return f"(c) captured paths {sorted(paths - holders)} vs expert holders {sorted(holders - paths)}"
    if len({layer.layer for layer in layers}) != len(layers):
        return f"(c) two MoE blocks share a layer number: {[(x.layer, x.path) for x in layers]}"
    for layer in layers:
        expected = expected_layer_number(model, layer.path)
        if layer.layer != expected:
            return f"(c) {layer.path} numbered {layer.layer}, block index says {expected}"
    batch = sweep_batch()
    taps = _RouterInputs(layers)
    backend = backend_cls(model, layers, expert_stats=False, want_logits=True)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            capture = backend.run(batch)
            real = batch.mask.reshape(-1).bool()
            result.dropped = sum(int((capture.routing[x.layer].weights[real] == 0).sum()) for x in layers)
            why = _check_layers(model, layers, capture, taps, batch)
        if why:
            return why
        backend.close()  # the self-check installs hooks of its own
        taps.close()
        return _self_check(model, layers)
    except Exception as exc:  # a crash in capture is this architecture's failure
        return f"crashed: {type(exc).__name__}: {_short(exc)}"
    finally:
        backend.close()
        taps.close()


def _self_check(model: nn.Module, layers: list[MoELayer]) -> str:
    try:
        check_routing(model, layers, force=True)
    except RoutingCheckError as exc:
        return f"(d) {_short(exc, 400)}"
    return ""


def _check_layers(
    model: nn.Module, layers: list[MoELayer], capture: Any, taps: _RouterInputs, batch: Any
) -> str:
    for layer in layers:
        why = _check_layer(model, layer, capture.routing[layer.layer], taps.seen[layer.layer], batch)
        if why:
            return f"layer {layer.layer} ({layer.path}): {why}"
    return ""


def _short(exc: BaseException, limit: int = 220) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sweep(model_types: list[str] | None = None) -> list[Result]:
    """Check every candidate architecture (or ``model_types``); one :class:`Result` each."""
    import transformers

    transformers.logging.set_verbosity_error()
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for model_type in model_types if model_types is not None else candidate_model_types():
                results.append(check_architecture(model_type))
    finally:
        torch.set_num_threads(threads)
    return results


def _row(r: Result) -> str:
    cells = [
        f"`{r.model_type}`",
        r.text_of and f"`{r.text_of}`",
        " ".join(f"`{b}`" for b in r.blocks),
        ", ".join(r.families),
        ", ".join(r.score_fns),
        str(r.n_shared) if r.blocks else "",
        r.stacks if r.blocks else "",
        f"**{r.status}**" if r.status != "pass" else "pass",
        r.reason.replace("|", "\\|"),
    ]
    return "| " + " | ".join(cells) + " |"


def render(results: list[Result]) -> str:
    """docs/supported-models.md from the sweep's results."""
    import transformers

    passed = [r for r in results if r.status == "pass"]
    classes = {b for r in passed for b in r.blocks}
    lines = [
        "# Supported MoE architectures",
        "",
        f"Generated by `python -m workbench.conformance.supported` against transformers {transformers.__version__};"
        " do not edit by hand.",
        "",
        f"**{len(passed)} of {len(results)}** candidate model types pass the conformance sweep "
        f"({len(classes)} distinct MoE block classes).",
        "",
        re.sub(r":\w+:|``", lambda m: "`" if m.group() == "``" else "", (__doc__ or "").split("\n\n", 1)[1])
        .split("`python -m")[0]
        .strip(),
        "",
        CONVENTIONS,
        "## Architectures",
        "",
        "| architecture | text model | block class | family | score fn | shared experts | enc/dec | status | reason |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in results),
        "",
        "## Not passing",
        "",
        *(f"- `{r.model_type}` ({r.status}): {r.reason}" for r in results if r.status != "pass"),
        "",
    ]
    return "\n".join(lines)


def main(path: str | Path = "docs/supported-models.md") -> int:
    """Run the sweep and write the table; prints the summary. Returns 0."""
    results = sweep()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(render(results), encoding="utf-8")
    passed = sum(r.status == "pass" for r in results)
    print(f"{passed}/{len(results)} architectures pass; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

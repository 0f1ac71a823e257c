"""Load-time routing self-check: does the adapter record what the loaded module actually applies?

An adapter (:class:`~workbench.models.family.RoutingFamily`) is written against one release of a
modeling file. When transformers changes a block (argument order, a remapping of special experts,
a new scale), capture would silently store wrong routing. So before the first batch of a capture
and before an intervention starts, one block of every distinct MoE block class is checked on a few
random tokens:

(a) **applied = recorded.** The experts and weights the *module itself* applied, measured by
    ablation without the adapter's recipe or argument positions (:mod:`workbench.models.ablation`),
    must equal what the adapter's tap (:class:`~workbench.models.tap.RoutingTap`, the capture
    backend's own code) records, as dense ``[tokens, experts]`` weights.
(b) **recipe reproduces applied.** The family's recipe (:func:`~workbench.models.scores.expected_topk`)
    applied to the recorded logits must give the recorded experts and weights: analyses recompute
    router scores from stored logits with that recipe.

docs/capture.md explains the method and why it is independent of the adapter.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from workbench.models.ablation import (
    AblationError,
    ExpertsCall,
    applied_weights,
    first_tensor,
    hidden_of,
    n_parameterised,
    param_dtype,
)
from workbench.models.discovery import MoELayer
from workbench.models.forward import model_forward
from workbench.models.hooking import TorchHooks
from workbench.models.scores import RoutingContext, expected_topk, router_linear
from workbench.models.tap import RoutingTap

N_TOKENS = 16
SKIP_HINT = (
    "Use the project's locked transformers (`make test`/`make demo` install it), or fix the block's "
    "family with workbench.models.register_adapter('<BlockClass>', family, overwrite=True). To capture "
    "anyway, pass --skip-routing-check (skip_routing_check=True); the run's config records that you did."
)


class RoutingCheckError(RuntimeError):
    """An adapter does not record what the loaded module applies; the message says where and why."""


@dataclass
class BlockCheck:
    """One checked block class: where, how its weights were decoded, how long it took."""

    block_class: str
    family: str
    layer: int
    path: str
    rows: int
    decoded_by: str  # experts-call | expert-modules | experts-input | skipped
    seconds: float
    skipped: str = ""  # why the family is exempt (``RoutingFamily.routing_check_skip``)

    def as_dict(self) -> dict[str, object]:
        """For a run's config: what was checked, how, and how long it took."""
        return {
            "block_class": self.block_class,
            "family": self.family,
            "layer": self.layer,
            "decoded_by": self.decoded_by,
            "seconds": round(self.seconds, 4),
            **({"skipped": self.skipped} if self.skipped else {}),
        }


def _version() -> str:
    import transformers

    return str(transformers.__version__)


def _recorded_dense(idx: torch.Tensor, w: torch.Tensor, n_param: int, identity: bool) -> torch.Tensor:
    width = n_param + (1 if identity else 0)
    col = idx.clamp(max=n_param) if identity else idx
    dense = torch.zeros(idx.shape[0], width, dtype=torch.float64, device=idx.device)
    return dense.scatter_add_(1, col.long(), w.double())


def _fmt(row: torch.Tensor, n_param: int) -> str:
    nz = [(i, float(v)) for i, v in enumerate(row.tolist()) if abs(v) > 1e-6]
    ids = [("id" if i == n_param else str(i)) for i, _ in nz]
    return f"experts [{', '.join(ids)}] weights [{', '.join(f'{v:.4f}' for _, v in nz)}]"


def _tolerances(dtype: torch.dtype) -> tuple[float, float]:
    return (1e-4, 1e-3) if dtype in (torch.float32, torch.float64) else (2e-2, 3e-2)


def _bad_rows(expected: torch.Tensor, recorded: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    atol, rtol = _tolerances(dtype)
    return ((expected - recorded).abs() > atol + rtol * recorded.abs()).any(dim=-1)


def _report(
    bad: torch.Tensor, what: str, said: tuple[str, str], a: torch.Tensor, b: torch.Tensor, n: int
) -> str:
    """'' when no row is bad, else ``what`` with the count and the first bad row of ``a`` and ``b``."""
    if not bad.any():
        return ""
    row = int(bad.nonzero()[0])
    return (
        f"{what} on {int(bad.sum())}/{bad.numel()} tokens; first, token {row}: {said[0]} {_fmt(a[row], n)}, "
        f"{said[1]} {_fmt(b[row], n)}"
    )


def _compare_applied(applied: torch.Tensor, recorded: torch.Tensor, dtype: torch.dtype, n_param: int) -> str:
    what = "(a) the experts the module applied differ from what the adapter records"
    said = ("the module applied", "the adapter records")
    return _report(_bad_rows(applied, recorded, dtype), what, said, applied, recorded, n_param)


def _compare_recipe(
    layer: MoELayer, route: Any, ctx: RoutingContext, dtype: torch.dtype, n_param: int, identity: bool
) -> str:
    if route.logits is None:
        return "(b) the adapter records no router logits, so the recipe cannot be checked"
    exp_idx, exp_w = expected_topk(layer.family, route.logits.float(), ctx)
    expected = _recorded_dense(exp_idx, exp_w.float(), n_param, identity)
    recorded = _recorded_dense(route.indices, route.weights.float(), n_param, identity)
    bad = _bad_rows(expected, recorded, dtype)
    k = layer.top_k
    scores = route.logits.float()
    if bad.any() and k < scores.shape[-1]:  # near-ties at the k-th score may pick either expert
        top = scores.topk(k + 1, dim=-1).values
        bad &= (top[:, k - 1] - top[:, k]).abs() > 1e-6
    what = (
        f"(b) the family's recipe ({layer.family.name}) applied to the recorded logits does not reproduce "
        "the applied weights"
    )
    return _report(bad, what, ("recipe gives", "the module applied"), expected, recorded, n_param)


def check_block(
    model: nn.Module, layer: MoELayer, args: tuple[Any, ...], kwargs: dict[str, Any], ids: Any
) -> BlockCheck:
    """Check one block (re-run with the arguments it received); raise :class:`RoutingCheckError`."""
    start = time.perf_counter()
    hidden = hidden_of(args, kwargs)
    x = hidden.detach().reshape(-1, hidden.shape[-1]).double()
    n_param = n_parameterised(layer)
    identity = layer.n_experts > n_param
    tap = RoutingTap(layer, want_logits=True, want_input=False)
    tapped = TorchHooks(model, [tap])
    call = ExpertsCall(layer.experts, layer.top_k)

    outs: list[torch.Tensor] = []
    out_handle = layer.experts.register_forward_hook(lambda _m, _a, out: outs.append(first_tensor(out)))

    def block() -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted sum of expert outputs: the experts module's output when it returns one row per
        token (it applies the weights), else the block's (it applies them itself)."""
        outs.clear()
        full = first_tensor(layer.block(*args, **kwargs)).detach().double().reshape(x.shape[0], -1)
        if len(outs) == 1 and outs[0].numel() == x.numel():
            return outs[0].detach().double().reshape(x.shape[0], -1), full
        return full, full

    try:
        tap.reset()
        block()
        route = tap.routing()
        tapped.close()
        try:
            applied = applied_weights(layer, block, x, call, n_param, identity)
        except AblationError as exc:
            raise RoutingCheckError(
                _message(layer, f"(a) cannot measure what the module applied: {exc}")
            ) from exc
    finally:
        tapped.close()
        call.close()
        out_handle.remove()
    dtype = hidden.dtype
    ids_ok = not route.indices.is_floating_point() and bool(
        ((route.indices >= 0) & (route.indices < layer.n_experts)).all()
    )
    if not ids_ok:
        raise RoutingCheckError(
            _message(layer, "(a) the adapter reads expert ids that are not integers in "
                     f"[0, {layer.n_experts}) (dtype {route.indices.dtype}): it reads the wrong argument")
        )  # fmt: skip
    recorded = _recorded_dense(route.indices, route.weights, n_param, identity)
    ctx = RoutingContext(
        router=layer.router,
        block=layer.block,
        config=_text_config(model),
        top_k=layer.top_k,
        batch_shape=(1, x.shape[0]),
        token_ids=None if ids is None else ids.reshape(-1),
        padding_mask=args[1] if len(args) > 1 else kwargs.get("padding_mask"),
    )
    why = _compare_applied(applied.dense, recorded, dtype, n_param) or _compare_recipe(
        layer, route, ctx, dtype, n_param, identity
    )
    if why:
        raise RoutingCheckError(_message(layer, why))
    return BlockCheck(
        type(layer.block).__name__, layer.family.name, layer.layer, layer.path, x.shape[0],
        applied.decoded_by, time.perf_counter() - start,
    )  # fmt: skip


def _message(layer: MoELayer, why: str) -> str:
    return (
        f"routing self-check failed for MoE block class {type(layer.block).__name__} (layer {layer.layer}, "
        f"{layer.path}; family {layer.family.name!r}; transformers {_version()}): {why}. {_consequence(why)} "
        f"{SKIP_HINT}"
    )


def _consequence(why: str) -> str:
    """What a failure of (a) or (b) would do to the records: only (a) makes the stored routing wrong."""
    if why.startswith("(b)"):
        return (
            "The stored experts and weights would be what the module applied, but the router scores that "
            "analyses recompute from the stored logits with this recipe would be wrong."
        )
    return "The adapter does not record what this module applies, so captured routing would be wrong."


def _text_config(model: nn.Module) -> object:
    config = getattr(model, "config", None)
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


#: model → {(block class, family)} already verified, so a capture followed by interventions checks once
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


Inputs = dict[str, tuple[tuple[Any, ...], dict[str, Any]]]
#: router logit of the expert an aligned probe token is built for
ALIGNED_LOGIT = 8.0


def _aligned(layer: MoELayer, width: int) -> torch.Tensor:
    """One probe token per expert, along its router row, so that every expert — rarely chosen ones,
    identity experts, those a selection bias disfavours — is chosen on some token. Empty when the
    router's linear weight cannot be found; only the inputs depend on it, never the ground truth."""
    try:
        weight, _ = router_linear(layer.family, layer.router)
    except LookupError:
        return torch.zeros(0, width)
    rows = weight.detach().float().cpu()
    if rows.shape[-1] != width:
        return torch.zeros(0, width)
    return rows / (rows * rows).sum(-1, keepdim=True).clamp_min(1e-12) * ALIGNED_LOGIT


def _block_inputs(
    model: nn.Module, picks: dict[str, MoELayer], n: int, seed: int
) -> tuple[Inputs, torch.Tensor | None]:
    """Each picked block's call: random hidden vectors where the block takes them alone; else the
    arguments it receives in one forward pass of the model on random token ids (decoder layers that
    need attention inputs, routers that read token ids). Also the token ids, when the model ran."""
    param = next(model.parameters())
    width = getattr(_text_config(model), "hidden_size", None)
    gen = torch.Generator().manual_seed(seed)
    inputs: Inputs = {}
    for name, layer in picks.items():
        if not isinstance(width, int) or layer.family.hash_table_attr:
            continue
        x = torch.cat([torch.randn(n, width, generator=gen), _aligned(layer, width)])
        x = x[None].to(param.device, param_dtype(layer.block, param))
        try:
            layer.block(x)
        except Exception:  # a block that needs more than hidden states: read its call from the model
            continue
        inputs[name] = ((x,), {})
    missing = {name: layer for name, layer in picks.items() if name not in inputs}
    if not missing:
        return inputs, None
    batch = _random_batch(model, n, seed, param.device)

    def keep(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs.setdefault(name, (args, kwargs))

        return hook

    handles = [lay.block.register_forward_pre_hook(keep(n), with_kwargs=True) for n, lay in missing.items()]
    try:
        model_forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    for name, layer in missing.items():
        if name not in inputs:
            raise RoutingCheckError(f"{name} ({layer.path}) did not run on the routing check's tokens")
    return inputs, batch.input_ids


def _random_batch(model: nn.Module, n: int, seed: int, device: torch.device) -> SimpleNamespace:
    config = _text_config(model)
    vocab = int(getattr(config, "vocab_size", 256) or 256)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(3, vocab - 1), max(4, min(vocab, 4096)), (1, n), generator=gen)
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    return SimpleNamespace(input_ids=ids, mask=mask, position_ids=torch.arange(n, device=device)[None])


def check_routing(
    model: nn.Module, layers: list[MoELayer], *, n_tokens: int = N_TOKENS, seed: int = 0, force: bool = False
) -> list[BlockCheck]:
    """Check one block of every distinct MoE block class of ``model``; raise on the first mismatch.

    Blocks already verified on this model object are not checked again (``force=True`` re-checks).
    The model's parameters are restored bit for bit, also when a check fails.
    """
    seen = _VERIFIED.setdefault(model, set())
    picks: dict[str, MoELayer] = {}
    results: list[BlockCheck] = []
    for layer in layers:
        name = type(layer.block).__name__
        if (not force and (name, layer.family.name) in seen) or name in picks:
            continue
        if layer.family.routing_check_skip:
            results.append(
                BlockCheck(name, layer.family.name, layer.layer, layer.path, 0, "skipped", 0.0,
                           layer.family.routing_check_skip)
            )  # fmt: skip
            continue
        picks[name] = layer
    if not picks:
        return results
    with torch.inference_mode(False), torch.no_grad():  # parameters are edited (and restored) in place
        inputs, ids = _block_inputs(model, picks, n_tokens, seed)
        for name, layer in picks.items():
            args, kwargs = inputs[name]
            results.append(check_block(model, layer, args, kwargs, ids))
    seen.update((r.block_class, r.family) for r in results if not r.skipped)
    return results

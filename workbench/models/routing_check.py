"""Load-time routing self-check: does the adapter record what the loaded module actually applies?

An adapter (:class:`~workbench.models.family.RoutingFamily`) is written against one release of a
modeling file. When transformers changes a block (argument order, a remapping of special experts,
a new scale), capture would silently store wrong routing. So before the first batch of a capture
and before an intervention starts, one block of every distinct MoE block class is checked on a few
random tokens:

(a) **applied = recorded.** The experts and weights the *module itself* applied are measured by
    ablation, without the adapter's recipe or argument positions: the block is re-run with each
    expert's parameters zeroed in turn, and the change of its output is that expert's weighted
    contribution ``c_e = w_e · f_e(x)`` (exactly zero for tokens that did not use it). One more
    pass, with every non-zero weight the experts module received set to 1 (that argument is found
    structurally: the floating ``[rows, k]`` tensor of its call), gives ``Σ_e f_e(x)``; per token,
    ``Σ_e c_e / w_e = Σ_e f_e`` is solved for the weights. Blocks that call separate expert modules
    get ``f_e`` from the module itself (``w_e = ⟨c_e, f_e⟩ / ‖f_e‖²``); blocks that weight the
    experts' *input* (Llama-4) have the weights read off that input. Parameter-free (identity) experts are decoded from what
    remains of the output. The dense ``[tokens, experts]`` weights must equal what the adapter's tap
    (:class:`~workbench.models.tap.RoutingTap`, the capture backend's own code) records.
(b) **recipe reproduces applied.** The family's recipe (:func:`~workbench.models.scores.expected_topk`)
    applied to the recorded logits must give the recorded experts and weights: analyses recompute
    router scores from stored logits with that recipe.

docs/capture.md explains the method and why it is independent of the adapter.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from workbench.models.discovery import MoELayer
from workbench.models.expert_math import expert_modules
from workbench.models.forward import model_forward
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


def _first_tensor(output: Any) -> torch.Tensor:
    while not isinstance(output, torch.Tensor):
        output = output[0]
    return output


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


# -- ablation: zero one expert's parameters, restore them in finally ---------------------------------


def n_parameterised(layer: MoELayer) -> int:
    """How many experts own parameters (LongCat's identity experts own none)."""
    modules = expert_modules(layer.experts)
    if modules is not None:
        return len(modules)
    count = getattr(layer.experts, "num_experts", None)
    if isinstance(count, int) and count > 0:
        return count
    for p in layer.experts.parameters():
        if p.dim() == 3:
            return int(p.shape[0])
    return layer.n_experts


def _slices(layer: MoELayer, e: int, n: int) -> list[torch.Tensor]:
    """Views of expert ``e``'s parameters: a module's own, or slice ``e`` of expert-major fused ones."""
    modules = expert_modules(layer.experts)
    if modules is not None:
        return [p.data for p in modules[e].parameters()]
    views = []
    for p in layer.experts.parameters():
        if p.dim() >= 1 and p.shape[0] % n == 0:
            views.append(p.data.view(n, p.shape[0] // n, *p.shape[1:])[e])
    if not views:
        raise RoutingCheckError(f"{type(layer.experts).__name__}: no expert-major parameters to ablate")
    return views


@contextmanager
def _zeroed(views: list[torch.Tensor]) -> Iterator[None]:
    """Zero ``views`` in place; their values come back in finally (inference tensors are edited in
    inference mode, which is the only place torch allows it)."""
    saved = [v.clone() for v in views]
    try:
        for v in views:
            with torch.inference_mode(v.is_inference()):
                v.zero_()
        yield
    finally:
        for v, s in zip(views, saved, strict=True):
            with torch.inference_mode(v.is_inference()):
                v.copy_(s)


# -- the experts call: find the weights it received; optionally hand it unit weights -------------------


class _ExpertsCall:
    """A pre-hook on the experts module: records its input and, when ``unit``, replaces the gate weights
    it receives by 1 where they are non-zero (so the block's output change under ablation is ``f_e``)."""

    def __init__(self, experts: nn.Module, top_k: int) -> None:
        self.top_k = top_k
        self.unit = False
        self.found = False
        self.input: torch.Tensor | None = None
        self.handle = experts.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _is_weights(self, value: Any, rows: int) -> bool:
        return (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and value.dim() >= 1
            and value.shape[-1] == self.top_k
            and value.numel() == rows * self.top_k
        )

    def _hook(self, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = _hidden_of(args, kwargs)
        self.input = hidden.detach()
        rows = hidden.numel() // hidden.shape[-1]
        positions = [i for i, v in enumerate(args) if i > 0 and self._is_weights(v, rows)]
        names = [k for k, v in kwargs.items() if k != "hidden_states" and self._is_weights(v, rows)]
        self.found = len(positions) + len(names) == 1
        if not (self.unit and self.found):
            return None
        if positions:
            new_args = list(args)
            new_args[positions[0]] = (args[positions[0]] != 0).to(args[positions[0]].dtype)
            return tuple(new_args), kwargs
        new_kwargs = dict(kwargs)
        new_kwargs[names[0]] = (kwargs[names[0]] != 0).to(kwargs[names[0]].dtype)
        return args, new_kwargs

    def close(self) -> None:
        self.handle.remove()


# -- decoding the applied routing -------------------------------------------------------------------


def _project(c: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Per row, the scalar w with c ≈ w·f (0 where f is zero)."""
    norm = (f * f).sum(-1)
    return torch.where(norm > 0, (c * f).sum(-1) / norm.clamp_min(1e-30), torch.zeros_like(norm))


@dataclass
class _Applied:
    dense: torch.Tensor  # [N, E_param (+1 identity column)]
    decoded_by: str


def _applied(
    layer: MoELayer, block: Any, x: torch.Tensor, call: _ExpertsCall, n_param: int, identity: bool
) -> _Applied:
    """The dense weights the module applied to each token's experts, measured by ablation."""
    rows = x.shape[0]
    call.unit = False
    y0, full0 = block()
    contrib = torch.zeros(n_param, rows, x.shape[-1], dtype=torch.float64, device=x.device)
    by_call = call.found
    if by_call:
        call.unit = True
        unit_out = block()[0]
        call.unit = False
    for e in range(n_param):
        with _zeroed(_slices(layer, e, n_param)):
            contrib[e] = y0 - block()[0]
    modules = expert_modules(layer.experts)
    if by_call:
        decoded_by = "experts-call"
        dense = _from_unit_output(contrib, unit_out)
    elif modules is not None:
        decoded_by = "expert-modules"
        dense = torch.zeros(rows, n_param, dtype=torch.float64, device=x.device)
        for e, module in enumerate(modules):
            f = _first_tensor(module(x.to(_dtype(module, x)))).double().reshape(rows, -1)
            dense[:, e] = _project(contrib[e], f)
    elif call.input is not None and call.input.numel() == n_param * x.numel():
        decoded_by = "experts-input"  # weights applied to the experts' input (Llama-4)
        weighted = call.input.double().reshape(n_param, rows, -1)
        dense = _project(weighted, x.unsqueeze(0).expand_as(weighted)).T
        return _Applied(dense * (contrib.norm(dim=-1).T > 0), decoded_by)
    else:
        raise RoutingCheckError(
            f"{type(layer.block).__name__} ({layer.path}): cannot tell the weights the experts received "
            "(no single [rows, k] float argument, no expert modules, no weighted input)"
        )
    if identity:  # parameter-free experts: the rest of the block's output, along the input
        rest = full0 - (y0 if full0 is not y0 else contrib.sum(0))
        dense = torch.cat([dense, _project(rest, x).unsqueeze(1)], dim=1)
    return _Applied(dense, decoded_by)


def _from_unit_output(contrib: torch.Tensor, unit_out: torch.Tensor) -> torch.Tensor:
    """Weights from the contributions ``c_e = w_e·f_e`` and the unit-weight output ``Σ_e f_e``: per
    token, solve ``Σ_e u_e·c_e = Σ_e f_e`` over the experts that contributed; then ``w_e = 1/u_e``."""
    n_param, rows, _ = contrib.shape
    norms = contrib.norm(dim=-1).cpu()
    dense = torch.zeros(rows, n_param, dtype=torch.float64)
    cols, target = contrib.cpu(), unit_out.cpu()
    for t in range(rows):
        used = (norms[:, t] > 1e-9 * norms[:, t].max()).nonzero().flatten()
        if used.numel() == 0 or float(norms[:, t].max()) == 0.0:
            continue
        u = torch.linalg.lstsq(cols[used, t].T, target[t, :, None], driver="gelsd").solution.flatten()
        dense[t, used] = 1.0 / u
    return dense.to(contrib.device)


def _dtype(module: nn.Module, x: torch.Tensor) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None else x.dtype


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
    hidden = _hidden_of(args, kwargs)
    x = hidden.detach().reshape(-1, hidden.shape[-1]).double()
    n_param = n_parameterised(layer)
    identity = layer.n_experts > n_param
    tap = RoutingTap(layer, want_logits=True, want_input=False)
    handles = [
        layer.router.register_forward_hook(tap.on_router),
        layer.experts.register_forward_pre_hook(tap.on_experts, with_kwargs=True),
    ]
    call = _ExpertsCall(layer.experts, layer.top_k)

    outs: list[torch.Tensor] = []
    out_handle = layer.experts.register_forward_hook(lambda _m, _a, out: outs.append(_first_tensor(out)))

    def block() -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted sum of expert outputs: the experts module's output when it returns one row per
        token (it applies the weights), else the block's (it applies them itself)."""
        outs.clear()
        full = _first_tensor(layer.block(*args, **kwargs)).detach().double().reshape(x.shape[0], -1)
        if len(outs) == 1 and outs[0].numel() == x.numel():
            return outs[0].detach().double().reshape(x.shape[0], -1), full
        return full, full

    try:
        tap.reset()
        block()
        route = tap.routing()
        for h in handles:
            h.remove()
        handles.clear()
        applied = _applied(layer, block, x, call, n_param, identity)
    finally:
        for h in handles:
            h.remove()
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
        f"{layer.path}; family {layer.family.name!r}; transformers {_version()}): {why}. The adapter "
        f"does not record what this module applies, so captured routing would be wrong. {SKIP_HINT}"
    )


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
        x = x[None].to(param.device, _dtype(layer.block, param))
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

"""The capture engine: prompts → model → routing records → DuckDB, streaming.

The compute thread tokenises a batch, runs the backend under ``torch.inference_mode``, selects the
real tokens and starts their device→host copy; the writer thread turns the previous batch into
Arrow and ingests it in one transaction. A run stays ``running`` until every batch is in, becomes
``failed`` (with the error) if capture raises, and can be resumed if the process died: resume
skips every prompt already committed, so no row is written twice, and refuses a probe file or
weights other than those the run was captured with (capture/integrity.py), so no run mixes data.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import torch

from workbench.capture.backends import make_backend
from workbench.capture.batching import Encoder, batches, chat_encoder
from workbench.capture.coalesce import WriteBuffer
from workbench.capture.finite import first_nonfinite, nonfinite_error
from workbench.capture.generation import check_generation, continue_batch
from workbench.capture.integrity import (
    PYTHON_PROBES,
    integrity_config,
    probe_for_resume,
    scan_for_capture,
    verified_stream,
    verify_model,
)
from workbench.capture.options import CaptureOptions, merge_options, placement
from workbench.capture.packing import to_arrow, to_host
from workbench.capture.progress import TokenProgress
from workbench.capture.rank_stores import absorb_rank_stores
from workbench.capture.writer import StreamingWriter
from workbench.models.expert_math import check_expert_stats
from workbench.models.loading import LoadedModel, load_model
from workbench.models.routing_check import check_routing
from workbench.probefile import ProbeFileError, Prompt, PromptLike, as_prompts, check_prompt, iter_probe_file
from workbench.store import Store, StoreError

#: the capture API (CaptureOptions lives in capture/options.py; callers may import it from here)
__all__ = [
    "CaptureOptions",
    "capture",
    "context_length",
    "merge_options",
    "resume",
    "run_batches",
    "token_limit",
]

_FLUSH = object()  # writer-thread sentinel: commit what the buffer holds


def prompt_stream(source: str | Path | Iterable[PromptLike]) -> tuple[Iterator[Prompt], str]:
    """The prompts to capture and the name the run records for them.

    A probe file is read and validated whole before any run exists (a bad row anywhere is refused
    with its line), then streamed again with a check that it did not change meanwhile; its name is
    its absolute path, so a resume from another working directory reads the same file. Prompts from
    Python (:class:`Prompt` objects, plain strings or dicts: :func:`~workbench.probefile.as_prompts`) are
    checked one by one as they stream (their name is ``<python>``).
    """
    if isinstance(source, (str, Path)):
        scanned = scan_for_capture(source)
        it = verified_stream(iter_probe_file(scanned.path), scanned)
        name = scanned.path
    else:
        it, name = (check_prompt(p) for p in as_prompts(source)), PYTHON_PROBES
    try:
        first = next(it)  # an empty iterable is refused before a run is created
    except StopIteration:
        raise ProbeFileError("no prompts to capture: the prompt iterable is empty") from None
    return _chain(first, it), name


def _chain(first: Prompt, rest: Iterator[Prompt]) -> Iterator[Prompt]:
    yield first
    yield from rest


def _layer_rows(loaded: LoadedModel) -> list[dict[str, Any]]:
    return [
        {
            "layer": layer.layer,
            "module_path": layer.path,
            "n_experts": layer.n_experts,
            "top_k": layer.top_k,
            "n_shared": layer.n_shared,
            "score_fn": layer.family.score_fn,
        }
        for layer in loaded.layers
    ]


def capture(
    model: LoadedModel | str | Path | torch.nn.Module,
    probes: str | Path | Iterable[PromptLike],
    db: str | Path | Store,
    *,
    tokenizer: Any = None,
    run_id: str | None = None,
    options: CaptureOptions | None = None,
    progress: bool = True,
    **option_overrides: Any,
) -> str:
    """Capture routing of ``model`` on ``probes`` into ``db``; returns the run id.

    ``probes`` is a probe file (JSONL/CSV/Parquet) or any iterable of prompts: :class:`Prompt`
    objects, plain strings (labelled ``unlabelled``) or dicts with ``text`` and optionally ``label``,
    ``pair_id``, ``split``, ``meta``, ``prompt_id`` (a generator streams: memory is bounded by the
    batch, not the number of prompts).
    """
    opts = merge_options(options, option_overrides)
    prompts, probe_name = prompt_stream(probes)
    if not isinstance(db, Store) and str(db) != ":memory:" and Store.held_read_only(db):
        raise StoreError(
            f"store {db} is open read-only in this process (e.g. db = wb.open(...)), and a capture needs to "
            "write it: close it first (db.close(), or open it in a `with wb.open(...) as db:` block), then capture"
        )
    loaded, checked = prepare_model(model, opts, tokenizer)
    store = db if isinstance(db, Store) else Store(db)
    try:
        rid = open_run(store, loaded, opts, probe_name=probe_name, checked=checked, run_id=run_id)
        run_batches(loaded, prompts, store, rid, opts, progress=progress)
        return rid
    finally:
        if not isinstance(db, Store):
            store.close()


def prepare_model(
    model: LoadedModel | str | Path | torch.nn.Module, opts: CaptureOptions, tokenizer: Any = None
) -> tuple[LoadedModel, dict[str, Any]]:
    """The loaded model and its routing self-check, before any run exists (a refusal leaves nothing)."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, tokenizer, **placement(opts))
    if opts.expert_stats:
        check_expert_stats(loaded.layers)
    _check_prompting(loaded, opts)
    return loaded, _routing_check(loaded, opts)


def _check_prompting(loaded: LoadedModel, opts: CaptureOptions) -> None:
    """Refuse ``chat`` without a chat template, and ``generate`` a model cannot do, before anything is written."""
    _prompt_encoder(loaded, opts)
    if opts.generate:
        check_generation(loaded.model, loaded.name, opts.generate, context_length(loaded.model))


def _prompt_encoder(loaded: LoadedModel, opts: CaptureOptions) -> Encoder | None:
    """How prompts become token ids: the chat template with ``chat``, else the tokenizer's default (None)."""
    return chat_encoder(loaded.tokenizer, loaded.name) if opts.chat else None


def open_run(
    store: Store,
    loaded: LoadedModel,
    opts: CaptureOptions,
    *,
    probe_name: str,
    checked: dict[str, Any],
    run_id: str | None = None,
    extra_config: dict[str, Any] | None = None,
) -> str:
    """Create the run's row (status 'running') with everything resume needs; returns its id."""
    first = loaded.layers[0]
    config = {
        "options": asdict(opts),
        "model_source": _model_source(loaded.name),
        "workbench": _version(),
        "routing_check": checked,
        # where each module ran when the model was divided (transformers' hf_device_map), else None
        "device_map": _device_map_of(loaded),
        # the probe file's content digest and the weights' fingerprint, which resume verifies
        "integrity": integrity_config(probe_name, loaded, tensor_parallel=opts.tp_plan is not None),
        **(extra_config or {}),
    }
    return store.create_run(
        run_id=run_id,
        model=loaded.name,
        architecture=loaded.architecture,
        probe=probe_name,
        n_experts=first.n_experts,
        top_k=first.top_k,
        config=config,
        layers=_layer_rows(loaded),
    )


def _model_source(name: str) -> str:
    """What resume loads: a local model directory as an absolute path, any other name as given."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name


def resume(
    db: str | Path,
    run_id: str,
    *,
    model: LoadedModel | str | Path | torch.nn.Module | None = None,
    tokenizer: Any = None,
    probes: str | Path | Iterable[PromptLike] | None = None,
    progress: bool = True,
) -> str:
    """Finish an interrupted run: re-open its model and probe file, skip committed prompts.

    ``probes`` (a file moved since, or the prompts again from Python, held in memory so that all of
    them are checked before any is captured) and ``model`` (an in-memory
    model, or a directory moved since) replace the recorded ones; either way resume first checks
    that they are the prompts and weights the run was captured with, and refuses with a
    :class:`~workbench.capture.integrity.ResumeMismatchError` otherwise (nothing is written).

    A data-parallel run (``torchrun -m workbench.capture``) first absorbs the prompts its ranks had
    committed to their rank stores; the rest is captured here, in one process.
    """
    with Store(db) as store:
        info = store.run(run_id)
        if info["status"] == "complete":
            return run_id
        config = info["config"]
        opts = CaptureOptions(**config["options"])
        if opts.tp_plan is not None:
            ranks = (config.get("parallel") or {}).get("world_size", "N")
            raise ValueError(
                f"run {run_id} was captured tensor-parallel (tp_plan={opts.tp_plan!r}): resume it under torchrun "
                f"on as many ranks: torchrun --nproc-per-node {ranks} -m workbench.capture resume "
                f"--db {db} --run-id {run_id}"
            )
        if config.get("parallel"):  # a data-parallel run: first take in what its ranks committed
            store.set_status(run_id, "running")
            absorb_rank_stores(store, db, run_id)
        stream = probe_for_resume(store, run_id, info, probes)  # refuses other prompts: nothing written
        done = store.done_prompt_ids(run_id)
        loaded = (
            model
            if isinstance(model, LoadedModel)
            else load_model(
                model if model is not None else config["model_source"],
                tokenizer,
                **placement(opts),
            )
        )
        verify_model(run_id, config, loaded)
        _check_prompting(loaded, opts)
        _routing_check(loaded, opts)
        store.set_status(run_id, "running")
        remaining = (p for p in stream() if p.prompt_id not in done)
        run_batches(loaded, remaining, store, run_id, opts, progress=progress)
        return run_id


def _device_map_of(loaded: LoadedModel) -> dict[str, str | int] | None:
    placed = getattr(loaded.model, "hf_device_map", None)
    if not isinstance(placed, dict):
        return None
    return {str(k): v if isinstance(v, int) else str(v) for k, v in placed.items()}


def _routing_check(loaded: LoadedModel, opts: CaptureOptions) -> dict[str, Any]:
    """Verify every MoE block class records what it applies (raises RoutingCheckError), unless skipped."""
    import transformers

    if opts.skip_routing_check:
        return {"skipped": True, "transformers": transformers.__version__}
    blocks = check_routing(loaded.model, loaded.layers)
    return {
        "skipped": False,
        "transformers": transformers.__version__,
        "blocks": [b.as_dict() for b in blocks],
    }


def run_batches(
    loaded: LoadedModel,
    prompts: Iterator[Prompt],
    store: Store | None,
    run_id: str,
    opts: CaptureOptions,
    *,
    progress: bool,
) -> None:
    """Capture ``prompts`` into the open run ``run_id``, batch by batch; mark it complete or failed.

    ``store=None`` runs the same forwards and drops the records: the other ranks of a
    tensor-parallel group must take part in every forward, and one rank writes.
    """
    tokenizer = loaded.tokenizer
    padding_side = opts.padding_side or getattr(tokenizer, "padding_side", "right") or "right"
    device = loaded.device
    backend = make_backend(
        opts.backend,
        loaded.model,
        loaded.layers,
        expert_stats=opts.expert_stats,
        want_logits=opts.logits != "none",
    )

    def write(tables: dict[str, Any]) -> None:
        if store is None:
            return
        store.write_batch(
            run_id,
            prompts=tables["prompts"],
            tokens=tables["tokens"],
            routing=tables["routing"],
            expert_stats=tables["expert_stats"],
        )

    buffer = WriteBuffer(write, max_rows=opts.write_rows)
    max_length, limit = token_limit(opts.max_length, context_length(loaded.model), opts.generate)
    encoder = _prompt_encoder(loaded, opts)

    def sink(host: Any) -> None:  # runs on the writer thread
        if host is _FLUSH:
            buffer.flush()
            return
        if not opts.allow_nonfinite and (where := first_nonfinite(host)) is not None:
            buffer.flush()  # commit the finite batches before this one: nothing captured is lost
            raise nonfinite_error(where)
        buffer.add(to_arrow(host, tokenizer))
        bar.advance(host.batch.n_tokens, len(host.batch.prompts))

    bar = TokenProgress(enabled=progress)
    writer = StreamingWriter(sink, max_pending=opts.max_pending)
    bounded = store.memory_limit(opts.store_memory_mib) if store is not None else nullcontext()
    try:
        with torch.inference_mode(), bar, bounded:
            for batch in batches(
                prompts,
                tokenizer,
                batch_size=opts.batch_size,
                max_length=max_length,
                padding_side=padding_side,
                limit=limit,
                encoder=encoder,
            ):
                if opts.generate:
                    batch = continue_batch(
                        loaded.model,
                        tokenizer,
                        batch,
                        max_new_tokens=opts.generate,
                        padding_side=padding_side,
                        device=device,
                        sample=opts.sample,
                        seed=opts.seed,
                        temperature=opts.temperature,
                        top_p=opts.top_p,
                    )
                on_device = batch.to(device)
                cap = backend.run(on_device)
                writer.put(to_host(on_device, cap, opts.logits))
            writer.put(_FLUSH)
            writer.close()
            if store is not None:  # builds the run's summaries: under the limit too (they grow with the run)
                store.set_status(run_id, "complete")
    except BaseException as exc:
        _drain(writer)
        if store is not None:
            _mark_failed(store, run_id, exc)
        raise
    finally:
        backend.close()


def _mark_failed(store: Store, run_id: str, exc: BaseException) -> None:
    """Record ``exc`` on the run as ``failed``. A database DuckDB invalidated takes nothing more: the run
    stays ``running``, which resume finishes too, and ``exc`` is what the caller sees."""
    with suppress(duckdb.FatalException):
        store.set_status(run_id, "failed", error=f"{type(exc).__name__}: {exc}")


def context_length(model: torch.nn.Module) -> int | None:
    """The longest input the model's position embeddings cover (its config's), or None if unbounded."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def token_limit(max_length: int | None, context: int | None, generate: int = 0) -> tuple[int | None, str]:
    """The tokens a prompt may keep, and what to call that limit in the truncation warning.

    A prompt longer than the model's context would run past its position embeddings (and a 1 MB
    prompt tried to allocate 80 GB of attention), so the context caps ``--max-length``. With
    ``generate`` N the prompt and its response share the context: a prompt keeps at most the context
    less N tokens (``--max-length`` limits the prompt alone).
    """
    room = None if context is None else context - generate
    if room is not None and (max_length is None or room < max_length):
        return room, (
            "the model's context" if not generate else f"the model's context less --generate {generate}"
        )
    return max_length, "--max-length"


def _drain(writer: StreamingWriter) -> None:
    """Let the writer commit what it holds (whole prompts only) before the run is marked failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps: tuple[Callable[[], None], ...] = (lambda: writer.put(_FLUSH), writer.close)
        for step in steps:
            try:
                step()
            except Exception:  # the original error is the one worth reporting
                continue


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moe-workbench")
    except PackageNotFoundError:
        return "dev"

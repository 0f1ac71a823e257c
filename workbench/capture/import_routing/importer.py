"""Turn a JSONL file of a serving engine's routed expert ids into one run of the store (ids only).

Two passes over the file, each holding one chunk of requests at a time, never the file:

1. **Check** every line (JSON, fields, shapes, ids, layer axis) and collect what the run needs
   before it exists: the layer axis and top-k, the largest expert id, which layer entries are all
   zero, the SHA-256 of the file. Bad input stops here with the line named, and nothing is written.
2. **Ingest** the same lines in chunks of ``chunk`` requests through Arrow (``Store.write_batch``,
   one transaction per chunk). The run is ``running`` until the last chunk is in and only then
   ``complete``; if anything fails on the way the run is deleted, so nothing half-written looks whole.

``routing.weights`` and ``routing.logits`` are NULL: engines return the ids only. ``runs.config``
says so (``"ids_only": true``), with the source format, file, hash and the layer mapping used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.capture.import_routing.formats import EngineSequence, Format, RoutingImportError, parse_line
from workbench.capture.import_routing.layout import LayerMap, ModelConfig, read_model_config, resolve_layers
from workbench.capture.import_routing.tables import batch_tables
from workbench.store import Store

__all__ = ["ImportResult", "import_routing"]

#: SMALLINT holds the stored expert ids.
_MAX_EXPERTS = 32767


@dataclass
class _Survey:
    """What pass 1 learned about the file."""

    sha256: str = ""
    n_lines: int = 0
    n_sequences: int = 0
    n_rows: int = 0
    n_axis: int | None = None
    top_k: int | None = None
    max_id: int = -1
    max_line: int = 0
    all_zero: list[bool] = field(default_factory=list)
    dup_rows: list[int] = field(default_factory=list)
    no_token_ids: int = 0
    no_text: int = 0
    first_line: int = 0


@dataclass(frozen=True)
class ImportResult:
    """The imported run and what was (and was not) in the file."""

    run_id: str
    n_prompts: int
    n_rows: int
    n_experts: int
    top_k: int
    layers: tuple[int, ...]
    notes: tuple[str, ...]


def _lines(path: Path, digest: Any | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the file, feeding ``digest`` with its bytes when given."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if digest is not None:
                digest.update(raw)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RoutingImportError(f"line {number}: not UTF-8 text ({exc})") from None


def _survey_one(survey: _Survey, seq: EngineSequence) -> None:
    arr = seq.experts
    _, n_axis, top_k = arr.shape
    if survey.n_axis is None:
        survey.n_axis, survey.top_k, survey.first_line = n_axis, top_k, seq.line
        survey.all_zero = [True] * n_axis
        survey.dup_rows = [0] * n_axis
    elif (n_axis, top_k) != (survey.n_axis, survey.top_k):
        raise RoutingImportError(
            f"line {seq.line}: routed experts are [tokens, {n_axis}, {top_k}] but line {survey.first_line} "
            f"had [tokens, {survey.n_axis}, {survey.top_k}]; one file must hold one model's routing"
        )
    survey.n_sequences += 1
    survey.n_rows += arr.shape[0]
    survey.no_token_ids += seq.token_ids is None
    survey.no_text += seq.text is None
    if arr.size == 0:
        return
    peak = int(arr.max())
    if peak > survey.max_id:
        survey.max_id, survey.max_line = peak, seq.line
    zero = (arr == 0).all(axis=(0, 2))
    ordered = np.sort(arr, axis=2)
    dups = (np.diff(ordered, axis=2) == 0).any(axis=2).sum(axis=0) if top_k > 1 else np.zeros(n_axis, int)
    for a in range(n_axis):
        survey.all_zero[a] = survey.all_zero[a] and bool(zero[a])
        survey.dup_rows[a] += int(dups[a])


def _survey(path: Path, fmt: Format, shape: tuple[int, int] | None) -> _Survey:
    survey = _Survey()
    digest = hashlib.sha256()
    for number, text in _lines(path, digest):
        survey.n_lines = number
        for seq in parse_line(text, number, fmt, shape):
            _survey_one(survey, seq)
    survey.sha256 = digest.hexdigest()
    if survey.n_sequences == 0:
        raise RoutingImportError(f"{path} holds no records (it is empty or has only blank lines)")
    if survey.n_rows == 0:
        raise RoutingImportError(f"{path}: no record has any routed token")
    return survey


def _experts(
    survey: _Survey, given: int | None, config: ModelConfig | None, notes: list[str]
) -> tuple[int, str]:
    """The run's expert count and where it came from; an id >= it is an error."""
    source = "--experts" if given is not None else "--model-config"
    n = given if given is not None else (config.n_experts if config is not None else None)
    if n is None:
        n, source = survey.max_id + 1, "inferred"
        notes.append(
            f"n_experts = {n} was inferred from the largest expert id in the file; experts above it that "
            "were never chosen are not counted (give --experts E to set it)"
        )
    if survey.max_id >= n:
        raise RoutingImportError(
            f"line {survey.max_line}: expert id {survey.max_id} is not below the number of experts {n} "
            f"(from {source}); give the model's expert count with --experts"
        )
    if n > _MAX_EXPERTS:
        raise RoutingImportError(
            f"{n} experts do not fit the store's SMALLINT expert ids (at most {_MAX_EXPERTS})"
        )
    return int(n), source


def _check_layers(survey: _Survey, layer_map: LayerMap) -> None:
    for a, block in zip(layer_map.axis, layer_map.layers, strict=True):
        if survey.dup_rows[a]:
            raise RoutingImportError(
                f"engine layer entry {a} (stored as layer {block}) has {survey.dup_rows[a]} token(s) with a "
                "repeated expert id; an MoE layer routes each token to k distinct experts, so this entry is "
                "a dense block or padding: give the MoE layers with --layers (or --model-config)"
            )


def _shape(
    fmt: Format, num_layers: int | None, top_k: int | None, config: ModelConfig | None
) -> tuple[int, int] | None:
    if fmt != "sglang":
        return None
    n_layers = num_layers or (config.num_layers if config else None)
    k = top_k or (config.top_k if config else None)
    if not n_layers or not k:
        raise RoutingImportError(
            "SGLang's base64 routed_experts carries no shape: give --num-layers L and --top-k K "
            "(num_hidden_layers and num_experts_per_tok of the model) or --model-config config.json"
        )
    return int(n_layers), int(k)


def _chunks(
    path: Path, fmt: Format, shape: tuple[int, int] | None, size: int
) -> Iterator[list[EngineSequence]]:
    chunk: list[EngineSequence] = []
    for number, text in _lines(path):
        chunk.extend(parse_line(text, number, fmt, shape))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def import_routing(
    store: Store,
    path: str | Path,
    fmt: Format,
    *,
    run_id: str | None = None,
    model: str | None = None,
    probe: str | None = None,
    label: str | None = None,
    n_experts: int | None = None,
    num_layers: int | None = None,
    top_k: int | None = None,
    layers: Sequence[int] | None = None,
    model_config: str | Path | None = None,
    chunk: int = 256,
) -> ImportResult:
    """Import ``path`` (JSONL, one engine output per line, format ``fmt``) into ``store`` as one run.

    ``label`` is given to every prompt whose record brings none; ``layers`` / ``model_config`` map
    the engine's layer axis to the model's blocks (:mod:`~workbench.capture.import_routing.layout`).
    Raises :class:`RoutingImportError` (a ``ValueError``) for bad input, before anything is written.
    """
    if fmt not in ("vllm", "sglang"):
        raise RoutingImportError(f"unknown format {fmt!r}; use vllm or sglang")
    if chunk < 1:
        raise RoutingImportError(f"chunk must be at least 1, got {chunk}")
    path = Path(path)
    if not path.is_file():
        raise RoutingImportError(f"{path}: no such file")
    config = read_model_config(Path(model_config)) if model_config is not None else None
    shape = _shape(fmt, num_layers, top_k, config)
    survey = _survey(path, fmt, shape)
    assert survey.n_axis is not None and survey.top_k is not None
    if config is not None and config.top_k is not None and config.top_k != survey.top_k:
        raise RoutingImportError(
            f"the file routes each token to {survey.top_k} experts but --model-config says {config.top_k}"
        )
    notes: list[str] = []
    layer_map = resolve_layers(survey.n_axis, survey.top_k, survey.all_zero, layers, config)
    _check_layers(survey, layer_map)
    experts, experts_source = _experts(survey, n_experts, config, notes)
    if survey.no_token_ids:
        notes.append(
            f"{survey.no_token_ids} of {survey.n_sequences} records carry no token ids for their routed "
            "tokens: tokens.token_id is NULL there (vLLM: request return_token_ids; SGLang: keep the "
            "request's input_ids in the record)"
        )
    if survey.no_text:
        notes.append(
            f"{survey.no_text} of {survey.n_sequences} records carry no prompt text: prompts.text is NULL"
        )
    config_json: dict[str, Any] = {
        "source": "import-routing",
        "format": fmt,
        "file": str(path),
        "file_sha256": survey.sha256,
        "ids_only": True,
        "stored": {"experts": True, "weights": False, "logits": False, "nll": False},
        "expert_order": "as the engine returned them (the router's top-k order; not checked)",
        "n_experts_source": experts_source,
        "layer_axis": {
            "entries": survey.n_axis,
            "kept": list(layer_map.axis),
            "layers": list(layer_map.layers),
            "dropped": list(layer_map.dropped),
            "rule": layer_map.rule,
        },
        "n_lines": survey.n_lines,
        "notes": notes,
    }
    layer_rows = [
        {
            "layer": b,
            "module_path": f"{fmt}:routed_experts[:, {a}]",
            "n_experts": experts,
            "top_k": survey.top_k,
        }
        for a, b in zip(layer_map.axis, layer_map.layers, strict=True)
    ]
    rid = store.create_run(
        model=model or (config.name if config and config.name else "unknown"),
        architecture=(config.architecture if config and config.architecture else "unknown"),
        probe=probe or path.stem, n_experts=experts, top_k=survey.top_k, config=config_json,
        layers=layer_rows, run_id=run_id,
    )  # fmt: skip
    n_prompts = n_rows = 0
    try:
        for part in _chunks(path, fmt, shape, chunk):
            tables = batch_tables(part, n_prompts, layer_map, label)
            store.write_batch(rid, **tables)
            n_prompts += len(part)
            n_rows += tables["routing"].num_rows
        store.set_status(rid, "complete")
    except BaseException:
        store.delete_run(rid)
        raise
    return ImportResult(rid, n_prompts, n_rows, experts, survey.top_k, layer_map.layers, tuple(notes))

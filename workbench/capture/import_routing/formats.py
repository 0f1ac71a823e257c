"""Read one JSONL line of a serving engine's output into :class:`EngineSequence` records (ids only).

Each line is one request, in the engine's own shape (docs/import-routing.md has the exact fields
and the engine source they come from), optionally wrapped as
``{"request": {...}, "response": {...}, "label": ..., "pair_id": ..., "split": ..., "meta": {...}}``
so that the prompt (``request.text``/``request.prompt``, ``request.input_ids``) and a label can
travel with the response. A line holding a JSON array is a batch: one record per element.

* ``sglang``: the native ``/generate`` response. ``meta_info.routed_experts`` (or
  ``sglext.routed_experts`` of the OpenAI-compatible ``/v1/completions``) is base64 of a C-order
  int32 array ``[tokens, num_hidden_layers, num_experts_per_tok]`` that holds no shape, so the
  layer and top-k counts come from the caller. It covers prompt and generated tokens except the
  last generated one (``seqlen - 1`` rows), or fewer when ``routed_experts_start_len`` was set.
* ``vllm``: the OpenAI-compatible response (``prompt_routed_experts`` at the top covers the
  prompt, ``choices[i].routed_experts`` the generated tokens but the last) or an offline
  ``RequestOutput`` written as JSON (``outputs[i].routed_experts`` covers prompt and generated
  tokens but the last). Both are nested lists ``[tokens, layers, top_k]``.

Nothing here touches the store: :mod:`workbench.capture.import_routing.importer` does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["FORMATS", "EngineSequence", "Format", "RoutingImportError", "parse_line"]

Format = Literal["vllm", "sglang"]
FORMATS: tuple[str, ...] = ("vllm", "sglang")

#: Keys of the optional wrapper that go to the prompt's own columns.
_PROMPT_KEYS = ("label", "pair_id", "split")


class RoutingImportError(ValueError):
    """Input the importer cannot turn into routing rows; the message names the line and the field."""


@dataclass
class EngineSequence:
    """One request (one choice of it) as the engine reported it: expert ids and what is known around them.

    ``experts`` is ``[rows, engine layers, top_k]``; row ``r`` is the token at position
    ``first_position + r`` of the full sequence (prompt then generated tokens). ``token_ids`` are
    those rows' token ids, or None when the record does not carry them.
    """

    line: int
    choice: int
    experts: np.ndarray
    first_position: int
    token_ids: list[int] | None
    text: str | None
    n_prompt: int | None
    n_generated: int | None
    label: str | None = None
    pair_id: str | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _fail(line: int, message: str) -> RoutingImportError:
    return RoutingImportError(f"line {line}: {message}")


def _ints(value: Any, line: int, where: str) -> list[int] | None:
    """A list of token ids, or None when absent; anything else is an error."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _fail(line, f"{where} must be a list of integer token ids")
    return list(value)


def _as_ids(value: Any, line: int, where: str) -> np.ndarray:
    """A nested list ``[tokens, layers, top_k]`` of non-negative integers as an int64 array."""
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise _fail(line, f"{where} is not a rectangular [tokens, layers, top_k] array ({exc})") from None
    if arr.ndim != 3:
        raise _fail(line, f"{where} has shape {list(arr.shape)}; expected [tokens, layers, top_k] (3 axes)")
    if arr.size and arr.dtype.kind not in "iu":
        raise _fail(line, f"{where} must hold integer expert ids, found {arr.dtype}")
    return _checked(arr.astype(np.int64, copy=False), line, where)


def _checked(arr: np.ndarray, line: int, where: str) -> np.ndarray:
    if arr.size and int(arr.min()) < 0:
        raise _fail(line, f"{where} holds a negative expert id ({int(arr.min())})")
    return arr


def decode_sglang(b64: Any, line: int, where: str, layers: int, top_k: int) -> np.ndarray:
    """SGLang's base64 string -> ``[tokens, layers, top_k]`` (little-endian int32, C order)."""
    if not isinstance(b64, str):
        raise _fail(line, f"{where} must be a base64 string, got {type(b64).__name__}")
    try:
        raw = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _fail(line, f"{where} is not valid base64 ({exc})") from None
    width = layers * top_k * 4
    if len(raw) % width:
        raise _fail(
            line,
            f"{where} holds {len(raw)} bytes, not a whole number of tokens of layers × top_k = "
            f"{layers} × {top_k} int32 values ({width} bytes); check --num-layers/--top-k (or --model-config)",
        )
    arr = np.frombuffer(raw, dtype="<i4").reshape(-1, layers, top_k).astype(np.int64)
    return _checked(arr, line, where)


def _split_record(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any], dict[str, Any]]:
    """(response, request, wrapper extras) of a bare engine output or a ``{"request", "response"}`` wrapper."""
    if "response" in obj and isinstance(obj["response"], Mapping):
        request = obj.get("request")
        extras = {k: obj[k] for k in (*_PROMPT_KEYS, "meta") if k in obj}
        return obj["response"], request if isinstance(request, Mapping) else {}, extras
    return obj, {}, {}


def _prompt_fields(extras: dict[str, Any], line: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _PROMPT_KEYS:
        value = extras.get(key)
        if value is not None and not isinstance(value, str):
            raise _fail(line, f"{key} must be a string, got {type(value).__name__}")
        out[key] = value
    meta = extras.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise _fail(line, "meta must be a JSON object")
    out["meta"] = dict(meta or {})
    return out


def _window(full: list[int] | None, first: int, rows: int) -> list[int] | None:
    """The token ids of rows ``first .. first+rows-1`` of the full sequence, when it is long enough."""
    if full is None or len(full) < first + rows:
        return None
    return full[first : first + rows]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _sglang(
    resp: Mapping[str, Any], req: Mapping[str, Any], line: int, choice: int, shape: tuple[int, int]
) -> EngineSequence:
    meta_info = resp.get("meta_info")
    sglext = resp.get("sglext")
    if isinstance(meta_info, Mapping) and meta_info.get("routed_experts") is not None:
        value, where = meta_info["routed_experts"], "meta_info.routed_experts"
    elif isinstance(sglext, Mapping) and sglext.get("routed_experts") is not None:
        value, where = sglext["routed_experts"], "sglext.routed_experts"
    else:
        raise _fail(
            line,
            "no meta_info.routed_experts (nor sglext.routed_experts): start SGLang with "
            "--enable-return-routed-experts and send return_routed_experts: true with each request",
        )
    experts = decode_sglang(value, line, where, *shape)
    info = meta_info if isinstance(meta_info, Mapping) else {}
    n_prompt, n_gen = info.get("prompt_tokens"), info.get("completion_tokens")
    n_prompt = n_prompt if isinstance(n_prompt, int) else None
    n_gen = n_gen if isinstance(n_gen, int) else None
    rows = experts.shape[0]
    first = 0
    if n_prompt is not None and n_gen is not None:
        covered = n_prompt + n_gen - 1  # the last generated token is never fed forward
        if rows > covered:
            raise _fail(
                line,
                f"{where} has {rows} tokens but prompt_tokens + completion_tokens - 1 = {covered}; "
                "check --num-layers/--top-k",
            )
        first = covered - rows  # routed_experts_start_len > 0 drops the first rows
    prompt_ids = _ints(req.get("input_ids"), line, "request.input_ids")
    if prompt_ids is None and isinstance(info.get("input_token_logprobs"), list):
        logprobs = info["input_token_logprobs"]
        if n_prompt is not None and len(logprobs) == n_prompt:
            prompt_ids = [int(item[1]) for item in logprobs if isinstance(item, list) and len(item) > 1]
            prompt_ids = prompt_ids if len(prompt_ids) == n_prompt else None
    output_ids = _ints(resp.get("output_ids"), line, "output_ids")
    full = prompt_ids + output_ids if prompt_ids is not None and output_ids is not None else None
    return EngineSequence(
        line, choice, experts, first, _window(full, first, rows), _text(req.get("text")), n_prompt, n_gen,
        meta={"request_id": info.get("id"), "finish_reason": info.get("finish_reason")},
    )  # fmt: skip


def _vllm_openai(resp: Mapping[str, Any], req: Mapping[str, Any], line: int) -> list[EngineSequence]:
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _fail(line, "choices must be a non-empty list")
    prompt_ids = _ints(resp.get("prompt_token_ids"), line, "prompt_token_ids")
    if prompt_ids is None and isinstance(req.get("prompt"), list):
        prompt_ids = _ints(req["prompt"], line, "request.prompt")
    usage = resp.get("usage")
    counted = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    n_prompt = len(prompt_ids) if prompt_ids is not None else counted
    prompt_part = resp.get("prompt_routed_experts")
    prompt_arr = _as_ids(prompt_part, line, "prompt_routed_experts") if prompt_part is not None else None
    text = _text(req.get("prompt")) or _text(resp.get("prompt_text"))
    out = []
    for j, choice in enumerate(choices):
        if not isinstance(choice, Mapping):
            raise _fail(line, f"choices[{j}] must be an object")
        gen_ids = _ints(choice.get("token_ids"), line, f"choices[{j}].token_ids")
        part = choice.get("routed_experts")
        if part is None and prompt_arr is None:
            raise _fail(
                line,
                f"choices[{j}].routed_experts and prompt_routed_experts are both missing: start vLLM "
                "with --enable-return-routed-experts (vLLM >= 0.22 returns them on /v1/completions)",
            )
        arr = _as_ids(part, line, f"choices[{j}].routed_experts") if part is not None else None
        n_gen = len(gen_ids) if gen_ids is not None else None
        experts: np.ndarray
        if prompt_arr is not None and arr is not None:
            if prompt_arr.shape[1:] != arr.shape[1:]:
                raise _fail(
                    line,
                    f"prompt_routed_experts is [.., {prompt_arr.shape[1]}, {prompt_arr.shape[2]}] but "
                    f"choices[{j}].routed_experts is [.., {arr.shape[1]}, {arr.shape[2]}]",
                )
            experts, first = np.concatenate([prompt_arr, arr]), 0
        elif arr is None:
            assert prompt_arr is not None
            experts, first = prompt_arr, 0
        elif isinstance(n_prompt, int) and n_gen is not None and arr.shape[0] == n_prompt + n_gen - 1:
            experts, first = arr, 0  # the choice carries the whole sequence (no split)
        else:
            experts, first = arr, n_prompt if isinstance(n_prompt, int) else 0
        full = prompt_ids + gen_ids if prompt_ids is not None and gen_ids is not None else None
        out.append(
            EngineSequence(
                line,
                j,
                experts,
                first,
                _window(full, first, experts.shape[0]),
                text,
                n_prompt if isinstance(n_prompt, int) else None,
                n_gen,
                meta={"request_id": resp.get("id"), "finish_reason": choice.get("finish_reason")},
            )
        )
    return out


def _vllm_offline(resp: Mapping[str, Any], req: Mapping[str, Any], line: int) -> list[EngineSequence]:
    outputs = resp.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        raise _fail(line, "outputs must be a non-empty list")
    prompt_ids = _ints(resp.get("prompt_token_ids"), line, "prompt_token_ids")
    text = _text(resp.get("prompt")) or _text(req.get("prompt"))
    out = []
    for j, output in enumerate(outputs):
        if not isinstance(output, Mapping):
            raise _fail(line, f"outputs[{j}] must be an object")
        if output.get("routed_experts") is None:
            raise _fail(
                line,
                f"outputs[{j}].routed_experts is missing: build the LLM with enable_return_routed_experts=True "
                "and write CompletionOutput.routed_experts.tolist()",
            )
        experts = _as_ids(output["routed_experts"], line, f"outputs[{j}].routed_experts")
        gen_ids = _ints(output.get("token_ids"), line, f"outputs[{j}].token_ids")
        full = prompt_ids + gen_ids if prompt_ids is not None and gen_ids is not None else None
        out.append(
            EngineSequence(
                line,
                j,
                experts,
                0,
                _window(full, 0, experts.shape[0]),
                text,
                len(prompt_ids) if prompt_ids is not None else None,
                len(gen_ids) if gen_ids is not None else None,
                meta={"request_id": resp.get("request_id"), "finish_reason": output.get("finish_reason")},
            )
        )
    return out


def parse_line(
    text: str, line: int, fmt: Format, sglang_shape: tuple[int, int] | None
) -> list[EngineSequence]:
    """The sequences of one JSONL line (empty for a blank line); raises :class:`RoutingImportError`."""
    if not text.strip():
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(line, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    items = obj if isinstance(obj, list) else [obj]
    out: list[EngineSequence] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _fail(line, f"expected a JSON object per request, got {type(item).__name__}")
        resp, req, extras = _split_record(item)
        fields = _prompt_fields(extras, line)
        if fmt == "sglang":
            if sglang_shape is None:
                raise RoutingImportError(
                    "the sglang format holds no shape: give --num-layers and --top-k, or --model-config"
                )
            found = [_sglang(resp, req, line, 0, sglang_shape)]
        elif "choices" in resp:
            found = _vllm_openai(resp, req, line)
        elif "outputs" in resp:
            found = _vllm_offline(resp, req, line)
        else:
            raise _fail(
                line,
                "not a vLLM output: expected 'choices' (OpenAI-compatible response) or 'outputs' "
                "(a RequestOutput written as JSON)",
            )
        for seq in found:
            seq.label, seq.pair_id, seq.split = fields["label"], fields["pair_id"], fields["split"]
            seq.meta = {**fields["meta"], **{k: v for k, v in seq.meta.items() if v is not None}}
            if len(items) > 1:
                seq.meta["batch_index"] = i
        out.extend(found)
    return out

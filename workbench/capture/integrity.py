"""Resume integrity: a run is finished only from the prompts and the weights it was started with.

At capture, ``open_run`` records in ``runs.config["integrity"]``:

- ``probe``: the probe file's absolute path, prompt count and content digest (probefile.py:
  the SHA-256 over every prompt's id and record hash, i.e. text, label, pair_id, split and meta);
  None for prompts passed from Python;
- ``model``: a fingerprint of the weights (models/fingerprint.py), or why it was skipped.

``resume`` reads the probe source once before it writes anything: it recomputes the digest, and
compares every prompt the run already holds with the store's own copy of it (the ``prompts`` rows
carry the same fields). A different digest, a captured prompt that differs or is missing, or other
weights refuse the resume with a :class:`ResumeMismatchError` that names what changed and what to
do; the run is left as it was. A file moved or renamed is accepted (``--probe NEW``) when its
content digest is the recorded one. Runs recorded before these checks existed (or captured from
Python) have no digest: their captured prompts are still compared, and an
:class:`UnverifiedResumeWarning` says what could not be checked.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.capture.generation import strip_response
from workbench.models.fingerprint import METHOD, weights_fingerprint
from workbench.probefile import (
    DigestBuilder,
    ProbeDigest,
    ProbeFileError,
    Prompt,
    PromptLike,
    as_prompts,
    check_prompt,
    iter_probe_file,
    record_hash,
    scan_probe_file,
)

if TYPE_CHECKING:
    from workbench.models.loading import LoadedModel
    from workbench.store import Store

__all__ = [
    "PYTHON_PROBES",
    "ResumeMismatchError",
    "UnverifiedResumeWarning",
    "integrity_config",
    "probe_for_resume",
    "scan_for_capture",
    "verified_stream",
    "verify_model",
]

#: ``runs.probe`` of a run whose prompts came from Python rather than a file
PYTHON_PROBES = "<python>"


class ResumeMismatchError(ValueError):
    """The probe file or the model is not the one the run was captured with; nothing was written."""


class UnverifiedResumeWarning(UserWarning):
    """Part of a resume could not be verified (the run recorded no digest or fingerprint)."""


#: the last probe files this process validated before a capture (path -> digest), so the run records
#: the very content its stream is checked against, even if the file changes in between
_SCANNED: OrderedDict[str, ProbeDigest] = OrderedDict()


def scan_for_capture(source: str | Path) -> ProbeDigest:
    """Validate a whole probe file before a capture; remembered for :func:`integrity_config`."""
    scanned = scan_probe_file(source)
    _SCANNED[scanned.path] = scanned
    _SCANNED.move_to_end(scanned.path)
    while len(_SCANNED) > 8:
        _SCANNED.popitem(last=False)
    return scanned


def integrity_config(probe_name: str, loaded: LoadedModel, *, tensor_parallel: bool) -> dict[str, Any]:
    """``runs.config["integrity"]`` for a new run (module docstring)."""
    probe = None
    if probe_name != PYTHON_PROBES:
        probe = (_SCANNED.get(probe_name) or scan_for_capture(probe_name)).as_config()
    if tensor_parallel:  # reading a sharded tensor is a collective: rank 0 alone would hang
        model: dict[str, Any] = {"skipped": "tensor-parallel weights are sharded across the ranks"}
    else:
        model = weights_fingerprint(loaded.model)
    return {"probe": probe, "model": model}


def verified_stream(prompts: Iterable[Prompt], expected: ProbeDigest) -> Iterator[Prompt]:
    """``prompts`` as they stream, failing at the end if they are not the ones ``expected`` describes.

    The file is read again while the capture runs; this catches an edit made in the meantime (the
    run is then marked failed, and resume refuses it rather than finishing mixed data).
    """
    builder = DigestBuilder()
    for prompt in prompts:
        builder.add(prompt)
        yield prompt
    if builder.hexdigest() != expected.digest:
        raise ProbeFileError(
            f"probe file {expected.path} changed while it was being captured ({expected.n_prompts} prompts "
            f"when the run started, {builder.n_prompts} at the end); capture a new run from a file nobody edits"
        )


def _recorded(config: dict[str, Any], key: str) -> dict[str, Any] | None:
    section = (config.get("integrity") or {}).get(key)
    return section if isinstance(section, dict) else None


def _captured_hashes(store: Store, run_id: str, generated: bool) -> dict[int, str]:
    """Record hash of every prompt the run holds, from the store's own ``prompts`` rows.

    A run that generated (``capture --generate``) stored each response in its prompt's meta; the
    prompt's own meta is the stored one without it.
    """
    frame = store.prompts(run_id)
    hashes: dict[int, str] = {}
    for row in frame.select("prompt_id", "text", "label", "pair_id", "split", "meta").iter_rows():
        prompt_id, text, label, pair_id, split, meta = row
        own = json.loads(meta) if meta else None
        if generated:
            own = strip_response(own)
        stored = Prompt(int(prompt_id), text, label, pair_id, split, own)
        hashes[int(prompt_id)] = record_hash(stored)
    return hashes


@dataclass
class _Comparison:
    """One pass over a probe source against what the run recorded and holds."""

    digest: ProbeDigest
    differing: list[int]
    missing: list[int]


def _compare(prompts: Iterable[Prompt], path: str, captured: dict[int, str]) -> _Comparison:
    builder = DigestBuilder()
    differing: list[int] = []
    seen: set[int] = set()
    for prompt in prompts:
        rec = builder.add(check_prompt(prompt))
        want = captured.get(prompt.prompt_id)
        if want is not None:
            seen.add(prompt.prompt_id)
            if rec != want:
                differing.append(prompt.prompt_id)
    missing = sorted(set(captured) - seen)
    return _Comparison(ProbeDigest(path, builder.n_prompts, builder.hexdigest()), differing, missing)


def _what_differs(cmp: _Comparison, recorded: dict[str, Any] | None, n_captured: int) -> str:
    parts = []
    if recorded is not None and recorded.get("digest") != cmp.digest.digest:
        parts.append(
            f"{recorded.get('n_prompts')} prompts at capture, {cmp.digest.n_prompts} now, other content"
        )
    if cmp.differing:
        parts.append(
            f"{len(cmp.differing)} of the {n_captured} captured prompts differ (first: prompt_id {cmp.differing[0]})"
        )
    if cmp.missing:
        parts.append(f"{len(cmp.missing)} captured prompts are missing (first: prompt_id {cmp.missing[0]})")
    return "; ".join(parts)


def probe_for_resume(
    store: Store, run_id: str, info: dict[str, Any], source: str | Path | Iterable[PromptLike] | None
) -> Callable[[], Iterator[Prompt]]:
    """Verify the probe source of an unfinished run; returns a fresh stream of its prompts.

    ``source`` is what the user passed (a file, or prompts from Python), else None for the
    recorded file. Raises :class:`ResumeMismatchError` when it is not what the run was captured from.
    """
    recorded = _recorded(info["config"], "probe")
    if source is None:
        if info["probe"] == PYTHON_PROBES:
            raise ValueError(f"run {run_id} captured prompts from Python; pass them again with probes=...")
        path = Path(recorded["path"] if recorded else info["probe"])
        if not path.exists():
            raise ResumeMismatchError(
                f"probe file {path} of run {run_id!r} is not there (moved or deleted?): pass it with --probe FILE; "
                "resume accepts it if its prompts are the ones captured"
            )
        source = path
    generated = bool((info["config"].get("options") or {}).get("generate"))
    captured = _captured_hashes(store, run_id, generated)
    if isinstance(source, (str, Path)):
        where = str(Path(source).resolve())
        cmp = _compare(iter_probe_file(where), where, captured)
    else:
        listed = list(as_prompts(source))
        where = "the prompts passed from Python"
        cmp = _compare(listed, where, captured)
    problem = _what_differs(cmp, recorded, len(captured))
    if problem:
        ran_from = f" (the run read {recorded['path']})" if recorded and recorded["path"] != where else ""
        raise ResumeMismatchError(
            f"{where} is not the probe file run {run_id!r} was captured from{ran_from}: {problem}. Resume with "
            "the original file (--probe FILE if it moved), or capture a new run"
        )
    if recorded is None:
        warnings.warn(
            f"run {run_id!r} recorded no content digest of its prompts (captured from Python, or by an older "
            f"moe-workbench): its {len(captured)} captured prompts match {where}, the rest could not be checked",
            UnverifiedResumeWarning,
            stacklevel=2,
        )
    if isinstance(source, (str, Path)):
        return lambda: verified_stream(iter_probe_file(where), cmp.digest)
    return lambda: iter(listed)


def verify_model(run_id: str, config: dict[str, Any], loaded: LoadedModel) -> None:
    """Refuse (:class:`ResumeMismatchError`) weights other than those the run was captured with."""
    recorded = _recorded(config, "model")
    if recorded is None or "sha256" not in recorded or recorded.get("method") != METHOD:
        why = "the run predates weight fingerprints"
        if recorded is not None:
            why = recorded.get("skipped") or f"fingerprint method {recorded.get('method')}, not {METHOD}"
        warnings.warn(
            f"run {run_id!r} recorded no weights fingerprint ({why}): the model was not checked",
            UnverifiedResumeWarning,
            stacklevel=2,
        )
        return
    now = weights_fingerprint(loaded.model)
    if now["sha256"] != recorded["sha256"]:
        raise ResumeMismatchError(
            f"model {loaded.name} does not have the weights run {run_id!r} was captured with (fingerprint "
            f"{recorded['sha256'][:12]} at capture, {now['sha256'][:12]} now): resume with the original weights "
            "(--model DIR if they moved), or capture a new run"
        )

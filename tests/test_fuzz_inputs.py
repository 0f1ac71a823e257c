"""Fuzzing the probe-file parser and the intervention specs with hypothesis (issue 15, item 7).

The property everywhere: the input is read correctly, or it is refused with the module's own
one-line error (:class:`ProbeFileError` naming the file and line; :class:`InterventionSpecError`),
never another exception and never a hang. Valid inputs must come back exactly as written. The
``@example`` inputs are the failures these tests found (each fixed in the code); they run first,
every time. Budgets and a longer local run: tests/fuzz_support.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fuzz_support import budget
from hypothesis import example, given
from hypothesis import strategies as st

from workbench.interventions.plan import row_mask
from workbench.interventions.specs import (
    SPEC_CLASSES,
    Intervention,
    InterventionSpecError,
    spec_from_dict,
    specs_from_json,
)
from workbench.probefile import ProbeFileError, Prompt, read_probe_file

pytestmark = pytest.mark.unit

SUFFIXES = [".jsonl", ".json", ".ndjson", ".csv", ".parquet", ".tsv", ""]
BOM = b"\xef\xbb\xbf"

# Text as people (and broken tools) write it: any code point, lone surrogates included, which no
# UTF-8 encoder can write but a JSON "\ud800" escape can.
ANY_CHAR = st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
TEXT = st.text(ANY_CHAR, max_size=40)
CLEAN_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT, st.just(""))
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _read(data: bytes, suffix: str) -> list[Prompt] | ProbeFileError:
    """Parse ``data`` as a probe file with ``suffix``: its prompts, or the ProbeFileError it raised.

    Any other exception fails the test (it would be a traceback for the user).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"probe{suffix}"
        path.write_bytes(data)
        try:
            prompts = read_probe_file(path)
        except ProbeFileError as exc:
            message = str(exc)
            assert message.startswith((str(path), repr(str(path)))), message  # names the file
            assert "\n" not in message, message
            return exc
    for i, prompt in enumerate(prompts):
        assert prompt.prompt_id == i
        assert isinstance(prompt.text, str) and prompt.text
        assert isinstance(prompt.label, str) and prompt.label
        prompt.text.encode("utf-8")  # every field is valid Unicode: the tokenizer never sees a surrogate
        prompt.label.encode("utf-8")
    return prompts


# -- the probe parser ----------------------------------------------------------------------------


@budget(120, 5)
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES), bom=st.booleans())
@example(data=b'{"text": "a", "label": "b", "meta": {"x": ' + b"[" * 100_000, suffix=".jsonl", bom=False)
@example(data=b'{"text": "a", "label": ' + b"1" * 5000 + b"}\n", suffix=".jsonl", bom=False)
@example(data=b"text,label\n" + b"a" * 200_000 + b",b\n", suffix=".csv", bom=False)
@example(data=b'text,label\n"open quote,b\n\x00', suffix=".csv", bom=True)
@example(data=b"PAR1garbagePAR1", suffix=".parquet", bom=False)
def test_any_bytes_are_read_or_refused_naming_the_file(data: bytes, suffix: str, bom: bool) -> None:
    _read((BOM if bom else b"") + data, suffix)


@budget(120, 5)
@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(["text", "label", "pair_id", "split", "meta", "x"]), JSON_VALUE),
        max_size=5,
    ),
    junk=st.sampled_from([b"", b"\n", b"\r\n", b"{", b"[1]\n", b"\xff\n", b"\n\n  \n"]),
    bom=st.booleans(),
    crlf=st.booleans(),
)
@example(rows=[{"text": "a", "label": "b", "meta": {"k": [[[[]]]] * 1}}], junk=b"", bom=False, crlf=False)
@example(rows=[{"text": "a", "label": ["x"]}], junk=b"", bom=False, crlf=False)
@example(
    rows=[{"text": "a", "label": "b", "meta": json.loads("[" * 70 + "]" * 70)}],
    junk=b"",
    bom=False,
    crlf=False,
)
def test_json_lines_of_any_shape(rows: list[dict[str, Any]], junk: bytes, bom: bool, crlf: bool) -> None:
    end = "\r\n" if crlf else "\n"
    body = "".join(json.dumps(row) + end for row in rows).encode()  # ensure_ascii: "\ud800" escapes
    found = _read((BOM if bom else b"") + body + junk, ".jsonl")
    if isinstance(found, list):  # accepted: each prompt is the row written, in order
        for prompt, row in zip(found, rows, strict=False):
            assert prompt.text == row["text"]


@budget(100, 5)
@given(
    rows=st.lists(st.tuples(CLEAN_TEXT, CLEAN_TEXT), min_size=1, max_size=6),
    fmt=st.sampled_from([".jsonl", ".csv", ".parquet"]),
    bom=st.booleans(),
    big=st.sampled_from([0, 0, 0, 150_000]),
)
@example(rows=[("x", "a")], fmt=".csv", bom=False, big=1_000_000)  # a 1 MB prompt (capture truncates it)
def test_valid_files_round_trip_exactly(rows: list[tuple[str, str]], fmt: str, bom: bool, big: int) -> None:
    """Valid rows come back exactly as written, in every format, a BOM and huge fields included."""
    rows = [(text + "y" * big if i == 0 else text, label) for i, (text, label) in enumerate(rows)]
    if fmt == ".jsonl":
        data = "".join(
            json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in rows
        ).encode()
    elif fmt == ".csv":
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
        data = buffer.getvalue().encode()
    else:
        import polars as pl

        out = io.BytesIO()
        pl.DataFrame({"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}).write_parquet(out)
        data = out.getvalue()
    if bom and fmt != ".parquet":
        data = BOM + data
    found = _read(data, fmt)
    blank = [i for i, (t, lab) in enumerate(rows) if not t.strip("\r\n") or not lab.strip("\r\n")]
    if isinstance(found, ProbeFileError):
        # only a field csv cannot hold as written (a lone CR at a line end), or one that is empty, may fail
        assert fmt == ".csv" or blank, found
        return
    if fmt == ".csv":  # csv reads "\r\n" inside a quoted field as written; compare what it can keep
        return
    assert [(p.text, p.label) for p in found] == rows


@budget(60, 5)
@given(lines=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6))
def test_a_lone_surrogate_is_refused_on_its_line(lines: list[tuple[str, str]]) -> None:
    """The first row holding a lone surrogate is named with its line; clean files are read."""
    data = "".join(json.dumps({"text": t or "t", "label": lab or "l"}) + "\n" for t, lab in lines).encode()
    found = _read(data, ".jsonl")

    def broken(value: str) -> bool:
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)

    bad = [i for i, (t, lab) in enumerate(lines) if broken(t) or broken(lab)]
    if bad:
        assert isinstance(found, ProbeFileError) and f":{bad[0] + 1}: " in str(found)
        assert "lone surrogate" in str(found)
    else:
        assert isinstance(found, list) and len(found) == len(lines)


def test_a_nul_in_the_path_is_named() -> None:
    with pytest.raises(ProbeFileError, match="cannot hold a NUL character"):
        read_probe_file("probe\x00.jsonl")


# -- intervention specs --------------------------------------------------------------------------

FIELD_VALUES = st.one_of(
    JSON_VALUE,
    st.dictionaries(
        st.one_of(st.integers(-3, 40), TEXT), st.lists(st.integers(-3, 70), max_size=4), max_size=3
    ),
    st.lists(st.one_of(st.integers(-(2**40), 2**40), st.booleans()), max_size=4),
    st.lists(st.lists(st.booleans(), max_size=4), max_size=3),
    st.floats(),
)
SPEC_DICTS = st.fixed_dictionaries(
    {"kind": st.one_of(st.sampled_from(list(SPEC_CLASSES)), JSON_SCALAR)},
    optional={
        name: FIELD_VALUES
        for name in ("experts", "keep", "span", "delta", "s", "k", "p", "layers", "renorm", "x")
    },
)


def _accepted(spec: Intervention) -> None:
    """A spec that was accepted is well-formed: it round-trips through JSON exactly, with finite numbers."""
    again = specs_from_json(spec.to_json())
    assert again == [spec]
    for name in ("delta", "s", "p"):
        if hasattr(spec, name):
            assert math.isfinite(getattr(spec, name))
    for _, experts in spec.layer_experts().items():
        assert all(type(e) is int for e in experts)


@budget(300, 2)
@given(data=SPEC_DICTS)
@example(data={"kind": "zero"})  # missing experts: was a TypeError
@example(data={"kind": "bias", "experts": {"0": [1]}, "delta": "x"})  # was a ValueError
@example(data={"kind": "bias", "experts": {"0": [1]}, "delta": math.nan})  # was accepted
@example(data={"kind": "scale", "experts": {"0": [1]}, "s": math.inf})  # was accepted
@example(data={"kind": "zero", "experts": {"0": [math.inf]}})  # was an OverflowError
@example(data={"kind": "zero", "experts": {"0": [1.5]}})  # was truncated to expert 1
@example(data={"kind": "zero", "experts": {"0": "12"}})  # was experts 1 and 2
@example(data={"kind": "topk", "k": 1.7})  # was k=1
@example(data={"kind": "topk", "k": 1, "layers": [None]})  # was a TypeError
@example(data={"kind": "zero", "experts": {"0": [1]}, "span": [[True], 1]})  # was a TypeError
@example(data={"kind": "zero", "experts": {"0": [1]}, "span": [[True], [True, False]]})  # ragged mask
@example(data={"kind": "zero", "experts": {"0": [1]}, "span": [2**70]})  # beyond int64
@example(data={"kind": "zero", "experts": {"0": [1]}, "renorm": "yes"})  # was accepted
def test_spec_dicts_are_built_or_refused(data: dict[str, Any]) -> None:
    try:
        spec = spec_from_dict(data)
    except InterventionSpecError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    _accepted(spec)


@budget(200, 2)
@given(text=st.one_of(st.text(max_size=60), st.builds(json.dumps, st.lists(JSON_VALUE, max_size=3))))
@example(text="not json")
@example(text="[1]")  # was an AttributeError
@example(text="[" * 100_000)  # was a RecursionError
@example(text='{"kind": "zero", "experts": {"0": [' + "1" * 5000 + "]}}")  # was a ValueError
def test_spec_json_is_read_or_refused(text: str) -> None:
    try:
        specs = specs_from_json(text)
    except InterventionSpecError as exc:
        assert str(exc)
        return
    for spec in specs:
        _accepted(spec)


@budget(150, 2)
@given(
    span=FIELD_VALUES,
    batch=st.integers(1, 3),
    seq=st.integers(1, 6),
)
@example(span=[[True, False], [True]], batch=2, seq=2)
@example(span=[-(2**31) + 1], batch=1, seq=3)
def test_a_span_selects_tokens_or_is_refused(span: Any, batch: int, seq: int) -> None:
    """Spans as the planner applies them: a [batch * seq] mask of the forward pass, or a clear refusal."""
    try:
        spec = spec_from_dict({"kind": "zero", "experts": {"0": [0]}, "span": span})
        mask = row_mask(spec, batch * seq, (batch, seq), torch.device("cpu"))
    except InterventionSpecError as exc:
        assert str(exc)
        return
    assert mask.dtype == torch.bool and tuple(mask.shape) == (batch * seq,)
    if spec.span is not None and not isinstance(spec.span[0], tuple):  # positions: exactly those in range
        wanted = {p % seq for p in spec.span if -seq <= p < seq}  # type: ignore[operator]
        assert set(torch.nonzero(mask[:seq]).flatten().tolist()) == wanted

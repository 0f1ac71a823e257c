"""Malformed callback requests get a one-line message, never a 500 with a traceback in the log.

Dash answers ``POST /_dash-update-component`` by looking up the callback of the body's ``output``
and calling it with the body's inputs. A body that is not JSON, lacks a field, names an output no
callback has, or carries values of the wrong type made it raise (a 500 and a traceback). The
page's own requests are always well formed, so such a request comes from a script, a fuzzer or a
stale tab; it gets a 400 with a plain-text line saying what was wrong. :func:`install` adds:

* a check of the body's shape before Dash sees it (:func:`problem`);
* an error handler for what still goes wrong inside a callback: a ``TypeError``/``ValueError``/
  ``LookupError``/``AttributeError`` there most likely means the values did not fit (400, naming
  the callback and the error, without claiming more); anything else is a bug, answered with a short
  500 line — both logged with their traceback on the server only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

__all__ = ["CALLBACK_PATH", "install", "problem"]

CALLBACK_PATH = "/_dash-update-component"
log = logging.getLogger("dashboards")
BAD_INPUT = (TypeError, ValueError, LookupError, AttributeError)
"""Errors a callback raises when a request's values do not fit it (a page never sends such)."""
MAX_DETAIL = 200


def _is_item(value: Any) -> bool:
    """One input/state entry: ``{"id", "property", ...}`` or a list of them (pattern-matching inputs)."""
    if isinstance(value, list):
        return all(_is_item(v) for v in value)
    return isinstance(value, dict) and "id" in value and isinstance(value.get("property"), str)


def problem(body: Any, known: Mapping[str, Any]) -> str | None:
    """What is wrong with a callback request ``body`` (None: well formed); ``known``: the app's callback map."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    output = body.get("output")
    if not isinstance(output, str):
        return "the body has no 'output' string"
    if output not in known:
        shown = output if len(output) <= 80 else output[:77] + "..."
        return f"no callback of this dashboard answers output {shown!r}"
    if not isinstance(body.get("outputs"), (dict, list)):
        return "'outputs' must be an object or a list"
    for field in ("inputs", "state"):
        entries = body.get(field, [])
        if not isinstance(entries, list) or not all(_is_item(e) for e in entries):
            return f"'{field}' must be a list of {{id, property, value}} objects"
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        return "'changedPropIds' must be a list of strings"
    return None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _text(body: str, status: int) -> flask.Response:
    return flask.Response(body + "\n", status=status, mimetype="text/plain")


def install(server: flask.Flask, callback_map: Callable[[], Mapping[str, Any]]) -> None:
    """Check callback bodies on ``server`` and answer errors with one line (``callback_map``: the Dash app's)."""

    @server.before_request
    def _check_callback_body() -> flask.Response | None:
        request = flask.request
        if request.path != CALLBACK_PATH or request.method != "POST":
            return None
        wrong = problem(request.get_json(silent=True), callback_map())
        if wrong is None:
            return None
        return _text(f"malformed callback request: {wrong}", 400)

    @server.errorhandler(Exception)
    def _answer_error(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):  # 404, 405 ...: werkzeug's own short answers
            return exc
        request = flask.request
        if request.path == CALLBACK_PATH and isinstance(exc, BAD_INPUT):
            body = request.get_json(silent=True)
            output = body.get("output") if isinstance(body, dict) else None
            log.warning("callback for %s failed on its request's values", output, exc_info=exc)
            return _text(
                f"callback request refused: the callback for {output!r} failed on these values ({_short(exc)}); "
                "details in the server log",
                400,
            )
        log.error("internal error answering %s", request.path, exc_info=exc)
        return _text(
            f"internal error answering {request.path}: {_short(exc)} (details in the server log)", 500
        )

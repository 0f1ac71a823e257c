"""Who may use the dashboard: an access token checked on every request, before Dash sees it.

``moe-workbench serve`` starts every dashboard with a token (generated with
:func:`secrets.token_urlsafe` unless one is given) and prints the address that carries it,
``http://host:port/?token=…``, as Jupyter does. :class:`TokenGate` wraps the Flask server's WSGI
app, so nothing behind it — pages, the Dash callback endpoints (``/_dash-update-component``,
``/_dash-layout``, ``/_dash-dependencies``), assets, component suites, even unknown paths — runs for a
request without the token, whichever address it arrives on. A request may carry it three ways:

* ``?token=…`` in the address: accepted once, answered with a cookie holding it (HttpOnly,
  SameSite=Strict, named after the server's port so two dashboards on one machine keep theirs) and,
  for a GET, a redirect to the same address without the token — so the address a user copies to
  share a view never holds it, and the page's own requests and assets carry the cookie;
* the cookie;
* an ``Authorization: token …`` (or ``Bearer …``) header, for scripts.

No token offered: 401; a wrong one: 403; both with a one-line text body saying what to do.
Tokens are compared in constant time (:func:`hmac.compare_digest`).

Why loopback gets a token too (docs/dashboard.md): a port on 127.0.0.1 is open to every user of the
machine, and to any web page the user's browser opens (DNS rebinding: a page whose name resolves to
127.0.0.1 reads the answers). With ``--model`` both could run model jobs and write interventions
into the store. ``serve --no-token`` is the explicit way out, on a loopback address only, and
then :class:`LoopbackGate` answers only requests whose ``Host`` names a loopback address, which
defeats DNS rebinding.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from werkzeug.http import dump_cookie, parse_cookie

__all__ = [
    "COOKIE_PREFIX",
    "ENV_VAR",
    "MIN_TOKEN_CHARS",
    "LoopbackGate",
    "TokenGate",
    "check_token",
    "host_name",
    "is_loopback",
    "new_token",
]

ENV_VAR = "MOE_WORKBENCH_TOKEN"
"""Environment variable ``serve`` reads the token from (scripts; unlike ``--token`` it is not shown by ``ps``)."""
COOKIE_PREFIX = "moe-workbench-token-"
"""The cookie's name is this plus the server's port."""
MIN_TOKEN_CHARS = 16
"""A given token shorter than this is refused: guessing it over the network must stay hopeless."""
QUERY_KEY = "token"
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")
"""URL- and cookie-safe characters (what ``secrets.token_urlsafe`` produces, plus '.' and '~')."""

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    """``token`` if usable as an access token, else ``ValueError`` saying what is wrong."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"the access token must have at least {MIN_TOKEN_CHARS} characters (this one has {len(token)}); "
            "leave --token out to have one generated"
        )
    if not _TOKEN_CHARS.fullmatch(token):
        raise ValueError(
            "the access token may only hold letters, digits and - _ . ~ (it travels in addresses and cookies); "
            "leave --token out to have one generated"
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind or a ``Host`` header's name) is this machine only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _text(
    start_response: StartResponse, status: str, body: str, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    data = (body + "\n").encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
         ("Cache-Control", "no-store"), *headers],
    )  # fmt: skip
    return [data]


MISSING = (
    "401 Unauthorized: this moe-workbench dashboard needs its access token. Open the address with "
    "?token=... that `moe-workbench serve` printed, or send the header 'Authorization: token <token>'."
)
WRONG = (
    "403 Forbidden: wrong access token for this dashboard. Use the address `moe-workbench serve` printed at "
    "its last start (a generated token changes at every start)."
)


class TokenGate:
    """WSGI middleware: the wrapped app answers only requests that carry ``token`` (module docstring)."""

    def __init__(self, app: WSGIApp, token: str) -> None:
        self.app = app
        self._token = check_token(token).encode()

    def _matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), self._token)

    @staticmethod
    def cookie_name(environ: Environ) -> str:
        """The cookie holding the token for the server this request reached (its port)."""
        return COOKIE_PREFIX + str(environ.get("SERVER_PORT", ""))

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        in_query = [value for key, value in query if key == QUERY_KEY]
        if in_query:
            if not all(self._matches(value) for value in in_query):
                return _text(start_response, "403 Forbidden", WRONG)
            return self._admit_from_query(environ, start_response, query)
        offered = _from_header(environ.get("HTTP_AUTHORIZATION", ""))
        if offered is None:
            offered = parse_cookie(environ.get("HTTP_COOKIE", "")).get(self.cookie_name(environ))
        if offered is None:
            return _text(start_response, "401 Unauthorized", MISSING, [("WWW-Authenticate", "token")])
        if not self._matches(offered):
            return _text(start_response, "403 Forbidden", WRONG)
        return self.app(environ, start_response)

    def _admit_from_query(
        self, environ: Environ, start_response: StartResponse, query: list[tuple[str, str]]
    ) -> Iterable[bytes]:
        """A valid ``?token=``: set the cookie; a GET/HEAD is sent on to the address without the token."""
        cookie = (
            "Set-Cookie",
            dump_cookie(
                self.cookie_name(environ), self._token.decode(), path="/", httponly=True, samesite="Strict"
            ),
        )
        if environ.get("REQUEST_METHOD", "GET") in ("GET", "HEAD"):
            rest = urlencode([(k, v) for k, v in query if k != QUERY_KEY])
            path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "/")) or "/"
            location = path + (f"?{rest}" if rest else "")
            return _text(
                start_response, "302 Found", "token accepted; continuing without it in the address",
                [("Location", location), cookie],
            )  # fmt: skip

        def with_cookie(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, [*headers, cookie], *exc_info)

        return self.app(environ, with_cookie)


def _from_header(value: str) -> str | None:
    """The token of an ``Authorization: token <t>`` / ``Bearer <t>`` header, else None."""
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and credential.strip():
        return credential.strip()
    return None


_HOST = re.compile(r"\[(?P<v6>[^\]]*)\](?::\d*)?|(?P<name>[^:]*)(?::\d*)?")


def host_name(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8050`` → ``::1``; ``localhost:8050`` → ``localhost``)."""
    found = _HOST.fullmatch(host.strip())
    if found is None:
        return host
    return found.group("v6") if found.group("v6") is not None else found.group("name")


NOT_LOOPBACK = (
    "403 Forbidden: this dashboard runs without a token and answers only to a loopback address "
    "(http://127.0.0.1:PORT/ or http://localhost:PORT/); this request named {host!r}."
)


class LoopbackGate:
    """WSGI middleware for ``serve --no-token``: only requests whose ``Host`` is a loopback name get through.

    A browser sends the name it resolved in ``Host``; a rebinding page's own name is refused here.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        host = str(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
        if not is_loopback(host_name(host)):
            return _text(start_response, "403 Forbidden", NOT_LOOPBACK.format(host=host))
        return self.app(environ, start_response)

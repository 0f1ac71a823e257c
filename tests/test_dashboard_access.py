"""Who gets in: the dashboard's access token, the loopback-only mode, ``serve``'s refusals, and
one-line answers to malformed callback requests (issue 15 item 5).

Everything goes through the Flask test client of a real ``create_app`` over the synthetic store
of ``test_dashboard.py`` (the browser test ``test_dashboard_access_browser.py`` does the same over a
loopback socket). ``serve`` is driven through typer's runner with the app replaced by a recorder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import flask
import pytest
from test_dashboard import RUN, dashboard_db
from typer.testing import CliRunner

from dashboards import access, callback_guard, data
from dashboards.app import create_app
from workbench.cli import serve_cmd
from workbench.cli.app import app as cli_app

pytestmark = pytest.mark.unit

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    data.clear_cache()
    return str(dashboard_db(tmp_path_factory.mktemp("access") / "dash.duckdb"))


@pytest.fixture(scope="module")
def gated(db: str) -> Any:
    """A dashboard that needs ``TOKEN``."""
    return create_app(db, token=TOKEN)


def _paths(app: Any) -> dict[str, str]:
    """A page, the Dash endpoints, an asset and a component suite, as the page itself names them."""
    client = app.server.test_client()
    page = client.get("/", headers={"Authorization": f"token {TOKEN}"}).get_data(as_text=True)
    suite = re.search(r'src="(/_dash-component-suites/[^"]+)"', page)
    asset = re.search(r'href="(/assets/[^"?]+)', page)
    assert suite and asset, "the page names no component suite or asset"
    return {
        "page": f"/routing?run={RUN}",
        "layout": "/_dash-layout",
        "dependencies": "/_dash-dependencies",
        "asset": asset.group(1),
        "suite": suite.group(1),
        "unknown": "/no/such/path",
    }


CALLBACK = {
    "output": "lab-query.data",
    "outputs": {"id": "lab-query", "property": "data"},
    "inputs": [{"id": f"lab-{k}", "property": "value", "value": None}
               for k in ("run", "layer", "experts", "semantics", "value", "labels", "n", "text")],
    "changedPropIds": ["lab-run.value"],
}  # fmt: skip


def test_without_the_token_everything_is_refused(gated: Any) -> None:
    client = gated.server.test_client()
    for name, path in _paths(gated).items():
        res = client.get(path)
        assert res.status_code == 401, (name, path, res.status_code)
        assert "needs its access token" in res.get_data(as_text=True)
    res = client.post("/_dash-update-component", json=CALLBACK)
    assert res.status_code == 401 and res.mimetype == "text/plain"


def test_a_wrong_token_is_forbidden_however_it_comes(gated: Any) -> None:
    client = gated.server.test_client()
    wrong = TOKEN[:-1] + "X"
    for res in (
        client.get("/?token=" + wrong),
        client.get("/", headers={"Authorization": f"token {wrong}"}),
        client.post("/_dash-update-component", json=CALLBACK, headers={"Authorization": f"Bearer {wrong}"}),
    ):
        assert res.status_code == 403 and "wrong access token" in res.get_data(as_text=True)
    client.set_cookie(access.COOKIE_PREFIX + "80", wrong)
    assert client.get("/").status_code == 403


def test_the_token_in_the_address_becomes_a_cookie_and_leaves_the_address(gated: Any) -> None:
    client = gated.server.test_client()
    res = client.get(f"/routing?run={RUN}&token={TOKEN}&label=code")
    assert res.status_code == 302
    assert res.headers["Location"] == f"/routing?run={RUN}&label=code"  # the shareable address holds no token
    cookie = res.headers["Set-Cookie"]
    assert cookie.startswith(access.COOKIE_PREFIX) and TOKEN in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    for path in _paths(gated).values():  # the same client now carries the cookie
        if path != "/no/such/path":
            assert client.get(path).status_code == 200, path
    assert client.post("/_dash-update-component", json=CALLBACK).status_code == 200
    assert "needs its access token" not in client.get("/").get_data(as_text=True)


def test_the_header_lets_a_script_in_and_a_post_with_the_token_sets_the_cookie(gated: Any) -> None:
    client = gated.server.test_client()
    for scheme in ("token", "Bearer"):
        res = client.get("/_dash-layout", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert res.status_code == 200
    res = client.post(f"/_dash-update-component?token={TOKEN}", json=CALLBACK)
    assert res.status_code == 200 and "lab-query" in res.get_data(as_text=True)
    assert TOKEN in res.headers["Set-Cookie"]


def test_tokens_are_compared_in_constant_time(gated: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    gated.server.test_client().get("/", headers={"Authorization": "token nope-nope-nope-nope"})
    assert seen == [(b"nope-nope-nope-nope", TOKEN.encode())]


def test_token_rules_and_loopback_names() -> None:
    made = access.new_token()
    assert access.check_token(made) == made and len(made) >= 40 and made != access.new_token()
    with pytest.raises(ValueError, match="at least 16 characters"):
        access.check_token("short")
    with pytest.raises(ValueError, match="only hold letters"):
        access.check_token("a token with spaces in it")
    loopback = ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"]
    assert all(access.is_loopback(h) for h in loopback)
    beyond = ["0.0.0.0", "::", "192.168.1.5", "example.org", "127.0.0.1.nip.io", ""]
    assert not any(access.is_loopback(h) for h in beyond)
    assert access.host_name("[::1]:8050") == "::1" and access.host_name("localhost:80") == "localhost"


def test_no_token_mode_answers_only_loopback_names(db: str) -> None:
    client = create_app(db, loopback_only=True).server.test_client()
    assert client.get("/", headers={"Host": "127.0.0.1:8050"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost:8050"}).status_code == 200
    res = client.get("/", headers={"Host": "rebound.example:8050"})
    assert res.status_code == 403 and "rebound.example" in res.get_data(as_text=True)


# -- malformed callback requests ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("{not json", "not a JSON object"),
        ([1, 2], "not a JSON object"),
        ({}, "no 'output' string"),
        (
            {**CALLBACK, "output": "nope.children"},
            "no callback of this dashboard answers output 'nope.children'",
        ),
        ({**CALLBACK, "outputs": 3}, "'outputs' must be"),
        ({**CALLBACK, "inputs": 5}, "'inputs' must be a list"),
        ({**CALLBACK, "inputs": [{"id": "x"}]}, "'inputs' must be a list"),
        ({**CALLBACK, "state": "x"}, "'state' must be a list"),
        ({**CALLBACK, "changedPropIds": [1]}, "'changedPropIds' must be a list of strings"),
    ],
)
def test_malformed_callback_requests_get_a_message(gated: Any, body: Any, said: str) -> None:
    client = gated.server.test_client()
    auth = {"Authorization": f"token {TOKEN}"}
    if isinstance(body, str):
        res = client.post("/_dash-update-component", data=body, content_type="application/json", headers=auth)
    else:
        res = client.post("/_dash-update-component", json=body, headers=auth)
    text = res.get_data(as_text=True)
    assert res.status_code == 400 and res.mimetype == "text/plain", text
    assert text.startswith("malformed callback request: ") and said in text and "Traceback" not in text


def test_errors_inside_a_callback_are_one_line_and_well_formed_requests_pass() -> None:
    server = flask.Flask("guard-test")
    callback_guard.install(server, lambda: {"a.b": None})

    @server.post(callback_guard.CALLBACK_PATH)
    def _dispatch() -> str:
        value = (flask.request.get_json() or {})["inputs"][0]["value"]
        if value == "bug":
            raise RuntimeError("a bug")
        return str(int(value))  # a dict or "x" does not fit

    def post(value: Any) -> Any:
        body = {"output": "a.b", "outputs": {}, "inputs": [{"id": "i", "property": "value", "value": value}]}
        return server.test_client().post(callback_guard.CALLBACK_PATH, json=body)

    assert post("7").status_code == 200 and post("7").get_data(as_text=True) == "7"
    res = post({"x": 1})
    said = res.get_data(as_text=True)
    assert res.status_code == 400 and said.count("\n") == 1
    assert "the callback for 'a.b' failed on these values (TypeError" in said and "Traceback" not in said
    res = post("bug")
    assert res.status_code == 500 and res.get_data(as_text=True).count("\n") == 1
    assert "RuntimeError: a bug (details in the server log)" in res.get_data(as_text=True)
    assert server.test_client().get("/nowhere").status_code == 404  # werkzeug's own answers stay


# -- serve -----------------------------------------------------------------------------------------
class _Recorder:
    """Stands in for ``create_app``: records its keywords, and its app's ``run`` does nothing."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, path: Path, **kw: Any) -> Any:
        self.calls.append(kw)
        return self

    def run(self, **_: Any) -> None:
        return None


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    made = _Recorder()
    monkeypatch.setattr(serve_cmd, "_create_app", lambda: made)
    monkeypatch.setattr(serve_cmd.signal, "signal", lambda *_: None)  # leave pytest's handlers alone
    monkeypatch.delenv(access.ENV_VAR, raising=False)
    return made


def _serve(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli_app, ["serve", *args], env=env)


def test_serve_prints_a_generated_token_once_in_the_address(db: str, recorder: _Recorder) -> None:
    res = _serve("--db", db, "--no-prewarm", "--no-cache")
    assert res.exit_code == 0, res.output
    token = recorder.calls[-1]["token"]
    assert token and recorder.calls[-1]["loopback_only"] is False
    assert res.output.count(token) == 1 and f"http://127.0.0.1:8050/?token={token}" in res.output
    assert "warning" not in res.output  # loopback: nothing to warn about
    second = _serve("--db", db, "--no-prewarm", "--no-cache")
    assert recorder.calls[-1]["token"] != token and second.exit_code == 0  # a new one each start


def test_serve_takes_a_token_from_the_option_or_the_environment_and_never_prints_it(
    db: str, recorder: _Recorder
) -> None:
    res = _serve("--db", db, "--token", TOKEN, "--no-prewarm", "--no-cache")
    assert res.exit_code == 0 and recorder.calls[-1]["token"] == TOKEN and TOKEN not in res.output
    res = _serve("--db", db, "--no-prewarm", "--no-cache", env={access.ENV_VAR: TOKEN})
    assert res.exit_code == 0 and recorder.calls[-1]["token"] == TOKEN and TOKEN not in res.output
    assert "token from --token" in res.output
    res = _serve("--db", db, "--token", "short")
    assert res.exit_code == 2 and "at least 16 characters" in res.output


def test_serve_refusals_and_the_warning_beyond_loopback(db: str, recorder: _Recorder) -> None:
    res = _serve("--db", db, "--host", "0.0.0.0", "--debug")
    assert res.exit_code == 2 and "--debug serves the Werkzeug debugger" in res.output
    assert len(res.output.strip().splitlines()) == 1 and recorder.calls == []
    assert _serve("--db", db, "--debug", "--no-prewarm", "--no-cache").exit_code == 0  # loopback: allowed
    res = _serve("--db", db, "--host", "[red]evil[/red]", "--debug")  # a name is data, never markup
    assert res.exit_code == 2 and "not '[red]evil[/red]'" in res.output
    res = _serve("--db", db, "--host", "0.0.0.0", "--no-token")
    assert res.exit_code == 2 and "only allowed on a loopback address" in res.output
    res = _serve("--db", db, "--no-token", "--token", TOKEN)
    assert res.exit_code == 2 and "contradict" in res.output

    res = _serve("--db", db, "--host", "0.0.0.0", "--no-prewarm", "--no-cache")
    assert res.exit_code == 0 and "warning: serving on 0.0.0.0" in res.output
    assert "run model jobs" not in res.output  # no model: nobody can run one
    res = _serve("--db", db, "--host", "0.0.0.0", "--model", "tiny-ref", "--no-prewarm", "--no-cache")
    assert "run model jobs on this machine and write interventions into the store" in res.output

    res = _serve("--db", db, "--no-token", "--no-prewarm", "--no-cache")
    assert res.exit_code == 0 and recorder.calls[-1]["token"] is None and recorder.calls[-1]["loopback_only"]
    assert "no token: loopback only" in res.output


def test_serve_help_names_the_token_and_the_environment_variable() -> None:
    res = CliRunner().invoke(cli_app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "--token" in res.output and access.ENV_VAR in res.output and "--no-token" in res.output

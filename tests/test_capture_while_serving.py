"""A capture while the dashboard is open (issue 15 item 4), with both really running.

A ``moe-workbench serve`` process serves a store holding one tiny-ref run, and keeps answering
page requests from a thread all along. A third process holds the store read-only — as the
dashboard does while it answers a slow request — until the capture has started waiting, then lets
go. The ``moe-workbench capture`` of tiny-ref into the same store must say once that it waits and
for whom, then start and finish; the dashboard must never answer with an error, and must list
the new run once the capture is done.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboards.access import ENV_VAR, new_token
from workbench.capture.engine import capture
from workbench.probefile import Prompt
from workbench.store import Store
from workbench.store.locking import MARKER_SUFFIX

pytestmark = pytest.mark.integration

TOKEN = new_token()
TEXTS = ["def f(x): return x + 1", "The cat sat on the mat.", "2 + 2 = 4", "Paris is in France."]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _page(base: str, search: str) -> tuple[int, str]:
    """The runs page's content as the browser asks for it (Dash pages' own callback), with the token."""
    body = {
        "output": ".._pages_content.children..._pages_store.data..",
        "outputs": [
            {"id": "_pages_content", "property": "children"},
            {"id": "_pages_store", "property": "data"},
        ],
        "inputs": [
            {"id": "_pages_location", "property": "pathname", "value": "/"},
            {"id": "_pages_location", "property": "search", "value": search},
        ],
        "changedPropIds": ["_pages_location.pathname"],
        "state": [],
    }
    request = urllib.request.Request(
        f"{base}/_dash-update-component", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"token {TOKEN}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A store with run r1 of tiny-ref, served by a real ``serve`` process; yields (store, base URL)."""
    db = tmp_path / "shared.duckdb"
    capture("tiny-ref", [Prompt(i, t, "x") for i, t in enumerate(TEXTS)], db, run_id="r1", progress=False)
    port = _free_port()
    env = {**os.environ, ENV_VAR: TOKEN}
    cmd = [sys.executable, "-m", "workbench.cli", "serve", "--db", str(db), "--port", str(port), "--no-cache"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if _page(base, "?run=r1")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "serve exited"
            assert time.monotonic() < deadline, "serve did not answer within 180 s"
            time.sleep(0.5)
        yield db, base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_capture_starts_and_finishes_while_the_dashboard_serves(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    db, base = served
    answers: list[int] = []
    stop = threading.Event()

    def browse() -> None:  # a user clicking around meanwhile
        while not stop.is_set():
            answers.append(_page(base, "?run=r1")[0])
            time.sleep(0.2)

    reader = textwrap.dedent(f"""
        import os, time
        from workbench.store import Store
        store = Store({str(db)!r}, read_only=True)
        print("ready", flush=True)
        end = time.time() + 240
        while time.time() < end and not os.path.exists({str(db) + MARKER_SUFFIX!r}):
            time.sleep(0.05)
        time.sleep(1.0)
        store.close()
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True)
    browsing = threading.Thread(target=browse, daemon=True)
    probe = tmp_path / "more.jsonl"
    probe.write_text("".join(json.dumps({"text": t, "label": "y"}) + "\n" for t in TEXTS))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        browsing.start()
        cap = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "capture", "--model", "tiny-ref", "--probe", str(probe),
             "--db", str(db), "--run-id", "r2", "--quiet"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        stop.set()
        holder.kill()
        holder.wait(timeout=30)
        browsing.join(timeout=90)
    assert cap.returncode == 0, cap.stderr
    assert cap.stdout.strip().endswith("r2")
    said = [line for line in cap.stderr.splitlines() if "waiting up to" in line]
    assert len(said) == 1 and f"open for reading by another process (PID {holder.pid}" in said[0], cap.stderr
    assert "open for writing" not in cap.stderr
    with Store(db, read_only=True) as store:
        runs = store.runs()
    assert dict(zip(runs["run_id"], runs["status"], strict=True)) == {"r1": "complete", "r2": "complete"}
    assert answers and set(answers) == {200}, answers  # the dashboard answered throughout, never an error
    status, page = _page(base, "?run=r2")
    assert status == 200 and '"r2"' in page and "locked" not in page  # the new run, read afresh

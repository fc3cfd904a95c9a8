"""The labeling server over real HTTP (port 0): routes, token, Host check, traversal, the CLI entry point."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from sanitize.errors import ConfigError
from sanitize.labelserver.app import TOKEN_HEADER, LabelServer, is_loopback
from sanitize.safety.labels import LabelStore

from .conftest import CATEGORY


def request(server: LabelServer, method: str, path: str, body=None, *, token: str | None = "valid",
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one raw request; the path is sent exactly as given (no normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent[TOKEN_HEADER] = server.token if token == "valid" else token
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return out


def call(server, method, path, body=None, **kwargs) -> tuple[int, dict]:
    status, _headers, raw = request(server, method, path, body, **kwargs)
    return status, json.loads(raw)


def stored(project_dir) -> list[tuple[str, int]]:
    table = LabelStore(project_dir, CATEGORY).read()
    return [(u, lab) for u, lab, s in zip(*(table[c].to_pylist() for c in ("uid", "label", "source")), strict=True)
            if s == "active"]


def test_page_and_static_files_with_security_headers(serve):
    server = serve()
    status, headers, body = request(server, "GET", "/", token=None)
    assert status == 200 and b"/static/app.js" in body and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    assert b"http://" not in body and b"https://" not in body  # no external requests
    for path in ("/static/app.js", "/static/app.css"):
        status, _, body = request(server, "GET", path, token=None)
        assert status == 200 and b"http://" not in body and b"https://" not in body
    assert server.url == f"http://127.0.0.1:{server.port}/?token={server.token}"


def test_state_needs_the_token(serve):
    server = serve()
    assert call(server, "GET", "/api/state", token=None)[0] == 403
    assert call(server, "GET", "/api/state", token="wrong")[0] == 403
    status, state = call(server, "GET", "/api/state")
    assert status == 200 and state["round"] == 1 and state["size"] == 6 and state["done"] == 0
    status, _ = call(server, "GET", f"/api/state?token={server.token}", token=None)
    assert status == 200


def test_posts_without_the_right_token_are_refused_and_store_nothing(serve, project_dir):
    server = serve()
    uid = server.session.uids[0]
    for token in (None, "wrong", server.token[:-1], ""):
        status, body = call(server, "POST", "/api/answer", {"uid": uid, "label": 1, "round": 1}, token=token)
        assert status == 403 and "token" in body["error"]
    # a token in the query string is not enough for a POST
    status, _ = call(server, "POST", f"/api/answer?token={server.token}", {"uid": uid, "label": 1, "round": 1},
                     token=None)
    assert status == 403
    assert stored(project_dir) == []


def test_answer_skip_undo_over_http(serve, project_dir):
    server = serve()
    a, b = server.session.uids[:2]
    status, out = call(server, "POST", "/api/answer", {"uid": a, "label": 1, "round": 1})
    assert status == 200 and out["outcome"]["action"] == "added" and out["state"]["done"] == 1
    assert stored(project_dir) == [(a, 1)]
    status, out = call(server, "POST", "/api/answer", {"uid": a, "label": 0, "round": 1})
    assert status == 409 and out["outcome"]["conflict"]["stored_label"] == 1 and out["state"]["done"] == 1
    assert call(server, "POST", "/api/skip", {"uid": b, "round": 1})[1]["state"]["done"] == 2
    status, out = call(server, "POST", "/api/undo", {"round": 1})
    assert out["outcome"] == {"action": "unskipped", "uid": b, "label": None, "conflict": None}
    status, out = call(server, "POST", "/api/undo", {"uid": a, "round": 1})
    assert out["outcome"]["action"] == "retracted" and stored(project_dir) == []
    # a tab still showing an earlier round is told so, with the current state
    status, out = call(server, "POST", "/api/answer", {"uid": a, "label": 1, "round": 0})
    assert status == 409 and "round 0 is over" in out["error"] and out["state"]["round"] == 1
    assert call(server, "POST", "/api/finish", {})[0] == 409


MALFORMED = [  # (body, status); "first" stands for the batch's first uid
    (b"{not json", 400),
    (b"[1, 2]", 400),
    ({"uid": 3, "label": 1, "round": 1}, 400),
    ({"label": 1, "round": 1}, 400),
    ({"uid": "first", "label": True, "round": 1}, 400),
    ({"uid": "first", "label": 2, "round": 1}, 400),
    ({"uid": "first", "label": 1}, 400),
    ({"uid": "no-such-uid", "label": 1, "round": 1}, 404),
    (b"x" * (70 * 1024), 413),
]
TRAVERSALS = [
    "/image/../../etc/passwd",
    "/image/..%2F..%2Fetc%2Fpasswd",
    "/image/%2e%2e/%2e%2e/etc/passwd",
    "/image/%2E%2E%2F%2E%2E%2Fpyproject.toml",
    "/image//etc/passwd",
    "/image/no-such-uid",
    "/image/",
    "/static/../../pyproject.toml",
    "/static/%2e%2e/app.js",
    "/../../etc/passwd",
    "/etc/passwd",
]


def test_malformed_answers_are_refused(serve, project_dir):
    server = serve()
    for body, status in MALFORMED:
        if isinstance(body, dict) and body.get("uid") == "first":
            body = {**body, "uid": server.session.uids[0]}
        assert call(server, "POST", "/api/answer", body)[0] == status, body
    assert call(server, "POST", "/api/nope", {})[0] == 404
    assert stored(project_dir) == []


def test_no_file_outside_the_batch_is_served(serve):
    server = serve()
    for path in TRAVERSALS:
        status, _, body = request(server, "GET", f"{path}?token={server.token}")
        assert status == 404 and b"root:" not in body and b"[project]" not in body, path


def test_images_of_batch_items_need_the_token(serve):
    server = serve()
    session = server.session
    uid = next(u for u in session.uids if session.thumbnail(u) is not None)
    status, headers, body = request(server, "GET", f"/image/{uid}?token={server.token}", token=None)
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert request(server, "GET", f"/image/{uid}", token=None)[0] == 403


def test_a_foreign_host_header_is_refused(serve):
    server = serve()
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1:1"):
        assert call(server, "GET", "/api/state", headers={"Host": host})[0] == 403
        assert call(server, "POST", "/api/skip", {"uid": server.session.uids[0], "round": 1},
                    headers={"Host": host})[0] == 403
    assert call(server, "GET", "/api/state", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def _start_cli(project_dir, run, *extra) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        # The command module is imported by hand: registering it in cli/commands.py is the lead's step.
        [sys.executable, "-c", "import sanitize_cli.label_serve_cmd; from sanitize_cli.main import main; main()",
         "label", "serve", CATEGORY, "--project", str(project_dir),
         "--run", str(run), "--port", "0", "--n", "4", "--annotator", "cli-test", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "open http" not in line:
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r} {proc.stderr.read()}")
    return proc, line.rsplit(" ", 1)[1].strip()


def _api(url: str, path: str, body: dict | None = None) -> dict:
    """GET (body None) or POST `path` on the server of `url`, with the token of `url`."""
    base, token = url.split("/?token=")
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={TOKEN_HEADER: token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def test_cli_serves_and_a_killed_server_loses_nothing(project_dir, embedded, serve):
    proc, url = _start_cli(project_dir, embedded[0])
    try:
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        state = _api(url, "/api/state")
        assert state["annotator"] == "cli-test" and state["size"] == 4
        a, b = (item["uid"] for item in state["items"][:2])
        _api(url, "/api/answer", {"uid": a, "label": 1, "round": 1})
        _api(url, "/api/answer", {"uid": b, "label": 0, "round": 1})
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert stored(project_dir) == [(a, 1), (b, 0)]
    server = serve()  # a new server on the same project continues the killed one's batch
    assert server.token != url.split("/?token=")[1]
    assert call(server, "GET", "/api/state", token=url.split("/?token=")[1])[0] == 403
    state = call(server, "GET", "/api/state")[1]
    assert state["round"] == 1 and state["size"] == 4 and state["done"] == 2
    assert [i["status"] for i in state["items"][:2]] == ["positive", "negative"]


class _StoppedServer(LabelServer):
    """A real server that stops at once, as if Ctrl-C had been pressed."""

    def serve_forever(self, poll_interval=0.5):
        raise KeyboardInterrupt


@pytest.mark.parametrize("host,warned", [(None, False), ("127.0.0.1", False), ("0.0.0.0", True)])
def test_cli_warns_before_listening_beyond_this_machine(project_dir, embedded, monkeypatch, host, warned):
    from click.testing import CliRunner

    from sanitize.labelserver import app
    from sanitize_cli.main import cli

    monkeypatch.setattr(app, "LabelServer", _StoppedServer)  # the command imports it when it serves
    args = ["label", "serve", CATEGORY, "--project", str(project_dir), "--run", str(embedded[0]), "--port", "0",
            "--n", "3", *(["--host", host] if host else [])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert ("warning: listening on 0.0.0.0" in result.stderr) == warned
    assert re.search(r"round 1 \(3 images\): open http://[0-9.]+:\d+/\?token=\S{20,}", result.stdout)
    assert "stopped" in result.stdout


def test_cli_errors_are_one_line(project_dir, embedded):
    from click.testing import CliRunner

    from sanitize_cli import label_serve_cmd  # noqa: F401  (registers the command)
    from sanitize_cli.main import cli

    common = ["--project", str(project_dir), "--run", str(embedded[0])]
    result = CliRunner().invoke(cli, ["label", "serve", "nope", *common])
    assert result.exit_code == 2 and "unknown category 'nope'" in result.stderr
    result = CliRunner().invoke(cli, ["label", "serve", CATEGORY, *common, "--port", "70000"])
    assert result.exit_code == 2 and "--port" in result.stderr


def test_a_busy_port_is_a_config_error(serve):
    server = serve()
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        LabelServer(server.session, "127.0.0.1", server.port)
    with pytest.raises(ConfigError, match="port must be"):
        LabelServer(server.session, "127.0.0.1", -1)

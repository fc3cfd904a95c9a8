"""The HTTP side of `sanitize label serve`: a standard-library server over one `LabelingSession`.

Routes (nothing else is served; no route takes a file path from the request):

    GET  /                    the page (static HTML; it reads the token from ?token= and keeps it in the tab)
    GET  /static/…            its script, style and icon (a fixed list)
    GET  /api/state           the batch and its statuses                     token (header or ?token=)
    GET  /image/<uid>         JPEG thumbnail of a uid of the current batch   token (?token=, for <img>)
    POST /api/answer          {"uid", "label": 0|1, "round"}                 token header X-Sanitize-Token
    POST /api/skip            {"uid", "round"}
    POST /api/undo            {"uid"?: …, "round"}
    POST /api/finish          retrain, return metrics
    POST /api/next            {"strategy"?: …, "round"}: propose the next batch

The token is a fresh random string per server, compared in constant time; a POST without it in a header is
refused (403), which other local web pages cannot forge without a CORS preflight this server never grants.
The Host header must name the bound address (a DNS-rebinding page would send its own name). Answers:
200 with {"state", "outcome"}; 409 for a conflict or a stale round, with the current state; 404 for a uid
outside the batch; 400 for a malformed request; 507 when the answer cannot be written (disk full, read-only
project: nothing is stored, the error names the file).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sanitize.errors import ConfigError, DataError
from sanitize.io.atomic import WriteError
from sanitize.labelserver.session import (
    BatchNotDoneError,
    LabelingSession,
    NotInBatchError,
    StaleRoundError,
)

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Sanitize-Token"
MAX_BODY = 64 * 1024
STATIC = {  # route → (file under sanitize/resources/labelserver, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LabelServer(ThreadingHTTPServer):
    """A threading HTTP server bound to (`host`, `port`) that serves `session`; `port` 0 picks a free port.

    `url` is the address to open, token included. Stop it with `shutdown()` then `server_close()`.
    """

    daemon_threads = True

    def __init__(self, session: LabelingSession, host: str = "127.0.0.1", port: int = 8765,
                 token: str | None = None) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port must be an integer in 0..65535, got {port!r}")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host.strip("[]"), port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        self.session = session
        self.token = token or secrets.token_urlsafe(32)
        self.host = host
        self.port = int(self.server_address[1])
        self.allowed_hosts = _allowed_hosts(host, self.port)
        base = resources.files("sanitize") / "resources" / "labelserver"
        self.static = {route: ((base / name).read_bytes(), kind) for route, (name, kind) in STATIC.items()}

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _allowed_hosts(host: str, port: int) -> set[str] | None:
    """Host header values to accept; None (any) when bound to every interface, whose names are unknown."""
    bare = host.strip("[]")
    if bare in ("0.0.0.0", "::", ""):
        return None
    names = {f"[{bare}]" if ":" in bare else bare}
    if is_loopback(bare):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    return {f"{name}:{port}" for name in names}


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"
    server_version = "sanitize-label"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    # -- routing -------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        if not self._host_ok():
            return
        parts = urlsplit(self.path)
        if parts.path in self.server.static:
            body, kind = self.server.static[parts.path]
            self._send(HTTPStatus.OK, body, kind)
            return
        if parts.path != "/api/state" and not parts.path.startswith("/image/"):
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        token = self.headers.get(TOKEN_HEADER) or parse_qs(parts.query).get("token", [None])[0]
        if not self.server.token_ok(token):
            self._error(HTTPStatus.FORBIDDEN, "missing or wrong session token")
            return
        session = self.server.session
        try:
            if parts.path == "/api/state":
                self._json(HTTPStatus.OK, session.state())
                return
            # The uid is only a dictionary key into the current batch; it never reaches the file system.
            image = session.thumbnail(unquote(parts.path[len("/image/"):]))
        except NotInBatchError:
            image = None
        except Exception:
            logger.exception("labeling server: %s failed", parts.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server log)")
            return
        if image is None:
            self._error(HTTPStatus.NOT_FOUND, "no such image")
        else:
            self._send(HTTPStatus.OK, image, "image/jpeg")

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        if not self.server.token_ok(self.headers.get(TOKEN_HEADER)):
            self._error(HTTPStatus.FORBIDDEN, "missing or wrong session token")
            return
        action = _ACTIONS.get(urlsplit(self.path).path)
        if action is None:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        body = self._read_json()
        if body is None:
            return
        session = self.server.session
        try:
            payload = action(session, body)
        except NotInBatchError as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))
        except (StaleRoundError, BatchNotDoneError) as exc:
            self._json(HTTPStatus.CONFLICT, {"error": str(exc), "state": session.state()})
        except (ConfigError, _BadRequest) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except DataError as exc:
            # e.g. no unlabelled rows left to propose: the request was fine, the data cannot serve it.
            self._json(HTTPStatus.CONFLICT, {"error": str(exc), "state": session.state()})
        except WriteError as exc:
            # a full disk or a read-only project: nothing was stored (atomic write); the page shows the one line.
            logger.error("labeling server: %s", exc)
            self._json(HTTPStatus.INSUFFICIENT_STORAGE, {"error": str(exc), "state": session.state()})
        except Exception:
            logger.exception("labeling server: %s failed", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server log)")
        else:
            outcome = payload.get("outcome") or {}
            status = HTTPStatus.CONFLICT if outcome.get("action") == "conflict" else HTTPStatus.OK
            self._json(status, {**payload, "state": session.state()})

    # -- helpers -------------------------------------------------------------------------------------------
    def _host_ok(self) -> bool:
        allowed = self.server.allowed_hosts
        if allowed is not None and self.headers.get("Host") not in allowed:
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return False
        return True

    def _read_json(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > MAX_BODY else HTTPStatus.BAD_REQUEST,
                        f"request body must be JSON of at most {MAX_BODY} bytes")
            return None
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
            return None
        return body

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _BadRequest(Exception):
    pass


def _field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _BadRequest(f"field {name!r} is missing or not a {kind.__name__}")
    return value


def _answer(session: LabelingSession, body: dict[str, Any]) -> dict[str, Any]:
    outcome = session.answer(_field(body, "uid", str), _field(body, "label", int), round=_field(body, "round", int))
    return {"outcome": outcome.to_dict()}


def _skip(session: LabelingSession, body: dict[str, Any]) -> dict[str, Any]:
    return {"outcome": session.skip(_field(body, "uid", str), round=_field(body, "round", int)).to_dict()}


def _undo(session: LabelingSession, body: dict[str, Any]) -> dict[str, Any]:
    uid = _field(body, "uid", str, required=False)
    return {"outcome": session.undo(uid, round=_field(body, "round", int)).to_dict()}


def _finish(session: LabelingSession, body: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": session.finish()}


def _next(session: LabelingSession, body: dict[str, Any]) -> dict[str, Any]:
    strategy = _field(body, "strategy", str, required=False)
    return {"round": session.next_batch(strategy, round=_field(body, "round", int))}


_ACTIONS = {"/api/answer": _answer, "/api/skip": _skip, "/api/undo": _undo, "/api/finish": _finish, "/api/next": _next}

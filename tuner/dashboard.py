"""optuna-dashboard behind a guard: read-only unless writes are allowed, and a token when one is set.

optuna-dashboard's own API lets anyone who reaches it delete studies and write trials; the guard
answers 403 to every request that is not GET/HEAD/OPTIONS, and 401 to one without the token.
A browser passes the token once as ``?token=...``: it gets a cookie and a redirect to the same
page without the token in its address.

>>> app = guard(optuna_dashboard.wsgi(storage), allow_writes=False, token="s3cret")  # doctest: +SKIP
>>> serve(app, "127.0.0.1", 8080)  # until Ctrl-C
"""

import hashlib
import hmac
import ipaddress
import json
import socket
import sys
from http.cookies import CookieError, SimpleCookie
from socketserver import ThreadingMixIn
from urllib.parse import parse_qsl, quote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.errors import UserError

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
COOKIE = "tuner_dashboard"


def _digest(token: str) -> str:
    """The cookie holds a hash, not the token itself."""
    return hashlib.sha256(f"tuner-dashboard:{token}".encode()).hexdigest()


def _reply(start_response, status: str, message: str, headers=()) -> list[bytes]:
    body = json.dumps({"reason": message}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


def _has_token(environ: dict, token: str, query: list[tuple[str, str]]) -> bool:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
        return True
    if any(k == "token" and hmac.compare_digest(v.encode(), token.encode()) for k, v in query):
        return True
    try:
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return False
    return COOKIE in cookie and hmac.compare_digest(cookie[COOKIE].value.encode(), _digest(token).encode())


def guard(app, allow_writes: bool = False, token: str | None = None):
    """Wrap a WSGI app: 401 without ``token`` (when set), then 403 for writes unless allowed."""

    def guarded(environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if token:
            query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            if not _has_token(environ, token, query):
                return _reply(start_response, "401 Unauthorized",
                              "this dashboard needs its token: send 'Authorization: Bearer TOKEN' or open /?token=TOKEN once",
                              [("WWW-Authenticate", 'Bearer realm="tuner dashboard"')])
            if method in ("GET", "HEAD") and any(k == "token" for k, _ in query):
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                location = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "") or "/") + (f"?{rest}" if rest else "")
                cookie = f"{COOKIE}={_digest(token)}; Path=/; HttpOnly; SameSite=Strict"
                return _reply(start_response, "303 See Other", "token accepted", [("Location", location), ("Set-Cookie", cookie)])
        if not allow_writes and method not in SAFE_METHODS:
            return _reply(start_response, "403 Forbidden",
                          "the dashboard is read-only; restart it with tuner dashboard --allow-writes to change studies")
        return app(environ, start_response)

    return guarded


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connections must not keep Ctrl-C waiting


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # the dashboard polls every few seconds: no line per request
        pass


def serve(app, host: str, port: int) -> None:
    """Serve ``app`` in the foreground until Ctrl-C; a port in use or a bad host is a UserError."""
    try:
        server = make_server(host, port, app, server_class=_Server6 if ":" in host else _Server, handler_class=_QuietHandler)
    except OSError as e:
        raise UserError(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e}; pick another --port or --host")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    finally:
        server.server_close()

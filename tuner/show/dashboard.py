"""optuna-dashboard behind a guard: read-only unless writes are allowed, and a token when one is set.

optuna-dashboard's own API lets anyone who reaches it delete studies and write trials; the guard
answers 403 to every request that is not GET/HEAD/OPTIONS, and 401 to one without the token.
A browser passes the token once as ``?token=...``: it gets a cookie and a redirect to the same
page without the token in its address. On a loopback address, a request whose Host header names
another host gets 403: a web page from elsewhere that re-points its own name at 127.0.0.1 (DNS
rebinding) reads nothing. A read-only dashboard's page says so in a banner and hides the
controls that would only get a 403.

>>> app = guard(optuna_dashboard.wsgi(storage), allow_writes=False, token="s3cret")  # doctest: +SKIP
>>> server = bind(app, "127.0.0.1", 0)  # doctest: +SKIP
>>> serve(server)  # until Ctrl-C  # doctest: +SKIP
"""

import hashlib
import hmac
import ipaddress
import json
import re
import socket
import sys
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from socketserver import ThreadingMixIn
from urllib.parse import parse_qsl, quote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.errors import UserError
from tuner.search.storage import read_secret_file

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
COOKIE = "tuner_dashboard"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
PAGE = re.compile(r"/dashboard(/.*)?")
BANNER_ID = "tuner-read-only"
# optuna-dashboard's page allows inline styles (its Content-Security-Policy has style-src
# 'unsafe-inline') but no inline scripts: the banner is markup, the hiding is CSS. Its buttons have
# no ids; they are found by the Material icon inside them (data-testid) or their aria-label.
READ_ONLY_STYLE = f"""<style>
#{BANNER_ID} {{ position: fixed; bottom: 12px; left: 50%; transform: translateX(-50%); z-index: 2000;
  padding: 6px 16px; border-radius: 16px; background: #8a4b08; color: #fff; box-shadow: 0 2px 6px rgba(0,0,0,.35);
  font: 500 14px/1.5 Roboto, Helvetica, Arial, sans-serif; white-space: nowrap; pointer-events: none; }}
#{BANNER_ID} code {{ font: inherit; font-family: monospace; }}
button:has([data-testid="AddBoxIcon"]), button:has([data-testid="DeleteIcon"]),
button:has([data-testid="DriveFileRenameOutlineIcon"]), button:has([data-testid="EditIcon"]),
button:has([data-testid="StopCircleIcon"]), button:has([data-testid="UploadFileIcon"]),
button:has([data-testid="RestoreFromTrashIcon"]), button[aria-label="skip trial"],
[role="menuitem"]:has([data-testid="DeleteIcon"]) {{ display: none !important; }}
</style>
""".encode()
READ_ONLY_BANNER = (f'<div id="{BANNER_ID}" role="status">read-only: studies, trials and notes cannot be changed here '
                    '(<code>tuner dashboard --allow-writes</code> allows it)</div>').encode()


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


def host_name(header: str) -> str:
    """The name in a Host header, without port or brackets: '[::1]:8080' -> '::1'.

    >>> [host_name(h) for h in ("localhost:8080", "127.0.0.1", "[::1]:80", "Example.ORG.")]
    ['localhost', '127.0.0.1', '::1', 'example.org']
    """
    h = header.strip().lower()
    if h.startswith("["):
        h = h[1:].split("]", 1)[0]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def allowed_hosts(bound: str) -> frozenset[str] | None:
    """The Host names a dashboard bound to ``bound`` answers: the loopback names when it is a loopback
    address, any (None) otherwise. The port is not compared: an SSH tunnel forwards another one."""
    return frozenset({*LOOPBACK_NAMES, host_name(bound)}) if is_loopback(bound) else None


def _with_banner(app, environ, start_response) -> list[bytes]:
    """The dashboard page with the read-only banner and style in it."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    # The whole page every time: a 304 or a byte range would refer to the file without the banner.
    environ = {k: v for k, v in environ.items() if k not in ("HTTP_IF_MODIFIED_SINCE", "HTTP_IF_NONE_MATCH", "HTTP_RANGE", "HTTP_IF_RANGE")}
    environ["REQUEST_METHOD"] = "GET"
    got, written = {}, []

    def capture(status, headers, exc_info=None):
        got.update(status=status, headers=headers)
        return written.append

    result = app(environ, capture)
    try:
        body = b"".join([*written, *result])
    finally:
        if hasattr(result, "close"):
            result.close()
    status, headers = got["status"], got["headers"]
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    if status.startswith("200") and content_type.startswith("text/html"):
        body = body.replace(b"</head>", READ_ONLY_STYLE + b"</head>", 1).replace(b"<body>", b"<body>\n" + READ_ONLY_BANNER, 1)
        drop = ("content-length", "etag", "last-modified", "accept-ranges", "cache-control")
        headers = [(k, v) for k, v in headers if k.lower() not in drop]
        headers += [("Content-Length", str(len(body))), ("Cache-Control", "no-cache")]
    start_response(status, headers)
    return [] if method == "HEAD" else [body]


def guard(app, allow_writes: bool = False, token: str | None = None, hosts: frozenset[str] | None = None):
    """Wrap a WSGI app: 403 for a Host header not in ``hosts`` (when given), 401 without ``token``
    (when set), then 403 for writes unless allowed; a read-only page gets its banner."""

    def guarded(environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if hosts is not None and "HTTP_HOST" in environ and host_name(environ["HTTP_HOST"]) not in hosts:
            return _reply(start_response, "403 Forbidden",
                          f"this dashboard answers only to Host {', '.join(sorted(hosts))}; "
                          f"open http://localhost:{environ.get('SERVER_PORT', 'PORT')}/ instead")
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
        if "HTTP_ACCEPT_ENCODING" not in environ:
            # optuna-dashboard 0.21 reads this header for /favicon.ico and /static/* with [] and
            # answers 500 (KeyError) to a client that sends none; without it nothing is compressed.
            environ = {**environ, "HTTP_ACCEPT_ENCODING": "identity"}
        if not allow_writes and method in ("GET", "HEAD") and PAGE.fullmatch(environ.get("PATH_INFO", "")):
            return _with_banner(app, environ, start_response)
        return app(environ, start_response)

    return guarded


def read_token_file(path: Path) -> str:
    return read_secret_file(path, "--token-file", f"the token (e.g. openssl rand -hex 24 > {path})")


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


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port: use 1 to 65535, or 0 for a free one")


def bind(app, host: str, port: int) -> WSGIServer:
    """A server for ``app`` bound to host:port (0: a free port; ``server.server_port`` says which),
    or a UserError when the port is in use or the host is not this machine's."""
    check_port(port)
    try:
        return make_server(host, port, app, server_class=_Server6 if ":" in host else _Server, handler_class=_QuietHandler)
    except OSError as e:
        raise UserError(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e}; pick another --port or --host")


def serve(server: WSGIServer) -> None:
    """Serve in the foreground until Ctrl-C."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    finally:
        server.server_close()

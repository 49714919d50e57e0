"""The HTTP side of ``edgetl-rt serve``: routes, limits, bearer tokens, structured access logs and draining.

Standard library (``http.server``), one thread per connection, HTTP/1.1 keep-alive.  Everything a client can get
wrong (a body over the limit, no Content-Length, compressed bodies, malformed JSON, unknown routes or models, a
missing token) is answered with a 4xx and a JSON ``{"error": ...}`` body, and the service stays up.  Nothing in a
request names a file: images arrive as bytes.  :meth:`ServeHTTP.drain` (SIGTERM) stops accepting, ends idle
keep-alive connections, lets every request in flight finish, then closes the model.
"""

from __future__ import annotations

import hmac
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ..errors import EdgetlError
from .protocol import ProtocolError, parse_infer_request
from .service import InferenceService, error_status

#: Default request body limit: a few JPEGs or one batch of 224 px float inputs.
DEFAULT_MAX_BODY = 8 * 1024 * 1024
JSON_TYPE = "application/json"

_MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
#: (method, path pattern, route name, needs the token)
ROUTES = [
    ("GET", r"/v2/health/live", "live", False),
    ("GET", r"/v2/health/ready", "ready", False),
    ("GET", r"/v2", "server_metadata", True),
    ("GET", _MODEL, "model_metadata", True),
    ("GET", _MODEL + r"/ready", "model_ready", True),
    ("POST", _MODEL + r"/infer", "infer", True),
    ("POST", _MODEL + r"/update", "update", True),
    ("POST", _MODEL + r"/classify", "classify", True),
    ("GET", r"/metrics", "metrics", True),
]
_COMPILED = [(method, re.compile(pattern + r"/?"), name, auth) for method, pattern, name, auth in ROUTES]


class ServeHTTP(ThreadingHTTPServer):
    """The listening server; ``token`` None means no authentication (health routes never need it)."""

    daemon_threads = False            # server_close() joins handler threads: requests in flight finish
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: InferenceService, token: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY, max_connections: int = 64, request_timeout: float = 30.0,
                 log: Callable[[dict], None] = lambda event: None):
        self.service, self.token, self.max_body = service, token, max_body
        self.max_connections, self.request_timeout, self.log = max_connections, request_timeout, log
        self.draining = threading.Event()
        self._connections: dict[socket.socket, bool] = {}     # socket -> busy with a request
        self._lock = threading.Lock()
        super().__init__(address, ServeHandler)

    # --- connections --------------------------------------------------------------------------------------------

    def process_request(self, request, client_address):
        with self._lock:
            full = len(self._connections) >= self.max_connections
            if not full:
                self._connections[request] = False
        if full:     # answered without a thread, so a flood cannot exhaust the process
            body = b'{"error":"too many open connections; retry later"}'
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        """A connection that failed outside a request (a reset, a timeout): one structured line, no traceback."""
        error = sys.exc_info()[1]
        self.log({"event": "connection_error", "client": client_address[0],
                  "error": f"{type(error).__name__}: {error}"})

    def shutdown_request(self, request) -> None:
        self.forget(request)                     # the slot is freed however the connection ended
        super().shutdown_request(request)

    def mark(self, connection: socket.socket, busy: bool) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections[connection] = busy

    def forget(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.pop(connection, None)

    def drain(self, timeout: float = 30.0) -> None:
        """Stop after the requests in flight (for at most ``timeout`` seconds, then the stragglers' connections
        are cut): call from another thread than :meth:`serve_forever`'s."""
        self.draining.set()
        self.shutdown()                         # no new connections
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                idle = [conn for conn, busy in self._connections.items() if not busy]
                left = len(self._connections)
            for conn in idle:                   # an idle keep-alive connection reads EOF and ends
                _cut(conn, socket.SHUT_RD)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        with self._lock:
            stragglers = list(self._connections)
        for conn in stragglers:                 # a client trickling its body cannot hold the exit
            _cut(conn, socket.SHUT_RDWR)
        self.server_close()                     # joins handler threads: each in-flight request is answered
        self.service.close()


def _cut(connection: socket.socket, how: int) -> None:
    try:
        connection.shutdown(how)
    except OSError:
        pass


class ServeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgetl-serve"
    server: ServeHTTP

    def setup(self) -> None:
        self.timeout = self.server.request_timeout      # a slow or silent client cannot hold a thread forever
        super().setup()
        # Small request/response exchanges: without this, Nagle's algorithm meets the client's delayed ACK and
        # a keep-alive request can wait 40 ms for nothing.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args) -> None:     # noqa: A002 - the access log is structured, below
        pass

    def _answer(method: str):
        """``do_<METHOD>``: every method goes through one router, which answers the unknown ones with a 405."""
        return lambda self: self._handle(method)

    do_GET, do_POST, do_PUT, do_DELETE, do_PATCH, do_OPTIONS = map(
        _answer, ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
    del _answer

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's own refusals (a malformed request line, too many headers, HEAD): JSON like the rest."""
        self.close_connection = True
        try:
            self._send(code, json.dumps({"error": message or explain or "bad request"}).encode())
        except OSError:
            pass

    # --- one request --------------------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        self.server.mark(self.connection, True)
        started = time.perf_counter()
        metrics = self.server.service.metrics
        metrics.in_flight.inc()
        route, status, fields = "unknown", 500, {}
        try:
            route, status, fields = self._respond(method)
        finally:
            metrics.in_flight.inc(-1)
            elapsed = time.perf_counter() - started
            metrics.requests.inc(route=route, code=str(status))
            metrics.latency.observe(elapsed, route=route)
            self.server.log({"event": "request", "method": method, "path": urlsplit(self.path).path, "route": route,
                             "status": status, "ms": round(elapsed * 1000, 3), "client": self.client_address[0],
                             **fields})
            self.server.mark(self.connection, False)

    def _respond(self, method: str) -> tuple[str, int, dict]:
        """Answer the request; returns (route, status, log fields)."""
        path = urlsplit(self.path).path
        matched = [(name, auth, match) for m, pattern, name, auth in _COMPILED
                   if (match := pattern.fullmatch(path)) is not None and m == method]
        if not matched:
            known = any(pattern.fullmatch(path) for _, pattern, _, _ in _COMPILED)
            status = 405 if known else 404
            self._refuse_body()
            return "unknown", self._error(status, f"{method} {path}: " + ("method not allowed" if known else
                                                                          "no such route")), {}
        route, auth, match = matched[0]
        try:
            if auth and not self._authorized():
                self._refuse_body()
                return route, self._error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}), {}
            if self.server.draining.is_set() and route != "live":
                self._refuse_body()
                return route, self._error(503, "the service is shutting down"), {}
            if method == "POST":
                body = self._read_body()                 # read first: the connection stays in step
            else:
                body = b""
                self._refuse_body()                      # a body on a GET is never parsed as a request
            model = match.groupdict().get("model")
            if model is not None:
                self._check_model(model, match.groupdict().get("version"))
            return (route, *getattr(self, f"_route_{route}")(body))
        except ProtocolError as exc:
            return route, self._error(exc.status, str(exc)), {}
        except EdgetlError as exc:
            status = error_status(exc)
            return route, self._error(status, str(exc), extra={"exit_code": int(exc.exit_code),
                                                               "kind": type(exc).__name__}), {}
        except Exception as exc:     # a bug or the machine failing: a 500, and the service stays up
            self.close_connection = True
            self.server.log({"event": "error", "route": route, "error": f"{type(exc).__name__}: {exc}"})
            return route, self._error(500, f"internal error: {type(exc).__name__}: {exc}"), {}

    def _authorized(self) -> bool:
        if self.server.token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.server.token.encode())

    def _check_model(self, model: str, version: str | None) -> None:
        service = self.server.service
        if model != service.name:
            raise ProtocolError(f"unknown model '{model}' (this service serves '{service.name}')", 404)
        if version not in (None, "", "1"):
            raise ProtocolError(f"model '{model}' has no version '{version}' (it has: 1)", 404)

    def _read_body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise ProtocolError("chunked bodies are not accepted; send Content-Length", 411)
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise ProtocolError("a POST needs a Content-Length header", 411)
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ProtocolError(f"Content-Length {length!r} is not a byte count") from None
        if size > self.server.max_body:
            self.close_connection = True          # the body is not read: the connection cannot be reused
            raise ProtocolError(f"the body of {size} bytes exceeds the limit of {self.server.max_body} bytes "
                                "(--max-body-mb)", 413)
        try:
            body = self.rfile.read(size)
        except OSError as exc:                           # a silent client (timeout) or a reset mid-body
            self.close_connection = True
            raise ProtocolError(f"the body was not received ({type(exc).__name__})", 408) from None
        if len(body) != size:
            self.close_connection = True
            raise ProtocolError(f"the body ended after {len(body)} of {size} bytes")
        if encoding != "identity":       # compressed bodies could expand past every limit: refused
            raise ProtocolError(f"Content-Encoding '{encoding}' is not accepted; send the body uncompressed", 415)
        return body

    def _refuse_body(self) -> None:
        """A request refused before its body is read: the body is not read (an unauthenticated client cannot
        make the service read megabytes), so the connection closes after the answer."""
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True

    # --- responses ----------------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = JSON_TYPE, headers: dict | None = None) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.server.draining.is_set() or self.close_connection:
            self.send_header("Connection", "close")
            self.close_connection = True
        self._headers_buffer.extend([b"\r\n", body])      # headers and body leave in one write
        try:
            self.wfile.write(b"".join(self._headers_buffer))
        except (BrokenPipeError, ConnectionResetError):      # the client left; nothing to answer
            self.close_connection = True
        self._headers_buffer = []
        return status

    def _json(self, status: int, document: dict) -> int:
        return self._send(status, json.dumps(document, separators=(",", ":")).encode())

    def _error(self, status: int, message: str, headers: dict | None = None, extra: dict | None = None) -> int:
        return self._send(status, json.dumps({"error": message, **(extra or {})}).encode(), headers=headers)

    # --- routes (each returns status, log fields) -----------------------------------------------------------------

    def _route_live(self, body: bytes) -> tuple[int, dict]:
        return self._json(200, {"live": True}), {}

    def _route_ready(self, body: bytes) -> tuple[int, dict]:
        ready = not self.server.draining.is_set()
        return self._json(200 if ready else 503, {"ready": ready}), {}

    def _route_model_ready(self, body: bytes) -> tuple[int, dict]:
        return self._route_ready(body)

    def _route_server_metadata(self, body: bytes) -> tuple[int, dict]:
        return self._json(200, self.server.service.server_metadata()), {}

    def _route_model_metadata(self, body: bytes) -> tuple[int, dict]:
        return self._json(200, self.server.service.model_metadata()), {}

    def _route_metrics(self, body: bytes) -> tuple[int, dict]:
        text = self.server.service.metrics.render().encode()
        return self._send(200, text, "text/plain; version=0.0.4; charset=utf-8"), {}

    def _header_length(self) -> int | None:
        value = self.headers.get("Inference-Header-Content-Length")
        if value is None:
            return None
        if not value.strip().isdigit():
            raise ProtocolError(f"Inference-Header-Content-Length {value!r} is not a byte count")
        return int(value)

    def _route_infer(self, body: bytes) -> tuple[int, dict]:
        request = parse_infer_request(body, self._header_length())
        response, header_length, fields = self.server.service.infer(request)
        headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
        content_type = JSON_TYPE if header_length is None else "application/octet-stream"
        return self._send(200, response, content_type, headers), fields

    def _route_update(self, body: bytes) -> tuple[int, dict]:
        report = self.server.service.update(parse_infer_request(body, self._header_length()))
        return self._json(200, report.to_json()), {"head_version": report.head_version, "images": report.n_new}

    def _route_classify(self, body: bytes) -> tuple[int, dict]:
        query = parse_qs(urlsplit(self.path).query)
        try:
            top_k = int(query.get("top_k", ["1"])[0])
        except ValueError:
            raise ProtocolError("top_k must be an integer") from None
        result = self.server.service.classify_bytes(body, top_k)
        return self._json(200, result), {"head_version": result["head_version"], "images": 1}


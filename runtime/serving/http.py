"""The HTTP side of ``edgetl-rt serve``: routes, limits, bearer tokens, structured access logs and draining.

Standard library (``http.server``), one thread per connection, HTTP/1.1 keep-alive.  Everything a client can get
wrong (a body over the limit, no or conflicting Content-Length, compressed bodies, malformed JSON, unknown routes or
models, a missing token, an HTTP version other than 1.0 and 1.1) is answered with a 4xx (505 for a version) and a
JSON ``{"error": ...}`` body, and the service stays up.  Nothing in a request names a file: images arrive as bytes.

Slow clients cannot hold the service: every read of a connection goes through :class:`_DeadlineReader`, so the
request line and headers must arrive within ``header_timeout`` and the body at ``min_body_rate`` on average (after a
grace of ``header_timeout``), whatever the client trickles; a connection that is not serving a request (idle
keep-alive, or still sending its head) gives its slot up to a new connection when every slot is taken.
:meth:`ServeHTTP.drain` (SIGTERM) answers new connections 503, ends idle keep-alive connections, lets every request
in flight finish, then closes the model.
"""

from __future__ import annotations

import hmac
import io
import json
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ..errors import EdgetlError
from .protocol import ProtocolError, one_line, parse_infer_request
from .service import InferenceService, error_status

#: Default request body limit: a few JPEGs or one batch of 224 px float inputs.
DEFAULT_MAX_BODY = 8 * 1024 * 1024
#: Default deadline for a request line and its headers, in seconds (from the connection's start for its first
#: request, from the first byte for the later ones on a keep-alive connection).
DEFAULT_HEADER_TIMEOUT = 5.0
#: Default lowest average rate of a body, bytes per second, after a grace of the header timeout.
DEFAULT_MIN_BODY_RATE = 16 * 1024
#: The largest request line and headers together, in bytes (431 beyond; 414 for a request line alone).
MAX_HEAD_BYTES = 64 * 1024
#: A new connection that has sent nothing is not taken for another before this many seconds (nor before its head
#: deadline when that is shorter): its first bytes may be on their way.
NEW_CONNECTION_GRACE = 1.0
#: Empty lines ignored before a request line (a client may end a body with an extra CRLF).
EMPTY_LINES = 4
#: Bytes read from the socket at a time for a body.
BODY_CHUNK = 64 * 1024
JSON_TYPE = "application/json"
#: Longest piece of a client's own text (a header value, a request line) an error message repeats.
SHOWN_CHARS = 60

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
_BYTE_COUNT = re.compile(r"[0-9]{1,18}")        # ASCII digits only: str.isdigit() and int() accept far more
_VERSION = re.compile(r"HTTP/[0-9]+(\.[0-9]+)?")

# A connection's states.  NEW: waiting for (or reading) its first request's head; HEAD: reading a later request's
# head; BUSY: a request is being served (body, model, response); IDLE: keep-alive, between requests.
NEW, HEAD, BUSY, IDLE = "new", "head", "busy", "idle"


@dataclass
class _Slot:
    """One open connection: its state, since when (for NEW and HEAD: when its head deadline began), and whether
    the server took it back (for another connection, or to drain)."""

    state: str
    since: float
    reclaimed: bool = False


class _Reclaimed(Exception):
    """The server took the connection back while it was not serving a request."""


class _HeadTooLarge(Exception):
    """The request line and headers exceed :data:`MAX_HEAD_BYTES`."""


#: What a method name may be made of (RFC 9110's token characters).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _shown(value: str) -> str:
    """A client's text in an error message: quoted, and cut to :data:`SHOWN_CHARS`."""
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "...")


class ServeHTTP(ThreadingHTTPServer):
    """The listening server; ``token`` None means no authentication (health routes never need it).

    Timeouts are in seconds, ``min_body_rate`` in bytes per second (0: none, only ``request_timeout`` bounds a
    silence); the listen backlog is ``max_connections``, so a burst up to the cap waits to be accepted instead of
    being dropped by the kernel.
    """

    daemon_threads = False            # server_close() joins handler threads: requests in flight finish
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: InferenceService, token: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY, max_connections: int = 64, request_timeout: float = 30.0,
                 log: Callable[[dict], None] = lambda event: None, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 min_body_rate: float = DEFAULT_MIN_BODY_RATE):
        self.service, self.token, self.max_body = service, token, max_body
        self.max_connections, self.request_timeout, self.log = max_connections, request_timeout, log
        self.header_timeout, self.min_body_rate = header_timeout, min_body_rate
        self.request_queue_size = max_connections          # read by server_activate(): the listen backlog
        self.draining = threading.Event()
        self._connections: dict[socket.socket, _Slot] = {}
        self._lock = threading.Lock()
        super().__init__(address, ServeHandler)

    # --- connections --------------------------------------------------------------------------------------------

    def process_request(self, request, client_address):
        """A new connection gets a slot and a thread; when every slot is taken, the longest-waiting connection
        that serves no request gives its slot up (else a 503 without a thread, so a flood cannot exhaust the
        process); while draining, every new connection gets a 503."""
        refusal = None
        with self._lock:
            if self.draining.is_set():
                refusal, reason = "the service is shutting down", "draining"
            else:
                if len(self._connections) >= self.max_connections:
                    self._reclaim_one(time.monotonic())
                if len(self._connections) >= self.max_connections:
                    refusal, reason = "too many open connections; retry later", "full"
                else:
                    self._connections[request] = _Slot(NEW, time.monotonic())
        if refusal is not None:
            self.service.metrics.connections_closed.inc(reason=reason)
            body = json.dumps({"error": refusal}).encode()
            try:
                request.settimeout(0.0)          # the answer fits the socket's buffer: never blocks the accept loop
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                request.recv(MAX_HEAD_BYTES)     # what already arrived, so the close is a FIN, not a reset
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def _reclaim_one(self, now: float) -> None:
        """Under the lock: take back the slot of the connection that has waited longest for its request's head
        (slowloris first), else of the longest idle keep-alive one; never one serving a request."""
        chosen, chosen_key = None, None
        for connection, slot in self._connections.items():
            if slot.state == BUSY or slot.reclaimed:
                continue
            if slot.state == NEW and now - slot.since < min(NEW_CONNECTION_GRACE, self.header_timeout):
                continue
            key = (slot.state == IDLE, slot.since)
            if chosen_key is None or key < chosen_key:
                chosen, chosen_key = connection, key
        if chosen is not None:
            self._connections.pop(chosen).reclaimed = True
            _cut(chosen, socket.SHUT_RD)          # its thread's read ends; it answers or closes, then exits
            self.service.metrics.connections_closed.inc(reason="reclaimed")

    def slot(self, connection: socket.socket) -> _Slot:
        """The connection's slot (one already taken back when it is no longer listed)."""
        with self._lock:
            return self._connections.get(connection) or _Slot(NEW, time.monotonic(), reclaimed=True)

    def enter(self, slot: _Slot, state: str, since: float | None = None) -> bool:
        """Move a connection to ``state``; False when the server has taken it back."""
        with self._lock:
            if slot.reclaimed:
                return False
            slot.state, slot.since = state, time.monotonic() if since is None else since
            return True

    def handle_error(self, request, client_address) -> None:
        """A connection that failed outside a request (a reset, a timeout): one structured line, no traceback."""
        error = sys.exc_info()[1]
        self.log({"event": "connection_error", "client": client_address[0],
                  "error": f"{type(error).__name__}: {error}"})

    def shutdown_request(self, request) -> None:
        with self._lock:                         # the slot is freed however the connection ended
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def drain(self, timeout: float = 30.0) -> None:
        """Stop after the requests in flight (for at most ``timeout`` seconds, then the stragglers' connections
        are cut): call from another thread than :meth:`serve_forever`'s, which keeps answering new connections
        503 until the end."""
        with self._lock:
            if self.draining.is_set():           # drained once (or draining in another thread)
                return
            self.draining.set()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for connection, slot in self._connections.items():
                    if slot.state != BUSY and not slot.reclaimed:      # an idle keep-alive connection reads EOF
                        slot.reclaimed = True
                        _cut(connection, socket.SHUT_RD)
                left = len(self._connections)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        with self._lock:
            for connection in self._connections:   # a client trickling its body cannot hold the exit
                _cut(connection, socket.SHUT_RDWR)
        self.shutdown()                         # no new connections
        self.server_close()                     # joins handler threads: each in-flight request is answered
        self.service.close()


def _cut(connection: socket.socket, how: int) -> None:
    try:
        connection.shutdown(how)
    except OSError:
        pass


class _DeadlineReader(io.RawIOBase):
    """The connection's socket as the handler reads it: each read waits at most ``idle`` seconds (a silence) and
    never past ``deadline`` (a ``time.monotonic()`` value, None for none), so a client sending a byte at a time
    cannot stretch a head or a body; once the server has taken the connection back, only what already arrived is
    read, then :class:`_Reclaimed` is raised."""

    def __init__(self, connection: socket.socket, slot: _Slot, idle: float):
        super().__init__()
        self._socket, self._slot, self.idle = connection, slot, idle
        self.deadline: float | None = None
        self._timeout: float | None = -1.0

    def use_timeout(self, seconds: float) -> None:
        """The socket's timeout (for its reads and writes), set only when it changes: each change is a system
        call."""
        if seconds != self._timeout:
            self._socket.settimeout(seconds)
            self._timeout = seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._slot.reclaimed:
            received = self._arrived(buffer)
            if not received:
                raise _Reclaimed
            return received
        timeout = self.idle
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:             # past it: what had arrived by then still counts (a late thread is no
                received = self._arrived(buffer)       # client's fault), waiting for more does not
                if received is None:
                    raise TimeoutError("deadline passed")
                return received
        self.use_timeout(timeout)
        received = self._socket.recv_into(buffer)
        if not received and self._slot.reclaimed:
            raise _Reclaimed
        return received

    def _arrived(self, buffer) -> int | None:
        """What the socket holds now, without waiting: None when nothing (0 at the end of the stream)."""
        self.use_timeout(0.0)
        try:
            return self._socket.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return None


class _HeadLines:
    """``readline`` of the request's headers within what is left of :data:`MAX_HEAD_BYTES` (parse_request reads
    them through ``self.rfile``)."""

    def __init__(self, rfile, budget: int):
        self._rfile, self._budget = rfile, budget

    def readline(self, size: int = -1) -> bytes:
        limit = self._budget + 1 if size < 0 else min(size, self._budget + 1)
        line = self._rfile.readline(limit)
        self._budget -= len(line)
        if self._budget < 0:
            raise _HeadTooLarge
        return line


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
        self.slot = self.server.slot(self.connection)
        self.rfile.close()                              # every read goes through the deadlines instead
        self.reader = _DeadlineReader(self.connection, self.slot, self.server.request_timeout)
        self.rfile = io.BufferedReader(self.reader, io.DEFAULT_BUFFER_SIZE)
        self.requestline, self.request_version, self.command, self.path = "", self.protocol_version, None, ""
        self._length: int | None = None

    def log_message(self, format, *args) -> None:     # noqa: A002 - the access log is structured, below
        pass

    def _answer(method: str):
        """``do_<METHOD>``: every method goes through one router, which answers the unknown ones with a 405."""
        return lambda self: self._handle(method)

    do_GET, do_POST, do_PUT, do_DELETE, do_PATCH, do_OPTIONS = map(
        _answer, ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
    del _answer

    # --- one request, from its first byte -----------------------------------------------------------------------

    def handle_one_request(self) -> None:
        """Wait for a request (its first request: within the header deadline from the connection's start; later
        ones: ``request_timeout``), read its head within the header deadline, serve it, and mark the connection
        idle again.  A head that does not arrive in time is a 408, one too large a 431 or 414, a malformed request
        line a 400, an HTTP version other than 1.x a 505; a connection taken back while sending its head a 503."""
        server, slot, reader = self.server, self.slot, self.reader
        first = slot.state == NEW
        self.close_connection = True
        reader.deadline = slot.since + server.header_timeout if first else None
        try:
            if not self.rfile.peek(1):              # the client closed the connection
                return
        except TimeoutError:                        # silent: closed without an answer, like an idle keep-alive
            server.service.metrics.connections_closed.inc(reason="idle_timeout")
            return
        except (_Reclaimed, OSError):               # taken back (counted then) or reset
            return
        started = slot.since if first else time.monotonic()
        if not server.enter(slot, HEAD, since=started):
            return self.send_error(503, self._reclaimed_reason())
        reader.deadline = started + server.header_timeout
        try:
            if not self._read_head():
                return
        except TimeoutError:
            server.service.metrics.connections_closed.inc(reason="head_timeout")
            return self.send_error(408, f"the request line and headers did not arrive within "
                                        f"{server.header_timeout:g} s (--header-timeout)")
        except _Reclaimed:
            return self.send_error(503, self._reclaimed_reason())
        except _HeadTooLarge:
            return self.send_error(431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
        except OSError:                              # a reset mid-head: nobody to answer
            return
        if not server.enter(slot, BUSY):
            return self.send_error(503, self._reclaimed_reason())
        reader.deadline = None
        try:
            if not _TOKEN.fullmatch(self.command):   # not a method at all (RFC 9110 token): a malformed request
                return self.send_error(400, f"method {_shown(self.command)} is not a valid method name")
            method = getattr(self, "do_" + self.command, None)
            if method is None:     # a 405 rather than RFC 9110's 501: no input earns a 5xx from this service
                return self.send_error(405, f"method {_shown(self.command)} is not supported (GET and POST are)",
                                       headers={"Allow": "GET, POST"})
            method()
            self.wfile.flush()
        except OSError:                              # the client stopped reading or left: nobody to answer
            self.close_connection = True
        finally:
            server.enter(slot, IDLE)

    def _reclaimed_reason(self) -> str:
        if self.server.draining.is_set():
            return "the service is shutting down"
        return ("every connection slot is taken and this connection's request head was the slowest to arrive: "
                "it was closed to serve others; retry")

    def _read_head(self) -> bool:
        """The request line and headers, strictly: False when an error answer was sent."""
        line = self.rfile.readline(MAX_HEAD_BYTES + 1)
        for _ in range(EMPTY_LINES):                # RFC 9112 2.2: empty lines before a request line are ignored
            if line not in (b"\r\n", b"\n"):
                break
            line = self.rfile.readline(MAX_HEAD_BYTES + 1)
        if len(line) > MAX_HEAD_BYTES:
            self.send_error(414, f"the request line exceeds {MAX_HEAD_BYTES} bytes")
            return False
        if not line.endswith(b"\n"):               # the client closed its side mid-line
            self.send_error(400, "the request line ended before its end of line")
            return False
        self.raw_requestline = line
        self.requestline = requestline = line.decode("iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if len(words) != 3:
            self.send_error(400, f"malformed request line {_shown(requestline)} (want: METHOD TARGET HTTP/1.1)")
            return False
        if words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            if _VERSION.fullmatch(words[2]):
                self.send_error(505, f"{_shown(words[2])} is not supported (HTTP/1.0 or HTTP/1.1)")
            else:
                self.send_error(400, f"malformed HTTP version {_shown(words[2])}")
            return False
        real, self.rfile = self.rfile, _HeadLines(self.rfile, MAX_HEAD_BYTES - len(line))
        try:
            return self.parse_request()
        finally:
            self.rfile = real

    def send_error(self, code, message=None, explain=None, headers: dict | None = None) -> None:
        """http.server's own refusals and the connection's (a malformed request line, a late head, too many
        headers): JSON like the rest, logged and counted; the connection closes after."""
        self.close_connection = True
        self.request_version = self.protocol_version      # always answered in HTTP/1.1, never as HTTP/0.9
        text = message or explain or "bad request"
        try:
            self._send(code, json.dumps({"error": one_line(text)}).encode(), headers=headers)
        except OSError:
            pass
        self.server.service.metrics.requests.inc(route="unknown", code=str(code))
        self.server.log({"event": "request", "method": self.command or "", "path": self._path() or "",
                         "route": "unknown", "status": code, "client": self.client_address[0], "error": text})

    def _path(self) -> str | None:
        """The request target's path, None when it does not parse."""
        try:
            return urlsplit(self.path).path
        except ValueError:
            return None

    # --- one request --------------------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
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
            self.server.log({"event": "request", "method": method, "path": self._path() or "", "route": route,
                             "status": status, "ms": round(elapsed * 1000, 3), "client": self.client_address[0],
                             **fields})

    def _respond(self, method: str) -> tuple[str, int, dict]:
        """Answer the request; returns (route, status, log fields)."""
        path = self._path()
        if path is None or not path.startswith("/"):
            self._refuse_body()
            return "unknown", self._error(400, f"malformed request target {_shown(self.path)}"), {}
        try:
            self._length = self._framing()
        except ProtocolError as exc:
            return "unknown", self._error(exc.status, str(exc)), {}
        matched = [(name, auth, match) for m, pattern, name, auth in _COMPILED
                   if (match := pattern.fullmatch(path)) is not None and m == method]
        if not matched:
            known = any(pattern.fullmatch(path) for _, pattern, _, _ in _COMPILED)
            status = 405 if known else 404
            self._refuse_body()
            return "unknown", self._error(status, f"{method} {_shown(path)}: " + ("method not allowed" if known else
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
            extra = {"exit_code": int(exc.exit_code), "kind": type(exc).__name__}
            if status >= 500 and status != 503:      # the service's own files or machine: logged, not told
                self._log_failure(route, exc)
                return route, self._error(status, "internal error (logged by the service)", extra=extra), {}
            return route, self._error(status, str(exc), extra=extra), {}
        except Exception as exc:     # a bug or the machine failing: a 500, and the service stays up
            self.close_connection = True
            self._log_failure(route, exc)
            return route, self._error(500, "internal error (logged by the service)"), {}

    def _log_failure(self, route: str, exc: BaseException) -> None:
        """A 5xx's cause goes to the log (one JSON line, the traceback escaped in it), never to the client."""
        self.server.log({"event": "error", "route": route, "error": f"{type(exc).__name__}: {exc}",
                         "traceback": "".join(traceback.format_exception(exc)).rstrip()})

    def _authorized(self) -> bool:
        if self.server.token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.server.token.encode())

    def _check_model(self, model: str, version: str | None) -> None:
        service = self.server.service
        if model != service.name:
            raise ProtocolError(f"unknown model {_shown(model)} (this service serves '{service.name}')", 404)
        if version not in (None, "", "1"):
            raise ProtocolError(f"model '{model}' has no version {_shown(version)} (it has: 1)", 404)

    def _framing(self) -> int | None:
        """The body's length from the headers, strictly (any request): conflicting or malformed Content-Length
        headers, or Content-Length beside Transfer-Encoding, are a 400 (a proxy in front could frame the request
        otherwise: request smuggling).  None without a Content-Length."""
        lengths = self.headers.get_all("Content-Length") or []
        if lengths and "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise ProtocolError("Content-Length and Transfer-Encoding together are refused; send Content-Length")
        values = {value.strip(" \t") for value in lengths}
        if len(values) > 1:
            self.close_connection = True
            raise ProtocolError(f"{len(lengths)} different Content-Length headers; send one")
        if not values:
            return None
        value = values.pop()
        if not _BYTE_COUNT.fullmatch(value):
            self.close_connection = True
            raise ProtocolError(f"Content-Length {_shown(value)} is not a byte count")
        return int(value)

    def _read_body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise ProtocolError("chunked bodies are not accepted; send Content-Length", 411)
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        size = self._length                       # checked by _framing() before the route
        if size is None:
            self.close_connection = True
            raise ProtocolError("a POST needs a Content-Length header", 411)
        if size > self.server.max_body:
            self.close_connection = True          # the body is not read: the connection cannot be reused
            raise ProtocolError(f"the body of {size} bytes exceeds the limit of {self.server.max_body} bytes "
                                "(--max-body-mb)", 413)
        body = self._receive(size)
        if encoding != "identity":       # compressed bodies could expand past every limit: refused
            raise ProtocolError(f"Content-Encoding {_shown(encoding)} is not accepted; send the body uncompressed",
                                415)
        return body

    def _receive(self, size: int) -> bytes:
        """``size`` bytes of body, in chunks, each read bounded by the rate deadline: byte ``n`` must arrive by
        ``start + header_timeout + n / min_body_rate`` (and no silence may last ``request_timeout``)."""
        server, reader = self.server, self.reader
        started, chunks, received = time.monotonic(), [], 0
        try:
            while received < size:
                if server.min_body_rate > 0:
                    reader.deadline = started + server.header_timeout + (received + 1) / server.min_body_rate
                chunk = self.rfile.read1(min(size - received, BODY_CHUNK))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except (OSError, _Reclaimed) as exc:      # too slow, silent, or a reset mid-body
            self.close_connection = True
            if isinstance(exc, TimeoutError):
                server.service.metrics.connections_closed.inc(reason="body_timeout")
                raise ProtocolError(
                    f"the body arrived too slowly: {received} of {size} bytes after {time.monotonic() - started:.1f} s "
                    f"(at least {server.min_body_rate / 1024:g} KB/s after {server.header_timeout:g} s, "
                    f"--min-body-rate; silences under {server.request_timeout:g} s, --request-timeout)", 408) from None
            raise ProtocolError(f"the body was not received ({type(exc).__name__})", 408) from None
        finally:
            reader.deadline = None
        if received != size:
            self.close_connection = True
            raise ProtocolError(f"the body ended after {received} of {size} bytes")
        return b"".join(chunks)

    def _refuse_body(self) -> None:
        """A request refused before its body is read: the body is not read (an unauthenticated client cannot
        make the service read megabytes), so the connection closes after the answer."""
        lengths = self.headers.get_all("Content-Length") or []
        if any(value.strip() not in ("", "0") for value in lengths) or "Transfer-Encoding" in self.headers:
            self.close_connection = True

    # --- responses ----------------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = JSON_TYPE, headers: dict | None = None) -> int:
        self.reader.use_timeout(self.server.request_timeout)      # a client that does not read cannot hold us
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
        return self._send(status, json.dumps({"error": one_line(message), **(extra or {})}).encode(), headers=headers)

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
        values = self.headers.get_all("Inference-Header-Content-Length") or []
        if not values:
            return None
        if len(set(values)) > 1:
            raise ProtocolError("different Inference-Header-Content-Length headers; send one")
        value = values[0].strip(" \t")
        if not _BYTE_COUNT.fullmatch(value):
            raise ProtocolError(f"Inference-Header-Content-Length {_shown(value)} is not a byte count")
        return int(value)

    def _parse(self, body: bytes):
        """The body as an OIP request, its lists bounded (BYTES elements by the service's --max-images)."""
        return parse_infer_request(body, self._header_length(), max_items=self.server.service.signature.max_items)

    def _route_infer(self, body: bytes) -> tuple[int, dict]:
        request = self._parse(body)
        response, header_length, fields = self.server.service.infer(request)
        headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
        content_type = JSON_TYPE if header_length is None else "application/octet-stream"
        return self._send(200, response, content_type, headers), fields

    def _route_update(self, body: bytes) -> tuple[int, dict]:
        report = self.server.service.update(self._parse(body))
        return self._json(200, report.to_json()), {"head_version": report.head_version, "images": report.n_new}

    def _route_classify(self, body: bytes) -> tuple[int, dict]:
        query = parse_qs(urlsplit(self.path).query)
        try:
            top_k = int(query.get("top_k", ["1"])[0])
        except ValueError:
            raise ProtocolError("top_k must be an integer") from None
        result = self.server.service.classify_bytes(body, top_k)
        return self._json(200, result), {"head_version": result["head_version"], "images": 1}


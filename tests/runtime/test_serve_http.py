"""``edgetl-rt serve`` on a hostile network, HTTP and protocol side (issue 27), on the committed tiny bundle: slow
clients cannot hold connection slots (slowloris, slow bodies), bursts below ``max_connections`` are queued, the
framing is strict, every list in a request is bounded, no input earns a 5xx or an exception's text, a drain
answers new connections 503, and the log stays JSON."""

from __future__ import annotations

import base64
import collections
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
import warnings

from conftest import import_blocker, request, serving
from PIL import Image

INFER = "/v2/models/digits/infer"


def _png(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def _infer_body(count: int = 1, **extra) -> bytes:
    document = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [count],
                            "data": [base64.b64encode(_png()).decode()] * count,
                            "parameters": {"content_type": "base64"}}], **extra}
    return json.dumps(document).encode()


def _raw(address: str, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read the one answer."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        try:
            connection.sendall(data)
        except OSError:             # answered and closed before all of it was sent (a refused head or body)
            pass
        return _recv_all(connection)


def _recv_all(connection: socket.socket) -> bytes:
    """One answer: its head and Content-Length bytes of body (a reset after them, as a close that found unread
    request bytes sends, is no loss)."""
    answer = b""
    while True:
        head, separator, body = answer.partition(b"\r\n\r\n")
        if separator:
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
                b"content-length:")]
            if length and len(body) >= length[0]:
                return answer
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            return answer
        if not chunk:
            return answer
        answer += chunk


def _status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head, answer[:300]
    assert body.count(b"\n") == 0, body                  # one line
    return status, json.loads(body)["error"]


def _post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", *headers, "Connection: close"]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _no_failures(events: list[dict]) -> None:
    """Nothing reached the service's error paths: no 500, no connection errors, no exception logged."""
    bad = [e for e in events if e.get("event") in ("error", "connection_error") or e.get("status") == 500]
    assert not bad, bad


# --- slow clients ------------------------------------------------------------------------------------------------


class Slowloris(threading.Thread):
    """``count`` connections, each sending one byte of a request head per ``interval`` and never finishing it;
    a connection the server closes is opened again at the next tick (as slowloris tools do).  Records the
    statuses the server answered them with."""

    HEAD = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: test\r\nX-Padding: "

    def __init__(self, address: str, count: int, interval: float = 1.0):
        super().__init__(daemon=True)
        host, port = address.split(":")
        self.target, self.count, self.interval = (host, int(port)), count, interval
        self.stop, self.connected = threading.Event(), threading.Event()
        self.answers: collections.Counter = collections.Counter()
        self.opened = 0

    def run(self) -> None:
        sent: dict[socket.socket, int] = {}
        while not self.stop.is_set():
            while len(sent) < self.count:
                try:
                    connection = socket.create_connection(self.target, timeout=5)
                except OSError:
                    break
                connection.setblocking(False)
                sent[connection] = 0
                self.opened += 1
            for connection in list(sent):
                try:
                    answer = connection.recv(4096)
                    self.answers[answer.split(b" ", 2)[1].decode() if answer else "closed"] += 1
                    connection.close()
                    del sent[connection]
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    connection.close()
                    del sent[connection]
                    continue
                position = sent[connection]
                try:
                    connection.send(self.HEAD[position:position + 1] or b"a")
                    sent[connection] = position + 1
                except OSError:
                    connection.close()
                    del sent[connection]
            self.connected.set()
            self.stop.wait(self.interval)
        for connection in sent:        # what the server answered since the last tick
            try:
                answer = connection.recv(4096)
                self.answers[answer.split(b" ", 2)[1].decode() if answer else "closed"] += 1
            except OSError:
                pass
            connection.close()


def test_a_slowloris_of_100_connections_does_not_starve_normal_clients(tiny_bundle):
    """At default options (64 slots, 5 s header deadline): 100 connections trickling one header byte a second hold
    more than every slot, yet every normal request is answered 200; their slots are reclaimed."""
    with serving(tiny_bundle) as (server, address, events):
        attack = Slowloris(address, 100)
        attack.start()
        try:
            assert attack.connected.wait(30)
            # the attack holds every slot once the connections' first bytes are read
            assert _wait(lambda: sum(s.state == "head" for s in server._connections.values()) == 64, 30)
            statuses = [request(address, "POST", INFER, _infer_body())[0] for _ in range(10)]
            host, port = address.split(":")
            keep_alive = http.client.HTTPConnection(host, int(port), timeout=30)
            for _ in range(10):
                keep_alive.request("POST", INFER, _infer_body())
                response = keep_alive.getresponse()
                response.read()
                statuses.append(response.status)
            keep_alive.close()
        finally:
            attack.stop.set()
            attack.join(30)
        reclaimed = server.service.metrics.connections_closed.value(reason="reclaimed")
    assert statuses == [200] * 20
    assert attack.opened >= 100 and reclaimed >= 10        # each new normal connection took an attacker's slot
    assert attack.answers["503"] >= 10                      # a reclaimed head is told why
    _no_failures(events)


def test_a_slow_head_or_body_gets_a_408_and_frees_its_slot(tiny_bundle):
    options = {"header_timeout": 0.5, "min_body_rate": 2048}
    with serving(tiny_bundle, http=options) as (server, address, events):
        host, port = address.split(":")
        head = b"GET /v2 HTTP/1.1\r\nHost: test\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            answer = None
            for byte in head:             # one byte every 0.1 s: 3.4 s for the whole head, deadline 0.5 s
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    break
                if (answer := _ready(slow)) is not None:
                    break
                time.sleep(0.1)           # the attacker's pace, not a synchronisation
            status, error = _status_and_error(answer or _recv_all(slow))
        assert status == 408 and "--header-timeout" in error
        with socket.create_connection((host, int(port)), timeout=10) as silent:   # never sends: closed, unanswered
            assert silent.recv(4096) == b""
        body_head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=10) as slow_body:
            slow_body.sendall(body_head)
            answer = None
            for _ in range(40):           # 1 KB/s against at least 2 KB/s after 0.5 s
                try:
                    slow_body.send(b"x" * 100)
                except OSError:
                    break
                if (answer := _ready(slow_body)) is not None:
                    break
                time.sleep(0.1)
            status, error = _status_and_error(answer or _recv_all(slow_body))
        assert status == 408 and "too slowly" in error and "--min-body-rate" in error
        assert _wait(lambda: not server._connections)           # every slot is free again
        metrics = server.service.metrics.connections_closed
        assert metrics.value(reason="head_timeout") == 1 and metrics.value(reason="body_timeout") == 1
        assert metrics.value(reason="idle_timeout") == 1
        assert request(address, "POST", INFER, _infer_body())[0] == 200
    _no_failures(events)


def _ready(connection: socket.socket) -> bytes | None:
    """What the server answered so far, None while it has not."""
    connection.setblocking(False)
    try:
        return connection.recv(4096)
    except BlockingIOError:
        return None
    finally:
        connection.setblocking(True)


def _wait(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- bursts and the connection cap ---------------------------------------------------------------------------------


def test_a_burst_up_to_max_connections_is_queued_not_dropped(tiny_bundle):
    """The listen backlog is ``max_connections``: 64 connections opened while the accept loop is not even running
    all complete their handshake at once and are all answered once it runs (a backlog of 5 took 6)."""
    from edgetl.runtime.serving.http import ServeHTTP
    from edgetl.runtime.serving.service import InferenceService, ServeSettings

    service = InferenceService(tiny_bundle, ServeSettings(artifact="onnx", name="digits"))
    server = ServeHTTP(("127.0.0.1", 0), service, max_connections=64)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    connections, errors = [], []
    try:
        for _ in range(64):                # the accept loop is not running: only the backlog holds them
            try:
                connection = socket.create_connection(server.server_address, timeout=0.5)
                connection.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                connections.append(connection)
            except OSError as exc:
                errors.append(type(exc).__name__)
        assert not errors and len(connections) == 64
        thread.start()
        statuses = collections.Counter()
        for connection in connections:
            connection.settimeout(30)
            answer = b""
            while chunk := connection.recv(4096):
                answer += chunk
            statuses[int(answer.split(b" ", 2)[1])] += 1
        assert statuses == {200: 64}
    finally:
        for connection in connections:
            connection.close()
        if thread.is_alive():
            server.drain()
            thread.join(10)
        else:
            server.server_close()
            service.close()


def test_past_max_connections_new_ones_get_503_and_idle_ones_give_their_slot(tiny_bundle):
    with serving(tiny_bundle, http={"max_connections": 3}) as (server, address, events):
        host, port = address.split(":")
        busy = []
        for _ in range(3):                 # three requests in flight (their bodies half sent)
            connection = socket.create_connection((host, int(port)), timeout=10)
            connection.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n"
                               b"Connection: close\r\n\r\n12345")
            busy.append(connection)
        assert _wait(lambda: sum(s.state == "busy" for s in server._connections.values()) == 3)
        status, error = _status_and_error(_raw(address, b"GET /v2 HTTP/1.1\r\nHost: test\r\n\r\n"))
        assert status == 503 and "too many open connections" in error
        for connection in busy:
            connection.sendall(b"67890")   # not JSON: a 400, and the slot is free again
            assert _status_and_error(_recv_all(connection))[0] == 400
            connection.close()
        assert _wait(lambda: not server._connections)
        idle = []
        for _ in range(3):                 # three keep-alive clients, idle after one request each
            client = http.client.HTTPConnection(host, int(port), timeout=10)
            client.request("GET", "/v2/health/ready")
            assert client.getresponse().read()
            idle.append(client)
        assert _wait(lambda: all(s.state == "idle" for s in server._connections.values()))
        assert request(address, "GET", "/v2")[0] == 200                # the oldest idle one gave its slot
        assert idle[0].sock.recv(10) == b""                             # ... closed without a word
        assert server.service.metrics.connections_closed.value(reason="reclaimed") == 1
        for client in idle:
            client.close()
    _no_failures(events)


# --- strict HTTP ---------------------------------------------------------------------------------------------------


def test_malformed_heads_and_framing_get_a_json_4xx_and_no_exception(tiny_bundle):
    body = _infer_body()
    many_headers = "".join(f"X-Filler-{i}: {'v' * 1000}\r\n" for i in range(70))
    cases = [
        ("HTTP/2.0", b"GET /v2 HTTP/2.0\r\nHost: test\r\n\r\n", 505),
        ("HTTP/3", b"GET /v2 HTTP/3\r\n\r\n", 505),
        ("garbage request line", b"GARBAGE\r\n\r\n", 400),
        ("HTTP/0.9 request", b"GET /v2\r\n\r\n", 400),
        ("four words", b"GET /v2 HTTP/1.1 extra\r\n\r\n", 400),
        ("bad version", b"GET /v2 HTTX/1.1\r\n\r\n", 400),
        ("unparsable target", b"GET http://[/v2 HTTP/1.1\r\nHost: test\r\n\r\n", 400),
        ("request line over 64 KiB", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
        ("head over 64 KiB", f"GET /v2 HTTP/1.1\r\n{many_headers}\r\n".encode(), 431),
        ("two different Content-Length", _post(INFER, body, f"Content-Length: {len(body)}", "Content-Length: 5"),
         400),
        ("Content-Length and Transfer-Encoding", _post(INFER, body, f"Content-Length: {len(body)}",
                                                       "Transfer-Encoding: chunked"), 400),
        ("signed Content-Length", _post(INFER, body, f"Content-Length: +{len(body)}"), 400),
        ("Content-Length with an underscore", _post(INFER, body, "Content-Length: 1_0"), 400),
        ("Content-Length of superscript two", _post(INFER, body, "Content-Length: \xb2"), 400),
        ("Content-Length of 5000 digits", _post(INFER, body, "Content-Length: " + "9" * 5000), 400),
        ("Content-Length on a GET, malformed", b"GET /v2 HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        ("Inference-Header-Content-Length of superscript two",
         _post(INFER, body, "Inference-Header-Content-Length: \xb2"), 400),
        ("Inference-Header-Content-Length of 5000 digits",
         _post(INFER, body, "Inference-Header-Content-Length: " + "9" * 5000), 400),
        ("Inference-Header-Content-Length twice, different",
         _post(INFER, body, "Inference-Header-Content-Length: 5", "Inference-Header-Content-Length: 6"), 400),
        ("unsupported method", b"BREW /v2 HTTP/1.1\r\nHost: test\r\n\r\n", 405),
    ]
    with serving(tiny_bundle) as (_, address, events):
        for description, data, expected in cases:
            status, error = _status_and_error(_raw(address, data))
            assert status == expected, (description, error)
            assert "Traceback" not in error and len(error) < 300, (description, error)
        assert request(address, "POST", INFER, body)[0] == 200
    statuses = [e["status"] for e in events if e.get("event") == "request"]
    # each refusal logged once, as JSON (a line is written after its answer: in any order)
    assert collections.Counter(statuses) == collections.Counter([expected for _, _, expected in cases] + [200])
    _no_failures(events)


# --- bounded lists and no 5xx --------------------------------------------------------------------------------------


def _binary(document: dict, blob: bytes = b"") -> tuple[bytes, dict]:
    head = json.dumps(document).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def test_every_list_in_a_request_is_bounded_and_no_input_earns_a_5xx(tiny_bundle):
    image = json.loads(_infer_body())["inputs"][0]
    label = {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["red"]}
    fp32 = {"name": "input", "datatype": "FP32"}
    cases = [
        # the 40,000 repeated outputs of the issue (64 images: a 507 MB answer before), and a short repeat
        ("40,000 outputs", INFER, json.dumps({"inputs": [{**image, "shape": [64], "data": image["data"] * 64}],
                                              "outputs": [{"name": "logits"}] * 40_000}).encode(), {}, 400),
        ("an output twice", INFER, _infer_body(outputs=[{"name": "logits"}, {"name": "logits"}]), {}, 400),
        ("17 inputs", INFER, json.dumps({"inputs": [{**image, "name": f"i{i}"} for i in range(17)]}).encode(), {},
         400),
        ("33 parameters", INFER, _infer_body(parameters={f"p{i}": i for i in range(33)}), {}, 400),
        ("33 input parameters", INFER, json.dumps({"inputs": [
            {**image, "parameters": {"content_type": "base64", **{f"p{i}": i for i in range(32)}}}]}).encode(), {},
         400),
        ("a shape of rank 9", INFER, json.dumps({"inputs": [{**fp32, "shape": [1] * 9, "data": [0.0]}]}).encode(),
         {}, 400),
        ("shape [0, 10**30], binary size 0", INFER,
         *_binary({"inputs": [{**fp32, "shape": [0, 10 ** 30], "parameters": {"binary_data_size": 0}}]}), 400),
        ("shape [10**30], inline", INFER, json.dumps({"inputs": [{**fp32, "shape": [10 ** 30], "data": [1.0]}]})
         .encode(), {}, 400),
        ("257 BYTES elements (over --max-images)", INFER,
         json.dumps({"inputs": [{**image, "shape": [257], "data": image["data"] * 257}]}).encode(), {}, 413),
        ("a billion binary BYTES elements", INFER,
         *_binary({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [10 ** 9],
                               "parameters": {"binary_data_size": 300}}]}, b"\0" * 300), 413),
        ("257 labels in an update", "/v2/models/digits/update",
         json.dumps({"inputs": [image, {**label, "shape": [257], "data": ["red"] * 257}]}).encode(), {}, 413),
        ("data nested 9 deep", INFER, json.dumps({"inputs": [{**fp32, "shape": [1], "data": [[[[[[[[[1.0]]]]]]]]]}]})
         .encode(), {}, 400),
        ("200,000 JSON objects", INFER, b'{"inputs": [], "x": [' + b"{}," * 200_000 + b"{}]}", {}, 400),
        ("a datatype that is a list", INFER, json.dumps({"inputs": [{**fp32, "datatype": [], "shape": [1],
                                                                     "data": [1]}]}).encode(), {}, 400),
        ("an integer of 5000 digits", INFER, b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], '
                                             b'"data": [' + b"9" * 5000 + b"]}]}", {}, 400),
        ("an id that is an object", INFER, _infer_body(id={"a": 1}), {}, 400),
        ("a 300-character output name", INFER, _infer_body(outputs=[{"name": "x" * 300}]), {}, 400),
        ("an update parameter of 400 digits", "/v2/models/digits/update",
         json.dumps({"inputs": [image, label], "parameters": {"holdout": 10 ** 400}}).encode(), {}, 400),
    ]
    with serving(tiny_bundle) as (_, address, events):
        for description, path, body, headers, expected in cases:
            status, answer, _ = request(address, "POST", path, body, headers)
            assert status == expected, (description, answer[:300])
            error = json.loads(answer)["error"]
            assert "\n" not in error and len(error) < 300 and "Traceback" not in error, (description, error)
        status, answer, _ = request(address, "POST", INFER, _infer_body(outputs=[{"name": "label"},
                                                                                 {"name": "logits"}]))
        assert status == 200 and [o["name"] for o in json.loads(answer)["outputs"]] == ["label", "logits"]
    _no_failures(events)


def test_a_500_tells_the_client_nothing_and_logs_the_cause(tiny_bundle):
    with serving(tiny_bundle) as (server, address, events):
        def broken(request):
            raise RuntimeError("secret detail at /srv/models/private")

        server.service.infer = broken
        status, answer, _ = request(address, "POST", INFER, _infer_body())
        assert status == 500 and json.loads(answer) == {"error": "internal error (logged by the service)"}
        assert b"secret" not in answer and b"RuntimeError" not in answer
        assert request(address, "GET", "/v2/health/live")[0] == 200        # still serving
    logged = [e for e in events if e.get("event") == "error"]
    assert len(logged) == 1 and "secret detail" in logged[0]["error"] and "broken" in logged[0]["traceback"]


# --- the drain and the log -----------------------------------------------------------------------------------------


def test_a_drain_answers_new_connections_503_and_finishes_the_request_in_flight(tiny_bundle):
    body = _infer_body()
    with serving(tiny_bundle) as (server, address, events):
        host, port = address.split(":")
        in_flight = socket.create_connection((host, int(port)), timeout=30)
        in_flight.sendall(_post(INFER, body)[:-len(body) + 20])
        assert _wait(lambda: any(s.state == "busy" for s in server._connections.values()))
        drainer = threading.Thread(target=server.drain)
        drainer.start()
        assert _wait(server.draining.is_set)
        for _ in range(3):                  # answered at once, not left to hang and be reset
            status, error = _status_and_error(_raw(address, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n",
                                                   timeout=5))
            assert status == 503 and "shutting down" in error
        in_flight.sendall(body[20:])
        answer = _recv_all(in_flight)
        in_flight.close()
        assert int(answer.split(b" ", 2)[1]) == 200 and b"Connection: close" in answer
        drainer.join(30)
        assert not drainer.is_alive()
        assert server.service.metrics.connections_closed.value(reason="draining") == 3
    _no_failures(events)


def test_warnings_and_library_logs_reach_the_log_as_json_lines():
    import logging

    from edgetl.runtime.cli.serve import capture_into

    events = []
    shown = warnings.showwarning
    with capture_into(events.append), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a python warning", RuntimeWarning, stacklevel=1)
        logging.getLogger("PIL.PngImagePlugin").warning("a library's %s", "record")
        failing = threading.Thread(target=lambda: 1 / 0, name="probe-thread")
        failing.start()
        failing.join()
    assert warnings.showwarning is shown                  # put back
    assert [e["event"] for e in events] == ["warning", "warning", "error"]
    assert events[0]["category"] == "RuntimeWarning" and events[0]["where"].startswith("test_serve_http.py:")
    assert events[1] == {"event": "warning", "logger": "PIL.PngImagePlugin", "message": "a library's record"}
    assert events[2]["thread"] == "probe-thread" and "ZeroDivisionError" in events[2]["error"]


#: ``serve`` as a device runs it, with a probe: GET /v2 raises a Python, a numpy and a Pillow warning and logs a
#: library record while serving.
SERVE_WARNING = import_blocker("torch", "onnx") + textwrap.dedent("""
    import logging, warnings
    import numpy as np
    from PIL import Image
    from edgetl.runtime.serving.service import InferenceService
    original = InferenceService.server_metadata
    def noisy(self):
        warnings.warn("a python warning", UserWarning)
        np.log(np.zeros(1))
        Image._decompression_bomb_check((10000, 9000))
        logging.getLogger("PIL.Image").warning("a library record")
        return original(self)
    InferenceService.server_metadata = noisy
    from edgetl.runtime.cli import main
    main()
""")


def test_serve_keeps_stderr_json_under_warnings_and_drains_on_sigterm(tiny_bundle, child_python):
    process = subprocess.Popen([child_python, "-c", SERVE_WARNING, "serve", str(tiny_bundle), "--port", "0",
                                "--name", "digits", "--artifact", "onnx", "--no-measure"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONWARNINGS": "default"})
    try:
        line = process.stdout.readline()
        assert line.startswith("serving digits at http://127.0.0.1:"), process.stderr.read()
        address = line.split("http://")[1].split()[0]
        assert request(address, "GET", "/v2")[0] == 200
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(30) == 0
        lines = process.stderr.read().splitlines()
    finally:
        if process.poll() is None:
            process.kill()
    events = [json.loads(x) for x in lines]             # every line is JSON: fails on any plain text
    warned = [e for e in events if e["event"] == "warning"]
    assert {e.get("category") for e in warned} >= {"UserWarning", "RuntimeWarning", "DecompressionBombWarning"}
    assert any(e.get("logger") == "PIL.Image" for e in warned)
    assert events[-1]["event"] == "stopped"


def test_the_strict_framing_still_takes_what_clients_may_send(tiny_bundle):
    """One Content-Length with optional whitespace or leading zeros, repeated identically: the body is read (and
    here found not to be JSON), the framing is not refused; an empty line before a request line is skipped."""
    with serving(tiny_bundle) as (_, address, events):
        for headers in (["Content-Length: 5"], ["Content-Length:  05 "], ["Content-Length: 5", "Content-Length: 5"]):
            status, error = _status_and_error(_raw(address, _post(INFER, b'{"a":', *headers)))
            assert status == 400 and "not valid JSON" in error, headers
        answer = _raw(address, b"\r\nGET /v2/health/live HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"live":true}')
    _no_failures(events)

"""``edgetl-rt serve``: the bundle as an Open Inference Protocol (KServe v2) service that keeps learning.

The library does the work (:mod:`edgetl.runtime.serving`); this module reads the options, opens the model before
binding (a bad bundle fails fast, one line), writes structured logs (one JSON object per line on stderr) and turns
SIGTERM or Ctrl-C into a drain: requests in flight are answered, then the process exits 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path

import click

from ..errors import ConfigError
from .options import json_option, reject_option, trusted_keys_option, with_model_options
from .output import QUIET, verbosity


def _logger(quiet: bool, access_log: bool):
    """Structured logs: one JSON object per line on stderr; quiet keeps warnings, errors and 5xx answers."""
    lock = threading.Lock()

    def log(event: dict) -> None:
        kind = event.get("event")
        if kind == "request" and (not access_log or (quiet and event.get("status", 0) < 500)):
            return
        if quiet and kind not in ("request", "warning", "error"):
            return
        line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **event},
                          default=str)
        with lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
    return log


class _LogHandler(logging.Handler):
    """A library's ``logging`` record (warning or worse) as one structured line."""

    def __init__(self, log):
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log({"event": "warning" if record.levelno < logging.ERROR else "error", "logger": record.name,
                       "message": record.getMessage()})
        except Exception:     # noqa: BLE001 - a log line must never fail a request
            self.handleError(record)


@contextlib.contextmanager
def capture_into(log):
    """While serving, everything that would print plain text on stderr reaches the structured log as one JSON line
    instead: Python, numpy and Pillow warnings (``warnings.warn``: event "warning"), libraries' ``logging`` records
    (warning or worse), and exceptions that end a thread or go unraisable (event "error")."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        log({"event": "warning", "category": category.__name__, "message": str(message),
             "where": f"{Path(filename).name}:{lineno}"})

    def thread_failed(args) -> None:
        if args.exc_type is not SystemExit:
            log({"event": "error", "thread": getattr(args.thread, "name", None),
                 "error": f"{args.exc_type.__name__}: {args.exc_value}"})

    def unraisable(args) -> None:
        log({"event": "error", "error": f"{args.exc_type.__name__}: {args.exc_value}",
             "message": args.err_msg or "unraisable exception"})

    saved = warnings.showwarning, threading.excepthook, sys.unraisablehook
    handler, root = _LogHandler(log), logging.getLogger()
    warnings.showwarning, threading.excepthook, sys.unraisablehook = show, thread_failed, unraisable
    root.addHandler(handler)
    try:
        yield
    finally:
        warnings.showwarning, threading.excepthook, sys.unraisablehook = saved
        root.removeHandler(handler)


def read_token(path: str, log) -> str:
    """The bearer token: the file's text, stripped; refused when empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}", option="token_file") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"the token file {path} must hold one token without spaces", option="token_file")
    if Path(path).stat().st_mode & 0o077:
        log({"event": "warning", "message": f"token file {path} is readable by other users (chmod 600 it)"})
    return token


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the service to the network: use --token-file then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port (0: any free port, printed at start).")
@click.option("--name", default=None, help="Model name in the routes (default: the bundle folder's name).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most inputs (images or texts) per backbone batch (1 turns dynamic batching off).")
@click.option("--max-wait-ms", type=click.FloatRange(0, 1000), default=2.0, show_default=True,
              help="How long a batch waits for requests being read after its first (a request alone runs "
                   "at once).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding a bearer token every route but health requires.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=8.0, show_default=True,
              help="Largest request body accepted (413 beyond).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=4096 * 4096, show_default=True,
              help="Largest image accepted, in pixels (a likely decompression bomb beyond).")
@click.option("--decode-pixels", type=click.IntRange(min=1), default=2 * 4096 * 4096, show_default=True,
              help="Decoded pixels held at once by all requests together (images wait for room, at most "
                   "--request-timeout, then 503; an image larger than this is refused): bounds the decoding memory.")
@click.option("--decode-threads", type=click.IntRange(min=1), default=None,
              help="Threads decoding images, shared by all requests  [default: one per usable core]")
@click.option("--inputs-mb", type=click.FloatRange(min=0.001), default=160.0, show_default=True,
              help="Preprocessed inputs (float32) of all requests waiting for the backbone, in MB (a request "
                   "needing more waits to be alone): bounds their memory.")
@click.option("--max-images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most inputs (images or texts) in one request (413 beyond).")
@click.option("--max-connections", type=click.IntRange(min=1), default=64, show_default=True,
              help="Open connections served at once (503 beyond).")
@click.option("--request-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds a connection may stay silent mid-request or idle between requests.")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds for a request line and its headers, however they trickle in (from the connection's "
                   "start for its first request; 408 beyond).")
@click.option("--min-body-rate", type=click.FloatRange(min=0), default=16.0, show_default=True,
              help="Lowest average rate of a request body in KB/s, counted after a grace of --header-timeout "
                   "(408 below; 0: only --request-timeout bounds a slow body).")
@click.option("--poll-ms", type=click.FloatRange(min=1), default=50.0, show_default=True,
              help="How often the committed head version is checked (updates from other processes).")
@click.option("--drift-window", type=click.IntRange(min=0), default=64, show_default=True,
              help="Served inputs per drift window: each complete window is scored against the training statistics "
                   "(/metrics edgetl_drift_*; 0: no drift monitor).")
@click.option("--drift-false-alarms", type=click.FloatRange(min=0, max=1000, min_open=True, max_open=True),
              default=1.0, show_default=True,
              help="The drift alarm level: clean windows per 1,000 allowed over it (set on the store's held-out "
                   "rows).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log every request (JSON lines on stderr).")
@click.option("--adapt-on-drift", is_flag=True,
              help="Adapt to the served stream without labels when its drift score passes the alarm level (the "
                   "label-free methods of adapt, fitted on the last --adapt-window inputs), and reset to the "
                   "committed head when the label-free guard says the adaptation harms. In memory only: nothing is "
                   "committed (edgetl-rt adapt commits). /metrics: edgetl_adaptations_total, "
                   "edgetl_adaptation_active.")
@click.option("--adapt-window", type=click.IntRange(min=16), default=256, show_default=True,
              help="Served inputs whose features --adapt-on-drift keeps (its memory: this times the feature "
                   "dimension in float32).")
@reject_option
@trusted_keys_option
@json_option
@with_model_options
def serve(bundle, host, port, name, max_batch, max_wait_ms, token_file, max_body_mb, max_pixels, decode_pixels,
          decode_threads, inputs_mb, max_images, max_connections, request_timeout, header_timeout, min_body_rate,
          poll_ms, drift_window, drift_false_alarms, access_log, adapt_on_drift, adapt_window, reject, as_json,
          artifact, backend, threads,
          no_measure) -> None:
    """Serve BUNDLE over the Open Inference Protocol (KServe v2 REST), learning from POST .../update.

    Prints one line when it listens (with --json, one JSON object: url, model, artifact, backend, head_version);
    logs go to stderr as JSON lines.
    """
    from ..serving.http import ServeHTTP
    from ..serving.live_head import head_version
    from ..serving.service import InferenceService, ServeSettings

    log = _logger(verbosity() == QUIET, access_log)
    click.get_current_context().with_resource(capture_into(log))      # from here to the exit: JSON lines only
    token = read_token(token_file, log) if token_file else None
    settings = ServeSettings(name=name, max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads,
                             artifact=artifact, backend=backend, measure=not no_measure, max_pixels=max_pixels,
                             max_images=max_images, poll_ms=poll_ms, decode_pixels=decode_pixels,
                             decode_threads=decode_threads, inputs_mb=inputs_mb, decode_wait_s=request_timeout,
                             reject=reject, drift_window=drift_window, drift_false_alarms=drift_false_alarms,
                             adapt_on_drift=adapt_on_drift, adapt_window=adapt_window)
    service = InferenceService(bundle, settings, log)      # a bad bundle stops here, before binding
    try:
        server = ServeHTTP((host, port), service, token=token, max_body=int(max_body_mb * 1024 * 1024),
                           max_connections=max_connections, request_timeout=request_timeout, log=log,
                           header_timeout=header_timeout, min_body_rate=min_body_rate * 1024)
    except OSError as exc:
        service.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", option="port") from None
    stopping = threading.Thread(target=server.drain, name="edgetl-drain")

    def on_signal(signum, frame) -> None:
        if not stopping.is_alive() and not server.draining.is_set():
            log({"event": "draining", "signal": signal.Signals(signum).name})
            stopping.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bound_host, bound_port = server.server_address[:2]
    model = service.backbone
    ready = {"url": f"http://{bound_host}:{bound_port}", "model": service.name, "artifact": model.artifact.name,
             "backend": model.backend.name, "head_version": head_version(service.live.state),
             "load_s": round(service.load_s, 3), "max_batch": max_batch, "max_wait_ms": max_wait_ms,
             "auth": token is not None}
    log({"event": "ready", **ready})
    if as_json:
        click.echo(json.dumps(ready))
    else:
        click.echo(f"serving {service.name} at {ready['url']} ({model.artifact.name} on {model.backend.name}; "
                   f"max batch {max_batch}, wait {max_wait_ms:g} ms{'; bearer token required' if token else ''})")
    sys.stdout.flush()
    server.serve_forever(poll_interval=0.2)
    stopping.join()
    log({"event": "stopped", "requests": int(service.metrics.requests.total())})

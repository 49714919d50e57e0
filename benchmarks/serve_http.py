"""``edgetl-rt serve`` against a hostile network, HTTP side (issue 27), at default options, printed in one run.

Three phases, each against a fresh ``edgetl-rt serve`` process (127.0.0.1, the committed tiny bundle unless
``--bundle`` names another; only its defaults, so the same script measures a version without the new options):

1. **Slowloris** (``--duration`` s, default 30): ``--connections`` (default 100) connections each send one byte of a
   request head per second and never finish it, reopening any the service closes; meanwhile a normal client sends
   one infer request on a new connection every ``--every`` s (default 0.5).  Printed: normal requests answered 200
   (target: all), their latency (p50, max), what the attackers were answered (503 reclaimed, 408 late, ...) and the
   service's own count of reclaimed slots (``edgetl_connections_closed_total``, where it has one).
2. **Bursts**: 32 and 64 clients connect at once (a barrier), each sending one infer request; ``--repeats`` times
   each.  Printed: answers by status, connection resets, timeouts (target: 0 resets and 0 timeouts; 503 only past
   ``--max-connections``, 64), and the time until the last answer.
3. **Repeated outputs**: ``--images`` (64) tiny images and ``--outputs`` (40,000) ``{"name": "logits"}`` entries in
   one request.  Printed: its status, the response's size, time, and the service's peak RSS (``VmHWM``, and RSS
   sampled every 5 ms) against its RSS before (target: peak under 1 GB).

``--phases`` picks some of them (default: all three).  Seeded (``--seed``: the images' colours).  To measure the
version before a change, put its sources first on ``PYTHONPATH`` (the service runs as ``python -m edgetl.runtime``).
Results: ``benchmarks/results/serve_http.json`` (``--save`` names another file).
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import importlib.util
import io
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import save_result
from PIL import Image

TINY_BUNDLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny-bundle"
HEAD = b"POST /v2/models/model/infer HTTP/1.1\r\nHost: bench\r\nUser-Agent: slowloris\r\nX-Padding: "


class Service:
    """``edgetl-rt serve`` in a child process, at its default options."""

    def __init__(self, bundle: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgetl.runtime", "serve", str(bundle), "--port", "0", "--name", "model",
             "--artifact", "onnx", "--no-measure", "--no-access-log", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("{"):
            self.process.kill()
            raise SystemExit(f"the service did not start: {line}{self.process.stderr.read()}")
        self.port = int(json.loads(line)["url"].rsplit(":", 1)[1])

    def memory_kb(self, field: str) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))

    def metric(self, name: str) -> dict[str, float]:
        """The service's counter ``name`` by its labels ({} when it has none)."""
        status, body = call(self.port, "GET", "/metrics")
        found = {}
        for line in body.decode().splitlines():
            if line.startswith(name + "{"):
                labels, value = line[len(name):].rsplit(" ", 1)
                found[labels] = float(value)
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def call(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def outcome(exc: BaseException) -> str:
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


def tiny_pngs(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3))).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def infer_body(images: list[bytes], outputs: list[dict] | None = None) -> bytes:
    document = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                            "data": [base64.b64encode(x).decode() for x in images],
                            "parameters": {"content_type": "base64"}}]}
    if outputs is not None:
        document["outputs"] = outputs
    return json.dumps(document).encode()


# --- 1. slowloris ----------------------------------------------------------------------------------------------------


def slowloris(port: int, count: int, stop: threading.Event, answers: collections.Counter, opened: list[int]) -> None:
    """``count`` connections, one head byte each per second, reopened when the service closes them."""
    sent: dict[socket.socket, int] = {}
    while not stop.is_set():
        while len(sent) < count:
            try:
                connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError as exc:
                answers["connect " + outcome(exc)] += 1
                break
            connection.setblocking(False)
            sent[connection] = 0
            opened[0] += 1
        for connection in list(sent):
            try:
                answer = connection.recv(4096)
                answers[answer.split(b" ", 2)[1].decode() if answer else "closed"] += 1
                connection.close()
                del sent[connection]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                answers[outcome(exc)] += 1
                connection.close()
                del sent[connection]
                continue
            position = sent[connection]
            try:
                connection.send(HEAD[position:position + 1] or b"a")
                sent[connection] = position + 1
            except OSError as exc:
                answers[outcome(exc)] += 1
                connection.close()
                del sent[connection]
        stop.wait(1.0)
    for connection in sent:
        connection.close()


def phase_slowloris(bundle: Path, args, image: bytes) -> dict:
    service = Service(bundle)
    try:
        stop, answers, opened = threading.Event(), collections.Counter(), [0]
        attack = threading.Thread(target=slowloris, args=(service.port, args.connections, stop, answers, opened))
        attack.start()
        time.sleep(2.0)                         # the attack holds its slots before the first normal request
        body, statuses, latencies = infer_body([image]), collections.Counter(), []
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                status, _ = call(service.port, "POST", "/v2/models/model/infer", body, timeout=10)
                statuses[str(status)] += 1
            except OSError as exc:
                statuses[outcome(exc)] += 1
            latencies.append(time.perf_counter() - started)
            time.sleep(max(0.0, args.every - (time.perf_counter() - started)))
        stop.set()
        attack.join(30)
        closed = service.metric("edgetl_connections_closed_total")
    finally:
        service.stop()
    normal = sum(statuses.values())
    return {"connections": args.connections, "seconds": args.duration, "normal_requests": normal,
            "normal_200": statuses.get("200", 0), "normal_answers": dict(statuses),
            "normal_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "normal_max_ms": round(max(latencies) * 1000, 1), "attack_connections_opened": opened[0],
            "attack_answers": dict(answers), "service_closed": closed}


# --- 2. bursts ---------------------------------------------------------------------------------------------------


def burst(port: int, size: int, body: bytes) -> dict:
    barrier, results, lock = threading.Barrier(size), collections.Counter(), threading.Lock()

    def one() -> None:
        barrier.wait()
        try:
            status, _ = call(port, "POST", "/v2/models/model/infer", body, timeout=30)
            key = str(status)
        except OSError as exc:
            key = outcome(exc)
        with lock:
            results[key] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"size": size, "answers": dict(results), "resets": results.get("reset", 0),
            "timeouts": results.get("timeout", 0), "seconds": round(time.perf_counter() - started, 2)}


def phase_bursts(bundle: Path, args, image: bytes) -> list[dict]:
    service = Service(bundle)
    try:
        body = infer_body([image])
        return [burst(service.port, size, body) for size in (32, 64) for _ in range(args.repeats)]
    finally:
        service.stop()


# --- 3. repeated outputs ---------------------------------------------------------------------------------------------


def phase_outputs(bundle: Path, args, images: list[bytes]) -> dict:
    service = Service(bundle)
    try:
        body = infer_body(images, [{"name": "logits"}] * args.outputs)
        before_rss, before_peak = service.memory_kb("VmRSS"), service.memory_kb("VmHWM")
        sampled, done = [before_rss], threading.Event()

        def sample() -> None:
            while not done.is_set():
                sampled.append(service.memory_kb("VmRSS"))
                done.wait(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        try:
            status, answer = call(service.port, "POST", "/v2/models/model/infer", body, timeout=300)
        finally:
            seconds = time.perf_counter() - started
            done.set()
            sampler.join()
        peak = service.memory_kb("VmHWM")
    finally:
        service.stop()
    return {"images": len(images), "outputs": args.outputs, "request_mb": round(len(body) / 2 ** 20, 2),
            "status": status, "response_mb": round(len(answer) / 2 ** 20, 2), "seconds": round(seconds, 2),
            "rss_before_mb": round(before_rss / 1024, 1), "peak_before_mb": round(before_peak / 1024, 1),
            "peak_rss_mb": round(peak / 1024, 1), "sampled_max_rss_mb": round(max(sampled) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=TINY_BUNDLE)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--outputs", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phases", default="slowloris,bursts,outputs")
    parser.add_argument("--save", default="serve_http")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(shutil.copytree(args.bundle, Path(tmp) / "bundle"))     # the service may write beside it
        images = tiny_pngs(args.images, args.seed)
        source = importlib.util.find_spec("edgetl").origin
        print(f"edgetl from {source}; bundle {args.bundle.name}; {os.cpu_count()} CPUs")
        phases = set(args.phases.split(","))
        loris = phase_slowloris(bundle, args, images[0]) if "slowloris" in phases else None
        bursts = phase_bursts(bundle, args, images[0]) if "bursts" in phases else []
        repeated = phase_outputs(bundle, args, images) if "outputs" in phases else None
    if loris:
        print(f"slowloris, {loris['connections']} connections for {loris['seconds']:g} s: normal requests "
              f"{loris['normal_200']}/{loris['normal_requests']} answered 200 ({loris['normal_answers']}); p50 "
              f"{loris['normal_p50_ms']} ms, max {loris['normal_max_ms']} ms; attackers opened "
              f"{loris['attack_connections_opened']} connections, answered {loris['attack_answers']}; service "
              f"closed {loris['service_closed'] or 'n/a'}")
    for result in bursts:
        print(f"burst of {result['size']}: {result['answers']}, resets {result['resets']}, timeouts "
              f"{result['timeouts']}, last answer after {result['seconds']} s")
    if repeated:
        print(f"{repeated['images']} images x {repeated['outputs']} 'logits' outputs ({repeated['request_mb']} MB "
              f"request): status {repeated['status']}, {repeated['response_mb']} MB response in "
              f"{repeated['seconds']} s; service RSS {repeated['rss_before_mb']} MB before, peak "
              f"{repeated['peak_rss_mb']} MB (sampled max {repeated['sampled_max_rss_mb']} MB)")
    path = save_result(args.save, {"source": source, "bundle": args.bundle.name, "slowloris": loris,
                                   "bursts": bursts, "repeated_outputs": repeated})
    print(f"results: {path}")


if __name__ == "__main__":
    main()

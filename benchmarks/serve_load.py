"""Load on ``edgetl-rt serve`` (127.0.0.1) while the head keeps learning, bounded in time and request count.

Phase 1 (``--duration`` s, default 30): ``--clients`` concurrent clients (default 8) send one digits image each per
request (BYTES over the binary tensor extension, as tritonclient sends it) while ``edgetl-rt update`` commits
``--updates`` new versions from other processes, one further updater is SIGKILLed inside its commit, and each bad
input of the issue is sent once and must earn its 4xx.  Printed: requests served, failed requests (bad inputs not
counted), whether every answered head version is one that was committed, throughput, p50/p99 under load against
the in-process batch-1 latency of the same image, and the service still serving afterwards.

Phase 2 (``--phase2`` s each): the same clients without updates, with dynamic batching (``--max-batch 8``) and
without (``--max-batch 1``): the throughput ratio.  Results: ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from _common import save_result
from PIL import Image

from edgetl.data_export import export_image_folder
from edgetl.exporters.bundle import export_run
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.heads import HeadConfig

#: An updater whose commit announces itself, so the SIGKILL lands inside it (a benchmark harness, not product code).
KILLED_IN_COMMIT = textwrap.dedent("""
    import sys
    from edgetl.runtime.bundle import store as store_module
    from edgetl.runtime.learning import update_bundle
    original = store_module.FeatureStore.commit
    def announced(self, *args, **kwargs):
        print("committing", flush=True)
        return original(self, *args, **kwargs)
    store_module.FeatureStore.commit = announced
    update_bundle(sys.argv[1], sys.argv[2])
    print("committed", flush=True)
""")


def _binary_request(image: bytes) -> tuple[bytes, dict]:
    raw = struct.pack("<I", len(image)) + image
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                                   {"name": "head_version", "parameters": {"binary_data": True}}]}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


class Client(threading.Thread):
    """Keep-alive requests until the deadline or the shared request budget runs out."""

    def __init__(self, port: int, images: list[bytes], deadline: float, budget: list[int], lock: threading.Lock,
                 seed: int):
        super().__init__()
        self.port, self.images, self.deadline, self.budget, self.lock = port, images, deadline, budget, lock
        self.rng = random.Random(seed)
        self.latencies: list[float] = []
        self.versions: set[int] = set()
        self.batch_sizes: list[int] = []
        self.failures: list[str] = []

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while time.perf_counter() < self.deadline:
            with self.lock:
                if self.budget[0] <= 0:
                    break
                self.budget[0] -= 1
            body, headers = _binary_request(self.rng.choice(self.images))
            started = time.perf_counter()
            try:
                connection.request("POST", "/v2/models/digits/infer", body, headers)
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            self.latencies.append(time.perf_counter() - started)
            if response.status != 200:
                self.failures.append(f"{response.status}: {payload[:200]!r}")
                continue
            header = json.loads(payload[:int(response.getheader("Inference-Header-Content-Length"))])
            self.batch_sizes.extend(int(x) for x in header["parameters"]["batch_sizes"].split(","))
            self.versions.add(int(header["parameters"]["head_version"]))
        connection.close()


def _start_server(bundle: Path, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, int]:
    extra = ["--threads", str(threads)] if threads else []
    process = subprocess.Popen([sys.executable, "-m", "edgetl.runtime", "serve", str(bundle), "--port", "0", *extra,
                                "--name", "digits", "--artifact", "onnx", "--max-batch", str(max_batch),
                                "--max-wait-ms", "2", "--no-access-log", "--max-body-mb", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("serving"):
        raise SystemExit(f"serve did not start: {line}{process.stderr.read()}")
    return process, int(line.split("http://127.0.0.1:")[1].split()[0])


def _stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def _load(port: int, images: list[bytes], clients: int, seconds: float,
          max_requests: int) -> tuple[list[Client], float]:
    deadline = time.perf_counter() + seconds
    budget, lock = [max_requests], threading.Lock()
    workers = [Client(port, images, deadline, budget, lock, seed) for seed in range(clients)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return workers, time.perf_counter() - started


def _summary(workers: list[Client], wall: float) -> dict:
    latencies = np.array([x for w in workers for x in w.latencies]) * 1000
    served = sum(len(w.latencies) for w in workers) - sum(len(w.failures) for w in workers)
    sizes = [s for w in workers for s in w.batch_sizes]
    return {"served": served, "failed": sum(len(w.failures) for w in workers),
            "failures": [f for w in workers for f in w.failures][:5], "seconds": round(wall, 2),
            "throughput_rps": round(served / wall, 1), "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "mean_batch": round(float(np.mean(sizes)), 2) if sizes else None}


def _png_claiming(width: int, height: int) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _bad_inputs(port: int, good: bytes) -> list[dict]:
    """Each bad input of the issue, once: expected and received status."""
    def inline(images):
        return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                       "data": [base64.b64encode(x).decode() for x in images],
                                       "parameters": {"content_type": "base64"}}]}).encode()

    infer = "/v2/models/digits/infer"
    cases = [
        ("malformed JSON", infer, b'{"inputs": [', {}, 400),
        ("wrong shape", infer, json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8],
                                                        "data": [0.0] * 192}]}).encode(), {}, 400),
        ("wrong dtype", infer, json.dumps({"inputs": [{"name": "image", "datatype": "INT32", "shape": [1],
                                                        "data": [1]}]}).encode(), {}, 400),
        ("unknown model", "/v2/models/nope/infer", inline([good]), {}, 404),
        ("oversized body", infer, None, {"Content-Length": str(64 * 1024 * 1024)}, 413),
        ("non-image bytes", infer, inline([b"%PDF-1.4 not an image"]), {}, 400),
        ("image bomb", infer, inline([_png_claiming(40000, 40000)]), {}, 400),
    ]
    results = []
    for name, path, body, headers, expected in cases:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        if body is None:                      # headers only: the service refuses before reading
            connection.putrequest("POST", path)
            for key, value in headers.items():
                connection.putheader(key, value)
            connection.endheaders()
        else:
            connection.request("POST", path, body, headers)
        response = connection.getresponse()
        error = json.loads(response.read()).get("error", "")
        connection.close()
        results.append({"input": name, "expected": expected, "status": response.status, "error": error[:120]})
    return results


def _in_process_batch1_ms(bundle: Path, image: Path, runs: int = 300) -> dict:
    """Median ms of one image in this process: the ``predict`` API (from the file), and the bare path the service
    runs (decode and preprocess the bytes, backbone, head)."""
    from edgetl.runtime import EdgeModel
    from edgetl.runtime.data.preprocess import preprocess

    data = image.read_bytes()
    with EdgeModel(bundle, artifact="onnx") as model:
        def bare():
            return model.logits(preprocess(data, model.preprocess)[None])

        figures = {}
        for name, call in (("predict_api", lambda: model.predict([str(image)])), ("bare", bare)):
            call()
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            figures[name] = float(np.median(times) * 1000)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--phase2", type=float, default=10.0, help="Seconds of each batching on/off run.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--image-size", type=int, default=None, help="Input size (default: the digits' 64 px).")
    parser.add_argument("--threads", type=int, default=None, help="serve --threads (default: its own).")
    args = parser.parse_args()
    rt = [sys.executable, "-m", "edgetl.runtime"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_image_folder("builtin:digits", tmp / "digits")
        print(f"fine-tuning and exporting the digits bundle (Lite0, {args.image_size or 64} px, ridge head, onnx)",
              flush=True)
        run = finetune("builtin:digits", tmp / "run", FinetuneConfig(head=HeadConfig(kind="ridge"),
                                                                     image_size=args.image_size))
        bundle = export_run(run.run_dir, tmp / "bundle", formats="onnx").bundle
        val = sorted((tmp / "digits" / "val").glob("*/*.png"))
        images = [p.read_bytes() for p in val]
        train = sorted((tmp / "digits" / "train").glob("*/*.png"))
        random.Random(0).shuffle(train)
        folders = []
        for i in range(args.updates + 1):   # new images per updater (the bundle already stores its training
            folder = tmp / f"new{i}"           # images): training images turned a few degrees, labels kept
            for j, path in enumerate(train[i * 6:(i + 1) * 6]):
                (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
                with Image.open(path) as image:
                    image.rotate(4 + j, fillcolor=0).save(folder / path.parent.name / path.name)
            folders.append(folder)
        in_process = _in_process_batch1_ms(bundle, val[0])
        batch1_ms = in_process["bare"]
        print(f"in-process batch-1: {batch1_ms:.3f} ms (decode, preprocess, backbone, head); EdgeModel.predict "
              f"{in_process['predict_api']:.3f} ms", flush=True)

        server, port = _start_server(bundle, 8, args.threads)
        committed, update_codes, killed = {0}, [], {}

        def updaters() -> None:
            start, spacing = time.perf_counter(), args.duration * 0.75 / args.updates
            for i, folder in enumerate(folders[:args.updates]):      # spread over the first three quarters
                time.sleep(max(0.0, start + (i + 0.25) * spacing - time.perf_counter()))
                if i == args.updates // 2:                 # the one killed inside its commit
                    child = subprocess.Popen([sys.executable, "-c", KILLED_IN_COMMIT, str(bundle),
                                              str(folders[-1])], stdout=subprocess.PIPE, text=True)
                    line = child.stdout.readline()
                    time.sleep(random.Random(1).uniform(0.0, 0.02))
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    killed.update(reached_commit=line.strip() == "committing", returncode=child.returncode)
                out = subprocess.run([*rt, "update", str(bundle), str(folder), "--json"], capture_output=True,
                                     text=True)
                update_codes.append(out.returncode)
                if out.returncode == 0:
                    committed.add(json.loads(out.stdout)["version"])
            finished.append(time.perf_counter())

        finished, load_start = [], [time.perf_counter()]
        thread = threading.Thread(target=updaters)
        thread.start()
        bad: list[dict] = []
        bad_thread = threading.Timer(args.duration / 3, lambda: bad.extend(_bad_inputs(port, images[0])))
        bad_thread.start()
        workers, wall = _load(port, images, args.clients, args.duration, args.max_requests)
        thread.join()
        updates_done = finished[0] - load_start[0]
        bad_thread.join()
        answered = set().union(*(w.versions for w in workers))
        after = _load(port, images, 1, 1.0, 20)[0][0]
        load = _summary(workers, wall)
        store_current = int((bundle / "store" / "CURRENT").read_text())
        # the killed updater's version counts as committed only if its CURRENT rename happened
        store_versions = {int(p.name) for p in (bundle / "store" / "versions").iterdir() if p.name.isdigit()}
        stop_code = _stop_server(server)

        ratios = {}
        for max_batch in (8, 1):
            server, port = _start_server(bundle, max_batch, args.threads)
            if max_batch == 8:       # one client alone: what the HTTP round trip adds to the in-process path
                single = _summary(*_load(port, images, 1, 3.0, args.max_requests))
            ratios[max_batch] = _summary(*_load(port, images, args.clients, args.phase2, args.max_requests))
            _stop_server(server)

    versions_ok = answered <= committed | (store_versions if killed.get("reached_commit") else set())
    print(f"\nphase 1: {args.clients} clients for {load['seconds']} s, {args.updates} updates from other processes, "
          f"one updater SIGKILLed in its commit (reached commit: {killed.get('reached_commit')})")
    print(f"  requests served {load['served']}, failed {load['failed']} (target 0) {load['failures'] or ''}")
    print(f"  updates: exit codes {update_codes}; committed versions {sorted(committed)}; store CURRENT {store_current}"
          f"; last commit {updates_done:.1f} s into the load")
    print(f"  answered head versions {sorted(answered)}: every one committed: {versions_ok}")
    print(f"  throughput {load['throughput_rps']} req/s; p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms under load "
          f"vs in-process batch-1 {batch1_ms:.3f} ms; mean batch {load['mean_batch']}")
    for case in bad:
        print(f"  bad input {case['input']:16s} -> {case['status']} (expected {case['expected']}): {case['error']}")
    print(f"  still serving afterwards: {len(after.latencies) - len(after.failures)} of {len(after.latencies)} "
          f"requests answered; SIGTERM exit code {stop_code}")
    print(f"one client alone: p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms per request over HTTP "
          f"(in-process {batch1_ms:.3f} ms)")
    gain = ratios[8]["throughput_rps"] / ratios[1]["throughput_rps"]
    print(f"phase 2 ({args.phase2:g} s each): dynamic batching {ratios[8]['throughput_rps']} req/s (p50 "
          f"{ratios[8]['p50_ms']} ms, mean batch {ratios[8]['mean_batch']}) vs max-batch 1 "
          f"{ratios[1]['throughput_rps']} req/s (p50 {ratios[1]['p50_ms']} ms): {gain:.2f}x")
    path = save_result("serve_load", {
        "command": f"python benchmarks/serve_load.py --duration {args.duration:g} --clients {args.clients} "
                   f"--updates {args.updates}" + (f" --image-size {args.image_size}" if args.image_size else ""),
        "image_size": args.image_size or 64,
        "in_process_batch1_ms": in_process, "load": load, "updates_exit_codes": update_codes,
        "committed_versions": sorted(committed), "last_commit_s": updates_done, "answered_versions": sorted(answered),
        "every_answered_version_committed": versions_ok, "killed_updater": killed, "bad_inputs": bad,
        "served_after": len(after.latencies) - len(after.failures), "sigterm_exit_code": stop_code,
        "single_client": single, "batching": {"max_batch_8": ratios[8], "max_batch_1": ratios[1],
                                              "throughput_ratio": gain},
        "cpu_count": os.cpu_count(),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

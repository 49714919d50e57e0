"""Peak memory of ``edgetl-rt serve`` (default options, 127.0.0.1) under hostile images, and a normal request's
latency meanwhile.

Each case starts a fresh service on a digits bundle (``--bundle``, or one made here: ``finetune builtin:digits`` and
``export --format onnx``), answers one normal request (the baseline RSS is read then), sends the case's requests at
once while one client keeps sending normal digits requests, and reads the service's peak RSS (VmHWM) after:

- ``tiff16``: 16 concurrent requests, each one 94 KB deflate-compressed 4096 x 4096 int32 TIFF;
- ``jp2_one``: one request carrying 32 JPEG 2000 images of 4096 x 4096 (391 bytes each: flat);
- ``jp2_32``: 32 concurrent requests, each one such JPEG 2000;
- ``ico``: 16 concurrent requests, each an ICO wrapping a 9400 x 9400 PNG (refused: over --max-pixels).

Printed per case: the statuses, the baseline and peak RSS, the bound docs/serving.md states (where the service
has it), the seconds the case took, and the normal requests' statuses and latency (p50, max).  ``--label``
names the run in ``benchmarks/results/serve_hostile.json`` (other labels, and the label's other cases, are kept),
so the same script measures the code before a change (run it with that tree first on ``PYTHONPATH``) and after.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, save_result
from PIL import Image

SIDE = 4096


def _infer(images: list[bytes]) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                   "data": [base64.b64encode(x).decode() for x in images],
                                   "parameters": {"content_type": "base64"}}],
                       "outputs": [{"name": "label"}]}).encode()


def hostile_images() -> dict[str, bytes]:
    """The issue's images, made here (deterministic: flat or zero pixels)."""
    tiff = io.BytesIO()
    Image.fromarray(np.zeros((SIDE, SIDE), np.int32)).save(tiff, "TIFF", compression="tiff_adobe_deflate")
    jp2 = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE)).save(jp2, "JPEG2000")
    png = io.BytesIO()
    Image.new("RGB", (9400, 9400)).save(png, "PNG")
    frame = png.getvalue()
    ico = b"\0\0\1\0" + struct.pack("<H", 1) + bytes(4) + struct.pack("<HHII", 1, 32, len(frame), 22) + frame
    return {"tiff": tiff.getvalue(), "jp2": jp2.getvalue(), "ico": ico}


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


class Service:
    """``edgetl-rt serve BUNDLE --port 0 --json`` at default options, its stderr drained."""

    def __init__(self, bundle: Path):
        self.process = subprocess.Popen([sys.executable, "-m", "edgetl.runtime", "serve", str(bundle), "--port", "0",
                                         "--json", "--no-measure"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        ready = json.loads(self.process.stdout.readline())
        self.port, self.model = int(ready["url"].rsplit(":", 1)[1]), ready["model"]
        self.errors: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.process.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                self.errors.append(line.strip())         # not JSON: a library writing to stderr
                continue
            if event.get("event") == "error" or event.get("status", 0) >= 500:
                self.errors.append(line.strip())

    def post(self, body: bytes, timeout: float = 300) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", f"/v2/models/{self.model}/infer", body=body)
            response = connection.getresponse()
            response.read()
            return response.status
        except OSError:
            return 0                                     # reset or timed out: counted, never raised
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


class NormalClient(threading.Thread):
    """One normal digits request after another on a keep-alive connection (opened before the attack, so a full
    listen backlog does not count here) until stopped: what a user meanwhile gets."""

    def __init__(self, service: Service, image: bytes):
        super().__init__(daemon=True)
        self.service, self.body = service, _infer([image])
        self.stopping = threading.Event()
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
        self.connection.connect()

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.perf_counter()
            try:
                self.connection.request("POST", f"/v2/models/{self.service.model}/infer", body=self.body)
                response = self.connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = 0
                self.connection.close()          # reconnects on the next request
            self.statuses.append(status)
            self.latencies.append(time.perf_counter() - started)
        self.connection.close()

    def summary(self) -> dict:
        ms = np.array(self.latencies) * 1000
        return {"requests": len(self.statuses), "statuses": sorted(set(self.statuses)),
                "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
                "max_ms": round(float(ms.max()), 1) if len(ms) else None}


def run_case(bundle: Path, bodies: list[bytes], normal: bytes) -> dict:
    service = Service(bundle)
    try:
        assert service.post(_infer([normal])) == 200
        baseline = _status_mb(service.process.pid, "VmRSS")
        client = NormalClient(service, normal)
        client.start()
        statuses: list[int] = []
        resets = [0]

        def attack(body: bytes) -> None:
            for _ in range(50):         # a connection reset (the listen backlog) is retried, as an attacker would
                status = service.post(body)
                if status:
                    break
                resets[0] += 1
            statuses.append(status)

        threads = [threading.Thread(target=attack, args=(b,)) for b in bodies]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        client.stopping.set()
        client.join(120)
        peak = _status_mb(service.process.pid, "VmHWM")
        alive = service.post(_infer([normal])) == 200
        return {"statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))}, "resets_retried": resets[0],
                "seconds": round(seconds, 2),
                "baseline_mb": round(baseline, 1), "peak_mb": round(peak, 1), "bound_mb": _bound_mb(baseline),
                "normal": client.summary(), "still_serving": alive, "errors_logged": service.errors[:3]}
    finally:
        service.stop()


def _bound_mb(baseline_mb: float) -> float | None:
    """The bound docs/serving.md states for the default options on the digits bundle (64 px, 10 classes), where
    the service has it (not before it did)."""
    try:
        from edgetl.runtime.serving import service as defaults
        from edgetl.runtime.serving.memory import peak_bound
    except ImportError:
        return None
    bound = peak_bound(int(baseline_mb * 2**20), input_size=64, classes=10, decode_pixels=defaults.SERVE_DECODE_PIXELS,
                       inputs_mb=defaults.SERVE_INPUTS_MB, max_images=defaults.SERVE_MAX_IMAGES,
                       max_batch=defaults.ServeSettings.max_batch, max_connections=64, max_body=8 * 2**20)
    return round(bound.total / 2**20, 1)


def _digits_bundle(work: Path) -> Path:
    from edgetl.exporters.bundle import export_run
    from edgetl.finetune import FinetuneConfig, finetune

    print("fine-tuning and exporting the digits bundle (Lite0, 64 px, onnx)", flush=True)
    run = finetune("builtin:digits", work / "run", FinetuneConfig())
    return export_run(run.run_dir, work / "bundle", formats="onnx").bundle


def _normal_image(work: Path) -> bytes:
    """A digits validation image, as a client would send it (PNG)."""
    from edgetl.data_export import export_image_folder

    export_image_folder("builtin:digits", work / "digits")
    return sorted((work / "digits" / "val").glob("*/*.png"))[0].read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="A digits bundle (default: made here).")
    parser.add_argument("--label", default="after", help="The run's name in the results file.")
    parser.add_argument("--cases", default="tiff16,jp2_one,jp2_32,ico")
    args = parser.parse_args()
    images = hostile_images()
    print(f"images: int32 TIFF {len(images['tiff'])} B, JPEG 2000 {len(images['jp2'])} B, ICO {len(images['ico'])} B")
    cases = {"tiff16": [_infer([images["tiff"]])] * 16, "jp2_one": [_infer([images["jp2"]] * 32)],
             "jp2_32": [_infer([images["jp2"]])] * 32, "ico": [_infer([images["ico"]])] * 16}
    with tempfile.TemporaryDirectory() as work:
        bundle = args.bundle or _digits_bundle(Path(work))
        normal = _normal_image(Path(work))
        figures = {}
        for name in args.cases.split(","):
            figures[name] = run_case(bundle, cases[name], normal)
            f = figures[name]
            print(f"{name:8s} statuses {f['statuses']} (resets retried {f['resets_retried']})  "
                  f"baseline {f['baseline_mb']:.0f} MB  peak {f['peak_mb']:.0f} MB"
                  f"  bound {f['bound_mb']} MB  {f['seconds']:.1f} s  normal: {f['normal']}  "
                  f"still serving: {f['still_serving']}", flush=True)
    previous = RESULTS / "serve_hostile.json"
    runs = json.loads(previous.read_text()).get("runs", {}) if previous.exists() else {}
    run = runs.setdefault(args.label, {"figures": {}})
    run["figures"].update(figures)            # a run of some cases keeps the label's other cases
    run["source"] = os.environ.get("PYTHONPATH") or "the installed tree"
    path = save_result("serve_hostile", {"note": "fresh service per case, default options, digits bundle (onnx)",
                                         "runs": runs})
    print(f"results: {path}")


if __name__ == "__main__":
    main()

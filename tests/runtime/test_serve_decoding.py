"""The service's images on the committed tiny bundle: every route decodes in the one bounded pool, a request waits
for decode room until its deadline (then 503), whatever the decoder raises is a 400 (and skipped by ``skip_bad``
updates and ``evaluate --skip-bad``), and the worst-case peak memory stated in docs/serving.md holds."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import infer_json, make_folder_dataset, request, serving
from PIL import Image

from edgetl.runtime.cli import main as rt

sys.path.insert(0, str(Path(__file__).parent))
from test_preprocess import MUTATED_TIFFS, mutated_tiff  # noqa: E402 - the fixtures live beside their own test


def _png(size: tuple[int, int], color=(200, 30, 30)) -> bytes:
    encoded = io.BytesIO()
    Image.new("RGB", size, color).save(encoded, "PNG")
    return encoded.getvalue()


def _update_json(images: list[bytes], labels: list[str], **parameters) -> bytes:
    return json.dumps({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [len(images)],
         "data": [base64.b64encode(x).decode() for x in images], "parameters": {"content_type": "base64"}},
        {"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels}],
        "parameters": {"holdout": 0.0, **parameters}}).encode()


def _error(body: bytes) -> str:
    document = json.loads(body)
    assert set(document) <= {"error", "exit_code", "kind"} and "\n" not in document["error"]
    assert "Traceback" not in document["error"]
    return document["error"]


def test_every_route_decodes_in_the_bounded_pool(tiny_bundle):
    """A budget of 1000 pixels: a 40 x 30 image (1200) is refused on every route, whatever carries it; 20 x 20
    images (400) are served, never more than 1000 pixels decoding at once."""
    small, large = _png((20, 20)), _png((40, 30))
    with serving(tiny_bundle, decode_pixels=1000, decode_threads=2) as (server, address, _):
        budget = server.service.decoder.pixels
        for path, body in [("infer", infer_json([large])), ("infer", infer_json([small, large, small])),
                           ("classify", large), ("update", _update_json([large], ["red"]))]:
            status, answer, _ = request(address, "POST", f"/v2/models/digits/{path}", body)
            assert status == 400 and "exceed the decode budget of 1000 pixels" in _error(answer), (path, answer)
        assert request(address, "POST", "/v2/models/digits/infer", infer_json([small] * 5))[0] == 200
        assert request(address, "POST", "/v2/models/digits/classify", small)[0] == 200
        assert request(address, "POST", "/v2/models/digits/update", _update_json([small], ["red"]))[0] == 200
        decoder = server.service.decoder
        assert decoder.express.capacity == 1000 and budget.peak + decoder.express.peak <= 2000
        assert budget.in_use == decoder.express.in_use == decoder.inputs.in_use == 0


def test_a_request_waits_for_decode_room_until_its_deadline_then_gets_503(tiny_bundle):
    with serving(tiny_bundle, decode_wait_s=0.2) as (server, address, _):
        pixels, express = server.service.decoder.pixels, server.service.decoder.express
        with pixels.hold(pixels.capacity), express.hold(express.capacity):     # as by other requests' decodes
            for path, body in [("classify", _png((20, 20))), ("infer", infer_json([_png((20, 20))])),
                               ("update", _update_json([_png((20, 20))], ["red"]))]:
                status, answer, _ = request(address, "POST", f"/v2/models/digits/{path}", body)
                assert status == 503 and "waited past its deadline" in _error(answer), (path, answer)
                assert json.loads(answer)["kind"] == "DecodeBusyError"
        assert request(address, "POST", "/v2/models/digits/classify", _png((20, 20)))[0] == 200
        inputs = server.service.decoder.inputs
        with inputs.hold(inputs.capacity):                  # no room for a request's preprocessed inputs
            assert request(address, "POST", "/v2/models/digits/classify", _png((20, 20)))[0] == 503
        assert request(address, "POST", "/v2/models/digits/classify", _png((20, 20)))[0] == 200


def _nan_tiff() -> bytes:
    pixels = np.full((16, 16), 100.0, np.float32)
    pixels[4, 4] = np.nan
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "TIFF")
    return encoded.getvalue()


def test_whatever_the_decoder_raises_is_a_400_and_skip_bad_updates_skip_it(tiny_bundle):
    bad = {kind: mutated_tiff(seed) for kind, seed in MUTATED_TIFFS.items()}
    with serving(tiny_bundle) as (_, address, events):
        for kind, data in bad.items():
            status, answer, _ = request(address, "POST", "/v2/models/digits/infer", infer_json([_png((20, 20)), data]))
            assert status == 400 and _error(answer) == f"image[1]: corrupt image (the decoder failed: {kind})"
            status, answer, _ = request(address, "POST", "/v2/models/digits/classify", data)
            assert status == 400 and kind in _error(answer)
        status, answer, _ = request(address, "POST", "/v2/models/digits/classify", _nan_tiff())
        assert status == 400 and _error(answer) == "image[0]: the float image has NaN or infinite pixels"
        images = [bad["TypeError"], _png((20, 20), (0, 0, 250)), bad["OverflowError"]]
        status, answer, _ = request(address, "POST", "/v2/models/digits/update",
                                    _update_json(images, ["blue"] * 3))
        assert status == 400 and json.loads(answer)["exit_code"] == 8          # without skip_bad: update's data error
        status, answer, _ = request(address, "POST", "/v2/models/digits/update",
                                    _update_json(images, ["blue"] * 3, skip_bad=True))
        report = json.loads(answer)
        assert status == 200 and report["n_new"] == 1 and report["n_skipped"] == 2, report
        assert not [e for e in events if e.get("status", 0) >= 500 or e.get("event") == "error"]


def test_evaluate_skip_bad_skips_what_the_decoder_raises_on(tiny_bundle, tmp_path):
    images = make_folder_dataset(tmp_path / "images", classes=("red", "green", "blue"), per_class=4, size=(36, 36))
    for kind, seed in MUTATED_TIFFS.items():
        (images / "red" / f"{kind}.tif").write_bytes(mutated_tiff(seed))
    (images / "blue" / "nan.tif").write_bytes(_nan_tiff())
    stopped = CliRunner().invoke(rt, ["evaluate", str(tiny_bundle), str(images)])
    assert stopped.exit_code == 8 and ("the decoder failed" in stopped.output or "NaN" in stopped.output)
    result = CliRunner().invoke(rt, ["evaluate", str(tiny_bundle), str(images), "--skip-bad", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 12 and len(report["skipped"]) == 3
    assert sorted(line.split(": ", 1)[1] for line in report["skipped"]) == [
        "corrupt image (the decoder failed: OverflowError)", "corrupt image (the decoder failed: TypeError)",
        "the float image has NaN or infinite pixels"]


# --- the worst-case peak memory, as docs/serving.md states it -----------------------------------------------------

PEAK_UNDER_ATTACK = r"""
import base64, io, json, http.client, sys, threading
from PIL import Image
from edgetl.runtime.serving.http import ServeHTTP
from edgetl.runtime.serving.service import InferenceService, ServeSettings

def status_mb(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 1024

options = json.loads(sys.argv[2])
service = InferenceService(sys.argv[1], ServeSettings(artifact="onnx", name="m", **options["settings"]))
server = ServeHTTP(("127.0.0.1", 0), service, max_body=int(options["max_body_mb"] * 2**20),
                   max_connections=options["max_connections"])
threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

def post(body):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=120)
    connection.request("POST", "/v2/models/m/infer", body=body)
    status = connection.getresponse().status
    connection.close()
    return status

def infer(images):
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                   "data": [base64.b64encode(x).decode() for x in images],
                                   "parameters": {"content_type": "base64"}}]}).encode()

def encoded(mode, side, fmt):
    out = io.BytesIO()
    Image.new(mode, (side, side)).save(out, fmt)
    return out.getvalue()

settings = options["settings"]
flat = encoded("RGBA", int(settings["max_pixels"] ** 0.5), "JPEG2000")   # the costliest decode a pixel: 4 planes
tiny = encoded("RGB", 2, "PNG")
assert post(infer([tiny] * settings["max_batch"])) == 200               # a full batch: the backend's arena
baseline_mb = status_mb("VmRSS")             # what the process holds ready to serve
# the worst case: three of four connections carry one image at the pixel limit, the rest the most images allowed
bodies = [infer([tiny] * settings["max_images"]) if i % 4 == 0 else infer([flat])
          for i in range(options["max_connections"])]
statuses = []
threads = [threading.Thread(target=lambda b=b: statuses.append(post(b))) for b in bodies]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
decoded_peak = getattr(getattr(service, "decoder", None), "pixels", None)
print(json.dumps({"statuses": sorted(set(statuses)), "baseline_mb": baseline_mb, "peak_mb": status_mb("VmHWM"),
                  "decoded_peak": decoded_peak.peak if decoded_peak else None}))
server.shutdown()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_concurrent_worst_case_images_stay_under_the_stated_bound(tiny_bundle, child_python):
    """16 connections at once, 12 carrying a JPEG 2000 image at the pixel limit (the costliest decode a pixel), 4
    the most tiny images a request may carry: the peak RSS stays under the bound docs/serving.md states for these
    options (edgetl 0.7 decoded every one-image request in its own thread, all 12 at once: about 640 MB more)."""
    from edgetl.runtime.serving.memory import peak_bound

    settings = {"max_pixels": 1448 * 1448, "decode_pixels": 2 * 1448 * 1448, "decode_threads": 2, "inputs_mb": 8.0,
                "max_images": 64, "max_batch": 4}
    options = {"settings": settings, "max_connections": 16, "max_body_mb": 1.0}
    out = subprocess.run([child_python, "-c", PEAK_UNDER_ATTACK, str(tiny_bundle), json.dumps(options)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    bound = peak_bound(figures["baseline_mb"] * 2**20, input_size=32, classes=3,
                       decode_pixels=settings["decode_pixels"], inputs_mb=settings["inputs_mb"],
                       max_images=settings["max_images"], max_batch=settings["max_batch"],
                       max_connections=options["max_connections"], max_body=int(options["max_body_mb"] * 2**20))
    assert figures["statuses"] == [200], figures
    assert figures["decoded_peak"] <= settings["decode_pixels"]
    print(figures, bound.to_json())
    assert figures["peak_mb"] < bound.total / 2**20, (figures, bound.to_json())

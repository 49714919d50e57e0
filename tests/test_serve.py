"""``edgetl-rt serve``: the Open Inference Protocol service, its batching, live head versions, limits and draining.

The service tests run the real digits bundle (EfficientNet-Lite0) behind an in-process server on a free port, with
``tritonclient.http`` (the reference client) and raw ``http.client`` for what a well-behaved client never sends.
The torch-free unit tests (codec, metrics, batcher, auth) are in tests/runtime/test_serving_units.py.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import import_blocker, infer_json, request, serving
from PIL import Image

from edgetl.runtime.serving.protocol import Tensor, encode_infer_response


def test_responses_decode_with_the_reference_client():
    """What the service writes, tritonclient's own decoder reads back (binary and inline outputs)."""
    from tritonclient.http import InferResult

    logits = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    outputs = [(Tensor("label", "BYTES", [2], [b"cat", b"dog"]), True),
               (Tensor("logits", "FP32", [2, 2], logits), True),
               (Tensor("head_version", "INT64", [2], np.array([3, 3], np.int64)), False)]
    body, header = encode_infer_response("m", "1", "req-1", outputs, {"head_version": 3})
    result = InferResult.from_response_body(body, header_length=header)
    assert result.as_numpy("label").tolist() == [b"cat", b"dog"]
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert result.as_numpy("head_version").tolist() == [3, 3]
    assert result.get_response()["id"] == "req-1"



@pytest.fixture
def bundle_copy(digits_bundle, tmp_path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, bundle)
    return bundle


def test_tritonclient_runs_the_digits_val_set_as_evaluate_does(bundle_copy, digits_folder):
    import tritonclient.http as triton

    from edgetl.runtime import EdgeModel
    from edgetl.runtime.inference.evaluate import evaluate_bundle

    files = sorted((digits_folder / "val").glob("*/*.png"))
    with serving(bundle_copy) as (_, address, _events):
        client = triton.InferenceServerClient(address)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
        metadata = client.get_model_metadata("digits")
        assert metadata["parameters"]["labels"] == [str(i) for i in range(10)]
        assert metadata["parameters"]["artifact"] == "onnx" and metadata["parameters"]["head_version"] == 0
        assert {i["name"] for i in metadata["inputs"]} == {"image", "input"}
        labels, logits = [], []
        for start in range(0, len(files), 64):
            chunk = np.array([f.read_bytes() for f in files[start:start + 64]], dtype=np.object_)
            tensor = triton.InferInput("image", [len(chunk)], "BYTES")
            tensor.set_data_from_numpy(chunk)
            result = client.infer("digits", [tensor])
            labels += [x.decode() for x in result.as_numpy("label")]
            logits.append(result.as_numpy("logits"))
            assert set(result.as_numpy("head_version").tolist()) == {0}
        client.close()
    served = float(np.mean([label == f.parent.name for label, f in zip(labels, files)]))
    with EdgeModel(bundle_copy, artifact="onnx") as model:
        report = evaluate_bundle(model, str(digits_folder))
        direct = model.predict([str(f) for f in files[:32]])
        reference = model.logits(np.stack([np.asarray(x) for x in _preprocessed(model, files[:32])]))
    assert report["n"] == len(files) == 539
    assert served == report["accuracy"] >= 0.95
    assert labels[:32] == [p.top[0][0] for p in direct]
    np.testing.assert_allclose(np.concatenate(logits)[:32], reference, rtol=1e-4, atol=1e-4)


def _preprocessed(model, files):
    from edgetl.runtime.data.preprocess import preprocess

    return [preprocess(str(f), model.preprocess) for f in files]


def test_the_service_learns_and_picks_up_versions_from_other_processes(bundle_copy, digits_folder, tmp_path):
    from edgetl.runtime.learning import rollback_bundle, update_bundle

    threes = sorted((digits_folder / "val" / "3").glob("*.png"))[:20]
    eights = tmp_path / "eights"
    shutil.copytree(digits_folder / "val" / "8", eights / "digit-8")
    with serving(bundle_copy, poll_ms=20) as (server, address, events):
        document = {"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [len(threes)],
             "data": [base64.b64encode(f.read_bytes()).decode() for f in threes],
             "parameters": {"content_type": "base64"}},
            {"name": "label", "datatype": "BYTES", "shape": [len(threes)], "data": ["digit-3"] * len(threes)}],
            "parameters": {"holdout": 0.0}}
        status, body, _ = request(address, "POST", "/v2/models/digits/update", json.dumps(document).encode())
        report = json.loads(body)
        assert status == 200, report
        assert report["head_version"] == report["version"] == 1 and report["new_classes"] == ["digit-3"]
        status, body, _ = request(address, "POST", "/v2/models/digits/infer", infer_json([threes[0].read_bytes()]))
        answer = json.loads(body)
        outputs = {o["name"]: o["data"] for o in answer["outputs"]}
        assert outputs["head_version"] == [1]                     # answered by the new version right after the commit
        assert answer["outputs"][1]["shape"] == [1, 11]           # with the class it learned
        status, body, _ = request(address, "POST", "/v2/models/digits/update", json.dumps(document).encode())
        assert status == 400 and json.loads(body)["exit_code"] == 8     # all duplicates: update's data error
        # the bundle's linear head brought no alpha and 20 images are too few to search it on the request's path:
        # the service searched in the background and committed it as version 2
        assert report["alpha_due"] and not report["alpha_searched"]
        _wait_for_version(address, 2)
        assert [e for e in events if e.get("event") == "tuned"][0]["head_version"] == 2

        update_bundle(bundle_copy, str(eights))           # another writer, as edgetl-rt update would be
        assert _wait_for_version(address, 3)["parameters"]["labels"][-1] == "digit-8"
        rollback_bundle(bundle_copy)                       # back to version 2's head, recorded as version 4
        metadata = _wait_for_version(address, 4)
        assert "digit-8" not in metadata["parameters"]["labels"]
        reloads = [e["head_version"] for e in events if e.get("event") == "head_version"]
        assert reloads[-2:] == [3, 4]
        metrics = request(address, "GET", "/metrics")[1].decode()
        assert "edgetl_head_version 4" in metrics and 'edgetl_updates_total{result="committed"} 1' in metrics


def _wait_for_version(address, version, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        metadata = json.loads(request(address, "GET", "/v2/models/digits")[1])
        if metadata["parameters"]["head_version"] == version or time.monotonic() > deadline:
            assert metadata["parameters"]["head_version"] == version
            return metadata
        time.sleep(0.02)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _png_sized(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_requests_get_a_4xx_and_the_service_keeps_serving(bundle_copy, digits_folder):
    good = sorted((digits_folder / "val" / "5").glob("*.png"))[0].read_bytes()
    fp32 = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 3, 64, 64], "data": [0.0] * 3 * 64 * 64}]}
    shape = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3 * 32 * 32}]}
    infer = "/v2/models/digits/infer"
    cases = [
        ("malformed JSON", "POST", infer, b'{"inputs": [', {}, 400),
        ("wrong dtype", "POST", infer, json.dumps(fp32).encode(), {}, 400),
        ("wrong shape", "POST", infer, json.dumps(shape).encode(), {}, 400),
        ("unknown input", "POST", infer, b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
         {}, 400),
        ("unknown output", "POST", infer, infer_json([good], outputs=["probabilities"]), {}, 400),
        ("unknown model", "POST", "/v2/models/other/infer", infer_json([good]), {}, 404),
        ("unknown version", "GET", "/v2/models/digits/versions/7", None, {}, 404),
        ("unknown route", "GET", "/v1/models", None, {}, 404),
        ("wrong method", "GET", infer, None, {}, 405),
        ("compressed body", "POST", infer, zlib.compress(infer_json([good])), {"Content-Encoding": "deflate"}, 415),
        ("non-image bytes", "POST", infer, infer_json([b"GIF89a but not really"]), {}, 400),
        ("image bomb", "POST", infer, infer_json([_png_claiming(30000, 30000)]), {}, 400),
        ("empty classify", "POST", "/v2/models/digits/classify", b"", {}, 400),
        ("too many images", "POST", infer, infer_json([good] * 9), {}, 413),
        ("deeply nested JSON", "POST", infer, b"[" * 100_000 + b"]" * 100_000, {}, 400),
        ("HEAD", "HEAD", "/v2", None, {}, 405),
        ("update without labels", "POST", "/v2/models/digits/update", infer_json([good]), {}, 400),
        ("update parameter of the wrong type", "POST", "/v2/models/digits/update",
         json.dumps({"inputs": json.loads(infer_json([good]))["inputs"] + [
             {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["5"]}],
             "parameters": {"force": "yes"}}).encode(), {}, 400),
    ]
    with serving(bundle_copy, max_body=1024 * 1024, max_images=8) as (_, address, _events):
        for description, method, path, body, headers, expected in cases:
            status, answer, response_headers = request(address, method, path, body, headers)
            assert status == expected, (description, answer)
            assert response_headers["Content-Type"] == "application/json", description
            assert method == "HEAD" or json.loads(answer)["error"], description
        status, _, headers = request(address, "GET", "/v2", b"GET /v2/models/digits HTTP/1.1\r\n\r\n")
        assert status == 200 and headers["Connection"] == "close"      # a GET's body is never read as a request
        host, port = address.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)   # one keep-alive connection
        for path, expected in [("/v2/models/other/infer", 404), (infer, 200), ("/v2/models/digits/infer", 200)]:
            connection.request("POST", path, infer_json([good]))
            response = connection.getresponse()
            assert response.status == expected and response.getheader("Connection") != "close"
            response.read()
        connection.close()
        status, answer, _ = request(address, "POST", "/v2/models/digits/classify?top_k=3", good)
        assert status == 200 and json.loads(answer)["label"] == "5" and len(json.loads(answer)["top_k"]) == 3
        status, answer, _ = request(address, "POST", infer, infer_json([_png_sized(16, 65536)]))
        assert status == 200, answer           # a long strip is an image: its centre crop is classified
        for header, value, expected in [("Content-Length", str(64 * 1024 * 1024), 413),   # refused unread
                                        ("Transfer-Encoding", "chunked", 411)]:
            host, port = address.split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.putrequest("POST", infer)
            connection.putheader(header, value)
            connection.endheaders()
            response = connection.getresponse()
            assert response.status == expected and response.getheader("Connection") == "close"
            assert json.loads(response.read())["error"]
            connection.close()
        metrics = request(address, "GET", "/metrics")[1].decode()
    assert 'edgetl_requests_total{route="infer",code="400"}' in metrics
    assert 'edgetl_requests_total{route="classify",code="200"} 1' in metrics



def test_requests_report_their_batches_and_max_batch_one_turns_batching_off(bundle_copy, digits_folder):
    images = [f.read_bytes() for f in sorted((digits_folder / "val" / "1").glob("*.png"))[:12]]

    def sizes(address) -> list[list[int]]:
        found, lock = [], threading.Lock()

        def one(image):
            answer = json.loads(request(address, "POST", "/v2/models/digits/infer", infer_json([image]))[1])
            with lock:
                found.append([int(x) for x in answer["parameters"]["batch_sizes"].split(",")])

        threads = [threading.Thread(target=one, args=(x,)) for x in images]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return found

    with serving(bundle_copy, max_batch=1) as (_, address, _events):
        assert sorted(sizes(address)) == [[1]] * 12
    with serving(bundle_copy, max_batch=4, max_wait_ms=50) as (_, address, _events):
        batched = sizes(address)
    assert len(batched) == 12 and all(len(s) == 1 and 1 <= s[0] <= 4 for s in batched)


# --- the command ---------------------------------------------------------------------------------------------------

SERVE_WITHOUT_TORCH = import_blocker("torch", "onnx", "onnxscript", "torchvision", "timm", "sklearn") + \
    "from edgetl.runtime.cli import main\nmain()\n"


def test_sigterm_answers_the_request_in_flight_then_exits_zero(bundle_copy, digits_folder):
    """Run as a device would (torch and onnx unimportable); a request half sent when SIGTERM arrives is answered."""
    process = subprocess.Popen([sys.executable, "-c", SERVE_WITHOUT_TORCH, "serve", str(bundle_copy), "--port", "0",
                                "--name", "digits", "--artifact", "onnx"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving digits at http://127.0.0.1:"), process.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        body = infer_json([f.read_bytes() for f in sorted((digits_folder / "val" / "2").glob("*.png"))[:16]])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/v2/models/digits/infer")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        connection.send(body[:100])
        time.sleep(0.5)                              # the handler is now reading the body
        os.kill(process.pid, signal.SIGTERM)
        time.sleep(0.3)
        connection.send(body[100:])
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200 and response.getheader("Connection") == "close"
        assert {o["name"]: o["data"] for o in answer["outputs"]}["label"] == ["2"] * 16
        assert process.wait(30) == 0
        events = [json.loads(x) for x in process.stderr.read().splitlines() if x.startswith("{")]
        kinds = [e["event"] for e in events]
        assert kinds[-1] == "stopped" and "draining" in kinds
        answered = [e for e in events if e["event"] == "request"]
        assert answered[-1]["status"] == 200 and kinds.index("draining") < kinds.index("request")
    finally:
        if process.poll() is None:
            process.kill()

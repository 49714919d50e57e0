"""The serving pieces without a backbone pass of real weights: the Open Inference Protocol codec, the Prometheus
text, dynamic batching, and the service over HTTP on the committed tiny bundle (auth, a bad bundle)."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import request, serving

from edgetl.runtime.serving.batcher import DynamicBatcher
from edgetl.runtime.serving.metrics import ServiceMetrics
from edgetl.runtime.serving.protocol import ProtocolError, parse_infer_request

# --- the protocol codec ------------------------------------------------------------------------------------------


def _binary_body(document: dict, blobs: list[bytes]) -> tuple[bytes, int]:
    head = json.dumps(document).encode()
    return head + b"".join(blobs), len(head)


def test_inline_and_binary_tensors_parse_to_the_same_values():
    values = np.arange(2 * 3, dtype=np.float32).reshape(2, 3) / 7
    inline = parse_infer_request(json.dumps({"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [2, 3], "data": values.tolist()}]}).encode())
    body, header = _binary_body({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3],
                                             "parameters": {"binary_data_size": values.nbytes}}]},
                                [values.astype("<f4").tobytes()])
    binary = parse_infer_request(body, header)
    np.testing.assert_array_equal(inline.inputs["input"].data, values)
    np.testing.assert_array_equal(binary.inputs["input"].data, values)
    items = [b"\xff\xd8jpeg", b"", b"png"]
    raw = b"".join(struct.pack("<I", len(x)) + x for x in items)
    body, header = _binary_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                             "parameters": {"binary_data_size": len(raw)}}],
                                 "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}, [raw])
    request = parse_infer_request(body, header)
    assert request.inputs["image"].data == items and request.outputs[0].binary
    b64 = parse_infer_request(json.dumps({"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"\x00\x01").decode()],
        "parameters": {"content_type": "base64"}}]}).encode())
    assert b64.inputs["image"].data == [b"\x00\x01"]


@pytest.mark.parametrize("body, header, message", [
    (b"{not json", None, "not valid JSON"),
    (b"[]", None, "must be a JSON object"),
    (b'{"inputs": []}', None, "non-empty 'inputs'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}]}', None,
     "do not fill the shape"),
    (b'{"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]}]}', None, "unknown datatype"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}', None, "non-negative"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}', None, "must be numbers"),
    (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["%%"], '
     b'"parameters": {"content_type": "base64"}}]}', None, "invalid base64"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 8}}]}xxxxxxxx',
     "json", "do not fill the shape"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}', 999, "does not fit"),
])
def test_malformed_requests_name_the_problem(body, header, message):
    if header == "json":                # the binary extension: the JSON's length, then the raw data
        header = body.index(b"}]}") + 3
    with pytest.raises(ProtocolError, match=message) as caught:
        parse_infer_request(body, header)
    assert caught.value.status == 400



def test_metrics_render_the_prometheus_text_format():
    metrics = ServiceMetrics()
    metrics.requests.inc(route="infer", code="200")
    metrics.requests.inc(route="infer", code="200")
    metrics.batch_size.observe(3)
    metrics.head_version.set(4)
    text = metrics.render()
    assert 'edgetl_requests_total{route="infer",code="200"} 2' in text
    assert 'edgetl_batch_size_bucket{le="2"} 0' in text and 'edgetl_batch_size_bucket{le="4"} 1' in text
    assert 'edgetl_batch_size_bucket{le="+Inf"} 1' in text and "edgetl_batch_size_sum 3" in text
    assert "# TYPE edgetl_request_duration_seconds histogram" in text and "edgetl_head_version 4" in text


# --- dynamic batching ----------------------------------------------------------------------------------------------


def test_batcher_groups_waiting_requests_and_returns_each_its_rows():
    gate, seen = threading.Event(), []

    def run(images):
        gate.wait(5)                  # the first batch holds the engine while the others queue up
        seen.append(len(images))
        return images.reshape(len(images), -1)[:, :1] * 2

    batcher = DynamicBatcher(run, max_batch=4, max_wait_s=0.0)
    results = {}

    def call(i):
        results[i] = batcher.features(np.full((1, 1, 1, 1), i, np.float32))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(9)]
    threads[0].start()
    time.sleep(0.2)
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(10)
    batcher.close()
    assert seen[0] == 1 and seen[1:] == [4, 4]          # the eight that waited ran as two full batches
    assert all(r.features[0, 0] == 2 * i for i, r in results.items())
    assert all(len(r.batches) == 1 and r.batches[0].size <= 4 for r in results.values())


def test_a_request_alone_does_not_wait_for_company_but_one_being_read_is_waited_for():
    batcher = DynamicBatcher(lambda x: x.reshape(len(x), -1), max_batch=8, max_wait_s=2.0)
    started = time.perf_counter()
    assert [b.size for b in batcher.features(np.zeros((1, 1, 1, 1), np.float32)).batches] == [1]
    assert time.perf_counter() - started < 1.0              # not the 2 s wait: nobody else was on the way
    results = []

    def late():
        with batcher.arriving():
            time.sleep(0.3)                                 # still decoding when the first request queues
            images = np.ones((1, 1, 1, 1), np.float32)
        results.append(batcher.features(images))

    thread = threading.Thread(target=late)
    with batcher.arriving():
        thread.start()
        time.sleep(0.05)
    first = batcher.features(np.zeros((1, 1, 1, 1), np.float32))
    thread.join(10)
    batcher.close()
    assert first.batches[0].size == 2 and first.batches[0].id == results[0].batches[0].id


def test_batcher_splits_large_requests_reports_failures_and_drains_on_close():
    batcher = DynamicBatcher(lambda x: x.reshape(len(x), -1), max_batch=3, max_wait_s=0.001)
    ran = batcher.features(np.zeros((7, 1, 1, 1), np.float32))
    assert len(ran.features) == 7 and [b.size for b in ran.batches] == [3, 3, 1]
    batcher.close()

    def broken(images):
        raise RuntimeError("engine failed")

    failing = DynamicBatcher(broken, max_batch=2)
    with pytest.raises(RuntimeError, match="engine failed"):
        failing.features(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(RuntimeError, match="engine failed"):
        failing.features(np.zeros((1, 1, 1, 1), np.float32))
    failing.close()



# --- the service over HTTP, on the tiny bundle --------------------------------------------------------------------


def test_a_token_guards_every_route_but_health(tiny_bundle):
    with serving(tiny_bundle, token="s3cret-token") as (_, address, _events):
        assert request(address, "GET", "/v2/health/live")[0] == 200
        assert request(address, "GET", "/v2/health/ready")[0] == 200
        for path in ("/v2", "/v2/models/digits", "/metrics"):
            status, _, headers = request(address, "GET", path)
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
            assert request(address, "GET", path, headers={"Authorization": "Bearer wrong"})[0] == 401
            assert request(address, "GET", path, headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        status, _, headers = request(address, "POST", "/v2/models/digits/infer", b"x" * 1000)
        assert status == 401 and headers["Connection"] == "close"        # the body is never read



def test_a_bad_bundle_fails_fast_with_one_line(tmp_path):
    from edgetl.runtime.cli import main

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    result = CliRunner().invoke(main, ["serve", str(broken), "--port", "0"])
    assert result.exit_code == 3
    assert result.output.count("\n") == 1 and result.output.startswith("error:")

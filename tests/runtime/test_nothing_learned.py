"""An update that learns nothing commits nothing: every input unreadable (with ``skip_bad``), or zero feature rows,
is a :class:`DataError` (exit 8 from ``edgetl-rt update``, 400 from ``serve``) that says how many inputs were
skipped and why, and the store's versions stay as they were, however many such updates come (issue 27, item 6)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_folder_dataset, request, serving
from PIL import Image

from edgetl.runtime.bundle.store import DEFAULT_KEEP_VERSIONS, FeatureStore
from edgetl.runtime.cli import main as rt
from edgetl.runtime.errors import DataError, ExitCode
from edgetl.runtime.learning import UpdateSettings
from edgetl.runtime.learning.update import Learner, learn_features


def _png(color=(200, 30, 30), size=(36, 36)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


#: Inputs no decoder reads: text, an empty file, a PNG cut after its header, seeded random bytes.
BAD = [b"not an image at all", b"", _png()[:60], np.random.default_rng(27).bytes(300)]


def _versions(bundle) -> tuple[list[int], int | None]:
    store = FeatureStore(bundle)
    return [v.version for v in store.history()], store.current_number()


def _bad_folder(root):
    for n, data in enumerate(BAD):
        path = root / "red" / f"bad-{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_cli_update_of_unreadable_images_exits_8_and_commits_nothing(tiny_bundle, tmp_path):
    good = make_folder_dataset(tmp_path / "good", classes=("red", "green", "blue"), per_class=3)
    first = CliRunner().invoke(rt, ["update", str(tiny_bundle), str(good), "--artifact", "onnx", "--no-measure",
                                    "--json"])
    assert first.exit_code == 0, first.output
    before = _versions(tiny_bundle)
    assert before == ([0, 1], 1)
    bad = _bad_folder(tmp_path / "bad")
    for _ in range(DEFAULT_KEEP_VERSIONS + 1):      # more than the store keeps: none may push a real version out
        result = CliRunner().invoke(rt, ["update", str(tiny_bundle), str(bad), "--skip-bad", "--artifact", "onnx",
                                         "--no-measure"])
        assert result.exit_code == ExitCode.DATA, result.output
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("error: nothing to learn, nothing committed: all 4 new images of")
        assert "bad-0.png: not an image file Pillow can read" in line and "; and 1 more" in line
    assert _versions(tiny_bundle) == before


def test_learner_update_of_unreadable_images_and_zero_features_commit_nothing(tiny_bundle):
    with Learner(tiny_bundle, artifact="onnx", measure=False) as learner:
        committed = learner.update([_png((10, 200, 10))], ["green"])
        assert committed.committed and committed.version == 1
        before = _versions(tiny_bundle)
        expected = (r"all 2 new images of the request \(1 more already in the store\) were unreadable and skipped "
                    r"\(image\[1\]: .*; image\[2\]: the file is empty\)")
        with pytest.raises(DataError, match=expected):
            learner.update([_png((10, 200, 10)), BAD[0], BAD[1]], ["green", "red", "red"],
                           UpdateSettings(skip_bad=True))
        with pytest.raises(DataError, match="cannot read image image"):   # without skip_bad: the first bad image
            learner.update([BAD[0]], ["red"])
        assert _versions(tiny_bundle) == before
        # the learner is unchanged by the refusals: a good update still commits, on top of version 1
        after = learner.update([_png((10, 10, 200))], ["blue"])
        assert after.committed and after.parent == 1 and after.version == 2
    before = _versions(tiny_bundle)
    with pytest.raises(DataError, match="nothing to learn, nothing committed: the features hold 0 samples"):
        learn_features(tiny_bundle, np.zeros((0, 16), np.float32), [], [])
    assert _versions(tiny_bundle) == before


def _update_body(images: list[bytes], labels: list[str], **parameters) -> bytes:
    return json.dumps({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [len(images)], "parameters": {"content_type": "base64"},
         "data": [base64.b64encode(x).decode() for x in images]},
        {"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels}],
        "parameters": parameters}).encode()


def test_serve_update_of_unreadable_images_is_a_400_and_commits_nothing(tiny_bundle):
    with serving(tiny_bundle, measure=False) as (server, address, _events):
        path = "/v2/models/digits/update"
        status, body, _ = request(address, "POST", path, _update_body([_png(), BAD[0]], ["red", "red"],
                                                                      skip_bad=True))
        assert status == 200, body
        report = json.loads(body)
        assert report["committed"] and report["n_skipped"] == 1 and report["n_new"] == 1
        before = _versions(tiny_bundle)
        version = json.loads(request(address, "GET", "/v2/models/digits")[1])["parameters"]["head_version"]
        for _ in range(DEFAULT_KEEP_VERSIONS + 1):
            status, body, _ = request(address, "POST", path, _update_body(BAD, ["red"] * len(BAD), skip_bad=True))
            assert status == 400, body
            error = json.loads(body)
            assert error["exit_code"] == ExitCode.DATA and error["kind"] == "DataError"
            assert error["error"].startswith("nothing to learn, nothing committed: all 4 new images of the request")
            assert "Traceback" not in error["error"] and "\n" not in error["error"]
        assert _versions(tiny_bundle) == before
        metadata = json.loads(request(address, "GET", "/v2/models/digits")[1])
        assert metadata["parameters"]["head_version"] == version
        assert 'edgetl_updates_total{result="error"} ' + str(DEFAULT_KEEP_VERSIONS + 1) in \
            request(address, "GET", "/metrics")[1].decode()

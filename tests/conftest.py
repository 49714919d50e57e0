"""Shared fixtures: real weights, real images, one digits run and bundle per session."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The committed bundle of the torch-free tests (tests/data/make_tiny_bundle.py): tiny CNN, 16 features, ridge head,
#: classes red / green / blue, artifacts onnx and onnx-int8, learning data.
TINY_BUNDLE = REPO_ROOT / "tests" / "data" / "tiny-bundle"
#: The real photo and text sets (data/README.md): part of the repository, so a test never skips for want of them.
DATA = REPO_ROOT / "data"
FLOWERS = DATA / "flowers3"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the feature cache and the runtime's state (compiled models, timings) out of the user's home."""
    previous = {k: os.environ.get(k) for k in ("EDGETL_CACHE_DIR", "EDGETL_STATE_DIR")}
    os.environ["EDGETL_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))
    os.environ["EDGETL_STATE_DIR"] = str(tmp_path_factory.mktemp("runtime-state"))
    yield
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def relative_error(a, b) -> float:
    """max |a - b| / max |b|: how the exactness claims of streaming ridge are stated."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def gaussian_blobs(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded features in ``classes`` Gaussian clusters (float32) and their labels: the heads' and learners' data."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, d))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(0, 1.0, (n, d))).astype(np.float32), labels


def import_blocker(*modules: str) -> str:
    """Python source that makes importing ``modules`` (top-level names) fail in the interpreter that runs it, and
    names them ``BLOCKED``: the prelude of the child processes that prove the runtime never needs them."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys

        BLOCKED = {set(modules)!r}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocker())
        """
    )


def unbounded_updates():
    """Update settings that keep every row and commit whatever the guard says (store and learning tests)."""
    from edgetl.runtime.learning import UpdateSettings

    return UpdateSettings(max_accuracy_drop=100.0, max_per_class=10 ** 6, max_holdout_per_class=10 ** 6)


@pytest.fixture
def tiny_bundle(tmp_path) -> Path:
    """A copy of the committed tiny bundle (tests may learn into it, and measuring writes timings beside it)."""
    copy = tmp_path / "tiny-bundle"
    shutil.copytree(TINY_BUNDLE, copy)
    return copy


@pytest.fixture(scope="session")
def child_python() -> str:
    """This interpreter, skipping the test where it cannot start as a child process (an emulated userland
    without binfmt_misc: ``Exec format error``)."""
    import subprocess
    import sys

    try:
        subprocess.run([sys.executable, "-c", "pass"], check=True, capture_output=True)
    except OSError as exc:
        pytest.skip(f"this machine cannot start a child interpreter ({exc.strerror})")
    return sys.executable


def repository_data(path: Path) -> Path:
    """``path`` inside data/, failing the test by its name where it is missing: a clone holds every set, so a missing
    one is a broken checkout, not a reason to skip."""
    if not path.exists():
        pytest.fail(f"{path} is missing: the data sets are part of the repository (data/README.md)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def flowers_dir() -> Path:
    """The 30 real flower photos (daisy, rose, sunflower)."""
    return repository_data(FLOWERS)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A real EfficientNet-Lite0 run on builtin:digits (64 px, linear head)."""
    from edgetl.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("digits") / "run"
    return finetune("builtin:digits", out, FinetuneConfig())


DIGITS_FORMATS = "onnx,onnx-int8,openvino"


@pytest.fixture(scope="session")
def digits_bundle(digits_run, tmp_path_factory):
    """Real weights: fp32 ONNX, int8 ONNX (gated at 1 point) and OpenVINO fp32."""
    from edgetl.exporters.bundle import export_run

    out = tmp_path_factory.mktemp("digits-bundle") / "bundle"
    return export_run(digits_run.run_dir, out, formats=DIGITS_FORMATS)


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """builtin:digits written as an image folder, as a device would receive it."""
    from edgetl.data_export import export_image_folder

    out = tmp_path_factory.mktemp("digits-folder") / "digits"
    export_image_folder("builtin:digits", out)
    return out


def write_image(path: Path, size=(32, 24), color=(200, 30, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path, format=fmt)
    return path


def make_folder_dataset(root: Path, classes=("a", "b"), per_class=4, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for c_index, name in enumerate(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c_index % 3] = 255
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


def _register_tiny_backbone() -> None:
    """A two-stage CNN with seeded random weights: fast unit tests of every export path."""
    import torch
    from torch import nn

    from edgetl.backbones import BACKBONES, register_backbone
    from edgetl.backbones.base import Backbone, GlobalAveragePool, PretrainedConfig

    class TinyCNN(Backbone):
        name = "tiny_cnn_test"
        feature_dim = 16

        def __init__(self, weights=None):
            super().__init__()
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(0)
            self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
            self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
            torch.random.set_rng_state(generator_state)
            self.stages = [self.conv1, self.conv2, GlobalAveragePool()]
            self.pretrained = PretrainedConfig(32, (0.5,) * 3, (0.25,) * 3, 1.0, "bilinear", "seeded random")
            self.eval()

    if "tiny_cnn_test" not in BACKBONES:
        register_backbone("tiny_cnn_test")(TinyCNN)


@pytest.fixture(scope="session", autouse=True)
def _tiny_backbone():
    """Register ``tiny_cnn_test`` where the host package is installed; the torch-free tests (tests/runtime) run
    where it is not, so nothing here imports torch at collection."""
    try:
        _register_tiny_backbone()
    except ImportError:       # the runtime alone: tests needing the tiny backbone fail by its name, not here
        pass


# --- the service over HTTP, shared by tests/test_serve.py and tests/runtime ---------------------------------------


@contextlib.contextmanager
def serving(bundle, token=None, max_body=8 * 1024 * 1024, http=None, **settings):
    """The service on a free port for the block; ``http``: more of :class:`ServeHTTP`'s options (timeouts,
    connections), ``settings``: :class:`ServeSettings`'."""
    from edgetl.runtime.serving.http import ServeHTTP
    from edgetl.runtime.serving.service import InferenceService, ServeSettings

    events = []
    service = InferenceService(bundle, ServeSettings(**{"artifact": "onnx", "name": "digits", **settings}),
                               log=events.append)
    server = ServeHTTP(("127.0.0.1", 0), service, token=token, max_body=max_body,
                       **{"request_timeout": 10, **(http or {})}, log=events.append)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server, f"127.0.0.1:{server.server_address[1]}", events
    finally:
        server.drain()
        thread.join(10)


def request(address, method, path, body=None, headers=None):
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def infer_json(images: list[bytes], outputs=None) -> bytes:
    document = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                            "data": [base64.b64encode(x).decode() for x in images],
                            "parameters": {"content_type": "base64"}}]}
    if outputs:
        document["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(document).encode()

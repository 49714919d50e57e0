"""The served model, without HTTP: metadata, inference, the update route and the plain classify route.

Requests are decoded and preprocessed in the caller's thread (a small pool for many images, Pillow releasing the
GIL) by the runtime's own preprocessing, so the service sees an image exactly as ``predict`` does; the backbone
runs behind the :class:`~.batcher.DynamicBatcher`; the head is the :class:`~.live_head.LiveHead`'s reference,
read once per request.  An update goes through :func:`~edgetl.runtime.update.learn_records`, the transaction of
``edgetl-rt update``, with its images' backbone pass queued beside inference, and answers after the new head
version serves.  The service keeps one :class:`~edgetl.runtime.update.LearningSession` (the ridge system
factorised in the background at start), so a one-image update costs its backbone pass plus milliseconds; when an
update leaves the regularisation search due, the search runs in the background and commits a ``tune`` version.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Callable

import numpy as np

from ..backbone import Backbone
from ..bundle import Bundle, HeadState
from ..data import input_records
from ..errors import ConfigError, DataError, EdgetlError, ImageDecodeError, StoreBusyError, UpdateRejectedError
from ..features import apply_adapter
from ..heads import softmax
from ..machine import default_threads
from ..preprocess import preprocess
from ..text import TextPreprocess, check_text
from ..update import LearningSession, UpdateSettings, learn_records, tune_alpha
from .batcher import BatchRecord, DynamicBatcher, Ran
from .live_head import LiveHead, head_version
from .metrics import ServiceMetrics
from .protocol import BYTES, InferRequest, ProtocolError, Tensor, encode_infer_response

#: Pixel limit of one received image: 16 MP (4096 x 4096) bounds what concurrent decodes can take (3 bytes a pixel).
SERVE_MAX_PIXELS = 4096 * 4096
#: Images one request may carry: a body of tiny PNGs must not decode into gigabytes.
SERVE_MAX_IMAGES = 256
OUTPUTS = ("label", "logits", "scores", "head_version")
MODEL_VERSION = "1"


@dataclass
class ServeSettings:
    """How a bundle is served (``edgetl-rt serve``'s options, less the HTTP ones)."""

    name: str | None = None
    max_batch: int = 8
    max_wait_ms: float = 2.0
    threads: int | None = None
    artifact: str | None = None
    backend: str | None = None
    tune: bool = True
    max_pixels: int = SERVE_MAX_PIXELS
    max_images: int = SERVE_MAX_IMAGES
    poll_ms: float = 50.0

    def check(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"must be at least 1, got {self.max_batch}", option="max_batch")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError(f"must lie in [0, 1000], got {self.max_wait_ms:g}", option="max_wait_ms")
        if self.max_pixels < 1:
            raise ConfigError(f"must be at least 1, got {self.max_pixels}", option="max_pixels")
        if self.max_images < 1:
            raise ConfigError(f"must be at least 1, got {self.max_images}", option="max_images")
        if self.poll_ms <= 0:
            raise ConfigError(f"must be positive, got {self.poll_ms:g}", option="poll_ms")


def _edgetl_version() -> str:
    try:
        return package_version("edgetl")
    except PackageNotFoundError:     # pragma: no cover - a source tree without metadata
        return "unknown"


def error_status(exc: EdgetlError) -> int:
    """The HTTP status of an error a request caused: the request's fault (4xx) unless the service's own files
    are at fault (500)."""
    if isinstance(exc, UpdateRejectedError):
        return 409
    if isinstance(exc, StoreBusyError):
        return 503
    if isinstance(exc, (DataError, ConfigError)):
        return 400
    return 500


class _BatchedBackbone:
    """The backbone as :func:`~edgetl.runtime.features.backbone_features` wants it, through the batcher."""

    def __init__(self, service: "InferenceService"):
        self.preprocess, self.feature_dim, self._service = service.preprocess, service.feature_dim, service

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self._service.run_backbone(batch).features


class InferenceService:
    """A bundle opened for serving.  Fails fast (a :class:`~edgetl.runtime.errors.BundleError`) on a bad bundle.

    ``log(event)`` receives structured events (dicts) such as a head version picked up.
    """

    def __init__(self, bundle: str | Path, settings: ServeSettings | None = None,
                 log: Callable[[dict], None] = lambda event: None):
        self.settings = settings = settings or ServeSettings()
        settings.check()
        self.log = log
        started = time.perf_counter()
        self.metrics = ServiceMetrics()
        self.bundle = Bundle.open(bundle)
        self.name = settings.name or self.bundle.path.resolve().name
        self.backbone = Backbone(self.bundle, settings.artifact, settings.backend, settings.threads,
                                 tune=settings.tune, log=lambda line: log({"event": "tune", "message": line}))
        try:
            self.preprocess, self.feature_dim = self.backbone.preprocess, self.backbone.feature_dim
            self.live = LiveHead(self.bundle, settings.poll_ms / 1000, self._head_changed,
                                 lambda message: log({"event": "warning", "message": message}))
        except BaseException:
            self.backbone.close()
            raise
        self.text = isinstance(self.preprocess, TextPreprocess)
        self.batcher = DynamicBatcher(self.backbone.features, settings.max_batch, settings.max_wait_ms / 1000,
                                      self._observe_batch, self.preprocess.join if self.text else np.concatenate)
        self.decoder = ThreadPoolExecutor(max_workers=max(1, default_threads()), thread_name_prefix="edgetl-decode")
        self.session = LearningSession(keep_factor=True)
        self._learning = threading.Lock()           # one transaction of this service's session at a time
        self._scheduling = threading.Lock()         # starting (or refusing) the one background thread
        self._background: threading.Thread | None = None
        self._closing = False
        self.live.start()
        self._in_background("prepare", lambda: self.session.prepare(self.bundle.store, self.feature_dim))
        self.load_s = time.perf_counter() - started
        self.metrics.model_load.set(self.load_s)
        self.metrics.head_version.set(head_version(self.live.state))
        self.metrics.info.set(1, model=self.name, artifact=self.backbone.artifact.name,
                              backend=self.backbone.backend.name)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Answer what is queued, let a background search finish (its commit is crash-safe either way), then
        release the backbone."""
        with self._scheduling:
            self._closing = True
        if self._background is not None:
            self._background.join(timeout=30)
        self.live.close()
        self.batcher.close()
        self.decoder.shutdown()
        self.backbone.close()

    def _head_changed(self, state: HeadState) -> None:
        self.metrics.head_version.set(head_version(state))
        self.metrics.head_reloads.inc()
        self.log({"event": "head_version", "head_version": head_version(state), "classes": len(state.labels)})

    def _observe_batch(self, record: BatchRecord) -> None:
        self.metrics.batch_size.observe(record.size)
        self.metrics.batch_seconds.observe(record.compute_s)
        self.metrics.images.inc(record.size)

    def run_backbone(self, images: np.ndarray) -> Ran:
        ran = self.batcher.features(images)
        self.metrics.queue_seconds.observe(ran.queue_s)
        return ran

    # --- metadata -----------------------------------------------------------------------------------------------

    @property
    def input_shape(self) -> list[int]:
        size = self.preprocess.input_size
        return [3, size, size]

    @property
    def input_name(self) -> str:
        """The OIP input of what a user sends: ``image`` (encoded files) or ``text`` (UTF-8), BYTES either way."""
        return "text" if self.text else "image"

    def server_metadata(self) -> dict:
        return {"name": "edgetl", "version": _edgetl_version(), "extensions": ["binary_tensor_data", "edgetl_update"]}

    def model_metadata(self) -> dict:
        state = self.live.state
        classes = len(state.labels)
        return {
            "name": self.name, "versions": [MODEL_VERSION], "platform": f"edgetl_{self.backbone.backend.name}",
            "inputs": [{"name": self.input_name, "datatype": BYTES, "shape": [-1]}] +
                      ([] if self.text else [{"name": "input", "datatype": "FP32", "shape": [-1, *self.input_shape]}]),
            "outputs": [{"name": "label", "datatype": BYTES, "shape": [-1]},
                        {"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "head_version", "datatype": "INT64", "shape": [-1]}],
            "parameters": {"labels": list(state.labels), "head_version": head_version(state),
                           "artifact": self.backbone.artifact.name, "backend": self.backbone.backend.name,
                           "precision": self.backbone.backend.effective_precision,
                           "preprocess": self.preprocess.to_dict(), "max_batch": self.settings.max_batch,
                           "max_wait_ms": self.settings.max_wait_ms},
        }

    # --- inference ----------------------------------------------------------------------------------------------

    def _check_count(self, count: int, what: str) -> None:
        if count > self.settings.max_images:
            raise ProtocolError(f"{count} {what} in one request; at most {self.settings.max_images} (--max-images)",
                                413)

    def _texts(self, items: list[bytes]) -> list[str]:
        """UTF-8 texts of a request (counted by the caller), each checked (not empty, not oversized)."""
        texts = []
        for index, data in enumerate(items):
            try:
                texts.append(check_text(data.decode("utf-8"), f"text[{index}]"))
            except UnicodeDecodeError:
                raise ProtocolError(f"text[{index}] is not UTF-8") from None
            except DataError as exc:
                raise ProtocolError(str(exc)) from None
        return texts

    def _decode(self, items: list[bytes]) -> np.ndarray:
        self._check_count(len(items), "texts" if self.text else "images")
        if self.text:
            return self.preprocess.encode(self._texts(items))

        def one(index: int) -> np.ndarray:
            try:
                return preprocess(items[index], self.preprocess, max_pixels=self.settings.max_pixels)
            except ImageDecodeError as exc:
                raise ProtocolError(f"image[{index}]: {exc.reason}") from None

        if len(items) == 1:
            return one(0)[None]
        return np.stack(list(self.decoder.map(one, range(len(items)))))

    def _images(self, request: InferRequest) -> np.ndarray:
        name = self.input_name
        unknown = sorted(set(request.inputs) - {name, "input"})
        if unknown:
            takes = f"'{name}'" if self.text else f"'{name}' or 'input'"
            raise ProtocolError(f"unknown input(s) {', '.join(unknown)} (this model takes {takes})")
        if len(request.inputs) != 1:
            raise ProtocolError(f"give either '{name}' or 'input' (preprocessed), not both")
        if name in request.inputs:
            tensor = request.inputs[name]
            what = "UTF-8 texts" if self.text else "encoded JPEG/PNG"
            if tensor.datatype != BYTES:
                raise ProtocolError(f"input '{name}' must be BYTES ({what}), got {tensor.datatype}")
            if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or not tensor.data:
                raise ProtocolError(f"input '{name}' must have shape [N] or [N, 1] with N >= 1, got {tensor.shape}")
            return self._decode(tensor.data)
        if self.text:
            raise ProtocolError("a text model takes its texts as 'text' (BYTES); token ids are not accepted")
        tensor = request.inputs["input"]
        expected = [-1, *self.input_shape]
        if tensor.datatype != "FP32":
            raise ProtocolError(f"input 'input' must be FP32, got {tensor.datatype}")
        if len(tensor.shape) != 4 or tensor.shape[1:] != self.input_shape or tensor.shape[0] < 1:
            raise ProtocolError(f"input 'input' must have shape {expected}, got {tensor.shape}")
        self._check_count(tensor.shape[0], "inputs")
        if not np.isfinite(tensor.data).all():
            raise ProtocolError("input 'input' holds NaN or infinite values")
        return np.ascontiguousarray(tensor.data, dtype=np.float32)

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, HeadState, Ran]:
        """Logits of preprocessed images and the one head state that produced them."""
        ran = self.run_backbone(images)
        state = self.live.state          # one reference: every image of the request, one committed version
        return state.head.logits(apply_adapter(ran.features, state.adapter)), state, ran

    def infer(self, request: InferRequest) -> tuple[bytes, int | None, dict]:
        """An OIP infer request -> (response body, JSON header length for the binary extension, log fields)."""
        wanted = request.outputs
        if wanted is not None:
            unknown = sorted({o.name for o in wanted} - set(OUTPUTS))
            if unknown:
                raise ProtocolError(f"unknown output(s) {', '.join(unknown)} (valid: {', '.join(OUTPUTS)})")
        with self.batcher.arriving():
            images = self._images(request)
        logits, state, ran = self.classify(images)
        n = len(logits)
        version = head_version(state)
        tensors = {      # built only when asked for
            "label": lambda: Tensor("label", BYTES, [n], [state.labels[i].encode() for i in np.argmax(logits, axis=1)]),
            "logits": lambda: Tensor("logits", "FP32", list(logits.shape), logits.astype(np.float32)),
            "scores": lambda: Tensor("scores", "FP32", list(logits.shape), softmax(logits).astype(np.float32)),
            "head_version": lambda: Tensor("head_version", "INT64", [n], np.full(n, version, np.int64)),
        }
        chosen = [(tensors[o.name](), o.binary) for o in wanted] if wanted is not None else \
            [(tensors[name](), request.binary_default) for name in OUTPUTS]
        # OIP parameter values are scalars: the batches as comma-separated strings
        batches = {"head_version": version, "batch_sizes": ",".join(str(b.size) for b in ran.batches),
                   "batch_ids": ",".join(str(b.id) for b in ran.batches), "queue_ms": round(ran.queue_s * 1000, 3),
                   "compute_ms": round(sum(b.compute_s for b in ran.batches) * 1000, 3)}
        body, header = encode_infer_response(self.name, MODEL_VERSION, request.id, chosen, batches)
        return body, header, {"images": n, **batches}

    def classify_bytes(self, data: bytes, top_k: int = 1) -> dict:
        """The plain route: one encoded image -> its top classes and the head version that answered."""
        if top_k < 1:
            raise ProtocolError(f"top_k must be at least 1, got {top_k}")
        if not data:
            raise ProtocolError(f"the body is empty; send the {'text (UTF-8)' if self.text else 'image file'}'s bytes")
        with self.batcher.arriving():
            images = self._decode([data])
        logits, state, ran = self.classify(images)
        scores = softmax(logits)[0]
        order = np.argsort(-scores)[:min(top_k, len(scores))]
        return {"label": state.labels[order[0]], "score": float(scores[order[0]]),
                "top_k": [{"label": state.labels[i], "score": float(scores[i])} for i in order],
                "head_version": head_version(state), "batch_size": ran.batches[0].size}

    # --- learning -----------------------------------------------------------------------------------------------

    def update(self, request: InferRequest) -> dict:
        """Learn labelled images (inputs ``image`` and ``label``, BYTES [N]) with ``edgetl-rt update``'s rules;
        answers after the committed version serves."""
        settings = _update_settings(request.parameters, self.settings.max_pixels)
        name = self.input_name
        images, labels = request.inputs.get(name), request.inputs.get("label")
        if images is None or labels is None or set(request.inputs) != {name, "label"}:
            raise ProtocolError(f"an update takes exactly two inputs: '{name}' (BYTES, "
                                f"{'UTF-8 texts' if self.text else 'encoded images'}) and 'label' (BYTES, class names)")
        if images.datatype != BYTES or labels.datatype != BYTES:
            raise ProtocolError(f"'{name}' and 'label' must both be BYTES")
        noun = "texts" if self.text else "images"
        self._check_count(len(images.data), noun)
        if len(images.data) != len(labels.data) or not images.data:
            raise ProtocolError(f"{len(images.data)} {noun} and {len(labels.data)} labels; give one label per "
                                f"{noun[:-1]}")
        try:
            names = [label.decode("utf-8").strip() for label in labels.data]
        except UnicodeDecodeError:
            raise ProtocolError("labels must be UTF-8 text") from None
        if any(not name or len(name) > 200 for name in names):
            raise ProtocolError("every label must be a non-empty class name of at most 200 characters")
        records = input_records(self._texts(images.data) if self.text else images.data, self.preprocess)
        try:
            if not self._learning.acquire(timeout=settings.lock_timeout):
                raise StoreBusyError(f"the service is busy learning (another update, or its background alpha "
                                     f"search); waited {settings.lock_timeout:g} s: retry, or raise lock_timeout")
            try:
                report = learn_records(self.bundle, _BatchedBackbone(self), records, names, settings,
                                       artifact_name=self.backbone.artifact.name, source_name="the request",
                                       session=self.session)
            finally:
                self._learning.release()
        except UpdateRejectedError:
            self.metrics.updates.inc(result="rejected")
            raise
        except EdgetlError:
            self.metrics.updates.inc(result="error")
            raise
        self.metrics.updates.inc(result="committed")
        try:
            self.live.refresh(force=True)
        except Exception as exc:     # noqa: BLE001 - committed all the same; the watcher retries the load
            self.log({"event": "warning", "message": f"version {report['version']} committed but not loaded yet: "
                                                     f"{exc}"})
        report["head_version"] = head_version(self.live.state)
        if report["alpha_due"] and not report["alpha_searched"] and settings.method != "ncm":
            self._in_background("tune", self._tune)
        return report

    def _tune(self) -> None:
        report = tune_alpha(self.bundle, self.session, lock_timeout=5.0)
        self.live.refresh(force=True)
        self.log({"event": "tuned", "head_version": report["version"], "alpha": report["alpha"],
                  "alpha_before": report["alpha_before"], "seconds": round(report["timings"]["alpha_s"], 3)})

    def _in_background(self, name: str, work: Callable[[], None]) -> None:
        """Run ``work`` in one background thread at a time (skipped while another runs or the service closes),
        under the learning lock."""
        def run() -> None:
            try:
                with self._learning:
                    work()
            except Exception as exc:    # noqa: BLE001 - a background step never stops the service; it is logged
                self.log({"event": "warning", "message": f"background {name} failed: {exc}"})

        with self._scheduling:
            if self._closing or (self._background is not None and self._background.is_alive()):
                return
            self._background = threading.Thread(target=run, name=f"edgetl-{name}", daemon=True)
            self._background.start()


def _update_settings(parameters: dict, max_pixels: int) -> UpdateSettings:
    """The update's parameters (``method``, ``holdout``, ``max_accuracy_drop``, ``force``, ``reselect_alpha``,
    ``lock_timeout``, ``skip_bad``), type-checked: a wrong type is a 400, never a guess."""
    known = {"method": str, "holdout": float, "max_accuracy_drop": float, "force": bool, "reselect_alpha": bool,
             "lock_timeout": float, "skip_bad": bool}
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ProtocolError(f"unknown update parameter(s) {', '.join(unknown)} (valid: {', '.join(known)})")
    values = {}
    for key, kind in known.items():
        if key not in parameters:
            continue
        value = parameters[key]
        ok = isinstance(value, bool) if kind is bool else isinstance(value, str) if kind is str else \
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise ProtocolError(f"update parameter '{key}' must be {kind.__name__}, got {value!r}")
        values[key] = value
    if not 0 <= values.get("lock_timeout", 10.0) <= 300:
        raise ProtocolError("lock_timeout must lie in [0, 300] seconds")
    return UpdateSettings(method=values.get("method", "ridge"), holdout_fraction=float(values.get("holdout", 0.2)),
                          max_accuracy_drop=float(values.get("max_accuracy_drop", 2.0)),
                          force=values.get("force", False), reselect_alpha=values.get("reselect_alpha", False),
                          lock_timeout=float(values.get("lock_timeout", 10.0)), skip_bad=values.get("skip_bad", False),
                          max_pixels=max_pixels)

"""The served model, without HTTP: metadata, inference, the update route and the plain classify route.

Every image a request carries (infer, classify, update) is decoded and preprocessed in the service's one bounded
:class:`~edgetl.runtime.data.decoding.DecodePool` (``decode_threads`` threads, Pillow releasing the GIL; at most
``decode_pixels`` decoded pixels at once, waited for until the request's deadline) by the runtime's own
preprocessing, so the service sees an image exactly as ``predict`` does, and what concurrent requests decode at
once is bounded by the settings, not by the clients (docs/serving.md states the memory bound); the backbone
runs behind the :class:`~.batcher.DynamicBatcher`; the head is the :class:`~.live_head.LiveHead`'s reference,
read once per request.  An update goes through :func:`~edgetl.runtime.learning.learn_records`, the transaction of
``edgetl-rt update``, with its images' backbone pass queued beside inference, and answers after the new head
version serves.  The service keeps one :class:`~edgetl.runtime.learning.LearningSession` (the ridge system
factorised in the background at start), so a one-image update costs its backbone pass plus milliseconds; when an
update leaves the regularisation search due, the search runs in the background and commits a ``tune`` version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path

import numpy as np

from ..bundle.folder import Bundle, HeadState
from ..bundle.heads import softmax
from ..bundle.unknown import UNKNOWN_LABEL
from ..compat import renamed_keyword
from ..data.decoding import DecodeLane, DecodePool
from ..data.preprocess import header_pixels, preprocess
from ..data.sources import input_records
from ..data.text import TextPreprocess
from ..engines.runner import BackboneRunner
from ..errors import (
    ConfigError,
    DataError,
    DecodeBusyError,
    EdgetlError,
    ImageDecodeError,
    StoreBusyError,
    UpdateRejectedError,
)
from ..inference.drift import DEFAULT_FALSE_ALARMS, DEFAULT_WINDOW, DriftMonitor, WindowScore, detector_for
from ..inference.features import apply_adapter
from ..learning.alpha import tune_alpha
from ..learning.reports import UpdateReport
from ..learning.session import LearningSession
from ..learning.settings import BACKGROUND_LOCK_TIMEOUT, UpdateSettings
from ..learning.update import learn_records
from ..machine import default_threads
from .adaptation import DEFAULT_WINDOW as DEFAULT_ADAPT_WINDOW, StreamAdapter, StreamStats, stream_head, stream_source
from .batcher import BatchRecord, DynamicBatcher, Ran
from .live_head import LiveHead, head_version
from .metrics import ServiceMetrics
from .protocol import BYTES, InferRequest, ProtocolError, Tensor, encode_infer_response
from .rebuild import LatestRebuild
from .requests import Signature, infer_input, requested_outputs, update_inputs, update_parameters, utf8_texts

#: Pixel limit of one received image: 16 MP (4096 x 4096) bounds what concurrent decodes can take (3 bytes a pixel).
SERVE_MAX_PIXELS = 4096 * 4096
#: Images one request may carry: a body of tiny PNGs must not decode into gigabytes.
SERVE_MAX_IMAGES = 256
#: Decoded pixels the whole service holds at once: two images at the pixel limit.  At the costliest decode (26 bytes
#: a pixel at most: JPEG 2000 with four components) that is about 830 MB; docs/serving.md states the whole bound.
SERVE_DECODE_PIXELS = 2 * SERVE_MAX_PIXELS
#: Preprocessed inputs (float32, N x 3 x S x S) of all requests waiting for the backbone, in MB: a request of 256
#: inputs at 224 px (154 MB) fits alone; one larger waits to be alone.
SERVE_INPUTS_MB = 160.0
#: Seconds a request waits for decode room (a thread, pixels or input room) before it gets a 503.
SERVE_DECODE_WAIT_S = 30.0
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
    measure: bool = True
    max_pixels: int = SERVE_MAX_PIXELS
    max_images: int = SERVE_MAX_IMAGES
    poll_ms: float = 50.0
    decode_pixels: int = SERVE_DECODE_PIXELS
    decode_threads: int | None = None            # None: one per usable core (machine.default_threads)
    inputs_mb: float = SERVE_INPUTS_MB
    decode_wait_s: float = SERVE_DECODE_WAIT_S
    reject: bool = False                         # label inputs above the unknown threshold "unknown"
    drift_window: int = DEFAULT_WINDOW           # 0: no drift monitor
    drift_false_alarms: float = DEFAULT_FALSE_ALARMS
    adapt_on_drift: bool = False                 # adapt on the stream when drift is detected (serving/adaptation)
    adapt_window: int = DEFAULT_ADAPT_WINDOW

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
        if self.decode_pixels < 1:
            raise ConfigError(f"must be at least 1, got {self.decode_pixels}", option="decode_pixels")
        if self.decode_threads is not None and self.decode_threads < 1:
            raise ConfigError(f"must be at least 1, got {self.decode_threads}", option="decode_threads")
        if self.inputs_mb <= 0:
            raise ConfigError(f"must be positive, got {self.inputs_mb:g}", option="inputs_mb")
        if self.decode_wait_s <= 0:
            raise ConfigError(f"must be positive, got {self.decode_wait_s:g}", option="decode_wait_s")
        if self.drift_window != 0 and self.drift_window < 2:
            raise ConfigError(f"must be 0 (off) or at least 2, got {self.drift_window}", option="drift_window")
        if not 0.1 <= self.drift_false_alarms < 1000:
            raise ConfigError(f"must lie in [0.1, 1000), got {self.drift_false_alarms:g}", option="drift_false_alarms")
        if self.adapt_window < 16:
            raise ConfigError(f"must be at least 16, got {self.adapt_window}", option="adapt_window")


ServeSettings.__init__ = renamed_keyword("tune", "measure")(ServeSettings.__init__)   # 0.6 spelling


def _edgetl_version() -> str:
    try:
        return package_version("edgetl")
    except PackageNotFoundError:     # pragma: no cover - a source tree without metadata
        return "unknown"


def _unknown_parameters(state: HeadState, reject: bool) -> dict:
    """Model metadata naming the unknown-input scorer and threshold of the head that answers (OIP parameters are
    scalars)."""
    if state.unknown is None:
        return {"unknown_method": "none"}
    return {"unknown_method": state.unknown.settings.method, "unknown_threshold": state.unknown.threshold,
            "unknown_keep": state.unknown.settings.keep, "reject": reject}


def error_status(exc: EdgetlError) -> int:
    """The HTTP status of an error a request caused: the request's fault (4xx) unless the service's own files
    are at fault (500)."""
    if isinstance(exc, UpdateRejectedError):
        return 409
    if isinstance(exc, (StoreBusyError, DecodeBusyError)):
        return 503
    if isinstance(exc, (DataError, ConfigError)):
        return 400
    return 500


class _BatchedRunner:
    """The backbone as :func:`~edgetl.runtime.inference.features.backbone_features` wants it, through the batcher."""

    def __init__(self, service: InferenceService):
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
        self.bundle.verify_listed()        # every file, not only those loaded: a long-lived service checks once
        self.name = settings.name or self.bundle.path.resolve().name
        self.backbone = BackboneRunner(self.bundle, settings.artifact, settings.backend, settings.threads,
                                       measure=settings.measure,
                                       log=lambda line: log({"event": "measure", "message": line}))
        try:
            self.preprocess, self.feature_dim = self.backbone.preprocess, self.backbone.feature_dim
            self.live = LiveHead(self.bundle, settings.poll_ms / 1000, self._head_changed,
                                 lambda message: log({"event": "warning", "message": message}))
        except BaseException:
            self.backbone.close()
            raise
        self.text = isinstance(self.preprocess, TextPreprocess)
        self.signature = Signature(self.text, None if self.text else self.preprocess.input_size, settings.max_images)
        self.batcher = DynamicBatcher(self.backbone.features, settings.max_batch, settings.max_wait_ms / 1000,
                                      self._observe_batch, self.preprocess.join if self.text else np.concatenate)
        self.decoder = DecodePool(settings.decode_threads or max(1, default_threads()), settings.decode_pixels,
                                  int(settings.inputs_mb * 1024 * 1024))
        self.session = LearningSession(keep_factor=True)
        #: ``--adapt-on-drift``: triggered by the drift monitor's alarm (by its own drift score with
        #: ``--drift-window 0``)
        self.stream_adapter = StreamAdapter(lambda state: stream_source(self.bundle, state), self.feature_dim,
                                            settings.adapt_window, modality="text" if self.text else "image",
                                            trigger=self._drift_alarm if settings.drift_window else None,
                                            on_outcome=self._adaptation_outcome,
                                            head_of=lambda state: stream_head(self.bundle, state)) \
            if settings.adapt_on_drift else None
        if self.stream_adapter is not None:
            self.metrics.adaptation_active.set(0)
        self._learning = threading.Lock()           # one transaction of this service's session at a time
        self._scheduling = threading.Lock()         # starting (or refusing) the one background thread
        self._background: threading.Thread | None = None
        self._closing = False
        self.drift: DriftMonitor | None = None       # built in the background; rebuilt for every head version
        self.drift_ready = threading.Event()          # set once the first build has ended (monitor or not)
        #: called with (monitor, window) for every complete window: the seam for acting on drift (e.g. adaptation)
        self.drift_listeners: list[Callable[[DriftMonitor, WindowScore], None]] = []
        self._drift_rebuild: LatestRebuild[HeadState] = LatestRebuild(self._build_drift, "edgetl-drift")
        self.live.start()
        self._start_drift(self.live.state)
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
        self.decoder.close()
        self.backbone.close()

    def _head_changed(self, state: HeadState) -> None:
        self.metrics.head_version.set(head_version(state))
        self.metrics.head_reloads.inc()
        self.log({"event": "head_version", "head_version": head_version(state), "classes": len(state.labels)})
        self._start_drift(state)

    # --- drift --------------------------------------------------------------------------------------------------

    def _start_drift(self, state: HeadState) -> None:
        """Build the drift monitor of ``state``'s training statistics in the background (an eigendecomposition of
        d x d and the alarm level's null windows: about a second at d = 1280); the old monitor serves meanwhile.
        One build runs at a time: versions picked up during it collapse into one more build, of the newest."""
        if not self.settings.drift_window:
            self.drift_ready.set()
            return
        self._drift_rebuild.request(state)

    def _build_drift(self, state: HeadState) -> None:
        """The drift monitor of ``state``'s own version (not whatever is current by now), published at once: builds
        run one at a time in request order, so a newer version's monitor is never replaced by an older one's."""
        try:
            store = self.bundle.store
            version = store.version(state.version) if state.version is not None and store.exists else None
            detector = detector_for(self.bundle, version=version, false_alarms=self.settings.drift_false_alarms)
            unknown = state.unknown
            monitor = DriftMonitor(detector, list(state.labels), self.settings.drift_window,
                                   unknown_threshold=None if unknown is None else unknown.threshold)
            self.drift = monitor
            self.metrics.drift_threshold.set(monitor.level.threshold)
            self.metrics.drift_inputs.set(monitor.window)
            self.log({"event": "drift_monitor", "head_version": head_version(state),
                      "threshold": round(monitor.level.threshold, 4), "window": monitor.window,
                      "calibrated_on": detector.calibrated_on})
        except Exception as exc:     # noqa: BLE001 - serving goes on without drift; the log says why
            self.log({"event": "warning", "message": f"drift monitor off: {exc}"})
        finally:
            self.drift_ready.set()

    def _drift_alarm(self) -> bool:
        """Whether the drift monitor's last complete window alarmed (False until it is built)."""
        monitor = self.drift
        return monitor is not None and bool(monitor.alarm)

    def _observe_drift(self, features: np.ndarray, logits: np.ndarray,
                       unknown_scores: np.ndarray | None = None) -> None:
        monitor = self.drift
        if monitor is None or not len(features):
            return
        try:
            windows = monitor.observe(features, np.argmax(logits, axis=1), unknown_scores)
        except Exception as exc:     # noqa: BLE001 - drift never fails the request it watches; the log says why
            self.log({"event": "warning", "message": f"drift monitor failed on a batch: {exc}"})
            return
        for window in windows:
            self._drift_window(monitor, window)

    def _drift_window(self, monitor: DriftMonitor, window: WindowScore) -> None:
        metrics = self.metrics
        metrics.drift_windows.inc()
        metrics.drift_alarms.inc(int(window.alarm))
        metrics.drift_score.set(window.score)
        metrics.drift_alarm.set(int(window.alarm))
        snapshot = monitor.snapshot()
        if snapshot.feature_shift is not None:
            metrics.drift_feature_shift.set(snapshot.feature_shift)
            metrics.drift_spread.set(snapshot.spread_ratio)
        if window.unknown_rate is not None:
            metrics.drift_unknown_rate.set(window.unknown_rate)
        for label in monitor.labels:
            metrics.drift_class_share.set(window.class_shares.get(label, 0.0), label=label)
        if window.alarm:
            self.log({"event": "drift_alarm", "window": window.index, "score": round(window.score, 3),
                      "threshold": round(monitor.level.threshold, 3)})
        for listener in list(self.drift_listeners):
            try:
                listener(monitor, window)
            except Exception as exc:     # noqa: BLE001 - a listener never fails the request that completed the window
                self.log({"event": "warning", "message": f"drift listener failed: {exc}"})

    def _observe_batch(self, record: BatchRecord) -> None:
        self.metrics.batch_size.observe(record.size)
        self.metrics.batch_seconds.observe(record.compute_s)
        self.metrics.images.inc(record.size)

    def run_backbone(self, images: np.ndarray) -> Ran:
        ran = self.batcher.features(images)
        self.metrics.queue_seconds.observe(ran.queue_s)
        return ran

    # --- metadata -----------------------------------------------------------------------------------------------

    def server_metadata(self) -> dict:
        return {"name": "edgetl", "version": _edgetl_version(), "extensions": ["binary_tensor_data", "edgetl_update"]}

    def model_metadata(self) -> dict:
        state = self.live.state
        classes = len(state.labels)
        return {
            "name": self.name, "versions": [MODEL_VERSION], "platform": f"edgetl_{self.backbone.backend.name}",
            "inputs": [{"name": self.signature.input_name, "datatype": BYTES, "shape": [-1]}] +
                      ([] if self.text else [{"name": "input", "datatype": "FP32",
                                              "shape": [-1, *self.signature.input_shape]}]),
            "outputs": [{"name": "label", "datatype": BYTES, "shape": [-1]},
                        {"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "head_version", "datatype": "INT64", "shape": [-1]}] +
                       ([{"name": "ood_score", "datatype": "FP32", "shape": [-1]},
                         {"name": "unknown", "datatype": "BOOL", "shape": [-1]}] if state.unknown else []),
            "parameters": {"labels": list(state.labels), "head_version": head_version(state),
                           **_unknown_parameters(state, self.settings.reject),
                           "artifact": self.backbone.artifact.name, "backend": self.backbone.backend.name,
                           "precision": self.backbone.backend.effective_precision,
                           "preprocess": self.preprocess.to_dict(), "max_batch": self.settings.max_batch,
                           "max_wait_ms": self.settings.max_wait_ms,
                           **({"drift": self.drift.snapshot().to_json()} if self.drift is not None else {})},
        }

    # --- inference ----------------------------------------------------------------------------------------------

    def _lane(self) -> DecodeLane:
        """This request's way into the decode pool: it waits for room at most ``decode_wait_s`` from now, and
        holds its inputs' room until it closes (``with``)."""
        return self.decoder.lane(time.monotonic() + self.settings.decode_wait_s)

    def _decode(self, items: list[bytes], lane: DecodeLane) -> np.ndarray:
        """The backbone's input for encoded items (counted by the caller): texts tokenized, images decoded and
        preprocessed as ``predict`` does, in the bounded decode pool (one image as many), into one array whose
        bytes the lane holds from the input budget."""
        if self.text:
            return self.preprocess.encode(utf8_texts(items))
        size = self.preprocess.input_size
        lane.keep(len(items) * 3 * size * size * 4)
        images = np.empty((len(items), 3, size, size), np.float32)

        def one(index: int) -> None:
            try:
                images[index] = preprocess(items[index], self.preprocess, max_pixels=self.settings.max_pixels,
                                           hold=lane.hold)
            except ImageDecodeError as exc:
                raise ProtocolError(f"image[{index}]: {exc.reason}") from None

        lane.map(one, range(len(items)), lambda index: header_pixels(items[index]))
        return images

    def _inputs(self, request: InferRequest, lane: DecodeLane) -> np.ndarray:
        given = infer_input(request, self.signature)
        return given.tensor if given.encoded is None else self._decode(given.encoded, lane)

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, HeadState, Ran]:
        """Logits of preprocessed images and the one head state that produced them."""
        logits, _, state, ran = self._classified(images)
        return logits, state, ran

    def _classified(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, HeadState, Ran]:
        """Logits, unknown scores (None: the head has no scorer) and the one head state that produced both."""
        ran = self.run_backbone(images)
        state = self.live.state          # one reference: every image of the request, one committed version
        features = apply_adapter(ran.features, state.adapter)
        committed = state.head.logits(features)
        # unknown scores and drift are the committed head's: its scorer and threshold were fitted on its logits,
        # and the input's drift is measured before any stream adaptation
        scores = None if state.unknown is None else state.unknown.scores(features, committed)
        self._observe_drift(features, committed, scores)
        if self.stream_adapter is None:
            return committed, scores, state, ran
        return self.stream_adapter.logits(ran.features, state), scores, state, ran

    def _labels(self, logits: np.ndarray, scores: np.ndarray | None, state: HeadState) -> list[str]:
        """The answered labels: the top class, or ``unknown`` above the threshold when serving with ``--reject``."""
        labels = [state.labels[i] for i in np.argmax(logits, axis=1)]
        if self.settings.reject and scores is not None:
            labels = [UNKNOWN_LABEL if s > state.unknown.threshold else label for label, s in zip(labels, scores)]
        return labels

    def _adaptation_outcome(self, outcome: str, stats: StreamStats) -> None:
        """Count and log one outcome of the stream adapter; it calls this under its lock, with the stats of that
        very transition, so concurrent requests neither count an outcome twice nor log another's reason."""
        self.metrics.adaptations.inc(outcome=outcome)
        self.metrics.adaptation_active.set(1 if stats.active else 0)
        self.log({"event": "adapt", "outcome": outcome, "method": stats.method, "reason": stats.last_reason})

    def infer(self, request: InferRequest) -> tuple[bytes, int | None, dict]:
        """An OIP infer request -> (response body, JSON header length for the binary extension, log fields)."""
        wanted = requested_outputs(request)
        with self._lane() as lane:
            with self.batcher.arriving():
                images = self._inputs(request, lane)
            logits, scores, state, ran = self._classified(images)
            del images                      # before the lane gives its room back
        n = len(logits)
        version = head_version(state)
        if scores is None and any(name in ("ood_score", "unknown") for name, _ in wanted):
            raise ProtocolError(f"model {self.name} has no unknown-input scorer (its bundle was exported before "
                                "there were any and ships no learning data), so it has no ood_score or unknown "
                                "output")
        tensors = {      # built only when asked for
            "label": lambda: Tensor("label", BYTES, [n], [label.encode() for label in self._labels(logits, scores,
                                                                                                   state)]),
            "ood_score": lambda: Tensor("ood_score", "FP32", [n], scores.astype(np.float32)),
            "unknown": lambda: Tensor("unknown", "BOOL", [n], scores > state.unknown.threshold),
            "logits": lambda: Tensor("logits", "FP32", list(logits.shape), logits.astype(np.float32)),
            "scores": lambda: Tensor("scores", "FP32", list(logits.shape), softmax(logits).astype(np.float32)),
            "head_version": lambda: Tensor("head_version", "INT64", [n], np.full(n, version, np.int64)),
        }
        chosen = [(tensors[name](), binary) for name, binary in wanted]
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
        with self._lane() as lane:
            with self.batcher.arriving():
                images = self._decode([data], lane)
            logits, unknown, state, ran = self._classified(images)
            del images
        scores = softmax(logits)[0]
        order = np.argsort(-scores)[:min(top_k, len(scores))]
        answer = {"label": self._labels(logits, unknown, state)[0], "score": float(scores[order[0]]),
                  "top_k": [{"label": state.labels[i], "score": float(scores[i])} for i in order],
                  "head_version": head_version(state), "batch_size": ran.batches[0].size}
        if unknown is not None:
            answer.update(unknown_score=float(unknown[0]), unknown=bool(unknown[0] > state.unknown.threshold))
        return answer

    # --- learning -----------------------------------------------------------------------------------------------

    def update(self, request: InferRequest) -> UpdateReport:
        """Learn labelled inputs (``image`` or ``text``, and ``label``, BYTES [N]) with ``edgetl-rt update``'s rules;
        answers after the committed version serves."""
        settings = UpdateSettings.for_service(**update_parameters(request.parameters),
                                              max_pixels=self.settings.max_pixels)
        items, names = update_inputs(request, self.signature)
        records = input_records(utf8_texts(items) if self.text else items, self.preprocess)
        try:
            if not self._learning.acquire(timeout=settings.lock_timeout):
                raise StoreBusyError(f"the service is busy learning (another update, or its background alpha "
                                     f"search); waited {settings.lock_timeout:g} s: retry, or raise lock_timeout")
            try:
                report = learn_records(self.bundle, _BatchedRunner(self), records, names, settings,
                                       artifact_name=self.backbone.artifact.name, source_name="the request",
                                       session=self.session, lane=None if self.text else self._lane())
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
            self.log({"event": "warning", "message": f"version {report.version} committed but not loaded yet: "
                                                     f"{exc}"})
        report.head_version = head_version(self.live.state)
        if report.alpha_due and not report.alpha_searched and settings.method != "ncm":
            self._in_background("tune", self._tune)
        return report

    def _tune(self) -> None:
        report = tune_alpha(self.bundle, self.session, lock_timeout=BACKGROUND_LOCK_TIMEOUT)
        self.live.refresh(force=True)
        self.log({"event": "tuned", "head_version": report.version, "alpha": report.alpha,
                  "alpha_before": report.alpha_before, "seconds": round(report.timings.alpha_s, 3)})

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

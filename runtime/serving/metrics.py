"""Prometheus metrics in the text exposition format (version 0.0.4), thread-safe.

Hand-written rather than ``prometheus_client``: counters, gauges and histograms with labels are about a hundred
lines, and the device runtime then serves with the standard library alone.
"""

from __future__ import annotations

import math
import threading

#: Request latency buckets (seconds): a millisecond batch-1 call up to a multi-second update.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_text, labels
        self._lock = threading.Lock()

    def _key(self, labels: dict) -> tuple[str, ...]:
        return tuple(str(labels[n]) for n in self.label_names)

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self._samples()]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        """The sum over every label set."""
        with self._lock:
            return sum(self._values.values())

    def _samples(self) -> list[str]:
        with self._lock:
            return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(buckets)
        self._series: dict[tuple, list] = {}     # key -> [bucket counts..., sum, count]

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, **labels) -> int:
        with self._lock:
            return self._series.get(self._key(labels), [0])[-1]

    def _samples(self) -> list[str]:
        lines = []
        with self._lock:
            for key, series in sorted(self._series.items()):
                for bound, n in zip(self.buckets, series):
                    bucket = _labels(self.label_names, key, f'le="{_number(bound)}"')
                    lines.append(f"{self.name}_bucket{bucket} {n}")
                bucket = _labels(self.label_names, key, 'le="+Inf"')
                lines.append(f"{self.name}_bucket{bucket} {series[-1]}")
                lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
                lines.append(f"{self.name}_count{_labels(self.label_names, key)} {series[-1]}")
        return lines


class ServiceMetrics:
    """Everything ``/metrics`` reports about one service."""

    def __init__(self):
        self.requests = Counter("edgetl_requests_total", "HTTP requests by route and status code.", ("route", "code"))
        self.latency = Histogram("edgetl_request_duration_seconds", "Time from request read to response, by route.",
                                 LATENCY_BUCKETS, ("route",))
        self.images = Counter("edgetl_inference_images_total", "Inputs (images or texts) run by the backbone.")
        self.batch_size = Histogram("edgetl_batch_size", "Inputs per backbone batch (dynamic batching).", BATCH_BUCKETS)
        self.batch_seconds = Histogram("edgetl_batch_duration_seconds", "Backbone time per batch.", LATENCY_BUCKETS)
        self.queue_seconds = Histogram("edgetl_queue_wait_seconds", "Time a request's inputs waited for their batch.",
                                       LATENCY_BUCKETS)
        self.in_flight = Gauge("edgetl_requests_in_flight", "Requests being handled now.")
        self.head_version = Gauge("edgetl_head_version", "The head version that answers now (0: the bundle's own).")
        self.head_reloads = Counter("edgetl_head_reloads_total", "Committed head versions picked up while serving.")
        self.updates = Counter("edgetl_updates_total", "Update requests by result.", ("result",))
        self.model_load = Gauge("edgetl_model_load_seconds", "Time to open the bundle and its backbone at start-up.")
        self.info = Gauge("edgetl_model_info", "The served model (value 1).", ("model", "artifact", "backend"))
        self.connections_closed = Counter(
            "edgetl_connections_closed_total", "Connections the service closed or refused on its own, by reason: full "
            "(503 at accept), draining (503 at accept), reclaimed (a waiting connection's slot given to a new one), "
            "idle_timeout, head_timeout (408), body_timeout (408).", ("reason",))
        self.drift_score = Gauge("edgetl_drift_score", "Drift score of the last complete window of served inputs "
                                 "(standardised against clean windows; see docs/drift.md).")
        self.drift_threshold = Gauge("edgetl_drift_threshold", "The drift alarm level (a stated false-alarm rate "
                                     "per 1,000 clean windows).")
        self.drift_alarm = Gauge("edgetl_drift_alarm", "1 when the last complete window's score is over the alarm "
                                 "level, else 0.")
        self.drift_windows = Counter("edgetl_drift_windows_total", "Windows of served inputs scored for drift.")
        self.drift_alarms = Counter("edgetl_drift_alarms_total", "Windows whose drift score was over the alarm level.")
        self.drift_inputs = Gauge("edgetl_drift_window_inputs", "Inputs per drift window.")
        self.drift_feature_shift = Gauge("edgetl_drift_feature_shift", "Distance of the served features' running "
                                         "mean from the training mean, in training spreads.")
        self.drift_spread = Gauge("edgetl_drift_spread_ratio", "Spread of the served features over the training "
                                  "spread (1 when alike).")
        self.drift_unknown_rate = Gauge("edgetl_drift_unknown_rate", "Share of the last window's inputs scored as "
                                        "unknown (when an unknown score is given).")
        self.drift_class_share = Gauge("edgetl_drift_class_share", "Share of each class among the last window's "
                                       "answers.", ("label",))
        self.adaptations = Counter(
            "edgetl_adaptations_total", "serve --adapt-on-drift: adaptations of the stream by outcome: adapted (the "
            "label-free guard accepted one), refused (it accepted none), reset (back to the unadapted head).",
            ("outcome",))
        self.adaptation_active = Gauge("edgetl_adaptation_active", "1 while the stream is answered adapted.")
        self._all = [self.requests, self.latency, self.images, self.batch_size, self.batch_seconds,
                     self.queue_seconds, self.in_flight, self.head_version, self.head_reloads, self.updates,
                     self.model_load, self.info, self.connections_closed, self.drift_score, self.drift_threshold,
                     self.drift_alarm, self.drift_windows, self.drift_alarms, self.drift_inputs,
                     self.drift_feature_shift, self.drift_spread, self.drift_unknown_rate, self.drift_class_share,
                     self.adaptations, self.adaptation_active]

    def render(self) -> str:
        return "\n".join(line for metric in self._all for line in metric.render()) + "\n"

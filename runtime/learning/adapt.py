"""``edgetl-rt adapt``: the model adapted to unlabelled target-domain data (transductive transfer), by a method of
:mod:`.adapters` that its label-free guard accepts, committed through the store like every other version."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..bundle.folder import Bundle
from ..bundle.store import Samples, Version
from ..compat import renamed_keyword
from ..data.sources import open_data
from ..documents import utc_now
from ..engines.runner import BackboneRunner
from ..errors import BundleError, ConfigError, DataError, UpdateRejectedError
from ..inference.features import backbone_features
from ..metrics import top1_accuracy
from ..progress import ProgressFactory, silent_progress
from .adapters import AUTO_BY_MODALITY, METHODS, Candidate, DriftScore, SourceStatistics, choose
from .reports import AdaptReport
from .settings import UpdateSettings
from .versions import ensure_store, write_rows


def source_version(store, parent: Version) -> Version:
    """The version whose head the adaptations fit from: the nearest ancestor that is not itself an adaptation (an
    adapted head is never adapted again), or ``parent`` where that ancestor is no longer kept."""
    version, kept = parent, set(store.kept_numbers())
    while version.action == "adapt" and version.parent is not None and version.parent in kept:
        version = store.version(version.parent)
    return version


def adapted(version: Version) -> bool:
    """Whether ``version``'s head works on adapted features: an adaptation, or a version that kept one's feature
    adapter (an ``update`` on it, or a ``rollback`` to it).  Such a head is never adapted again: a new adapter in
    front of it would mix two feature spaces."""
    return version.action == "adapt" or "adapter.npz" in version.files


@renamed_keyword("tune", "measure")
def adapt_bundle(bundle: str | Path | Bundle, data: str, check: str | None = None,
                 max_accuracy_drop: float = UpdateSettings.max_accuracy_drop, force: bool = UpdateSettings.force,
                 lock_timeout: float = UpdateSettings.lock_timeout, artifact: str | None = None,
                 backend: str | None = None, threads: int | None = None,
                 progress: ProgressFactory = silent_progress, measure: bool = True, method: str = "auto",
                 drift: DriftScore | None = None, alarm: float | None = None) -> AdaptReport:
    """Adapt the model to unlabelled target-domain inputs (labels in DATA are ignored) and commit it when the
    label-free guard says it helped.

    ``method``: ``auto`` (the methods of :data:`~.adapters.AUTO_BY_MODALITY` in order, the first the guard takes) or
    one of :data:`~.adapters.METHODS`. The guard (:func:`~.adapters.choose`) refuses when the target's drift score is
    below the alarm level (nothing to adapt to), or when the adaptation changes more than half of the served
    answers, crowds them into fewer classes, or moves the features away from the source; ``drift`` and ``alarm``
    replace the default drift score (the seam to another drift measure). A refusal commits nothing and says why
    in the report (``guard``, ``guard_reason``); ``force`` commits the method anyway. With ``check`` (labelled
    inputs of the target domain) the accuracy before and after is reported and guards the commit as well.
    """
    if method != "auto" and method not in METHODS:
        raise ConfigError(f"unknown adaptation method {method!r}: one of auto, {', '.join(METHODS)}", option="method")
    bundle = Bundle.open(bundle)
    store = bundle.store
    records, _ = open_data(data).records_and_names()
    with BackboneRunner(bundle, artifact=artifact, backend=backend, threads=threads, measure=measure) as backbone, \
            store.locked(lock_timeout):       # the backbone first: a tampered bundle changes nothing
        parent = ensure_store(store, bundle)
        state = store.state(parent)
        if state.ridge.count < 2:
            raise BundleError("the store has no source statistics to adapt to (the bundle ships no learning data)")
        source = SourceStatistics.from_ridge(state.ridge)
        base = source_version(store, parent)
        if adapted(base):
            raise ConfigError(f"cannot adapt version {parent.version} of {bundle.path}: its head works on adapted "
                              f"features (version {base.version}: {base.action} with a feature adapter) and the "
                              "unadapted head it started from is no longer kept; roll back to a version without an "
                              "adapter first", option="bundle")
        head, current = store.head(base), Candidate("current", store.adapter(parent), store.head(parent))
        raw = backbone_features(backbone, records, progress=progress).values   # raw target features
        t0 = time.perf_counter()
        methods = AUTO_BY_MODALITY[records[0].modality] if method == "auto" else (method,)
        choice = choose(head, source, raw, methods, reference=current, drift=drift,
                        alarm=alarm, force=force)
        adapt_s = time.perf_counter() - t0
        report = AdaptReport(bundle=str(bundle.path), n_unlabeled=len(raw), parent=parent.version,
                             mean_shift=float(np.linalg.norm(raw.mean(axis=0) - source.mean) /
                                              max(np.linalg.norm(source.mean), 1e-12)),
                             method=choice.method, guard="committed" if choice.helped else "refused",
                             guard_reason=choice.reason, drift_before=choice.drift_before, alarm=choice.alarm,
                             drift_after=choice.best.drift if choice.best else None,
                             agreement=choice.best.agreement if choice.best else None,
                             candidates={c.method: c.signals() for c in choice.candidates},
                             adapt_ms=adapt_s * 1e3)
        if choice.forced:
            report.guard = "forced"             # the guard objected; --force committed it anyway
        if check:
            check_records, check_names = open_data(check).records_and_names()
            position = {name: i for i, name in enumerate(parent.classes)}
            unknown = sorted(set(check_names) - set(position))
            if unknown:
                raise DataError(f"{check} has classes the model does not know: {', '.join(unknown)}")
            found = backbone_features(backbone, check_records, progress=progress)
            truth = np.array([position[check_names[i]] for i in found.kept])
            before = top1_accuracy(current.logits(found.values), truth)
            after = top1_accuracy(choice.best.logits(found.values), truth) if choice.helped else before
            report.check, report.check_n = check, len(truth)
            report.accuracy_before, report.accuracy_after = before, after
            if (before - after) * 100 > max_accuracy_drop and not force:
                raise UpdateRejectedError(
                    f"adaptation not committed: accuracy on {check} would fall from {before:.4f} to "
                    f"{after:.4f}; check the data, or force the commit", remedy="force")
        if not choice.helped:
            return report                       # refused by the label-free guard: nothing written
        best = choice.best
        version = Version(**{**asdict(parent), "version": -1, "parent": parent.version, "action": "adapt",
                             "files": {}, "n_new": 0, "new_classes": [],
                             "accuracy": {k: report[k] for k in ("accuracy_before", "accuracy_after") if k in report},
                             "note": f"{best.method} from {len(raw)} unlabelled {records[0].modality}s of {data}",
                             "created": utc_now()})
        parts = store.segment_parts(parent)
        write_rows(store, version, parent, parts, Samples.empty(bundle.feature_dim), bundle.feature_dim)
        store.commit(version, best.head, best.adapter, parts)
        report.version, report.committed = version.version, True
    return report

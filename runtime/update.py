"""On-device learning: ``update`` (labelled), ``adapt`` (unlabelled, domain shift), ``rollback``.

Each runs the backbone once per new image with the bundle's runtime
backend, keeps the features in the bundle's :class:`FeatureStore`, changes
the head with numpy only, and commits a new version as one transaction.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .backbone import Backbone
from .bundle import Bundle
from .data import ImageRecord, open_data
from .documents import utc_now
from .errors import BundleError, ConfigError, DataError, UpdateRejectedError
from .features import FeatureSource, apply_adapter, backbone_features
from .heads import Head, LinearHead, RidgeStatistics
from .learning import LEARNERS, NCMLearner, RidgeLearner, SGDLearner
from .metrics import top1_accuracy
from .preprocess import DEFAULT_MAX_PIXELS
from .progress import ProgressFactory, silent_progress
from .store import (
    DEFAULT_KEEP_VERSIONS, DEFAULT_MAX_HOLDOUT_PER_CLASS, DEFAULT_MAX_PER_CLASS, FeatureStore, LearnerState, Samples,
    Version,
)

METHODS = tuple(LEARNERS)


@dataclass
class UpdateSettings:
    method: str = "ridge"
    holdout_fraction: float = 0.2           # share of new samples kept out of training, to measure accuracy
    max_accuracy_drop: float = 2.0          # points on the store's earlier held-out samples
    force: bool = False
    lock_timeout: float = 60.0
    batch_size: int = 16
    skip_bad: bool = False
    reselect_alpha: bool = False
    max_per_class: int = DEFAULT_MAX_PER_CLASS          # stored training rows per class (oldest evicted first)
    max_holdout_per_class: int = DEFAULT_MAX_HOLDOUT_PER_CLASS
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    max_pixels: int = DEFAULT_MAX_PIXELS                 # larger images are refused (likely decompression bombs)

    def store(self, bundle: Bundle) -> FeatureStore:
        """The bundle's store, with these bounds."""
        return bundle.store.configure(self.keep_versions, self.max_per_class, self.max_holdout_per_class)

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown update method '{self.method}' (valid: {', '.join(METHODS)})")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"must lie in [0, 1), got {self.holdout_fraction}", option="holdout")


def accuracy(head: Head, samples: Samples, among: int | None = None) -> float | None:
    """Top-1 accuracy of ``head`` on stored samples (see :func:`~edgetl.runtime.metrics.top1_accuracy`)."""
    return top1_accuracy(head.logits(samples.features), samples.labels, among) if len(samples) else None


def ensure_store(store: FeatureStore, bundle: Bundle) -> Version:
    """The current version; on first use, version 0 is made from the bundle (under the caller's lock)."""
    if store.exists:
        return store.version()
    manifest = bundle.manifest
    head = bundle.exported_head
    dim, classes = manifest.feature_dim, list(manifest.labels)
    seed = Samples.empty(dim)
    if manifest.learning:
        with np.load(bundle.file(manifest.learning), allow_pickle=False) as a:
            seed = Samples(a["features"], a["labels"], a["holdout"], a["keys"])
    segments = [store.write_segment(seed)] if len(seed) else []
    state = _state_from(head, seed, dim, len(classes))
    version = Version(version=0, parent=None, action="init", method=head.kind, classes=classes, segments=segments,
                      files={}, n_train=int((~seed.holdout).sum()), n_holdout=int(seed.holdout.sum()),
                      accuracy={"holdout": accuracy(head, seed.select(seed.holdout))}, alpha=state.alpha,
                      note="from the bundle" + ("" if manifest.learning else " (it ships no learning data)"))
    return store.commit(version, head, state)


def _state_from(head: Head, seed: Samples, dim: int, num_classes: int) -> LearnerState:
    """Statistics to continue from: the host ridge head's own, else those of the shipped training features."""
    train = seed.select(~seed.holdout)
    ncm = NCMLearner(dim, [str(i) for i in range(num_classes)])
    ncm.partial_fit(train.features, train.labels)
    statistics = getattr(head, "statistics", None)
    alpha = getattr(head, "alpha", None) if statistics is not None else None
    if statistics is None:
        statistics = RidgeStatistics.empty(dim, num_classes)
        statistics.add(train.features, train.labels)
    return LearnerState(statistics, ncm.sums, ncm.counts, alpha, statistics.count if alpha else 0)


def _records(address: str, skip_bad: bool) -> tuple[list[ImageRecord], list[str]]:
    data = open_data(address, skip_bad=skip_bad)
    records = data.split("all")
    if not records:
        raise DataError(f"{address} holds no images")
    return records, [data.class_names[r.label] for r in records]


def _holdout_flags(keys: np.ndarray, labels: list[str], fraction: float) -> np.ndarray:
    """Deterministic by image content; every class keeps at least one training sample."""
    flags = np.array([int(k[:8], 16) / 16 ** 8 < fraction for k in keys], dtype=bool)
    for name in set(labels):
        rows = [i for i, label in enumerate(labels) if label == name]
        if all(flags[i] for i in rows):
            flags[rows[0]] = False
    return flags


def _new_head(method: str, current: Head, state: LearnerState, classes: list[str], train: Samples,
              holdout: Samples, replay: Samples, dim: int, reselect: bool) -> tuple[Head, float | None]:
    """Learn ``train`` into ``state`` (ridge and NCM statistics, always) and build the ``method`` head."""
    ridge = RidgeLearner(dim, classes, state.alpha, state.ridge)
    ridge.alpha_selected_at = state.alpha_selected_at
    ridge.partial_fit(train.features, train.labels)
    ncm = NCMLearner(dim, classes, state.ncm_sums, state.ncm_counts)
    ncm.partial_fit(train.features, train.labels)
    state.ncm_sums, state.ncm_counts = ncm.sums, ncm.counts
    if method in ("ridge", "sgd") or state.alpha is None:
        ridge.choose_alpha(holdout.features, holdout.labels, force=reselect)
        state.alpha, state.alpha_selected_at = ridge.alpha, ridge.alpha_selected_at
    if method == "ridge":
        return ridge.head, state.alpha
    if method == "ncm":
        return ncm.head, None
    start = current if isinstance(current, LinearHead) else ridge.head   # warm start (ridge if no linear head)
    sgd = SGDLearner(dim, classes[:start.num_classes], start.weight, start.bias)
    sgd.partial_fit(train.features, train.labels, classes=classes, replay=(replay.features, replay.labels))
    return sgd.head, None


def update_bundle(bundle: str | Path, data: str, settings: UpdateSettings | None = None,
                  artifact: str | None = None, backend: str | None = None, threads: int | None = None,
                  progress: ProgressFactory = silent_progress, tune: bool = True) -> dict:
    """Learn the labelled images of ``data`` into the bundle's head; commit a new version or change nothing."""
    settings = settings or UpdateSettings()
    settings.check()
    bundle = Bundle.open(bundle)
    records, names = _records(data, settings.skip_bad)
    t0 = time.perf_counter()
    # The backbone opens first: what it runs is verified (and measured on a new machine) before the store is
    # touched, so a tampered bundle changes nothing.
    with Backbone(bundle, artifact=artifact, backend=backend, threads=threads, tune=tune) as backbone:
        return learn_records(bundle, backbone, records, names, settings, progress, backbone.artifact.name,
                             open_s=time.perf_counter() - t0, source_name=data)


def learn_records(bundle: Bundle, source: FeatureSource, records: Sequence[ImageRecord], names: list[str],
                  settings: UpdateSettings, progress: ProgressFactory = silent_progress,
                  artifact_name: str | None = None, open_s: float = 0.0, source_name: str = "the request") -> dict:
    """The update transaction on images already listed: store lock, images already stored left out, the backbone
    (``source``: an opened :class:`Backbone`, or a service's batching front of one) on the rest, head and commit.

    ``edgetl-rt update`` and ``serve``'s update route both run this, so they share rules, guard and errors.
    """
    settings.check()
    keys = np.array([r.content_digest().hex() for r in records], dtype="<U64")
    store = settings.store(bundle)
    with store.locked(settings.lock_timeout):
        parent = ensure_store(store, bundle)
        parts = store.segment_parts(parent)
        fresh, seen = [], {key for _, part in parts for key in part.keys.tolist()}
        for i, key in enumerate(keys):      # an image already stored (or repeated) is learned once only
            if key not in seen:
                fresh.append(i)
                seen.add(key)
        if not fresh:
            raise DataError(f"every image of {source_name} is already in the store ({len(records)} duplicates); "
                            "nothing to learn")
        t1 = time.perf_counter()
        found = backbone_features(source, [records[i] for i in fresh], store.adapter(parent),
                                  settings.batch_size, settings.skip_bad, settings.max_pixels, progress)
        backbone_s = open_s + time.perf_counter() - t1
        rows = [fresh[i] for i in found.kept]
        report = _learn_locked(store, bundle.feature_dim, parent, parts, found.values, [names[i] for i in rows],
                               keys[rows], settings, artifact_name)
    report["timings"]["backbone_s"] = backbone_s
    report.update(n_duplicate=len(records) - len(fresh), n_skipped=len(fresh) - len(rows))
    return report


def learn_features(bundle: str | Path, features: np.ndarray, labels: list[str], keys: list[str],
                   settings: UpdateSettings | None = None) -> dict:
    """The same transaction from features already computed (head-input space), e.g. by the caller's own
    pipeline; ``keys`` identify the samples (sha256 of the image, or any unique id of up to 64 characters)."""
    settings = settings or UpdateSettings()
    settings.check()
    bundle = Bundle.open(bundle)
    store = settings.store(bundle)
    with store.locked(settings.lock_timeout):
        parent = ensure_store(store, bundle)
        return _learn_locked(store, bundle.feature_dim, parent, store.segment_parts(parent),
                             np.asarray(features, np.float32),
                             [str(n) for n in labels], np.array(keys, dtype="<U64"), settings, None)


def _learn_locked(store: FeatureStore, dim: int, parent: Version, parts: list[tuple[int, Samples]],
                  features: np.ndarray, new_names: list[str], keys: np.ndarray, settings: UpdateSettings,
                  artifact_name: str | None) -> dict:
    """Statistics, head, accuracy guard, eviction and commit; the caller holds the store's lock and has
    loaded the parent's segments (``parts``) once."""
    t1 = time.perf_counter()
    if features.ndim != 2 or features.shape[1] != dim or not len(features) == len(new_names) == len(keys):
        raise ConfigError(f"expected features of shape (N, {dim}) with N labels and keys, got {features.shape}, "
                          f"{len(new_names)} labels, {len(keys)} keys")
    stored = Samples.concat([part for _, part in parts], dim)
    classes = list(parent.classes)
    added = [n for n in dict.fromkeys(new_names) if n not in classes]
    classes += added
    position = {name: i for i, name in enumerate(classes)}
    labels = np.array([position[n] for n in new_names], dtype=np.int64)
    flags = _holdout_flags(keys, new_names, settings.holdout_fraction)
    new = Samples(features.astype(np.float32), labels, flags, keys)
    state = store.state(parent)
    _check_prior(state, parent, settings.method)
    current_head = store.head(parent)
    old_holdout = stored.select(stored.holdout)
    all_holdout = Samples.concat([old_holdout, new.select(new.holdout)], dim)
    head, alpha = _new_head(settings.method, current_head, state, classes, new.select(~new.holdout),
                            all_holdout, stored.select(~stored.holdout), dim, settings.reselect_alpha)
    # The guard compares like with like: on the earlier held-out samples, among the earlier classes, so
    # it catches forgetting and bad labels, not the harder choice that new classes bring (reported too).
    before = accuracy(current_head, old_holdout)
    after_old = accuracy(head, old_holdout, among=len(parent.classes))
    after_old_all_classes = accuracy(head, old_holdout)
    after = accuracy(head, all_holdout)
    head_s = time.perf_counter() - t1
    report = {
        "bundle": str(store.bundle), "parent": parent.version, "method": settings.method, "artifact": artifact_name,
        "n_new": len(labels), "n_train_new": int((~flags).sum()), "n_holdout_new": int(flags.sum()),
        "classes": classes, "new_classes": added, "holdout_n": len(all_holdout),
        "accuracy": after, "accuracy_before": before, "accuracy_after_on_earlier_holdout": after_old,
        "accuracy_after_on_earlier_holdout_all_classes": after_old_all_classes,
        "alpha": alpha, "timings": {"head_s": head_s},
    }
    if before is not None and after_old is not None and (before - after_old) * 100 > settings.max_accuracy_drop \
            and not settings.force:
        raise UpdateRejectedError(
            f"update not committed: accuracy on the store's earlier held-out samples (among their classes) would fall from "
            f"{before:.4f} to {after_old:.4f} ({(before - after_old) * 100:.2f} points, limit "
            f"{settings.max_accuracy_drop:g}); check the new labels, or force the commit", remedy="force"
        )
    t2 = time.perf_counter()
    version = Version(version=-1, parent=parent.version, action="update", method=settings.method,
                      classes=classes, segments=[], files={}, n_new=len(labels), new_classes=added, alpha=alpha,
                      artifact=artifact_name, accuracy={"holdout": after, "earlier_holdout_before": before,
                                                        "earlier_holdout_after": after_old})
    report["evicted"] = store.evict(version, parts + [(store.write_segment(new), new)])
    store.commit(version, head, state, store.adapter(parent))
    report["timings"]["commit_s"] = time.perf_counter() - t2
    report.update(version=version.version, committed=True, n_train=version.n_train, n_holdout=version.n_holdout)
    return report


def _check_prior(state: LearnerState, parent: Version, method: str) -> None:
    if method == "sgd":
        return
    missing = [parent.classes[i] for i, n in enumerate(state.ncm_counts) if n == 0]
    if missing and state.ridge.count == 0:
        raise BundleError(
            f"the store has no training statistics for {', '.join(missing)} (the bundle ships no learning data); "
            f"a {method} update would forget those classes. Re-export the bundle with this edgetl, or use --method sgd"
        )


def rollback_bundle(bundle: str | Path, to: int | None = None, lock_timeout: float = 60.0) -> Version:
    """Make an earlier version current again, as a new version (history stays linear and auditable)."""
    store = FeatureStore(bundle)
    with store.locked(lock_timeout):
        current = store.version()
        target_number = current.parent if to is None else to
        if target_number is None:
            raise ConfigError("the current version has no parent to roll back to; name the version to return to",
                              option="to")
        if target_number == current.version:
            raise ConfigError(f"version {target_number} is already the current one")
        target = store.version(target_number)
        version = Version(**{**asdict(target), "version": -1, "parent": current.version, "action": "rollback",
                             "note": f"rollback to version {target.version}", "files": {}, "created": utc_now()})
        return store.commit(version, store.head(target), store.state(target), store.adapter(target))


def adapt_bundle(bundle: str | Path | Bundle, data: str, check: str | None = None, max_accuracy_drop: float = 2.0,
                 force: bool = False, lock_timeout: float = 60.0, artifact: str | None = None,
                 backend: str | None = None, threads: int | None = None,
                 progress: ProgressFactory = silent_progress, tune: bool = True) -> dict:
    """Re-estimate per-feature normalisation on unlabelled target-domain images (labels in DATA are ignored).

    The adapter maps each feature from the target's mean and spread onto the source's (those of the
    samples the head learned from, from the ridge statistics), which undoes global shifts in
    brightness, colour or sensor response at the feature level.  With ``check`` (labelled images of the
    target domain) the accuracy before and after is reported and guards the commit.
    """
    bundle = Bundle.open(bundle)
    store = bundle.store
    records, _ = _records(data, False)
    with Backbone(bundle, artifact=artifact, backend=backend, threads=threads, tune=tune) as backbone, \
            store.locked(lock_timeout):       # the backbone first: a tampered bundle changes nothing
        parent = ensure_store(store, bundle)
        state = store.state(parent)
        if state.ridge.count < 2:
            raise BundleError("the store has no source statistics to adapt to (the bundle ships no learning data)")
        head, current_adapter = store.head(parent), store.adapter(parent)
        raw = backbone_features(backbone, records, progress=progress).values   # raw target features
        source_mean = state.ridge.feature_sum / state.ridge.count
        source_var = np.maximum(np.diag(state.ridge.gram) / state.ridge.count - source_mean ** 2, 0.0)
        target_mean, target_std = raw.mean(axis=0), raw.std(axis=0)
        scale = np.where(target_std > 1e-6, np.sqrt(source_var) / np.maximum(target_std, 1e-6), 1.0)
        adapter = {"target_mean": target_mean.astype(np.float32), "scale": scale.astype(np.float32),
                   "source_mean": source_mean.astype(np.float32)}
        report = {"bundle": str(bundle.path), "n_unlabeled": len(raw), "parent": parent.version,
                  "mean_shift": float(np.linalg.norm(target_mean - source_mean) /
                                      max(np.linalg.norm(source_mean), 1e-12))}
        if check:
            check_records, check_names = _records(check, False)
            position = {name: i for i, name in enumerate(parent.classes)}
            unknown = sorted(set(check_names) - set(position))
            if unknown:
                raise DataError(f"{check} has classes the model does not know: {', '.join(unknown)}")
            found = backbone_features(backbone, check_records, progress=progress)
            truth = np.array([position[check_names[i]] for i in found.kept])
            before = top1_accuracy(head.logits(apply_adapter(found.values, current_adapter)), truth)
            after = top1_accuracy(head.logits(apply_adapter(found.values, adapter)), truth)
            report.update(check=check, check_n=len(truth), accuracy_before=before, accuracy_after=after)
            if (before - after) * 100 > max_accuracy_drop and not force:
                raise UpdateRejectedError(
                    f"adaptation not committed: accuracy on {check} would fall from {before:.4f} to "
                    f"{after:.4f}; check the data, or force the commit", remedy="force")
        version = Version(**{**asdict(parent), "version": -1, "parent": parent.version, "action": "adapt",
                             "files": {}, "n_new": 0, "new_classes": [],
                             "accuracy": {k: report[k] for k in ("accuracy_before", "accuracy_after") if k in report},
                             "note": f"feature normalisation from {len(raw)} unlabelled images of {data}",
                             "created": utc_now()})
        store.commit(version, head, state, adapter)    # the parent's head, with the new adapter
        report.update(version=version.version, committed=True)
    return report

"""On-device learning: ``update`` (labelled), ``adapt`` (unlabelled, domain shift), ``rollback``, ``tune``.

Each runs the backbone once per new image with the bundle's runtime
backend, keeps the features in the bundle's :class:`FeatureStore`, changes
the head with numpy only, and commits a new version as one transaction.

A :class:`LearningSession` is what a process keeps between transactions on one bundle: the store's rows
(immutable segments, read once) and the learners of the version it last saw, with the ridge system
factorised.  In a process that stays up (``serve``, :class:`Learner`), a one-image ridge update then costs
one backbone pass plus a few milliseconds of head maths and a commit of a few kilobytes; a one-shot
``edgetl-rt update`` rebuilds the statistics from the store (the stored rows' Gram matrix, O(n·d²)) and
solves once by LU.  The regularisation search (an O(d³) eigendecomposition) never runs on a small update:
it runs when due (the training samples grew by a quarter since the last search) on an update of at least
``alpha_search_min`` new training samples, when asked (``--reselect-alpha``, :func:`tune_alpha`), or in
the background of ``serve``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .backbone import Backbone
from .bundle import Bundle
from .data import ImageRecord, input_records, open_data
from .documents import utc_now
from .errors import BundleError, ConfigError, DataError, UpdateRejectedError
from .features import FeatureSource, apply_adapter, backbone_features
from .heads import Head, LinearHead, RidgeHead
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
    alpha_search_min: int = 32          # new training samples an update needs to run a due alpha search
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
    """The current version; on first use, version 0 is made from the bundle (under the caller's lock).

    Its statistics are the bundle's shipped training rows; when the host ridge head learned from more samples
    than the bundle ships (the per-class bound), the difference is written as the store's first residual.
    """
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
    statistics = getattr(head, "statistics", None)
    alpha = head.alpha if statistics is not None else None
    residual = None
    n_seed_train = int((~seed.holdout).sum())
    if statistics is not None and statistics.count > n_seed_train:
        # the host's ridge statistics, and NCM sums of the shipped rows only (the host keeps none): the residual
        # is the ridge statistics of the samples not shipped, and no NCM
        host = LearnerState.empty(dim, len(classes)).with_rows(seed)
        host.ridge = statistics
        residual = store.write_residual(host.with_rows(seed, sign=-1.0))
    if isinstance(head, RidgeHead):        # the head file holds weights only; statistics live in rows + residual
        head = RidgeHead(head.weight, head.bias, None, head.alpha)
    version = Version(version=0, parent=None, action="init", method=head.kind, classes=classes, segments=segments,
                      files={}, n_train=n_seed_train, n_holdout=int(seed.holdout.sum()),
                      accuracy={"holdout": accuracy(head, seed.select(seed.holdout))}, alpha=alpha,
                      alpha_selected_at=statistics.count if alpha else 0, residual=residual,
                      note="from the bundle" + ("" if manifest.learning else " (it ships no learning data)"))
    return store.commit(version, head)


def _records(address: str, skip_bad: bool) -> tuple[list[ImageRecord], list[str]]:
    data = open_data(address, skip_bad=skip_bad)
    records = data.split("all")
    if not records:
        raise DataError(f"{address} holds no {'texts' if data.modality == 'text' else 'images'}")
    return records, [data.class_names[r.label] for r in records]


def _holdout_flags(keys: np.ndarray, labels: list[str], fraction: float) -> np.ndarray:
    """Deterministic by image content; every class keeps at least one training sample."""
    flags = np.array([int(k[:8], 16) / 16 ** 8 < fraction for k in keys], dtype=bool)
    for name in set(labels):
        rows = [i for i, label in enumerate(labels) if label == name]
        if all(flags[i] for i in rows):
            flags[rows[0]] = False
    return flags


@dataclass
class _Segment:
    """A stored segment as a session keeps it: its rows, its held-out rows and its keys."""

    stamp: tuple[int, int, int]
    samples: Samples
    holdout: Samples
    keys: frozenset[str]


@dataclass
class _Learned:
    """The learners of one committed version, kept by a :class:`LearningSession` for the next update, with the
    head's logits on that version's held-out rows when known (the guard's "before")."""

    version: int
    created: str
    ridge: RidgeLearner
    ncm: NCMLearner
    head: Head
    holdout_logits: np.ndarray | None = None


class LearningSession:
    """What one process keeps between transactions on a bundle's store (see the module docstring).

    Segments are immutable, so each is read (and checked against its sha256) once; a file replaced by another
    writer is noticed by its inode, size and mtime.  The learners follow the version this session last committed
    or loaded; when another process committed since, they are rebuilt from the store.  ``keep_factor`` keeps the
    ridge system factorised (worth its one O(d³) decomposition when several updates follow).  An update's cost
    beyond the ridge maths is then O(held-out rows x d x classes) for the guard, not O(stored rows).
    Transactions run under the store's lock; a process sharing one session between threads serialises them
    (``serve`` holds a lock around each).
    """

    def __init__(self, keep_factor: bool = True):
        self.keep_factor = keep_factor
        self._segments: dict[int, _Segment] = {}
        self._learned: _Learned | None = None

    def parts(self, store: FeatureStore, version: Version) -> list[tuple[int, Samples]]:
        parts = []
        for number in version.segments:
            path = store.root / "segments" / f"{number:06d}.npz"
            try:
                info = os.stat(path)
            except FileNotFoundError:
                raise BundleError(f"store segment {path} of version {version.version} is missing; roll back with "
                                  f"edgetl-rt rollback {store.bundle} --to VERSION") from None
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
            cached = self._segments.get(number)
            if cached is None or cached.stamp != stamp:
                samples = store.segment_part(version, number)
                cached = _Segment(stamp, samples, samples.select(samples.holdout), frozenset(samples.keys.tolist()))
                self._segments[number] = cached
            parts.append((number, cached.samples))
        for number in set(self._segments) - set(version.segments):
            del self._segments[number]
        return parts

    def stored(self, parts: list[tuple[int, Samples]], key: str) -> bool:
        """Whether an image (its key) is among ``parts``' rows."""
        return any(key in self._segments[number].keys for number, _ in parts)

    def holdout(self, parts: list[tuple[int, Samples]], dim: int) -> Samples:
        """The held-out rows of ``parts``, in age order."""
        return Samples.concat([self._segments[number].holdout for number, _ in parts], dim)

    def learned(self, store: FeatureStore, version: Version, parts: list[tuple[int, Samples]],
                dim: int) -> _Learned:
        """The learners of ``version``: kept from the last transaction, or rebuilt (residual plus rows)."""
        kept = self._learned
        if kept is None or (kept.version, kept.created) != (version.version, version.created):
            full = store.state(version, dim, parts)
            ridge = RidgeLearner(dim, version.classes, full.alpha, full.ridge, keep_factor=self.keep_factor)
            ridge.alpha_selected_at = full.alpha_selected_at
            ncm = NCMLearner(dim, version.classes, full.ncm_sums, full.ncm_counts)
            self._learned = _Learned(version.version, version.created, ridge, ncm, store.head(version))
        return self._learned

    def prepare(self, store: FeatureStore, dim: int) -> None:
        """Load the current version's rows and learners and factorise the ridge system now (a service does this
        in the background at start, so its first update is as fast as the next)."""
        if store.exists:
            version = store.version()
            learned = self.learned(store, version, self.parts(store, version), dim)
            if self.keep_factor:
                learned.ridge.system.factorize()

    def committed(self, version: Version, head: Head, holdout_logits: np.ndarray | None) -> None:
        """The learners now hold ``version`` (committed with ``head``; its logits on the version's held-out rows,
        None when unknown)."""
        self._learned.version, self._learned.created, self._learned.head = version.version, version.created, head
        self._learned.holdout_logits = holdout_logits

    def forget(self) -> None:
        """Drop the learners (after a transaction that failed half-way through changing them)."""
        self._learned = None


def _alpha_search(ridge: RidgeLearner, settings: UpdateSettings, n_train_new: int) -> bool:
    """Whether this update runs the regularisation search (see the module docstring)."""
    if settings.reselect_alpha:
        return True
    return settings.method != "ncm" and ridge.alpha_due() and n_train_new >= settings.alpha_search_min


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
    with Backbone(bundle, artifact=artifact, backend=backend, threads=threads, tune=tune,
                  shared_cores=True) as backbone:
        return learn_records(bundle, backbone, records, names, settings, progress, backbone.artifact.name,
                             open_s=time.perf_counter() - t0, source_name=data)


class Learner:
    """A bundle opened to learn in this process: ``update(images, labels)`` commits a version per call.

    It holds the backbone and a :class:`LearningSession`, so after the first update (which factorises the
    ridge system once) an update costs the backbone pass of its images plus milliseconds.  ``serve``'s update
    route runs the same transaction with its own session, its backbone pass queued beside inference.
    """

    def __init__(self, bundle: str | Path | Bundle, artifact: str | None = None, backend: str | None = None,
                 threads: int | None = None, tune: bool = True):
        self.bundle = Bundle.open(bundle)
        self.backbone = Backbone(self.bundle, artifact=artifact, backend=backend, threads=threads, tune=tune,
                                 shared_cores=True)      # the head maths follows each pass on the same cores
        self.session = LearningSession(keep_factor=True)

    def update(self, images: Sequence[str | Path | bytes], labels: Sequence[str],
               settings: UpdateSettings | None = None) -> dict:
        """Learn ``images`` (paths or encoded bytes; a text model's texts) with their class names; returns the
        update's report."""
        if len(images) != len(labels):
            noun = "texts" if self.backbone.preprocess.kind == "text" else "images"
            raise ConfigError(f"{len(images)} {noun} but {len(labels)} labels")
        records = input_records(images, self.backbone.preprocess)
        return learn_records(self.bundle, self.backbone, records, [str(n) for n in labels],
                             settings or UpdateSettings(), artifact_name=self.backbone.artifact.name,
                             session=self.session)

    def close(self) -> None:
        self.backbone.close()

    def __enter__(self) -> "Learner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def learn_records(bundle: Bundle, source: FeatureSource, records: Sequence[ImageRecord], names: list[str],
                  settings: UpdateSettings, progress: ProgressFactory = silent_progress,
                  artifact_name: str | None = None, open_s: float = 0.0, source_name: str = "the request",
                  session: LearningSession | None = None) -> dict:
    """The update transaction on images already listed: store lock, images already stored left out, the backbone
    (``source``: an opened :class:`Backbone`, or a service's batching front of one) on the rest, head and commit.

    ``edgetl-rt update`` and ``serve``'s update route both run this, so they share rules, guard and errors.
    """
    settings.check()
    session = session or LearningSession(keep_factor=False)
    keys = np.array([r.content_digest().hex() for r in records], dtype="<U64")
    store = settings.store(bundle)
    with store.locked(settings.lock_timeout):
        parent = ensure_store(store, bundle)
        parts = session.parts(store, parent)
        fresh, seen = [], set()
        for i, key in enumerate(keys):      # an image already stored (or repeated) is learned once only
            if key not in seen and not session.stored(parts, key):
                fresh.append(i)
                seen.add(key)
        if not fresh:
            what = "text" if records and records[0].modality == "text" else "image"
            raise DataError(f"every {what} of {source_name} is already in the store ({len(records)} duplicates); "
                            "nothing to learn")
        t1 = time.perf_counter()
        adapter = store.adapter(parent)
        found = backbone_features(source, [records[i] for i in fresh], adapter,
                                  settings.batch_size, settings.skip_bad, settings.max_pixels, progress)
        backbone_s = open_s + time.perf_counter() - t1
        rows = [fresh[i] for i in found.kept]
        report = _learn_locked(store, session, bundle.feature_dim, parent, parts, found.values,
                               [names[i] for i in rows], keys[rows], settings, artifact_name, adapter)
    report["timings"]["backbone_s"] = backbone_s
    report.update(n_duplicate=len(records) - len(fresh), n_skipped=len(fresh) - len(rows))
    return report


def learn_features(bundle: str | Path, features: np.ndarray, labels: list[str], keys: list[str],
                   settings: UpdateSettings | None = None, session: LearningSession | None = None) -> dict:
    """The same transaction from features already computed (head-input space), e.g. by the caller's own
    pipeline; ``keys`` identify the samples (sha256 of the image, or any unique id of up to 64 characters)."""
    settings = settings or UpdateSettings()
    settings.check()
    session = session or LearningSession(keep_factor=False)
    bundle = Bundle.open(bundle)
    store = settings.store(bundle)
    with store.locked(settings.lock_timeout):
        parent = ensure_store(store, bundle)
        return _learn_locked(store, session, bundle.feature_dim, parent, session.parts(store, parent),
                             np.asarray(features, np.float32), [str(n) for n in labels],
                             np.array(keys, dtype="<U64"), settings, None, store.adapter(parent))


def _learn_locked(store: FeatureStore, session: LearningSession, dim: int, parent: Version,
                  parts: list[tuple[int, Samples]], features: np.ndarray, new_names: list[str], keys: np.ndarray,
                  settings: UpdateSettings, artifact_name: str | None, adapter: dict[str, np.ndarray] | None) -> dict:
    """Statistics, head, accuracy guard, eviction and commit; the caller holds the store's lock and has
    listed the parent's segments (``parts``) and read its feature adapter (which the new version keeps)."""
    t1 = time.perf_counter()
    if features.ndim != 2 or features.shape[1] != dim or not len(features) == len(new_names) == len(keys):
        raise ConfigError(f"expected features of shape (N, {dim}) with N labels and keys, got {features.shape}, "
                          f"{len(new_names)} labels, {len(keys)} keys")
    learned = session.learned(store, parent, parts, dim)
    old_holdout = session.holdout(parts, dim)
    state_s = time.perf_counter() - t1
    classes = list(parent.classes)
    added = [n for n in dict.fromkeys(new_names) if n not in classes]
    classes += added
    position = {name: i for i, name in enumerate(classes)}
    labels = np.array([position[n] for n in new_names], dtype=np.int64)
    flags = _holdout_flags(keys, new_names, settings.holdout_fraction)
    new = Samples(features.astype(np.float32), labels, flags, keys)
    _check_prior(learned, parent, settings.method)
    all_holdout = Samples.concat([old_holdout, new.select(new.holdout)], dim)
    train = new.select(~new.holdout)
    try:
        # The guard compares like with like: on the earlier held-out samples, among the earlier classes, so
        # it catches forgetting and bad labels, not the harder choice that new classes bring (reported too).
        # The parent head's logits there are the last update's, when this session made that version.
        before_logits = learned.holdout_logits
        if before_logits is None or len(before_logits) != len(old_holdout):
            before_logits = learned.head.logits(old_holdout.features)
        before = top1_accuracy(before_logits, old_holdout.labels)
        learned.ridge.system.residual = None
        head, alpha_s = _learn(learned, settings, classes, train, all_holdout, parts, session, dim)
        old_logits = head.logits(old_holdout.features)
        after_old = top1_accuracy(old_logits, old_holdout.labels, among=len(parent.classes))
        after_old_all_classes = top1_accuracy(old_logits, old_holdout.labels)
        all_logits = np.concatenate([old_logits, head.logits(all_holdout.features[len(old_holdout):])])
        after = top1_accuracy(all_logits, all_holdout.labels)
        ridge = learned.ridge
        report = {
            "bundle": str(store.bundle), "parent": parent.version, "method": settings.method,
            "artifact": artifact_name, "n_new": len(labels), "n_train_new": len(train),
            "n_holdout_new": int(flags.sum()), "classes": classes, "new_classes": added,
            "holdout_n": len(all_holdout), "accuracy": after, "accuracy_before": before,
            "accuracy_after_on_earlier_holdout": after_old,
            "accuracy_after_on_earlier_holdout_all_classes": after_old_all_classes,
            "alpha": ridge.alpha, "alpha_searched": alpha_s is not None, "alpha_due": ridge.alpha_due(),
            "solve_residual": ridge.system.residual,
            "timings": {"head_s": time.perf_counter() - t1, "head_state_s": state_s, "alpha_s": alpha_s or 0.0},
        }
        if before is not None and after_old is not None and (before - after_old) * 100 > settings.max_accuracy_drop \
                and not settings.force:
            raise UpdateRejectedError(
                f"update not committed: accuracy on the store's earlier held-out samples (among their classes) would "
                f"fall from {before:.4f} to {after_old:.4f} ({(before - after_old) * 100:.2f} points, limit "
                f"{settings.max_accuracy_drop:g}); check the new labels, or force the commit", remedy="force"
            )
        t2 = time.perf_counter()
        version = Version(version=-1, parent=parent.version, action="update", method=settings.method,
                          classes=classes, segments=[], files={}, n_new=len(labels), new_classes=added,
                          alpha=ridge.alpha, alpha_selected_at=ridge.alpha_selected_at,
                          artifact=artifact_name, accuracy={"holdout": after, "earlier_holdout_before": before,
                                                            "earlier_holdout_after": after_old})
        report["evicted"] = _write_rows(store, version, parent, parts, new, dim)
        store.commit(version, head, adapter)
        session.committed(version, head, None if report["evicted"] else all_logits)
    except BaseException:
        session.forget()          # the learners took the new samples in, but no version holds them
        raise
    report["timings"]["commit_s"] = time.perf_counter() - t2
    report.update(version=version.version, committed=True, n_train=version.n_train, n_holdout=version.n_holdout)
    return report


def _learn(learned: _Learned, settings: UpdateSettings, classes: list[str], train: Samples, holdout: Samples,
           parts: list[tuple[int, Samples]], session: LearningSession, dim: int) -> tuple[Head, float | None]:
    """Learn ``train`` into the ridge and NCM learners (always: both continue from every sample) and build the
    ``settings.method`` head; returns it with the alpha search's seconds (None when it did not run).  With no
    alpha chosen yet and no search on this update, the ridge uses the grid's 10⁰ point and the search stays due."""
    ridge, ncm = learned.ridge, learned.ncm
    ridge.partial_fit(train.features, train.labels, classes=classes)
    ncm.partial_fit(train.features, train.labels, classes=classes)
    alpha_s = None
    if _alpha_search(ridge, settings, len(train)):
        t = time.perf_counter()
        ridge.choose_alpha(holdout.features, holdout.labels, force=True)
        alpha_s = time.perf_counter() - t
    elif ridge.alpha is None and settings.method != "ncm":
        ridge.alpha = ridge.system.default_alpha()
    if settings.method == "ridge":
        return ridge.head, alpha_s
    if settings.method == "ncm":
        return ncm.head, alpha_s
    current = learned.head
    start = current if isinstance(current, LinearHead) else ridge.head   # warm start (ridge if no linear head)
    sgd = SGDLearner(ridge.feature_dim, classes[:start.num_classes], start.weight, start.bias)
    stored = Samples.concat([part for _, part in parts], dim)
    replay = stored.select(~stored.holdout)
    sgd.partial_fit(train.features, train.labels, classes=classes, replay=(replay.features, replay.labels))
    return sgd.head, alpha_s


def _write_rows(store: FeatureStore, version: Version, parent: Version, parts: list[tuple[int, Samples]],
                new: Samples, dim: int) -> int:
    """The new version's rows: the parent's segments and one with ``new``, bounded and compacted (evicted
    training rows join the residual); returns the rows evicted."""
    version.residual = parent.residual
    residual = _continue_04(store, version, parent, parts, dim)
    segment = [(store.write_segment(new), new)] if len(new) else []
    return store.arrange(version, parts + segment,
                         lambda: residual if residual is not None else store.residual(parent, parts, dim))


def _continue_04(store: FeatureStore, version: Version, source: Version, parts: list[tuple[int, Samples]] | None,
                 dim: int) -> LearnerState | None:
    """For a 0.4 ``source`` (its full statistics in state.npz), write them less its rows (``parts``, read here
    when None) as ``version``'s residual and return them; an adapt or rollback also keeps the alpha kept there.
    None for a version of this format."""
    if "state.npz" not in source.files:
        return None
    residual = store.residual(source, store.segment_parts(source) if parts is None else parts, dim)
    version.residual = None if residual.empty_set else store.write_residual(residual)
    if version.action in ("adapt", "rollback"):
        version.alpha, version.alpha_selected_at = residual.alpha, residual.alpha_selected_at
    return residual


def _check_prior(learned: _Learned, parent: Version, method: str) -> None:
    if method == "sgd":
        return
    missing = [parent.classes[i] for i, n in enumerate(learned.ncm.counts) if n == 0]
    if missing and learned.ridge.count == 0:
        raise BundleError(
            f"the store has no training statistics for {', '.join(missing)} (the bundle ships no learning data); "
            f"a {method} update would forget those classes. Re-export the bundle with this edgetl, or use --method sgd"
        )


def tune_alpha(bundle: str | Path | Bundle, session: LearningSession | None = None,
               lock_timeout: float = 60.0) -> dict:
    """Run the regularisation search now, on the store's held-out rows, and commit it as a ``tune`` version
    (the head is solved again when it is a ridge head; other heads are kept).  ``serve`` runs this in the
    background when an update leaves the search due."""
    bundle = Bundle.open(bundle)
    session = session or LearningSession(keep_factor=False)
    store = bundle.store
    dim = bundle.feature_dim
    with store.locked(lock_timeout):
        parent = ensure_store(store, bundle)
        parts = session.parts(store, parent)
        holdout = session.holdout(parts, dim)
        try:
            learned = session.learned(store, parent, parts, dim)
            t = time.perf_counter()
            before = learned.ridge.alpha
            alpha = learned.ridge.choose_alpha(holdout.features, holdout.labels, force=True)
            head = learned.ridge.head if isinstance(learned.head, RidgeHead) else learned.head
            alpha_s = time.perf_counter() - t
            version = Version(**{**asdict(parent), "version": -1, "parent": parent.version, "action": "tune",
                                 "files": {}, "n_new": 0, "new_classes": [], "alpha": alpha,
                                 "alpha_selected_at": learned.ridge.alpha_selected_at,
                                 "accuracy": {"holdout": accuracy(head, holdout)},
                                 "note": f"alpha searched on {len(holdout)} held-out rows", "created": utc_now()})
            _write_rows(store, version, parent, parts, Samples.empty(dim), dim)
            store.commit(version, head, store.adapter(parent))
            session.committed(version, head, None)
        except BaseException:
            session.forget()
            raise
    return {"bundle": str(bundle.path), "version": version.version, "parent": parent.version,
            "alpha_before": before, "alpha": alpha, "holdout_n": len(holdout), "accuracy": version.accuracy["holdout"],
            "timings": {"alpha_s": alpha_s}}


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
        head = store.head(target)
        version = Version(**{**asdict(target), "version": -1, "parent": current.version, "action": "rollback",
                             "note": f"rollback to version {target.version}", "files": {}, "created": utc_now()})
        _continue_04(store, version, target, None, head.feature_dim)
        return store.commit(version, head, store.adapter(target))


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
                             "note": f"feature normalisation from {len(raw)} unlabelled "
                                     f"{'texts' if records[0].modality == 'text' else 'images'} of {data}",
                             "created": utc_now()})
        _write_rows(store, version, parent, store.segment_parts(parent), Samples.empty(bundle.feature_dim),
                    bundle.feature_dim)
        store.commit(version, head, adapter)    # the parent's head, with the new adapter
        report.update(version=version.version, committed=True)
    return report

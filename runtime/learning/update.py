"""``edgetl-rt update``: labelled samples learned into the head and committed as one transaction.

Each runs the backbone once per new input with the bundle's runtime backend, keeps the features in the bundle's
:class:`~edgetl.runtime.bundle.store.FeatureStore`, changes the head with numpy only, and commits a new version or
changes nothing (the accuracy guard, a bad input, a crash).  ``edgetl-rt update``, :class:`Learner` and ``serve``'s
update route all run :func:`learn_records`, so they share rules, guard and errors.
"""

from __future__ import annotations

import hashlib
import string
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..bundle.folder import Bundle
from ..bundle.heads import Head, LinearHead
from ..bundle.store import FeatureStore, Samples, Version
from ..compat import renamed_keyword
from ..data.decoding import DecodeLane
from ..data.sources import ImageRecord, input_records, open_data
from ..engines.runner import BackboneRunner
from ..errors import BundleError, ConfigError, DataError, ImageDecodeError, UpdateRejectedError
from ..inference.features import FeatureSource, backbone_features
from ..metrics import top1_accuracy
from ..progress import ProgressFactory, silent_progress
from .learners import RidgeLearner, SGDLearner
from .reports import UpdateReport, UpdateTimings
from .session import Learned, LearningSession
from .settings import UpdateSettings
from .versions import ensure_store, write_rows

#: The longest sample key the store keeps (an input's sha256 in hex, or a caller's own id).
MAX_KEY_CHARS = 64


def _key_position(key: str) -> float:
    """Where a sample's key falls in [0, 1): the first 32 bits of an input's sha256 (its hex key), or of the key's
    own sha256 for a caller's id, so the held-out choice depends on the sample alone."""
    head = key[:8]
    digest = head if len(head) == 8 and all(c in string.hexdigits for c in head) else \
        hashlib.sha256(key.encode()).hexdigest()[:8]
    return int(digest, 16) / 16 ** 8


def _holdout_flags(keys: np.ndarray, labels: list[str], fraction: float) -> np.ndarray:
    """Deterministic by input content; every class keeps at least one training sample."""
    flags = np.array([_key_position(str(k)) < fraction for k in keys], dtype=bool)
    for name in set(labels):
        rows = [i for i, label in enumerate(labels) if label == name]
        if all(flags[i] for i in rows):
            flags[rows[0]] = False
    return flags


def _alpha_search(ridge: RidgeLearner, settings: UpdateSettings, n_train_new: int) -> bool:
    """Whether this update runs the regularisation search (see :mod:`edgetl.runtime.learning.alpha`)."""
    if settings.reselect_alpha:
        return True
    return settings.method != "ncm" and ridge.alpha_due() and n_train_new >= settings.alpha_search_min


@renamed_keyword("tune", "measure")
def update_bundle(bundle: str | Path, data: str, settings: UpdateSettings | None = None,
                  artifact: str | None = None, backend: str | None = None, threads: int | None = None,
                  progress: ProgressFactory = silent_progress, measure: bool = True) -> UpdateReport:
    """Learn the labelled inputs of ``data`` into the bundle's head; commit a new version or change nothing."""
    settings = settings or UpdateSettings()
    settings.check()
    bundle = Bundle.open(bundle)
    records, names = open_data(data, skip_bad=settings.skip_bad).records_and_names()
    t0 = time.perf_counter()
    # The backbone opens first: what it runs is verified (and measured on a new machine) before the store is
    # touched, so a tampered bundle changes nothing.
    with BackboneRunner(bundle, artifact=artifact, backend=backend, threads=threads, measure=measure,
                        shared_cores=True) as backbone:
        return learn_records(bundle, backbone, records, names, settings, progress, backbone.artifact.name,
                             open_s=time.perf_counter() - t0, source_name=data)


class Learner:
    """A bundle opened to learn in this process: ``update(images, labels)`` commits a version per call.

    It holds the backbone and a :class:`LearningSession`, so after the first update (which factorises the
    ridge system once) an update costs the backbone pass of its images plus milliseconds.  ``serve``'s update
    route runs the same transaction with its own session, its backbone pass queued beside inference.
    """

    @renamed_keyword("tune", "measure")
    def __init__(self, bundle: str | Path | Bundle, artifact: str | None = None, backend: str | None = None,
                 threads: int | None = None, measure: bool = True):
        self.bundle = Bundle.open(bundle)
        self.backbone = BackboneRunner(self.bundle, artifact=artifact, backend=backend, threads=threads,
                                       measure=measure, shared_cores=True)   # the head maths follows each pass
        self.session = LearningSession(keep_factor=True)

    def update(self, images: Sequence[str | Path | bytes], labels: Sequence[str],
               settings: UpdateSettings | None = None) -> UpdateReport:
        """Learn ``images`` (paths or encoded bytes; a text model's texts) with their class names; returns the
        update's report."""
        if len(images) != len(labels):
            raise ConfigError(f"{len(images)} inputs but {len(labels)} labels")
        records = input_records(images, self.backbone.preprocess)
        return learn_records(self.bundle, self.backbone, records, [str(n) for n in labels],
                             settings or UpdateSettings(), artifact_name=self.backbone.artifact.name,
                             session=self.session)

    def close(self) -> None:
        self.backbone.close()

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def learn_records(bundle: Bundle, source: FeatureSource, records: Sequence[ImageRecord], names: list[str],
                  settings: UpdateSettings, progress: ProgressFactory = silent_progress,
                  artifact_name: str | None = None, open_s: float = 0.0, source_name: str = "the request",
                  session: LearningSession | None = None, lane: DecodeLane | None = None) -> UpdateReport:
    """The update transaction on inputs already listed: store lock, inputs already stored left out, the backbone
    (``source``: an opened :class:`~edgetl.runtime.engines.runner.BackboneRunner`, or a service's batching front of
    one) on the rest, head and commit.  ``lane``: a service's bounded decode pool, which decodes the images.

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
            noun = "text" if records[0].modality == "text" else "image"
            raise DataError(f"every {noun} of {source_name} is already in the store ({len(records)} duplicates); "
                            "nothing to learn")
        t1 = time.perf_counter()
        adapter = store.adapter(parent)
        found = backbone_features(source, [records[i] for i in fresh], adapter,
                                  settings.batch_size, settings.skip_bad, settings.max_pixels, progress, lane=lane)
        backbone_s = open_s + time.perf_counter() - t1
        rows = [fresh[i] for i in found.kept]
        if not rows:
            raise DataError(_nothing_learned(records, len(fresh), found.report.skipped, source_name))
        report = _learn_locked(store, session, bundle.feature_dim, parent, parts, found.values,
                               [names[i] for i in rows], keys[rows], settings, artifact_name, adapter)
    report.timings.backbone_s = backbone_s
    report.n_duplicate, report.n_skipped = len(records) - len(fresh), len(fresh) - len(rows)
    return report


#: How many skipped inputs an update that learned nothing names in its error (the count says how many in all).
NAMED_SKIPS = 3
#: The longest reason quoted for one skipped input.
MAX_REASON_CHARS = 120


def _nothing_learned(records: Sequence[ImageRecord], n_fresh: int, skipped: Sequence[ImageDecodeError],
                     source_name: str) -> str:
    """The one-line error of an update whose new inputs were all skipped as unreadable (``skip_bad``): how many,
    the first few with their reasons, and that nothing was committed."""
    noun = "text" if records[0].modality == "text" else "image"
    named = []
    for error in skipped[:NAMED_SKIPS]:
        reason = " ".join(error.reason.split())          # one line, whatever the decoder said
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS - 3] + "..."
        named.append(f"{error.source}: {reason}")
    more = f"; and {len(skipped) - len(named)} more" if len(skipped) > len(named) else ""
    stored = len(records) - n_fresh
    already = f" ({stored} more already in the store)" if stored else ""
    return (f"nothing to learn, nothing committed: all {n_fresh} new {noun}s of {source_name}{already} were "
            f"unreadable and skipped ({'; '.join(named)}{more})")


def learn_features(bundle: str | Path, features: np.ndarray, labels: list[str], keys: list[str],
                   settings: UpdateSettings | None = None, session: LearningSession | None = None) -> UpdateReport:
    """The same transaction from features already computed (head-input space), e.g. by the caller's own
    pipeline; ``keys`` identify the samples (sha256 of the image, or any unique id of up to 64 characters)."""
    settings = settings or UpdateSettings()
    settings.check()
    features = np.asarray(features, np.float32)
    if features.ndim >= 1 and len(features) == 0:
        raise DataError("nothing to learn, nothing committed: the features hold 0 samples")
    keys = [str(k) for k in keys]
    bad = next((k for k in keys if not k or len(k) > MAX_KEY_CHARS), None)
    if bad is not None:
        raise ConfigError(f"every key must have 1 to {MAX_KEY_CHARS} characters, got {bad[:80]!r}"
                          + ("..." if len(bad) > 80 else ""), option="keys")
    if len(set(keys)) != len(keys):
        raise ConfigError("keys must be unique: each names one sample", option="keys")
    session = session or LearningSession(keep_factor=False)
    bundle = Bundle.open(bundle)
    store = settings.store(bundle)
    with store.locked(settings.lock_timeout):
        parent = ensure_store(store, bundle)
        return _learn_locked(store, session, bundle.feature_dim, parent, session.parts(store, parent),
                             features, [str(n) for n in labels],
                             np.array(keys, dtype=f"<U{MAX_KEY_CHARS}"), settings, None, store.adapter(parent))


def _learn_locked(store: FeatureStore, session: LearningSession, dim: int, parent: Version,
                  parts: list[tuple[int, Samples]], features: np.ndarray, new_names: list[str], keys: np.ndarray,
                  settings: UpdateSettings, artifact_name: str | None,
                  adapter: dict[str, np.ndarray] | None) -> UpdateReport:
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
        report = UpdateReport(
            bundle=str(store.bundle), parent=parent.version, method=settings.method, artifact=artifact_name,
            n_new=len(labels), n_train_new=len(train), n_holdout_new=int(flags.sum()), classes=classes,
            new_classes=added, holdout_n=len(all_holdout), accuracy=after, accuracy_before=before,
            accuracy_after_on_earlier_holdout=after_old,
            accuracy_after_on_earlier_holdout_all_classes=after_old_all_classes,
            alpha=ridge.alpha, alpha_searched=alpha_s is not None, alpha_due=ridge.alpha_due(),
            solve_residual=ridge.system.residual,
            timings=UpdateTimings(head_s=time.perf_counter() - t1, head_state_s=state_s, alpha_s=alpha_s or 0.0))
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
                                                            "earlier_holdout_after": after_old},
                          fleet=dict(parent.fleet))
        report.evicted = write_rows(store, version, parent, parts, new, dim)
        store.commit(version, head, adapter, parts)
        session.committed(version, head, None if report.evicted else all_logits)
    except BaseException:
        session.forget()          # the learners took the new samples in, but no version holds them
        raise
    report.timings.commit_s = time.perf_counter() - t2
    report.version, report.committed = version.version, True
    report.n_train, report.n_holdout = version.n_train, version.n_holdout
    return report


def _learn(learned: Learned, settings: UpdateSettings, classes: list[str], train: Samples, holdout: Samples,
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


def _check_prior(learned: Learned, parent: Version, method: str) -> None:
    if method == "sgd":
        return
    missing = [parent.classes[i] for i, n in enumerate(learned.ncm.counts) if n == 0]
    if missing and learned.ridge.count == 0:
        raise BundleError(
            f"the store has no training statistics for {', '.join(missing)} (the bundle ships no learning data); "
            f"a {method} update would forget those classes. Re-export the bundle with this edgetl, or use --method sgd"
        )


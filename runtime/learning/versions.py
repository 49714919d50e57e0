"""How a transaction builds the version it commits: version 0 from the bundle, the rows a new version keeps,
a 0.4 store continued, and the accuracy of a head on stored rows."""

from __future__ import annotations

import numpy as np

from ..bundle.folder import Bundle
from ..bundle.heads import Head, RidgeHead
from ..bundle.store import FeatureStore, LearnerState, Samples, Version
from ..metrics import top1_accuracy


def accuracy(head: Head, samples: Samples, among: int | None = None) -> float | None:
    """Top-1 accuracy of ``head`` on stored samples (see :func:`~edgetl.runtime.metrics.top1_accuracy`)."""
    return top1_accuracy(head.logits(samples.features), samples.labels, among) if len(samples) else None


def bundle_state(bundle: Bundle) -> tuple[LearnerState, Samples]:
    """What the bundle itself has learned, and its shipped rows: a merged bundle's statistics file
    (``edgetl fleet merge``: ridge and NCM of every sample merged), else the shipped training rows, with the host's
    ridge statistics when they cover more samples than it ships (the host keeps no NCM sums beyond the rows)."""
    manifest = bundle.manifest
    dim, classes = manifest.feature_dim, list(manifest.labels)
    seed = Samples.empty(dim)
    if manifest.learning:
        with np.load(bundle.file(manifest.learning), allow_pickle=False) as a:
            seed = Samples(a["features"], a["labels"], a["holdout"], a["keys"])
    statistics_file = manifest.fleet.get("statistics")
    if statistics_file:
        with np.load(bundle.file(statistics_file), allow_pickle=False) as a:
            state = LearnerState.from_arrays({k: a[k] for k in a.files})
        return state.grown(len(classes)), seed
    state = LearnerState.empty(dim, len(classes)).with_rows(seed)
    statistics = getattr(bundle.exported_head, "statistics", None)
    if statistics is not None and statistics.count > int((~seed.holdout).sum()):
        state.ridge = statistics
    return state, seed


def ensure_store(store: FeatureStore, bundle: Bundle) -> Version:
    """The current version; on first use, version 0 is made from the bundle (under the caller's lock).

    Its statistics are the bundle's shipped training rows; when the bundle learned from more samples than it
    ships (the host ridge head's per-class bound, or a merged bundle's statistics), the difference is written as
    the store's first residual.
    """
    if store.exists:
        return store.version()
    manifest = bundle.manifest
    head = bundle.exported_head
    classes = list(manifest.labels)
    state, seed = bundle_state(bundle)
    segments = [store.write_segment(seed)] if len(seed) else []
    statistics = getattr(head, "statistics", None)
    alpha = head.alpha if isinstance(head, RidgeHead) and (statistics is not None or manifest.fleet) else None
    residual = None
    n_seed_train = int((~seed.holdout).sum())
    if state.ridge.count > n_seed_train or state.ncm_counts.sum() > n_seed_train:
        residual = store.write_residual(state.with_rows(seed, sign=-1.0))
    if isinstance(head, RidgeHead):        # the head file holds weights only; statistics live in rows + residual
        head = RidgeHead(head.weight, head.bias, None, head.alpha)
    version = Version(version=0, parent=None, action="init", method=head.kind, classes=classes, segments=segments,
                      files={}, n_train=n_seed_train, n_holdout=int(seed.holdout.sum()),
                      accuracy={"holdout": accuracy(head, seed.select(seed.holdout))}, alpha=alpha,
                      alpha_selected_at=state.ridge.count if alpha else 0, residual=residual,
                      note="from the bundle" + ("" if manifest.learning else " (it ships no learning data)"))
    return store.commit(version, head)


def write_rows(store: FeatureStore, version: Version, parent: Version, parts: list[tuple[int, Samples]],
                new: Samples, dim: int) -> int:
    """The new version's rows: the parent's segments and one with ``new``, bounded and compacted (evicted
    training rows join the residual); returns the rows evicted."""
    version.residual = parent.residual
    residual = continue_04(store, version, parent, parts, dim)
    segment = [(store.write_segment(new), new)] if len(new) else []
    return store.arrange(version, parts + segment,
                         lambda: residual if residual is not None else store.residual(parent, parts, dim))


def continue_04(store: FeatureStore, version: Version, source: Version, parts: list[tuple[int, Samples]] | None,
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


"""``edgetl-rt adapt``: the head's input re-normalised to unlabelled target-domain data (transductive transfer)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..bundle.folder import Bundle
from ..bundle.store import Samples, Version
from ..compat import renamed_keyword
from ..data.sources import open_data
from ..documents import utc_now
from ..engines.runner import BackboneRunner
from ..errors import BundleError, DataError, UpdateRejectedError
from ..inference.features import apply_adapter, backbone_features
from ..metrics import top1_accuracy
from ..progress import ProgressFactory, silent_progress
from .reports import AdaptReport
from .settings import UpdateSettings
from .versions import ensure_store, write_rows


@renamed_keyword("tune", "measure")
def adapt_bundle(bundle: str | Path | Bundle, data: str, check: str | None = None,
                 max_accuracy_drop: float = UpdateSettings.max_accuracy_drop, force: bool = UpdateSettings.force,
                 lock_timeout: float = UpdateSettings.lock_timeout, artifact: str | None = None,
                 backend: str | None = None, threads: int | None = None,
                 progress: ProgressFactory = silent_progress, measure: bool = True) -> AdaptReport:
    """Re-estimate per-feature normalisation on unlabelled target-domain inputs (labels in DATA are ignored).

    The adapter maps each feature from the target's mean and spread onto the source's (those of the
    samples the head learned from, from the ridge statistics), which undoes global shifts in
    brightness, colour or sensor response at the feature level.  With ``check`` (labelled inputs of the
    target domain) the accuracy before and after is reported and guards the commit.
    """
    bundle = Bundle.open(bundle)
    store = bundle.store
    records, _ = open_data(data).records_and_names()
    with BackboneRunner(bundle, artifact=artifact, backend=backend, threads=threads, measure=measure) as backbone, \
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
        report = AdaptReport(bundle=str(bundle.path), n_unlabeled=len(raw), parent=parent.version,
                             mean_shift=float(np.linalg.norm(target_mean - source_mean) /
                                              max(np.linalg.norm(source_mean), 1e-12)))
        if check:
            check_records, check_names = open_data(check).records_and_names()
            position = {name: i for i, name in enumerate(parent.classes)}
            unknown = sorted(set(check_names) - set(position))
            if unknown:
                raise DataError(f"{check} has classes the model does not know: {', '.join(unknown)}")
            found = backbone_features(backbone, check_records, progress=progress)
            truth = np.array([position[check_names[i]] for i in found.kept])
            before = top1_accuracy(head.logits(apply_adapter(found.values, current_adapter)), truth)
            after = top1_accuracy(head.logits(apply_adapter(found.values, adapter)), truth)
            report.check, report.check_n = check, len(truth)
            report.accuracy_before, report.accuracy_after = before, after
            if (before - after) * 100 > max_accuracy_drop and not force:
                raise UpdateRejectedError(
                    f"adaptation not committed: accuracy on {check} would fall from {before:.4f} to "
                    f"{after:.4f}; check the data, or force the commit", remedy="force")
        version = Version(**{**asdict(parent), "version": -1, "parent": parent.version, "action": "adapt",
                             "files": {}, "n_new": 0, "new_classes": [],
                             "accuracy": {k: report[k] for k in ("accuracy_before", "accuracy_after") if k in report},
                             "note": f"feature normalisation from {len(raw)} unlabelled {records[0].modality}s of "
                                     f"{data}",
                             "created": utc_now()})
        write_rows(store, version, parent, store.segment_parts(parent), Samples.empty(bundle.feature_dim),
                   bundle.feature_dim)
        store.commit(version, head, adapter)    # the parent's head, with the new adapter
        report.version, report.committed = version.version, True
    return report

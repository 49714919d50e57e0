"""A fleet that learns as one: ``edgetl-rt contribute`` (what this device learned, as summed statistics) and
``edgetl-rt pull`` (a merged bundle's head taken back without losing what the device learned since).

Ridge and NCM heads depend on their samples through sums only, so these are exact (Fed3R, FedNCM): a merge of
contributions is the centralized fit, and a pull commits ``merged + (device - what the fleet already had of it)``.

What the fleet already has of a version's statistics ("known") is the bundle's own statistics, or after a pull
the merged bundle's (the version's ``fleet`` record names that bundle and a residual file holding them; a rollback
of a pull takes the record back with it).  The device's own contributions are a log beside the versions
(``store/fleet/contributions.json``, the contribution files kept in ``store/fleet/own/``), never undone by a
rollback, so what was contributed is never contributed again: a contribution covers
``state - known - Σ own contributions on the same base``.  Each write is atomic (temp name, rename); the log's
rename is contribute's commit point and the store's commit is pull's, so a process killed anywhere leaves the
store as it was (contribute writes its file before its record: killed between the two, it makes the same
contribution again, whose statistics the merge refuses as a duplicate of the first by name).  sgd (linear) and
mlp heads have no sufficient statistics: a merge refits a ridge or NCM head from the ridge and NCM statistics
every store keeps (``edgetl fleet merge --head``).  A version with a feature
adapter (``edgetl-rt adapt``) learns in its own feature space, so it neither contributes nor pulls.
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle.contribution import (
    CONTRIBUTION_SCHEMA,
    Contribution,
    ContributionSummary,
    bundle_identity,
    gram_arrays,
    payload_digest,
    verify_contribution,
)
from ..bundle.folder import Bundle
from ..bundle.heads import Head, NCMHead, RidgeStatistics
from ..bundle.manifest import read_bundle_manifest
from ..bundle.store import FeatureStore, LearnerState, Samples, Version, residual_path
from ..documents import utc_now
from ..errors import BundleError, ConfigError, DataError
from ..fsutil import atomic_write_bytes, atomic_write_text
from ..signing import TrustedKeys, load_signing_key, sign_file
from .learners import RidgeLearner
from .reports import Report
from .settings import UpdateSettings
from .versions import accuracy, bundle_state, ensure_store

FLEET_FOLDER = "fleet"
LOG_SCHEMA = "edgetl.fleet/1"
#: Merge methods: the heads whose fit is a function of summed statistics.
MERGE_HEADS = ("ridge", "ncm")


# --- statistics in a class order ----------------------------------------------------------------------------------

def reorder(state: LearnerState, classes: list[str], into: list[str]) -> LearnerState:
    """``state`` (columns in ``classes`` order) with its columns placed in ``into`` order (a superset)."""
    position = {name: i for i, name in enumerate(into)}
    missing = [c for c in classes if c not in position]
    if missing:
        raise ConfigError(f"classes {missing} are not among {into}")
    index = np.array([position[c] for c in classes], dtype=np.int64)
    dim, size = state.ridge.gram.shape[0], len(into)
    cross, target_sum = np.zeros((dim, size)), np.zeros(size)
    ncm_sums, ncm_counts = np.zeros((size, dim)), np.zeros(size)
    cross[:, index] = state.ridge.cross[:, :len(classes)]
    target_sum[index] = state.ridge.target_sum[:len(classes)]
    ncm_sums[index] = state.ncm_sums[:len(classes)]
    ncm_counts[index] = state.ncm_counts[:len(classes)]
    ridge = RidgeStatistics(state.ridge.gram, cross, state.ridge.feature_sum, target_sum, state.ridge.count)
    return LearnerState(ridge, ncm_sums, ncm_counts, state.alpha, state.alpha_selected_at)


def minus(a: LearnerState, b: LearnerState) -> LearnerState:
    """``a - b`` (same class order; ``b`` may have fewer classes)."""
    b = b.grown(len(a.ncm_counts))
    return LearnerState(a.ridge.plus(b.ridge, -1.0), a.ncm_sums - b.ncm_sums, a.ncm_counts - b.ncm_counts,
                        a.alpha, a.alpha_selected_at)


def plus(a: LearnerState, b: LearnerState) -> LearnerState:
    b = b.grown(len(a.ncm_counts))
    return LearnerState(a.ridge.plus(b.ridge), a.ncm_sums + b.ncm_sums, a.ncm_counts + b.ncm_counts, a.alpha,
                        a.alpha_selected_at)


def add_into(total: LearnerState, other: LearnerState) -> None:
    """``total += other`` in place (same class order): a merge's running sum allocates nothing per contribution."""
    r, o = total.ridge, other.ridge
    r.gram += o.gram
    r.cross += o.cross
    r.feature_sum += o.feature_sum
    r.target_sum += o.target_sum
    r.count += o.count
    total.ncm_sums += other.ncm_sums
    total.ncm_counts += other.ncm_counts


def contribution_state(contribution: Contribution, into: list[str] | None = None) -> LearnerState:
    """A contribution's statistics as a :class:`LearnerState`, its columns in ``into`` order (default: its own)."""
    a = contribution.arrays
    ridge = RidgeStatistics(contribution.gram(), a["class_sums"].T.copy(), a["feature_sum"], a["counts"],
                            int(round(float(a["counts"].sum()))))
    state = LearnerState(ridge, a["ncm_sums"], a["ncm_counts"])
    return state if into is None else reorder(state, contribution.classes, into)


def contribution_arrays(state: LearnerState) -> dict[str, np.ndarray]:
    """The arrays of a contribution of ``state``: its Gram matrix in the smaller exact form."""
    r = state.ridge
    return {**gram_arrays(r.gram, r.count), "class_sums": r.cross.T.copy(), "feature_sum": r.feature_sum,
            "counts": r.target_sum, "ncm_sums": state.ncm_sums, "ncm_counts": state.ncm_counts}


def fit_head(state: LearnerState, kind: str, alpha: float) -> Head:
    """The head of ``kind`` fit on ``state``: ridge solved at ``alpha`` (one LU solve), or the class means."""
    if kind == "ncm":
        return NCMHead(state.ncm_sums.copy(), state.ncm_counts.copy())
    return RidgeLearner(state.ridge.gram.shape[0], (), alpha, state.ridge).system.head(alpha)


def select_alpha(state: LearnerState, holdout: Samples) -> float:
    """The regularisation the device would choose on these statistics: the grid's best on held-out rows, or the
    grid's unit with none (:meth:`~edgetl.runtime.learning.ridge_system.RidgeSystem.select_alpha`)."""
    learner = RidgeLearner(state.ridge.gram.shape[0], (), None, state.ridge)
    if len(holdout):
        return float(learner.choose_alpha(holdout.features, holdout.labels, force=True))
    return float(learner.system.default_alpha())


# --- the device's fleet record --------------------------------------------------------------------------------------

def _fleet_folder(store: FeatureStore) -> Path:
    return store.root / FLEET_FOLDER


def device_id(store: FeatureStore) -> str:
    """This device's stable id: made once (host name and a random suffix) and kept in ``store/fleet/device_id``."""
    path = _fleet_folder(store) / "device_id"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40] or "device"
    ident = f"{name}-{uuid.uuid4().hex[:12]}"
    atomic_write_text(path, ident + "\n")
    return ident


def read_log(store: FeatureStore) -> list[dict]:
    path = _fleet_folder(store) / "contributions.json"
    if not path.is_file():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document["schema"] != LOG_SCHEMA:
            raise ValueError(f"schema {document['schema']!r}, expected {LOG_SCHEMA!r}")
        return list(document["contributions"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path} is damaged ({exc}); the device's contributions cannot be told apart") from None


def _write_log(store: FeatureStore, entries: list[dict]) -> None:
    atomic_write_text(_fleet_folder(store) / "contributions.json",
                      json.dumps({"schema": LOG_SCHEMA, "contributions": entries}, indent=2) + "\n")


def _own(store: FeatureStore, entry: dict) -> Contribution:
    return verify_contribution(_fleet_folder(store) / "own" / f"{entry['id']}.npz", trusted=False)


def fleet_base(store: FeatureStore, bundle: Bundle, version: Version) -> tuple[str, LearnerState]:
    """The identity of the bundle ``version`` learns from in the fleet, and its statistics (in the version's class
    order): the bundle's own, or the merged bundle's taken by a pull."""
    classes = list(version.classes)
    if version.fleet:
        known = LearnerState.from_arrays(store._read_shared(version, residual_path(version.fleet["known"])))
        return version.fleet["base"], known.grown(len(classes))
    state, _ = bundle_state(bundle)
    return bundle_identity(bundle.manifest), reorder(state, list(bundle.manifest.labels), classes)


def _pending(store: FeatureStore, bundle: Bundle, version: Version, parts: list[tuple[int, Samples]],
             contributing: bool = True) -> tuple[str, LearnerState, list[dict], list[str]]:
    """(base, what the version learned that the fleet has not had, own log entries on the same base, the classes of
    that state: the version's, then those only its own contributions hold).  A version rolled back past a
    contribution has less than nothing to contribute (refused); a pull takes those samples back from the merge,
    so it goes on."""
    base, known = fleet_base(store, bundle, version)
    full = store.state(version, bundle.feature_dim, parts)
    entries = [e for e in read_log(store) if e["base"] == base]
    own = [_own(store, entry) for entry in entries]
    classes = list(version.classes)
    classes += [c for contribution in own for c in contribution.classes if c not in classes]
    pending = minus(full.grown(len(classes)), known.grown(len(classes)))
    for contribution in own:
        pending = minus(pending, contribution_state(contribution, classes))
    if contributing and ((pending.ridge.target_sum < -0.5).any() or (pending.ncm_counts < -0.5).any()):
        raise DataError(f"the current version ({version.version}) holds fewer samples than this device already "
                        "contributed (it was rolled back past a contribution); nothing can be contributed until "
                        "it learns them again")
    return base, pending, entries, classes


# --- contribute -----------------------------------------------------------------------------------------------------

def contribute_bundle(bundle: str | Path | Bundle, out: str | Path, device: str | None = None,
                      with_rows: bool = False, overwrite: bool = False,
                      lock_timeout: float = UpdateSettings.lock_timeout,
                      sign_key: str | Path | None = None) -> ContributionSummary:
    """Write what the device learned since its base or its last contribution to ``out`` and record it (see the
    module docstring); nothing learned since raises :class:`DataError` and writes nothing.  ``sign_key``: an
    ed25519 private key file; ``out`` gets its detached signature ``out.sig`` (the key is read first, so a bad
    key writes nothing)."""
    signer = load_signing_key(sign_key) if sign_key is not None else None
    bundle = Bundle.open(bundle)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it", option="out")
    if not out.parent.is_dir():
        raise ConfigError(f"the folder of {out} does not exist", option="out")
    store = bundle.store
    with store.locked(lock_timeout):
        version = ensure_store(store, bundle)
        _refuse_adapted(store, version, "contribute")
        parts = store.segment_parts(version)
        base, pending, entries, classes = _pending(store, bundle, version, parts)
        if pending.ridge.count <= 0 and not pending.ncm_counts.any():
            last = f" (the last one: store/fleet/own/{entries[-1]['id']}.npz)" if entries else ""
            raise DataError(f"nothing to contribute: {bundle.path} learned nothing since its base or its last "
                            f"contribution{last}")
        arrays = contribution_arrays(pending)
        if with_rows:
            arrays.update(_new_rows(store, entries, parts, bundle))
        ident = device or device_id(store)
        previous = max((e["versions"]["to"] for e in entries), default=None)
        payload = payload_digest(arrays)
        counts = pending.ridge.target_sum
        header = {"schema": CONTRIBUTION_SCHEMA, "device": ident, "base": base, "classes": classes,
                  "feature_dim": bundle.feature_dim, "created": utc_now(), "payload_sha256": payload,
                  "versions": {"after": previous, "to": version.version, "to_created": version.created},
                  "samples": {c: int(round(n)) for c, n in zip(classes, counts) if round(n)},
                  "n_samples": int(pending.ridge.count), "method": version.method}
        header["id"] = hashlib.sha256(f"{ident}|{base}|{version.version}|{version.created}|{payload}".encode()
                                      ).hexdigest()[:32]
        contribution = Contribution(header, arrays)
        data = contribution.to_bytes()
        # the file first, then the record: a process killed between the two has written a contribution it will
        # make again, whose statistics the merge refuses as a duplicate; never one recorded but not written
        try:
            atomic_write_bytes(out, data)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror or exc}", option="out") from None
        own = _fleet_folder(store) / "own"
        own.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(own / f"{header['id']}.npz", data)
        _write_log(store, read_log(store) + [{"id": header["id"], "base": base, "device": ident,
                                              "versions": header["versions"], "created": header["created"],
                                              "sha256": hashlib.sha256(data).hexdigest()}])   # the commit point
        _drop_stale(store, base)
    summary = ContributionSummary.of(verify_contribution(data, str(out), trusted=False), str(out))
    if sign_key is not None:
        summary.signature = str(sign_file(out, signer))
    return summary


def _refuse_adapted(store: FeatureStore, version: Version, job: str) -> None:
    """A version with a feature adapter (``edgetl-rt adapt``) learns in its own feature space: its statistics and a
    fleet's do not add up."""
    if "adapter.npz" in version.files:
        raise ConfigError(f"cannot {job}: version {version.version} of {store.bundle} has a feature adapter "
                          "(edgetl-rt adapt), so what it learns is in another feature space than the fleet's; roll "
                          "back to a version without one first")


def _new_rows(store: FeatureStore, entries: list[dict], parts: list[tuple[int, Samples]], bundle: Bundle) -> dict:
    """The stored rows (training and held-out) neither the bundle ships nor an earlier contribution on this base
    sent."""
    dim = bundle.feature_dim
    sent = set(bundle_state(bundle)[1].keys.tolist())
    for entry in entries:
        sent.update(_own(store, entry).arrays.get("rows_keys", np.zeros(0, "<U64")).tolist())
    rows = Samples.concat([p for _, p in parts], dim)
    rows = rows.select(np.array([k not in sent for k in rows.keys.tolist()], dtype=bool))
    return {"rows_features": rows.features.astype(np.float32), "rows_labels": rows.labels.astype(np.int64),
            "rows_holdout": rows.holdout.astype(bool), "rows_keys": rows.keys.astype("<U64")}


def _drop_stale(store: FeatureStore, base: str) -> None:
    """Forget own contributions on bases no kept version learns from (a pull moved every version past them)."""
    bases = {base} | {store.version(n).fleet.get("base") for n in store.kept_numbers()}
    entries = read_log(store)
    keep = [e for e in entries if e["base"] in bases or None in bases]
    if len(keep) < len(entries):
        _write_log(store, keep)
        for entry in entries:
            if entry not in keep:
                (_fleet_folder(store) / "own" / f"{entry['id']}.npz").unlink(missing_ok=True)


# --- pull -----------------------------------------------------------------------------------------------------------

@dataclass
class PullReport(Report):
    """``edgetl-rt pull --json``."""

    bundle: str
    merged: str
    version: int
    parent: int
    head: str
    classes: list[str]
    new_classes: list[str]
    alpha: float | None
    merged_samples: int
    own_samples_kept: int
    contributions_in_merge: int
    own_contributions_in_merge: list[str] = field(default_factory=list)
    samples: int = 0
    holdout_accuracy: float | None = None


def open_checked_bundle(path: str | Path, trusted: TrustedKeys | str | Path | bool | None = None) -> Bundle:
    """A bundle read whole before it is trusted: the manifest, every listed file's sha256 and, where keys are
    trusted (``trusted``, else those configured by ``--trusted-keys`` / ``EDGETL_TRUSTED_KEYS``), its signature by
    one of them and no file the manifest does not list (:meth:`Bundle.verify_whole`)."""
    read_bundle_manifest(path, verify=True)
    bundle = Bundle(path, verify=True, trusted=trusted)
    bundle.verify_listed()
    return bundle


def pull_bundle(bundle: str | Path | Bundle, merged: str | Path,
                lock_timeout: float = UpdateSettings.lock_timeout) -> PullReport:
    """Commit the merged bundle's head as a new version whose statistics are the merge plus what this device
    learned that the merge does not hold (see the module docstring); a rollback undoes it."""
    bundle = Bundle.open(bundle)
    source = open_checked_bundle(merged)
    fleet = source.manifest.fleet
    if not fleet.get("statistics"):
        raise BundleError(f"{merged} is not a merged bundle (its manifest has no fleet statistics); make one with "
                          "edgetl fleet merge")
    if source.feature_dim != bundle.feature_dim:
        raise BundleError(f"{merged} has {source.feature_dim} features but {bundle.path} has {bundle.feature_dim}")
    merged_id = bundle_identity(source.manifest)
    store = bundle.store
    dim = bundle.feature_dim
    with store.locked(lock_timeout):
        parent = ensure_store(store, bundle)
        _refuse_adapted(store, parent, "pull")
        parts = store.segment_parts(parent)
        base, pending, entries, classes = _pending(store, bundle, parent, parts, contributing=False)
        if base == merged_id:
            raise DataError(f"{merged} is already the base of the current version {parent.version}; nothing to take")
        if fleet.get("base") != base:
            raise BundleError(f"{merged} was merged onto bundle {str(fleet.get('base'))[:12]}... but this device "
                              f"learns from {base[:12]}...; pull a merge of its own base")
        merged_state, _ = bundle_state(source)
        classes += [c for c in source.manifest.labels if c not in classes]
        added = [c for c in classes if c not in parent.classes]
        in_merge = {c["id"] for c in fleet.get("contributions", [])}
        own_in = [e for e in entries if e["id"] in in_merge]
        new = plus(reorder(merged_state, list(source.manifest.labels), classes), pending.grown(len(classes)))
        for entry in entries:       # own contributions the merge lacks stay counted here
            if entry["id"] not in in_merge:
                new = plus(new, contribution_state(_own(store, entry), classes))
        kind = source.manifest.head["kind"]
        alpha = getattr(source.exported_head, "alpha", None) if kind == "ridge" else parent.alpha
        head = fit_head(new, kind, alpha if alpha is not None else 1.0)
        rows = Samples.concat([p for _, p in parts], dim)
        version = Version(version=-1, parent=parent.version, action="pull", method=kind, classes=classes,
                          segments=list(parent.segments), files={}, n_train=int((~rows.holdout).sum()),
                          n_holdout=int(rows.holdout.sum()), new_classes=added, alpha=alpha,
                          alpha_selected_at=new.ridge.count if kind == "ridge" else parent.alpha_selected_at,
                          accuracy={"holdout": accuracy(head, rows.select(rows.holdout))},
                          note=f"pulled {Path(merged).name}: {len(in_merge)} contributions merged")
        residual = minus(new, LearnerState.empty(dim, len(classes)).with_rows(rows))
        version.residual = None if residual.empty_set else store.write_residual(residual)
        known = store.write_residual(reorder(merged_state, list(source.manifest.labels), classes))
        version.fleet = {"base": merged_id, "known": known}
        store.commit(version, head, parts=parts)       # the commit point
    return PullReport(bundle=str(bundle.path), merged=str(merged), version=version.version, parent=parent.version,
                      head=kind, classes=classes, new_classes=added, alpha=alpha,
                      merged_samples=int(merged_state.ridge.count), own_samples_kept=int(pending.ridge.count),
                      contributions_in_merge=len(in_merge), own_contributions_in_merge=[e["id"] for e in own_in],
                      samples=int(new.ridge.count), holdout_accuracy=version.accuracy["holdout"])


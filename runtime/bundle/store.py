"""The on-device feature store: versioned heads and stored features, crash-safe.

Layout inside a bundle::

    store/CURRENT                  the committed version number (the only file ever replaced)
    store/lock                     flock()ed by a writer; holds its pid
    store/versions/000007/         version.json, head.npz[, adapter.npz]                (immutable)
    store/segments/000012.npz      features, labels, holdout flags, image keys          (immutable)
    store/residuals/000003.npz     statistics of samples learned but not stored as rows (immutable); also what a
                                   pulled merge holds (a version's ``fleet["known"]``)
    store/fleet/                   the device's id and its contributions (edgetl.runtime.learning.fleet)

Versions are deltas.  A version lists the segments that hold its rows and the residual it continues from;
the learner statistics (ridge and NCM) are that residual plus the stored training rows, so an update
writes one segment with its new rows (5 kB per sample at d = 1280) and a version folder with the head,
and no version stores a d×d matrix.  A residual is written only when rows are evicted or the bundle's
host statistics cover more samples than it ships (6.5 MB at d = 1280, the upper triangle in float64).
The store compacts itself: when the newest eight or more segments are all of size tier t or below
(tier: the power of eight of a segment's row count), they are merged into one, so each row is rewritten
a few times per tier and a version lists a few dozen segments at most.  Loading the current head stays
one read (``head.npz``).

A write (update, adapt, rollback, tune) takes the lock, writes any new segment or residual and
a complete new version folder beside the old ones (temp name, fsync,
rename), then switches ``CURRENT`` by an atomic rename and fsyncs the
folder: that rename is the commit.  A process killed at any point leaves
``CURRENT`` naming a complete version; leftovers (a version newer than
``CURRENT``, temp files, unreferenced segments and residuals) are removed by the next
writer.  Readers never take the lock: they read ``CURRENT`` and an immutable
folder, so they see the old head or the new one, never a mix.  The last
``keep_versions`` versions are kept for ``history`` and ``rollback``.

Eviction (the store's size bound): per class, at most ``max_per_class``
training rows and ``max_holdout_per_class`` held-out rows are kept; a class
over its bound loses its oldest rows down to nine tenths of the bound, so
that the residual and the segments holding old rows are rewritten once per
tenth of a bound rather than on every update.  Eviction only bounds stored
features (replay for ``sgd``, held-out accuracy, alpha choice): evicted
training rows move into the residual, so the ridge and NCM statistics keep
every sample ever learned.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..documents import Origin, build, parse_document, utc_now
from ..errors import BundleError, ConfigError, StoreBusyError
from ..fsutil import atomic_directory, atomic_write_bytes, atomic_write_text, sha256_file
from .heads import Head, RidgeStatistics, load_head, normalise_rows, read_npz
from .manifest import verify_file
from .unknown import PROJECTION_USERS, UNKNOWN_FILE, UnknownScorer, UnknownSettings, fit_unknown

STORE_SCHEMA = "edgetl.store/2"
LEGACY_SCHEMA = "edgetl.store/1"   # 0.4: every version held the full statistics (state.npz); read and continued
SEGMENT_FANOUT = 8
STORE_FOLDER = "store"
DEFAULT_KEEP_VERSIONS = 5
DEFAULT_MAX_PER_CLASS = 500
DEFAULT_MAX_HOLDOUT_PER_CLASS = 100


@dataclass
class Version:
    version: int
    parent: int | None
    action: str                    # init | update | adapt | rollback | tune
    method: str | None
    classes: list[str]
    segments: list[int]
    files: dict[str, str]          # file name -> sha256
    n_train: int = 0
    n_holdout: int = 0
    n_new: int = 0
    new_classes: list[str] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)
    alpha: float | None = None
    alpha_selected_at: int = 0     # training-sample count when alpha was last chosen on held-out rows
    residual: int | None = None    # the residual file the statistics continue from (None: rows only)
    shared: dict[str, str] = field(default_factory=dict)   # its segments and residual: store path -> sha256
    artifact: str | None = None
    note: str = ""
    created: str = field(default_factory=utc_now)
    schema: str = STORE_SCHEMA
    # what the fleet already holds of this version's statistics (edgetl-rt pull): {"base": the identity of the
    # merged bundle taken, "known": the residual file holding its statistics}; empty: the bundle's own
    fleet: dict = field(default_factory=dict)
    # The unknown-input scorer and threshold of this head version (:mod:`.unknown`): method, threshold, keep, n,
    # on, shrinkage, k, file; set by :meth:`FeatureStore.commit`.  Empty in stores before 0.8.
    unknown: dict = field(default_factory=dict)


@dataclass
class Samples:
    """Stored rows: features in the head's input space, label indices, held-out flags, image keys."""

    features: np.ndarray
    labels: np.ndarray
    holdout: np.ndarray
    keys: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> Samples:
        return cls(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, "<U64"))

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, mask: np.ndarray) -> Samples:
        return Samples(self.features[mask], self.labels[mask], self.holdout[mask], self.keys[mask])

    @classmethod
    def concat(cls, parts: list[Samples], dim: int) -> Samples:
        if not parts:
            return cls.empty(dim)
        return cls(np.concatenate([p.features for p in parts]), np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.holdout for p in parts]), np.concatenate([p.keys for p in parts]))


@dataclass
class LearnerState:
    """Ridge and NCM statistics (float64) of a set of samples: a version's residual, or (residual plus its
    stored training rows) all it has learned, with the regularisation chosen for it."""

    ridge: RidgeStatistics
    ncm_sums: np.ndarray
    ncm_counts: np.ndarray
    alpha: float | None = None
    alpha_selected_at: int = 0

    @classmethod
    def empty(cls, dim: int, num_classes: int) -> LearnerState:
        return cls(RidgeStatistics.empty(dim, num_classes), np.zeros((num_classes, dim)), np.zeros(num_classes))

    @property
    def empty_set(self) -> bool:
        return self.ridge.count == 0 and not self.ncm_counts.any()

    def grown(self, num_classes: int) -> LearnerState:
        extra = num_classes - len(self.ncm_counts)
        if extra <= 0:
            return self
        return LearnerState(self.ridge.grown(num_classes),
                            np.vstack([self.ncm_sums, np.zeros((extra, self.ncm_sums.shape[1]))]),
                            np.concatenate([self.ncm_counts, np.zeros(extra)]), self.alpha, self.alpha_selected_at)

    def with_rows(self, samples: Samples, sign: float = 1.0) -> LearnerState:
        """These statistics with ``samples``' training rows added (``sign=-1``: taken out)."""
        train = samples.select(~samples.holdout)
        num_classes = max(len(self.ncm_counts), int(train.labels.max()) + 1 if len(train) else 0)
        grown = self.grown(num_classes)
        rows = RidgeStatistics.empty(self.ridge.gram.shape[0], num_classes)
        rows.add(train.features, train.labels)
        sums = np.zeros_like(grown.ncm_sums)
        np.add.at(sums, train.labels, normalise_rows(train.features.astype(np.float64)))
        counts = np.bincount(train.labels, minlength=num_classes).astype(np.float64)
        return LearnerState(grown.ridge.plus(rows, sign), grown.ncm_sums + sign * sums,
                            grown.ncm_counts + sign * counts, self.alpha, self.alpha_selected_at)

    def arrays(self) -> dict[str, np.ndarray]:
        """A residual file's arrays: the Gram matrix as its upper triangle (half the bytes)."""
        r = self.ridge
        return {"gram_upper": r.gram[np.triu_indices(len(r.gram))], "cross": r.cross,
                "feature_sum": r.feature_sum, "target_sum": r.target_sum, "count": np.array(r.count),
                "ncm_sums": self.ncm_sums, "ncm_counts": self.ncm_counts}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> LearnerState:
        """From a residual file, or from a 0.4 version's ``state.npz`` (full Gram, alpha)."""
        if "gram_upper" in a:
            dim = a["feature_sum"].shape[0]
            gram = np.zeros((dim, dim))
            gram[np.triu_indices(dim)] = a["gram_upper"]
            gram = gram + np.triu(gram, 1).T
        else:
            gram = a["gram"]
        alpha = float(a["alpha"]) if "alpha" in a else float("nan")
        return cls(RidgeStatistics(gram, a["cross"], a["feature_sum"], a["target_sum"], int(a["count"])),
                   a["ncm_sums"], a["ncm_counts"], None if np.isnan(alpha) else alpha,
                   int(a.get("alpha_selected_at", 0)))


def _segment_path(number: int) -> str:
    return f"segments/{number:06d}.npz"


def residual_path(number: int) -> str:
    return f"residuals/{number:06d}.npz"


def _bank_key(version: Version) -> tuple:
    """What a version's kNN bank rows are made of: its number, its scorer file and its stored files' sha256."""
    return version.version, version.files.get(UNKNOWN_FILE), tuple(sorted(version.shared.items()))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


class FeatureStore:
    def __init__(self, bundle: str | Path, keep_versions: int = DEFAULT_KEEP_VERSIONS,
                 max_per_class: int = DEFAULT_MAX_PER_CLASS,
                 max_holdout_per_class: int = DEFAULT_MAX_HOLDOUT_PER_CLASS):
        self.bundle = Path(bundle)
        self.root = self.bundle / STORE_FOLDER
        self._parsed: dict[int, tuple[tuple[int, int, int], Version]] = {}    # version.json files are immutable
        self._digests: dict[str, str] = {}      # sha256 of segments and residuals this process wrote or verified
        # segments written by the transaction under way, which its commit refits from: only the holder of the
        # store's file lock writes segments and commits, so one transaction at a time fills and empties it
        self._written: dict[int, Samples] = {}
        # the kNN bank rows of the last version whose unknown scorer was loaded or committed, keyed by what they
        # are made of (the version, its scorer file and its segments' and residual's sha256): serve loads a
        # version once per commit it picks up, and right after its own commits (a float32 copy of the training
        # rows: 14 MB for banking77's 9,003 rows at d = 384)
        self._bank: tuple[tuple, np.ndarray] | None = None
        self.configure(keep_versions, max_per_class, max_holdout_per_class)

    def configure(self, keep_versions: int = DEFAULT_KEEP_VERSIONS, max_per_class: int = DEFAULT_MAX_PER_CLASS,
                  max_holdout_per_class: int = DEFAULT_MAX_HOLDOUT_PER_CLASS) -> FeatureStore:
        """Set the bounds the next writes apply (how many versions are kept, stored rows per class)."""
        if keep_versions < 2:
            raise ConfigError("keep at least 2 versions (the current one and one to roll back to)",
                              option="keep_versions")
        self.keep_versions = keep_versions
        self.max_per_class = max_per_class
        self.max_holdout_per_class = max_holdout_per_class
        return self

    # --- reading (no lock) --------------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.root / "CURRENT").is_file()

    def current_number(self) -> int:
        try:
            text = (self.root / "CURRENT").read_text().strip()
            return int(text)
        except FileNotFoundError as exc:
            raise BundleError(f"{self.bundle} has no feature store yet (run edgetl-rt update first)") from exc
        except ValueError as exc:
            raise BundleError(f"{self.root / 'CURRENT'} is damaged ({text!r}); roll back with "
                              "edgetl-rt rollback --to VERSION") from exc

    def _folder(self, number: int) -> Path:
        return self.root / "versions" / f"{number:06d}"

    def version(self, number: int | None = None) -> Version:
        """A committed version (default: the current one); its files are checked against their sha256."""
        for attempt in range(5):  # a concurrent writer may prune the version we just read CURRENT for
            wanted = self.current_number() if number is None else number
            path = self._folder(wanted) / "version.json"
            try:
                info = os.stat(path)
                stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
                if wanted in self._parsed and self._parsed[wanted][0] == stamp:
                    return copy.deepcopy(self._parsed[wanted][1])
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                if number is None and attempt < 4:
                    time.sleep(0.01)
                    continue
                raise BundleError(f"store version {wanted} no longer exists (kept: {self.kept_numbers()})") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise BundleError(f"{path} cannot be read ({exc}); roll back with edgetl-rt rollback "
                                  f"{self.bundle} --to VERSION") from exc
            origin = Origin(str(path), BundleError, f"roll back with edgetl-rt rollback {self.bundle} --to VERSION")
            version = build(Version, parse_document(text, origin, (STORE_SCHEMA, LEGACY_SCHEMA),
                                                    what="an edgetl store version"), origin)
            self._parsed[wanted] = (stamp, version)
            return copy.deepcopy(version)
        raise BundleError("the feature store changed too fast to read")  # pragma: no cover

    def kept_numbers(self) -> list[int]:
        folder = self.root / "versions"
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "version.json").is_file())

    def history(self) -> list[Version]:
        current = self.current_number()
        return [self.version(n) for n in self.kept_numbers() if n <= current]

    def _verified(self, version: Version, name: str) -> Path:
        path = self._folder(version.version) / name
        if not path.is_file() or sha256_file(path) != version.files.get(name):
            raise BundleError(f"store file {path} is missing or fails its sha256 check; roll back with "
                              f"edgetl-rt rollback {self.bundle} --to VERSION")
        return path

    def head(self, version: Version) -> Head:
        return load_head(self._verified(version, "head.npz"))

    def unknown_scorer(self, version: Version) -> UnknownScorer:
        """The version's scorer; its kNN banks are rebuilt from the version's stored training rows (the rows it was
        fitted on) and the bundle's :attr:`projection`, which the version file leaves out.  Those rows are kept for
        the last version asked for (or committed here), so loading it again reads no segment."""
        scorer = UnknownScorer.load(self._verified(version, UNKNOWN_FILE))
        if scorer.needs_bank:
            key, cached = _bank_key(version), self._bank      # read once: a commit in another thread replaces it
            if cached is None or cached[0] != key:
                cached = (key, self.unknown_rows(version, self.head(version).feature_dim)[0])
                self._bank = cached
            scorer.with_bank(cached[1], self.projection_for(scorer.method))
        return scorer

    @functools.cached_property
    def projection(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The unknown-input projection the bundle was exported with (in its ``unknown.npz``, checked against the
        manifest's sha256): every version's scorer applies it and none stores it, since the device cannot train
        one.  None when the bundle ships none."""
        block = self._manifest_unknown() or {}
        if not isinstance(block.get("file"), str) or not isinstance(block.get("sha256"), str):
            return None
        path = verify_file(self.bundle, block["file"], block["sha256"])
        with np.load(path, allow_pickle=False) as arrays:        # the two arrays only, not the banks
            if "projection_w" not in arrays.files or "projection_b" not in arrays.files:
                return None
            return arrays["projection_w"], arrays["projection_b"]

    def projection_for(self, method: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The bundle's projection where ``method`` uses one (the others never read the file)."""
        return self.projection if method in PROJECTION_USERS else None

    def unknown_rows(self, version: Version, dim: int,
                     held: dict[int, Samples] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What ``version``'s unknown scorer is fitted on: its stored training rows and their labels, plus one row
        per class it knows only through statistics (taken by a fleet ``pull``, or whose rows were all evicted):
        the class's mean feature from the statistics the residual keeps; and its held-out rows.
        ``held``: segments the caller has loaded, by number (the others are read)."""
        held = held or {}
        parts = [(n, held[n]) if n in held else (n, self.segment_part(version, n)) for n in version.segments]
        rows = Samples.concat([part for _, part in parts], dim)
        train = rows.select(~rows.holdout)
        features, labels = train.features, train.labels
        residual = self.residual(version, parts, dim)
        present = np.bincount(labels, minlength=len(version.classes)) > 0
        missing = np.flatnonzero(~present & (residual.ncm_counts[:len(version.classes)] > 0))
        if len(missing):
            # the class's mean raw feature from the ridge sums where it has them: the scorers that normalise rows
            # see its direction, and the projection (trained on raw features, with a bias) sees it at the scale its
            # inputs come at; else the mean normalised feature the NCM sums give
            ridge_counts = residual.ridge.target_sum[missing]
            raw = residual.ridge.cross[:, missing].T / np.maximum(ridge_counts, 1.0)[:, None]
            ncm = residual.ncm_sums[missing] / residual.ncm_counts[missing][:, None]
            prototypes = np.where((ridge_counts > 0)[:, None], raw, ncm)
            features = np.concatenate([features, prototypes.astype(np.float32)])
            labels = np.concatenate([labels, missing.astype(labels.dtype)])
        return features, labels, rows.select(rows.holdout).features

    def adapter(self, version: Version) -> dict[str, np.ndarray] | None:
        return read_npz(self._verified(version, "adapter.npz")) if "adapter.npz" in version.files else None

    def residual(self, version: Version, parts: list[tuple[int, Samples]], dim: int) -> LearnerState:
        """The statistics ``version`` continues from beyond its stored training rows (``parts``, see the module
        docstring), with its alpha; for a 0.4 version, its full statistics less those rows."""
        num_classes = len(version.classes)
        if "state.npz" in version.files:
            full = LearnerState.from_arrays(read_npz(self._verified(version, "state.npz")))
            return full.with_rows(Samples.concat([part for _, part in parts], dim), sign=-1.0).grown(num_classes)
        if version.residual is None:
            residual = LearnerState.empty(dim, num_classes)
        else:
            residual = LearnerState.from_arrays(self._read_shared(version, residual_path(version.residual)))
            residual = residual.grown(num_classes)
        residual.alpha, residual.alpha_selected_at = version.alpha, version.alpha_selected_at
        return residual

    def state(self, version: Version, dim: int | None = None,
              parts: list[tuple[int, Samples]] | None = None) -> LearnerState:
        """Everything ``version`` has learned: its residual plus its stored training rows (``parts``, when the
        caller has loaded them), and its alpha."""
        dim = dim or self.head(version).feature_dim
        parts = self.segment_parts(version) if parts is None else parts
        rows = Samples.concat([part for _, part in parts], dim)
        return self.residual(version, parts, dim).with_rows(rows).grown(len(version.classes))

    def segment_parts(self, version: Version) -> list[tuple[int, Samples]]:
        """The version's segments in age order, each with its number."""
        return [(segment, self.segment_part(version, segment)) for segment in version.segments]

    def segment_part(self, version: Version, number: int) -> Samples:
        a = self._read_shared(version, _segment_path(number))
        return Samples(a["features"], a["labels"], a["holdout"], a["keys"])

    def _read_shared(self, version: Version, name: str) -> dict[str, np.ndarray]:
        """A segment or residual ``version`` lists, checked against the sha256 it recorded (0.4 recorded none)."""
        path = self.root / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"store file {path} of version {version.version} cannot be read ({exc.strerror}); "
                              f"roll back with edgetl-rt rollback {self.bundle} --to VERSION") from None
        digest = hashlib.sha256(data).hexdigest()
        if version.shared.get(name, digest) != digest:
            raise BundleError(f"store file {path} fails its sha256 check; roll back with edgetl-rt rollback "
                              f"{self.bundle} --to VERSION")
        self._digests[name] = digest
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
                return {k: loaded[k] for k in loaded.files}
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read {path}: {exc}") from exc

    def samples(self, version: Version, dim: int) -> Samples:
        return Samples.concat([part for _, part in self.segment_parts(version)], dim)

    # --- writing (under the lock) -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, timeout: float = 60.0) -> Iterator[None]:
        """Exclusive writer lock (flock on store/lock); waits up to ``timeout`` seconds, then fails clearly."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                        raise StoreBusyError(
                            f"another update is running on {self.bundle} (lock {self.root / 'lock'} held by pid "
                            f"{holder}); it was waited for {timeout:g} s. Retry later or raise --lock-timeout"
                        ) from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._clean()
            yield
        finally:
            self._written = {}          # what a transaction that failed before its commit wrote goes with the lock
            os.close(fd)   # releases the flock

    def _clean(self) -> None:
        """Remove what a killed writer left: uncommitted versions, temp files, unreferenced segments."""
        if not self.exists:
            return
        current = self.current_number()
        versions = self.root / "versions"
        for path in list(versions.iterdir()) if versions.is_dir() else []:
            if not path.name.isdigit() or int(path.name) > current:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        for path in self.root.iterdir():
            if path.name.startswith("."):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        self._drop_unreferenced_segments()

    def _drop_unreferenced_segments(self) -> None:
        """Delete segments and residuals no kept version lists."""
        versions = [self.version(n) for n in self.kept_numbers()]
        residuals = {v.residual for v in versions} | {v.fleet.get("known") for v in versions}
        for name, referenced in (("segments", {s for v in versions for s in v.segments}), ("residuals", residuals)):
            folder = self.root / name
            for path in list(folder.iterdir()) if folder.is_dir() else []:
                stem = path.name.split(".")[0]
                if not stem.isdigit() or int(stem) not in referenced:
                    path.unlink(missing_ok=True)

    def _write_numbered(self, folder_name: str, arrays: dict[str, np.ndarray]) -> int:
        folder = self.root / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        used = [int(p.name.split(".")[0]) for p in folder.iterdir() if p.name.split(".")[0].isdigit()]
        number = max(used, default=-1) + 1
        data = io.BytesIO()
        np.savez(data, **arrays)
        atomic_write_bytes(folder / f"{number:06d}.npz", data.getvalue())
        self._digests[f"{folder_name}/{number:06d}.npz"] = hashlib.sha256(data.getvalue()).hexdigest()
        return number

    def write_segment(self, samples: Samples) -> int:
        stored = Samples(samples.features.astype(np.float32), samples.labels.astype(np.int64),
                         samples.holdout.astype(bool), samples.keys.astype("<U64"))
        number = self._write_numbered("segments", {"features": stored.features, "labels": stored.labels,
                                                   "holdout": stored.holdout, "keys": stored.keys})
        self._written[number] = stored
        return number

    def write_residual(self, state: LearnerState) -> int:
        return self._write_numbered("residuals", state.arrays())

    def commit(self, version: Version, head: Head, adapter: dict[str, np.ndarray] | None = None,
               parts: list[tuple[int, Samples]] | None = None) -> Version:
        """Write ``version`` (its number is assigned here; its segments and residual already written) and switch
        CURRENT to it.  ``parts``: segments the caller has loaded (the parent's, as its transaction read them);
        with those this transaction wrote, the unknown scorer is refitted without reading them again."""
        version.version = (self.current_number() + 1) if self.exists else 0
        version.schema = STORE_SCHEMA
        residuals = [version.residual, version.fleet.get("known")]
        names = [_segment_path(n) for n in version.segments] + [residual_path(n) for n in residuals if n is not None]
        version.shared = {name: self._digests.get(name) or sha256_file(self.root / name) for name in names}
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        held = {number: part for number, part in parts or []} | self._written
        fitted, bank = self._unknown(version, head, held)
        self._written = {}
        with atomic_directory(self._folder(version.version)) as staging:
            head.save(staging / "head.npz")
            names = ["head.npz"]
            if adapter is not None:
                _save_npz(staging / "adapter.npz", adapter)
                names.append("adapter.npz")
            if fitted is not None:
                fitted[1].save(staging / UNKNOWN_FILE, bank=False)     # the bank: the version's rows
                names.append(UNKNOWN_FILE)
            version.files = {name: sha256_file(staging / name) for name in names}
            (staging / "version.json").write_text(json.dumps(asdict(version), indent=2))
        atomic_write_text(self.root / "CURRENT", f"{version.version}\n")   # the commit point
        if bank is not None:
            self._bank = (_bank_key(version), bank)
        self._prune()
        return version

    def unknown_settings(self, version: Version) -> UnknownSettings:
        """How ``version``'s unknown threshold is to be set: as the version says (an adapt or rollback copies its
        source's), else as the current version's was, else as the bundle's manifest says, else the defaults."""
        for source in (version.unknown, self.version().unknown if self.exists else None, self._manifest_unknown()):
            settings = UnknownSettings.from_dict(source)
            if settings is not None:
                return UnknownSettings(settings.method, None, settings.keep, 0, "val", settings.shrinkage,
                                       settings.k)
        return UnknownSettings()

    def _manifest_unknown(self) -> dict | None:
        try:
            document = json.loads((self.bundle / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return document.get("unknown") if isinstance(document, dict) else None

    def fit_unknown(self, version: Version, head: Head) -> tuple[UnknownSettings, UnknownScorer]:
        """The unknown-input scorer of ``version`` fitted on its stored training rows, and its threshold set on its
        stored held-out rows (every class's, new ones included: an update holds out a share of its samples).
        Raises :class:`~edgetl.runtime.errors.ConfigError` when there are too few rows."""
        settings = self.unknown_settings(version)
        features, labels, held_out = self.unknown_rows(version, head.feature_dim)
        return fit_unknown(settings, features, labels, held_out, head, self.projection_for(settings.method))

    def _unknown(self, version: Version, head: Head, held: dict[int, Samples]
                 ) -> tuple[tuple[UnknownSettings, UnknownScorer] | None, np.ndarray | None]:
        """:meth:`fit_unknown` for the version being committed (from the segments ``held`` where it can), recorded
        on ``version.unknown``, and the kNN bank's rows when the scorer has one.  Every commit comes through here
        (update, adapt, rollback, tune, and any later transaction), so the threshold moves with the head."""
        settings = self.unknown_settings(version)
        try:
            features, labels, held_out = self.unknown_rows(version, head.feature_dim, held)
            fitted = fit_unknown(settings, features, labels, held_out, head, self.projection_for(settings.method))
        except ConfigError as exc:        # too few samples for this method: the version has no scorer
            version.unknown = {"method": settings.method, "threshold": None, "keep": settings.keep,
                               "note": str(exc)}
            return None, None
        version.unknown = fitted[0].to_dict()
        banked = any(name in fitted[1].arrays for name in ("bank", "projected_bank"))
        return fitted, features if banked else None

    def _prune(self) -> None:
        numbers = self.kept_numbers()
        for number in numbers[:-self.keep_versions]:
            shutil.rmtree(self._folder(number), ignore_errors=True)
            self._parsed.pop(number, None)
        self._drop_unreferenced_segments()

    def arrange(self, version: Version, parts: list[tuple[int, Samples]],
                residual: Callable[[], LearnerState]) -> int:
        """Apply the per-class bounds to ``parts`` (the new version's segments, oldest first, already loaded),
        moving evicted training rows into the residual (``residual()`` reads it; a new one is written), then
        compact the segments;
        sets ``version.segments``, ``version.residual`` and the row counts, and returns the rows evicted."""
        labels = np.concatenate([p.labels for _, p in parts]) if parts else np.zeros(0, np.int64)
        holdout = np.concatenate([p.holdout for _, p in parts]) if parts else np.zeros(0, bool)
        keep = np.ones(len(labels), bool)
        for flag, bound in ((False, self.max_per_class), (True, self.max_holdout_per_class)):
            for label in np.unique(labels):
                rows = np.flatnonzero((labels == label) & (holdout == flag))
                if len(rows) > bound:                            # down to the low-water mark, oldest first
                    keep[rows[:len(rows) - (bound - bound // 10)]] = False
        version.n_train, version.n_holdout = int((keep & ~holdout).sum()), int((keep & holdout).sum())
        kept, evicted, offset = [], [], 0
        for number, part in parts:
            mask = keep[offset:offset + len(part)]
            offset += len(part)
            if not mask.all():
                evicted.append(part.select(~mask))
                part, number = part.select(mask), None
            if len(part):
                kept.append((number if number is not None else self.write_segment(part), part))
        if any(len(e.select(~e.holdout)) for e in evicted):
            dim = evicted[0].features.shape[1]
            version.residual = self.write_residual(residual().with_rows(Samples.concat(evicted, dim)))
        version.segments = self._compacted(kept)
        return int((~keep).sum())

    def _compacted(self, parts: list[tuple[int, Samples]]) -> list[int]:
        """Merge small segments: whenever the newest :data:`SEGMENT_FANOUT` or more segments are all of size tier
        ``t`` or below (tier: the power of eight of a segment's rows), for the smallest such ``t``, they become
        one segment.  Returns the segment numbers, oldest first."""
        def tier(part: Samples) -> int:
            return int(np.log(max(len(part), 1)) / np.log(SEGMENT_FANOUT) + 1e-9)
        parts = list(parts)
        while len(parts) >= SEGMENT_FANOUT:
            tiers = [tier(part) for _, part in parts]
            for t in sorted(set(tiers[-SEGMENT_FANOUT:])):
                run = 0
                while run < len(tiers) and tiers[-1 - run] <= t:
                    run += 1
                if run >= SEGMENT_FANOUT:
                    tail = [part for _, part in parts[-run:]]
                    merged = Samples.concat(tail, tail[0].features.shape[1])
                    parts[-run:] = [(self.write_segment(merged), merged)]
                    break
            else:
                break
        return [number for number, _ in parts]

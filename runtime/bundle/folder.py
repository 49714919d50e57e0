"""A bundle folder opened once: manifest read, the files this process uses verified once each, its feature store
and this machine's timings beside it.

Every device-side job (run, evaluate, update, adapt, bench, serve) takes a :class:`Bundle` (or a path, opened
into one), so a process reads the manifest once and checks each file's sha256 once however many steps use it.
``edgetl-rt unpack`` verifies every file when a bundle arrives; here only what is loaded is checked, unless the
device trusts signing keys (``--trusted-keys``, ``EDGETL_TRUSTED_KEYS``): then the bundle is checked whole when it
opens (its signature by a trusted key, every file's sha256, no file the manifest does not list), before anything
of it runs.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.preprocess import PreprocessConfig, preprocess_from_dict
from ..data.text import TextPreprocess
from ..errors import BundleError, ConfigError
from ..signing import TrustedKeys, trusted_keys
from .heads import Head, load_head
from .manifest import Artifact, BundleManifest, read_bundle_manifest, verify_file
from .signature import listed_files, verify_bundle
from .store import FeatureStore
from .timings import TimingRecord, read_timings
from .unknown import UNKNOWN_FILE, UnknownScorer, UnknownSettings, fit_unknown


@dataclass
class HeadState:
    """The head that answers now: its classes, the feature adapter (``edgetl-rt adapt``) and its store version
    (None: the head the bundle was exported with)."""

    head: Head
    labels: list[str]
    adapter: dict[str, np.ndarray] | None
    version: int | None
    unknown: UnknownState | None = None


@dataclass
class UnknownState:
    """The unknown-input scorer of the head that answers and its threshold (None: a bundle or store version made
    before there were any, or with too few samples to fit one)."""

    scorer: UnknownScorer
    settings: UnknownSettings

    @property
    def threshold(self) -> float:
        return float(self.settings.threshold)

    def scores(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return self.scorer.scores(features, logits)


class Bundle:
    """An opened bundle.  ``verify=False`` skips the per-file sha256 checks (the caller has just verified
    everything).  ``trusted``: the public keys its signature must be made with (default: those configured by
    ``--trusted-keys`` or ``EDGETL_TRUSTED_KEYS``; False: none); with keys, the bundle is verified whole here."""

    def __init__(self, path: str | Path, verify: bool = True, trusted: TrustedKeys | str | Path | bool | None = None):
        self.path = Path(path)
        if self.path.is_file() and self.path.name.endswith((".tar.gz", ".tgz")):
            raise BundleError(f"{path} is a packed bundle; unpack it first: edgetl-rt unpack {path} DEST")
        self.trusted = trusted_keys(trusted)
        self._verified: set[str] = set()
        if self.trusted is not None:
            self.verify_whole()
        self.manifest: BundleManifest = read_bundle_manifest(self.path, verify=False)
        self.verify = verify
        self.store = FeatureStore(self.path)

    @classmethod
    def open(cls, bundle: str | Path | Bundle, verify: bool = True) -> Bundle:
        """``bundle`` itself when it is open already, else the folder opened."""
        return bundle if isinstance(bundle, Bundle) else cls(bundle, verify=verify)

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r})"

    @property
    def feature_dim(self) -> int:
        return self.manifest.feature_dim

    @functools.cached_property
    def preprocess(self) -> PreprocessConfig | TextPreprocess:
        """How an input becomes the backbone's tensor; a text model's tokenizer is read from the bundle, its sha256
        checked against the manifest's."""
        config = preprocess_from_dict(self.manifest.preprocess, self.path)
        if isinstance(config, TextPreprocess):
            self.file({"file": config.tokenizer, "sha256": config.tokenizer_sha256})
        return config

    def verify_whole(self) -> None:
        """Check the bundle whole (:func:`~edgetl.runtime.bundle.signature.verify_bundle`: its signature, which
        trusted keys require, every listed file, no unlisted one), raising the first problem as one line; every
        file then counts as checked for this process."""
        report = verify_bundle(self.path, self.trusted if self.trusted is not None else False)
        report.raise_for_problems()
        self._verified.update(f.file for f in report.files)

    def verify_listed(self) -> None:
        """Check the sha256 of every file the manifest lists, each once per process (``evaluate`` and ``serve`` do
        at load, so a bundle altered where their job does not read it is refused before it runs: 73 ms for a
        37 MB Lite0 bundle on a shared 2-core VM).  Files the manifest does not list and the signature:
        :meth:`verify_whole`."""
        for name, (sha256, _size) in listed_files(self.manifest).items():
            self.file({"file": name, "sha256": sha256})

    def verify_artifact(self, artifact: Artifact) -> None:
        """sha256 of the artifact's file and companions (OpenVINO's .bin), each once per process."""
        for entry in ({"file": artifact.file, "sha256": artifact.sha256}, *artifact.companions):
            self.file(entry)

    def file(self, entry: dict) -> Path:
        """The path of a manifest file entry (the head, the learning data, the check set), its sha256 checked
        once per process; a tampered file raises :class:`BundleError`."""
        if self.verify and entry["file"] not in self._verified:
            verify_file(self.path, entry["file"], entry["sha256"])
            self._verified.add(entry["file"])
        return self.path / entry["file"]

    @functools.cached_property
    def exported_head(self) -> Head:
        """The head the bundle was exported with, verified and checked against the manifest's classes and size
        (read once: measuring and the store's first version both use it)."""
        head_file = self.manifest.head
        head = load_head(self.file(head_file))
        if head.num_classes != len(self.manifest.labels) or head.feature_dim != self.feature_dim:
            raise BundleError(
                f"head {head_file['file']} has shape ({head.num_classes} classes, {head.feature_dim} features) "
                f"but the manifest says ({len(self.manifest.labels)}, {self.feature_dim})"
            )
        return head

    def current_head(self, use_store: bool = True) -> HeadState:
        """The store's current version when the device has learned (checked by the store), else the exported one."""
        if use_store and self.store.exists:
            version = self.store.version()
            head = self.store.head(version)
            if head.num_classes != len(version.classes) or head.feature_dim != self.feature_dim:
                raise BundleError(f"store version {version.version} has a head of the wrong shape; roll back")
            unknown = None
            settings = UnknownSettings.from_dict(version.unknown)
            if UNKNOWN_FILE in version.files and settings is not None and settings.threshold is not None:
                unknown = UnknownState(self.store.unknown_scorer(version), settings)
            elif not version.unknown:        # a version committed before there were scorers: fitted here
                with contextlib.suppress(ConfigError):
                    fitted, scorer = self.store.fit_unknown(version, head)
                    unknown = UnknownState(scorer, fitted)
            return HeadState(head, list(version.classes), self.store.adapter(version), version.version, unknown)
        return HeadState(self.exported_head, list(self.manifest.labels), None, None, self.exported_unknown)

    @functools.cached_property
    def exported_unknown(self) -> UnknownState | None:
        """The unknown-input scorer and threshold the bundle was exported with.  A bundle without a threshold (one
        exported before there were any, or a fleet merge, which carries the base's settings and projection but no
        rows for them) gets one fitted here from the learning data it ships, as the store's first commit would;
        None when it ships none or too few rows."""
        settings = UnknownSettings.from_dict(self.manifest.unknown)
        if settings is not None and settings.threshold is not None:
            return UnknownState(UnknownScorer.load(self.file(self.manifest.unknown)), settings)
        if not self.manifest.learning:
            return None
        settings = UnknownSettings() if settings is None else \
            UnknownSettings(settings.method, keep=settings.keep, shrinkage=settings.shrinkage, k=settings.k)
        with np.load(self.file(self.manifest.learning), allow_pickle=False) as data:
            features, labels, holdout = data["features"], data["labels"], data["holdout"]
        try:
            fitted, scorer = fit_unknown(settings, features[~holdout], labels[~holdout], features[holdout],
                                         self.exported_head, self.store.projection_for(settings.method))
        except ConfigError:
            return None
        return UnknownState(scorer, fitted)

    def timings(self) -> TimingRecord | None:
        """What this machine measured of the bundle's artifacts (read afresh: measuring writes it)."""
        return read_timings(self.path)

"""``edgetl fleet merge``: devices' contributions summed onto their base bundle, written as a new bundle.

The merge streams: it reads one contribution at a time (a local file, a folder of them, or any fsspec URL such as
``s3://bucket/prefix/``), checks it (:func:`~edgetl.runtime.bundle.contribution.verify_contribution`: schema,
shapes, sha256), refuses it by name when it comes from another base bundle, has another feature dimension or
duplicates one already read, and adds its statistics to one running sum, so memory stays that of one contribution
plus the sum whatever their number.  Nothing is written until every contribution passed (``skip_bad``: a bad one
is left out and reported instead).  The regularisation is searched on the merged statistics as a device searches
it (the grid's best on held-out rows: the bundle's shipped ones and those of contributions made ``--with-rows``;
the grid's unit without any), and the head is solved once: exactly the centralized fit over every sample covered.

The new bundle is the base's files (the fused artifacts left out: they bake in the old head; the check set left
out: its reference logits are the old head's), a new head, ``learning/statistics.npz`` (the merged ridge and NCM
statistics, so a device's store starts from them and keeps learning) and the provenance in the manifest's
``fleet`` block.  It is written to a temporary folder and renamed.
"""

from __future__ import annotations

import resource
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgetl.runtime.bundle.contribution import bundle_identity, verify_contribution
from edgetl.runtime.bundle.manifest import FileEntry
from edgetl.runtime.bundle.signature import sign_bundle
from edgetl.runtime.bundle.store import Samples
from edgetl.runtime.bundle.unknown import UNKNOWN_FILE
from edgetl.runtime.deps import require
from edgetl.runtime.documents import utc_now
from edgetl.runtime.errors import BundleError, ConfigError, DataError, MissingDependencyError, SignatureError
from edgetl.runtime.fsutil import atomic_directory
from edgetl.runtime.learning.fleet import (
    MERGE_HEADS,
    add_into,
    contribution_state,
    fit_head,
    open_checked_bundle,
    select_alpha,
)
from edgetl.runtime.learning.reports import Report
from edgetl.runtime.learning.versions import bundle_state
from edgetl.runtime.signing import SIGNATURE_SUFFIX, load_signing_key

STATISTICS_FILE = "learning/statistics.npz"


@dataclass
class MergeReport(Report):
    """``edgetl fleet merge --json``."""

    bundle: str
    out: str
    base: str
    merged_id: str
    head: str
    alpha: float | None
    alpha_holdout_n: int
    classes: list[str]
    new_classes: list[str]
    devices: list[str]
    contributions: list[dict]
    samples_per_class: dict[str, int]
    samples: int
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def iter_sources(sources: list[str]) -> Iterator[tuple[str, Callable[[], bytes], Callable[[], bytes | None]]]:
    """(name, read, read_signature) for every contribution named: a file, the ``*.npz`` of a folder (sorted), or
    an fsspec URL of either; ``read()`` returns the bytes, so one contribution is in memory at a time, and
    ``read_signature()`` those of its detached ``.sig`` beside it, or None."""
    for source in sources:
        if _is_url(source):
            fsspec = require("fsspec", "fleet", "reading contributions from a URL")
            protocol = source.split("://", 1)[0]
            try:
                fs, path = fsspec.core.url_to_fs(source)
            except ImportError as exc:          # fsspec names the package its protocol needs (s3fs for s3://)
                if protocol in ("s3", "s3a"):
                    raise MissingDependencyError("s3fs", "fleet", f"reading contributions from {source}") from None
                raise ConfigError(f"fsspec cannot read {protocol}:// here: {exc}") from None
            try:
                names = sorted(p for p in fs.find(path) if p.endswith(".npz")) if fs.isdir(path) else [path]
            except OSError as exc:
                raise DataError(f"cannot list {source}: {exc}") from None
            if not names:
                raise DataError(f"{source} holds no .npz contribution")
            for name in names:
                yield (f"{protocol}://{name}", (lambda fs=fs, name=name: fs.cat_file(name)),
                       (lambda fs=fs, name=name: fs.cat_file(name + SIGNATURE_SUFFIX)
                        if fs.exists(name + SIGNATURE_SUFFIX) else None))
            continue
        path = Path(source.removeprefix("file://"))
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.npz") if p.is_file())
            if not files:
                raise DataError(f"{source} holds no .npz contribution")
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"contribution {source} does not exist")
        for file in files:
            signature = file.with_name(file.name + SIGNATURE_SUFFIX)
            yield str(file), file.read_bytes, (lambda s=signature: s.read_bytes() if s.is_file() else None)


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            return int(status.read().split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def merge_bundles(bundle: str | Path, sources: list[str], out: str | Path, head: str | None = None,
                  skip_bad: bool = False, overwrite: bool = False, sign_key: str | Path | None = None) -> MergeReport:
    """Merge the contributions ``sources`` onto ``bundle`` and write the merged bundle ``out`` (see the module
    docstring); a refused contribution raises :class:`BundleError` (:class:`SignatureError` for its signature)
    and nothing is written.  With trusted keys configured (``--trusted-keys``, ``EDGETL_TRUSTED_KEYS``) the base
    bundle and every contribution must be signed by one of them; ``sign_key`` signs the merged bundle before it
    is renamed into place."""
    t0 = time.perf_counter()
    signer = load_signing_key(sign_key) if sign_key is not None else None
    base = open_checked_bundle(bundle)
    manifest = base.manifest
    kind = head or manifest.head["kind"]
    if kind not in MERGE_HEADS:
        raise ConfigError(f"the base bundle's head is {kind}, which summed statistics cannot merge; pass --head "
                          "ridge or --head ncm to refit one from the ridge and NCM statistics every device keeps",
                          option="head")
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another path, or overwrite it", remedy="overwrite")
    base_id, dim = bundle_identity(manifest), manifest.feature_dim
    state, seed = bundle_state(base)
    classes = list(manifest.labels)
    holdout_parts = [seed.select(seed.holdout)]
    seen: dict[str, str] = {}
    provenance, skipped, counted = [], [], False
    for name, read, read_signature in iter_sources(sources):
        try:
            try:
                data, signature = read(), read_signature()
            except OSError as exc:
                raise BundleError(f"contribution {name} cannot be read ({exc})") from None
            contribution = verify_contribution(data, name, signature)
            header = contribution.header
            if header["base"] != base_id:
                raise BundleError(f"contribution {name} was made on another base bundle ({header['base'][:12]}...; "
                                  f"{bundle} is {base_id[:12]}...)")
            if contribution.dim != dim:
                raise BundleError(f"contribution {name} has {contribution.dim} features; {bundle} has {dim}")
            for key in (contribution.id, header["payload_sha256"]):
                if key in seen:
                    raise BundleError(f"contribution {name} duplicates {seen[key]} (id {contribution.id})")
        except (BundleError, SignatureError) as exc:
            if not skip_bad:
                raise
            skipped.append({"source": name, "reason": str(exc)})
            continue
        seen[contribution.id] = seen[header["payload_sha256"]] = name
        classes += [c for c in contribution.classes if c not in classes]
        state = state.grown(len(classes))
        add_into(state, contribution_state(contribution, classes))
        rows = contribution.arrays
        if "rows_holdout" in rows and rows["rows_holdout"].any():
            mask = rows["rows_holdout"]
            position = np.array([classes.index(c) for c in contribution.classes], dtype=np.int64)
            holdout_parts.append(Samples(rows["rows_features"][mask], position[rows["rows_labels"][mask]],
                                         mask[mask], rows["rows_keys"][mask]))
        provenance.append({"id": contribution.id, "device": header["device"], "source": name,
                           "versions": header["versions"], "created": header["created"],
                           "samples": header.get("samples", {}), "sha256": contribution.file_sha256})
        counted = True
        del contribution, data
    if not counted:
        raise DataError("no contribution to merge" + (f" ({len(skipped)} skipped)" if skipped else ""))
    holdout = Samples.concat(holdout_parts, dim)
    alpha = select_alpha(state, holdout) if kind == "ridge" else None
    merged_head = fit_head(state, kind, alpha if alpha is not None else 1.0)
    samples = {c: int(round(n)) for c, n in zip(classes, state.ridge.target_sum)}
    devices = sorted({p["device"] for p in provenance})
    fleet = {"base": base_id, "merged": utc_now(), "head": kind, "devices": devices, "contributions": provenance,
             "samples_per_class": samples, "skipped": skipped}
    if alpha is not None:
        fleet["alpha"] = alpha
    merged_manifest = _write_bundle(base, Path(out), merged_head, state, classes, fleet, overwrite, signer)
    new = [c for c in classes if c not in manifest.labels]
    return MergeReport(bundle=str(bundle), out=str(out), base=base_id, merged_id=bundle_identity(merged_manifest),
                       head=kind, alpha=alpha, alpha_holdout_n=len(holdout), classes=classes, new_classes=new,
                       devices=devices, contributions=provenance, samples_per_class=samples,
                       samples=int(state.ridge.count), skipped=skipped, seconds=time.perf_counter() - t0,
                       peak_rss_mb=_peak_rss_mb())


def _carried_unknown(base, staging: Path) -> dict:
    """The base's unknown-input settings (method, keep, shrinkage, k, how the method was chosen) and its projection,
    in a small ``unknown.npz``: its threshold and kNN banks belong to the old head's classes and rows, so they are
    left out; a device's pull refits them on its commit, and the merged bundle opened as it is fits them from the
    learning data it ships, both with these settings and this projection."""
    block = base.manifest.unknown
    if not block:
        return {}
    projection = base.store.projection          # the base's unknown.npz, checked against its manifest
    kept = {} if projection is None else dict(zip(("projection_w", "projection_b"), projection))
    with open(staging / UNKNOWN_FILE, "wb") as handle:
        np.savez(handle, method=np.array(block["method"]), **kept)
    settings = {k: block[k] for k in ("method", "keep", "shrinkage", "k", "chosen_by") if k in block}
    return {**settings, **FileEntry.of(staging, UNKNOWN_FILE).__dict__}


def _write_bundle(base, out: Path, head, state, classes: list[str], fleet: dict, overwrite: bool, signer=None):
    manifest = base.manifest
    artifacts = [a for a in manifest.artifacts if a.role != "fused"]
    with atomic_directory(out, overwrite=overwrite) as staging:
        names = [a.file for a in artifacts] + [c["file"] for a in artifacts for c in a.companions]
        if manifest.learning:
            names.append(manifest.learning["file"])
        if manifest.modality == "text":
            names.append(manifest.preprocess["tokenizer"])
        for name in names:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base.path / name, staging / name)
        head_name = manifest.head["file"]
        (staging / head_name).parent.mkdir(parents=True, exist_ok=True)
        head.save(staging / head_name)
        (staging / STATISTICS_FILE).parent.mkdir(parents=True, exist_ok=True)
        with open(staging / STATISTICS_FILE, "wb") as handle:
            np.savez(handle, **state.arrays())
        fleet = {**fleet, "statistics": FileEntry.of(staging, STATISTICS_FILE).__dict__}
        entry = FileEntry.of(staging, head_name)
        unknown = _carried_unknown(base, staging)
        merged = replace(manifest, created=utc_now(), labels=list(classes), artifacts=artifacts, check={},
                         unknown=unknown,
                         head={"kind": head.kind, "file": head_name, "sha256": entry.sha256, "size": entry.size},
                         fleet=fleet)
        merged.write(staging)
        if signer is not None:
            sign_bundle(staging, signer)
    return merged

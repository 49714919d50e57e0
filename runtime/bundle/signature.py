"""A bundle checked whole without running it, and its signature: ``manifest.sig`` beside ``manifest.json``.

Each job checks the files it reads, so an altered ``check.npz`` or ``model.onnx`` passes a job that does not read
them; :func:`verify_bundle` checks them all before a bundle is deployed (``edgetl-rt verify``): every file the
manifest lists (present, its sha256), every file it does not list (the device's own state aside), and the
signature.  The signature covers ``manifest.json`` only, which carries every other file's sha256, so checking it
and then the files checks everything the signer wrote.  Where keys are trusted (:mod:`edgetl.runtime.signing`)
:class:`~edgetl.runtime.bundle.folder.Bundle` runs this check whole when it opens a bundle.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BundleError, ConfigError, SignatureError
from ..fsutil import sha256_file
from ..signing import (
    SignatureCheck,
    SigningKey,
    TrustedKeys,
    load_signing_key,
    read_signature,
    sign_file,
    trusted_keys,
    verify_file_signature,
)
from .manifest import MANIFEST_NAME, BundleManifest, read_bundle_manifest
from .store import STORE_FOLDER
from .timings import LOCAL_STATE

#: The bundle's signature: the detached signature of its manifest.
BUNDLE_SIGNATURE = "manifest.sig"
#: What a device writes into its bundle and no manifest lists: its feature store, its timings and compiled-model
#: cache, TensorRT's timing cache (``edgetl-rt build-engine``).  Each job that reads them checks them.
DEVICE_STATE = (STORE_FOLDER, *LOCAL_STATE)
DEVICE_STATE_FILES = ("engines/timing.cache",)


@dataclass
class FileStatus:
    """One file of the bundle: ``ok``, ``modified`` (sha256 or size differs), ``missing``, or ``unlisted``."""

    file: str
    status: str
    detail: str = ""


@dataclass
class BundleVerification:
    """What :func:`verify_bundle` found: every file's status, the signature's and each problem as one line."""

    bundle: str
    files: list[FileStatus] = field(default_factory=list)
    signature: SignatureCheck | None = None
    trusted_keys: list[str] | None = None
    signature_problem: str | None = None
    manifest_problem: str | None = None

    @property
    def bad_files(self) -> list[FileStatus]:
        return [f for f in self.files if f.status != "ok"]

    @property
    def problems(self) -> list[str]:
        """One line each: the signature's, the manifest's, then each bad file's."""
        lines = [p for p in (self.signature_problem, self.manifest_problem) if p]
        return lines + [f"{f.file}: {f.status}" + (f" ({f.detail})" if f.detail else "") for f in self.bad_files]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"bundle": self.bundle, "ok": self.ok, "problems": self.problems,
                "signature": self.signature.to_json() if self.signature else None,
                "trusted_keys": self.trusted_keys, "files": [asdict(f) for f in self.files]}

    def raise_for_problems(self) -> None:
        """Raise the first problem as one line: :class:`SignatureError` for the signature (exit 13), else
        :class:`BundleError` (exit 3); how many more there are is said after it."""
        problems = self.problems
        if not problems:
            return
        more = f" (and {len(problems) - 1} more problem(s): edgetl-rt verify {self.bundle})" if len(problems) > 1 \
            else ""
        if self.signature_problem:
            raise SignatureError(self.signature_problem + more)
        raise BundleError(f"bundle {self.bundle}: {problems[0]}{more}")


def listed_files(manifest: BundleManifest) -> dict[str, tuple[str, int | None]]:
    """Every file the manifest lists: name -> (sha256, size; None where the manifest records no size).

    Any block with a ``file`` and its ``sha256`` counts, wherever it sits (the head, the artifacts and their
    companions, the learning data, the check set, and blocks later writers add), and a text model's tokenizer."""
    files: dict[str, tuple[str, int | None]] = {}

    def walk(value) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("file"), str) and isinstance(value.get("sha256"), str):
                size = value.get("size")
                files.setdefault(value["file"], (value["sha256"], size if isinstance(size, int) else None))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(asdict(manifest))
    if manifest.modality == "text":
        files[manifest.preprocess["tokenizer"]] = (manifest.preprocess["tokenizer_sha256"], None)
    return files


def _check_listed(folder: Path, name: str, sha256: str, size: int | None) -> FileStatus:
    path = (folder / name).resolve()
    if folder.resolve() not in path.parents:
        return FileStatus(name, "modified", "its name points outside the bundle")
    if not path.is_file():
        return FileStatus(name, "missing")
    actual_size = path.stat().st_size
    actual = sha256_file(path)
    if actual != sha256 or (size is not None and actual_size != size):
        return FileStatus(name, "modified", f"sha256 {actual[:12]}..., the manifest says {sha256[:12]}...")
    return FileStatus(name, "ok")


def _unlisted(folder: Path, listed: set[str]) -> list[FileStatus]:
    """Files the manifest does not list, the device's own state aside; a stray signature names its key."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if (path.is_dir() or relative in listed or relative in (MANIFEST_NAME, BUNDLE_SIGNATURE)
                or relative.split("/")[0] in DEVICE_STATE or relative in DEVICE_STATE_FILES):
            continue
        detail = "the manifest does not list it"
        if path.name.endswith(".sig"):
            try:
                signers = ", ".join(e.key_id for e in read_signature(path).signatures)
                detail = f"a signature file the manifest does not list, by key {signers}"
            except SignatureError:
                detail = "a signature file the manifest does not list, not readable as one"
        found.append(FileStatus(relative, "unlisted", detail))
    return found


def _claimed(path: Path, sig_path: Path) -> SignatureCheck:
    """What a signature that failed claims: the key ids it names (none of them holds or is trusted)."""
    check = SignatureCheck(str(path), str(sig_path), signed=sig_path.is_file())
    if check.signed:
        with contextlib.suppress(SignatureError):
            check.claimed_key_ids = [e.key_id for e in read_signature(sig_path).signatures]
    return check


def verify_bundle(folder: str | Path, trusted: TrustedKeys | str | Path | bool | None = None) -> BundleVerification:
    """Check a bundle whole without running it: the signature (required where keys are trusted: ``trusted`` or
    those configured; False: none, whatever is configured), every listed file's presence and sha256, and files the
    manifest does not list.  Nothing is raised for what it finds (see :meth:`BundleVerification.raise_for_problems`);
    a folder that is no bundle is a :class:`BundleError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} does not exist or is not a folder")
    trust = trusted_keys(trusted)
    report = BundleVerification(str(folder), trusted_keys=sorted(trust.keys) if trust else None)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{folder} is not a bundle: it has no {MANIFEST_NAME}")
    try:
        report.signature = verify_file_signature(manifest_path, trust, folder / BUNDLE_SIGNATURE)
    except SignatureError as exc:
        report.signature_problem = str(exc)
        report.signature = _claimed(manifest_path, folder / BUNDLE_SIGNATURE)
    try:
        manifest = read_bundle_manifest(folder, verify=False)
    except BundleError as exc:
        report.manifest_problem = str(exc)
        return report
    listed = listed_files(manifest)
    report.files = [_check_listed(folder, name, sha256, size) for name, (sha256, size) in listed.items()]
    report.files += _unlisted(folder, set(listed))
    return report


def refuse_signed_rewrite(folder: str | Path, why: str) -> None:
    """Refuse, under trusted keys, a job that rewrites a signed bundle's manifest: the device holds no private key,
    so the bundle would be refused by every later command.  The bundle is checked whole first."""
    trusted = trusted_keys()
    if trusted is None:
        return
    verify_bundle(folder, trusted).raise_for_problems()
    raise SignatureError(f"{why}, which would break the signature of {folder} ({BUNDLE_SIGNATURE}) on a device that "
                         f"trusts keys {trusted.describe()}; build it where the bundle is signed, then sign again")


def sign_bundle(folder: str | Path, key: SigningKey | str | Path) -> Path:
    """Sign a bundle with ``key``: ``manifest.sig``, the signature of ``manifest.json``.  The bundle is verified
    first (a damaged bundle is never signed) and the key must not lie inside it."""
    folder = Path(folder)
    if not isinstance(key, SigningKey):
        if Path(key).resolve().is_relative_to(folder.resolve()):
            raise ConfigError(f"key file {key} lies inside the bundle {folder}; keep keys out of what they sign",
                              option="key")
        key = load_signing_key(key)
    report = verify_bundle(folder, trusted=False)
    report.signature_problem = None          # an old signature is replaced
    report.raise_for_problems()
    return sign_file(folder / MANIFEST_NAME, key, folder / BUNDLE_SIGNATURE)

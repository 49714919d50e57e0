"""Unpack a bundle archive (``.tar.gz``, written by ``edgetl pack`` / ``edgetl export --pack``) safely.

Unpacking accepts regular files and folders only: absolute names, ``..``
components, symbolic and hard links, devices and FIFOs are refused before
anything is written.  Files are copied out member by member (no
``extractall``, so no permissions, owners or times from the archive) into a
temporary folder, the manifest and every sha256 are verified there, and
only then is the folder renamed into place; where the device trusts signing keys, the bundle's signature is
checked there too.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from ..bundle.manifest import MANIFEST_NAME, read_bundle_manifest
from ..bundle.signature import verify_bundle
from ..bundle.store import STORE_FOLDER
from ..bundle.timings import LOCAL_STATE
from ..errors import BundleError, SignatureError
from ..fsutil import atomic_directory
from ..signing import trusted_keys

#: Refuse archives that would expand beyond this (a "tar bomb"); bundles are tens of MB.
MAX_UNPACKED_BYTES = 8 << 30


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or (path.parts and ":" in path.parts[0]):
        raise BundleError(f"archive member {name!r} has an absolute path; refusing to unpack")
    if ".." in path.parts or "\\" in name:
        raise BundleError(f"archive member {name!r} points outside the bundle folder; refusing to unpack")
    return path


def check_members(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """Every member must be a plain file or folder with a name inside the destination."""
    total = 0
    for member in members:
        _safe_name(member.name)
        if member.issym() or member.islnk():
            raise BundleError(f"archive member {member.name!r} is a link (to {member.linkname!r}); "
                              "bundles hold regular files only; refusing to unpack")
        if not (member.isfile() or member.isdir()):
            raise BundleError(f"archive member {member.name!r} is not a regular file or folder; refusing to unpack")
        total += member.size
        if total > MAX_UNPACKED_BYTES:
            raise BundleError(f"archive expands beyond {MAX_UNPACKED_BYTES >> 30} GiB; refusing to unpack")
    return members


def unpack_bundle(archive: str | Path, dest: str | Path, overwrite: bool = False) -> Path:
    """Unpack ``archive`` into the folder ``dest``; nothing is left behind if any check fails."""
    archive = Path(archive)
    try:
        tar = tarfile.open(archive, mode="r:*")
    except FileNotFoundError as exc:
        raise BundleError(f"archive {archive} does not exist") from exc
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{archive} is not a readable tar archive ({exc})") from exc
    with tar:
        try:
            members = check_members(tar.getmembers())
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BundleError(f"{archive} is damaged ({exc})") from exc
        names = {PurePosixPath(m.name) for m in members}
        prefix = _common_folder(names)
        trust = trusted_keys()
        if trust is not None and any(_top(name, prefix) == STORE_FOLDER for name in names):
            raise SignatureError(f"archive {archive} carries a device's store ({STORE_FOLDER}/), which no signature "
                                 "covers and which would answer before the signed head; this device trusts keys "
                                 f"{trust.describe()}: unpack an archive without it")
        with atomic_directory(dest, overwrite=overwrite) as staging:
            for member in members:
                relative = PurePosixPath(member.name)
                if prefix is not None:
                    relative = relative.relative_to(prefix)
                if not relative.parts or relative == PurePosixPath(".") or relative.parts[0] in LOCAL_STATE:
                    continue   # another machine's timings or compiled models are never installed
                target = staging.joinpath(*relative.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "xb") as out:
                    while block := source.read(1 << 20):
                        out.write(block)
            read_bundle_manifest(staging)
            if trust is not None:      # refused before anything is renamed into place
                try:
                    verify_bundle(staging, trust).raise_for_problems()
                except (SignatureError, BundleError) as exc:
                    raise type(exc)(f"archive {archive}: {str(exc).replace(f'{staging}/', '')}") from exc
    return Path(dest)


def _top(name: PurePosixPath, prefix: PurePosixPath | None) -> str | None:
    """The first folder of a member's path inside the bundle (below the archive's one top folder, if any)."""
    if prefix is not None:
        if name == prefix:
            return None
        name = name.relative_to(prefix)
    return name.parts[0] if name.parts else None


def _common_folder(names: set[PurePosixPath]) -> PurePosixPath | None:
    """Archives made by ``tar czf b.tar.gz bundle/`` have one top folder; strip it."""
    if PurePosixPath(MANIFEST_NAME) in names:
        return None
    tops = {n.parts[0] for n in names if n.parts and n.parts[0] != "."}
    if len(tops) == 1:
        top = PurePosixPath(tops.pop())
        if top / MANIFEST_NAME in names:
            return top
    raise BundleError(f"archive has no {MANIFEST_NAME} at its top level; it is not an edgetl bundle")

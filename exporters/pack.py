"""Pack a bundle as one ``.tar.gz`` to ship to devices (``edgetl pack``, ``edgetl export --pack``).

Members are the bundle's regular files with flat, sorted names and no owners; the device side unpacks
them safely (:mod:`edgetl.runtime.tools.unpack`).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from edgetl.runtime.bundle.manifest import read_bundle_manifest
from edgetl.runtime.bundle.timings import LOCAL_STATE
from edgetl.runtime.errors import BundleError, ConfigError


def pack_bundle(bundle: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``bundle`` (verified first) as a gzip tarball with flat, sorted member names.

    This machine's local state (its timings and compiled-model cache) stays behind: it describes this
    machine, not the bundle."""
    bundle = Path(bundle)
    read_bundle_manifest(bundle)
    out = Path(out) if out else bundle.with_name(bundle.name + ".tar.gz")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another path, or overwrite it", remedy="overwrite")
    files = []
    for path in sorted(bundle.rglob("*")):
        if path.relative_to(bundle).parts[0] in LOCAL_STATE:
            continue
        if path.is_symlink():
            raise BundleError(f"{path} is a symbolic link; bundles hold regular files only")
        if path.is_file():
            files.append(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent if out.parent.exists() else None)
    try:
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            for path in files:
                info = tar.gettarinfo(str(path), arcname=path.relative_to(bundle).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            tar.close()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out

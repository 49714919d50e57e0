"""``edgetl-rt rollback``: an earlier head version made current again, as a new version (history stays linear)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..bundle.store import FeatureStore, Version
from ..documents import utc_now
from ..errors import ConfigError
from .settings import UpdateSettings
from .versions import continue_04


def rollback_bundle(bundle: str | Path, to: int | None = None,
                    lock_timeout: float = UpdateSettings.lock_timeout) -> Version:
    """Make an earlier version current again, as a new version (history stays linear and auditable)."""
    store = FeatureStore(bundle)
    with store.locked(lock_timeout):
        current = store.version()
        target_number = current.parent if to is None else to
        if target_number is None:
            raise ConfigError("the current version has no parent to roll back to; name the version to return to",
                              option="to")
        if target_number == current.version:
            raise ConfigError(f"version {target_number} is already the current one")
        target = store.version(target_number)
        head = store.head(target)
        version = Version(**{**asdict(target), "version": -1, "parent": current.version, "action": "rollback",
                             "note": f"rollback to version {target.version}", "files": {}, "created": utc_now()})
        continue_04(store, version, target, None, head.feature_dim)
        return store.commit(version, head, store.adapter(target))

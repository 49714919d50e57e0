"""How an on-device update runs: the one place its defaults are declared.

``edgetl-rt update`` and ``adapt`` take their option defaults from :class:`UpdateSettings`, ``serve``'s update route
builds its settings with :meth:`UpdateSettings.for_service` and the Python API (``update_bundle``, ``Learner``,
``adapt_bundle``, ``tune_alpha``, ``rollback_bundle``) defaults to them, so a default changes in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bundle.store import DEFAULT_KEEP_VERSIONS, DEFAULT_MAX_HOLDOUT_PER_CLASS, DEFAULT_MAX_PER_CLASS, FeatureStore
from ..data.preprocess import DEFAULT_MAX_PIXELS
from ..errors import ConfigError
from .learners import LEARNERS

METHODS = tuple(LEARNERS)
#: ``edgetl-rt adapt --method`` (besides auto): see :mod:`.adapters`.
ADAPT_METHODS = ("normalise", "coral", "prototypes", "normalise+prototypes")
#: How long a service's update waits for the store's lock: its client holds a connection open meanwhile (a command
#: waits :attr:`UpdateSettings.lock_timeout`).
SERVICE_LOCK_TIMEOUT = 10.0
#: How long a service's background regularisation search waits for the store: briefly, as it is only worth running
#: when nothing else holds the store (it is due again after the next update).
BACKGROUND_LOCK_TIMEOUT = 5.0


@dataclass
class UpdateSettings:
    method: str = "ridge"
    holdout_fraction: float = 0.2           # share of new samples kept out of training, to measure accuracy
    max_accuracy_drop: float = 2.0          # points on the store's earlier held-out samples
    force: bool = False
    lock_timeout: float = 60.0
    batch_size: int = 16
    skip_bad: bool = False
    reselect_alpha: bool = False
    alpha_search_min: int = 32          # new training samples an update needs to run a due alpha search
    max_per_class: int = DEFAULT_MAX_PER_CLASS          # stored training rows per class (oldest evicted first)
    max_holdout_per_class: int = DEFAULT_MAX_HOLDOUT_PER_CLASS
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    max_pixels: int = DEFAULT_MAX_PIXELS                 # larger images are refused (likely decompression bombs)

    @classmethod
    def for_service(cls, **values) -> UpdateSettings:
        """A service request's settings: ``values`` over these defaults, the lock waited for at most
        :data:`SERVICE_LOCK_TIMEOUT` unless the request says otherwise."""
        return cls(**{"lock_timeout": SERVICE_LOCK_TIMEOUT, **values})

    def store(self, bundle) -> FeatureStore:
        """The bundle's store, with these bounds."""
        return bundle.store.configure(self.keep_versions, self.max_per_class, self.max_holdout_per_class)

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown update method '{self.method}' (valid: {', '.join(METHODS)})")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"must lie in [0, 1), got {self.holdout_fraction}", option="holdout")

"""``edgetl-rt tune``: the ridge regularisation searched on the store's held-out rows, committed as a version.

The search (an O(d³) eigendecomposition) never runs on a small update: it runs when due (the training samples grew
by a quarter since the last search) on an update of at least ``alpha_search_min`` new training samples, when asked
(``--reselect-alpha``, :func:`tune_alpha`), or in the background of ``serve``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ..bundle.folder import Bundle
from ..bundle.heads import RidgeHead
from ..bundle.store import Samples, Version
from ..documents import utc_now
from .reports import AlphaReport, AlphaTimings
from .session import LearningSession
from .settings import UpdateSettings
from .versions import accuracy, ensure_store, write_rows


def tune_alpha(bundle: str | Path | Bundle, session: LearningSession | None = None,
               lock_timeout: float = UpdateSettings.lock_timeout) -> AlphaReport:
    """Run the regularisation search now, on the store's held-out rows, and commit it as a ``tune`` version
    (the head is solved again when it is a ridge head; other heads are kept).  ``serve`` runs this in the
    background when an update leaves the search due."""
    bundle = Bundle.open(bundle)
    session = session or LearningSession(keep_factor=False)
    store = bundle.store
    dim = bundle.feature_dim
    with store.locked(lock_timeout):
        parent = ensure_store(store, bundle)
        parts = session.parts(store, parent)
        holdout = session.holdout(parts, dim)
        try:
            learned = session.learned(store, parent, parts, dim)
            t = time.perf_counter()
            before = learned.ridge.alpha
            alpha = learned.ridge.choose_alpha(holdout.features, holdout.labels, force=True)
            head = learned.ridge.head if isinstance(learned.head, RidgeHead) else learned.head
            alpha_s = time.perf_counter() - t
            version = Version(**{**asdict(parent), "version": -1, "parent": parent.version, "action": "tune",
                                 "files": {}, "n_new": 0, "new_classes": [], "alpha": alpha,
                                 "alpha_selected_at": learned.ridge.alpha_selected_at,
                                 "accuracy": {"holdout": accuracy(head, holdout)},
                                 "note": f"alpha searched on {len(holdout)} held-out rows", "created": utc_now()})
            write_rows(store, version, parent, parts, Samples.empty(dim), dim)
            store.commit(version, head, store.adapter(parent), parts)
            session.committed(version, head, None)
        except BaseException:
            session.forget()
            raise
    return AlphaReport(bundle=str(bundle.path), version=version.version, parent=parent.version, alpha_before=before,
                       alpha=alpha, holdout_n=len(holdout), accuracy=version.accuracy["holdout"],
                       timings=AlphaTimings(alpha_s=alpha_s))

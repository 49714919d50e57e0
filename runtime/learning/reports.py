"""What each learning transaction reports: typed, and the same JSON keys as before they were typed.

``edgetl-rt update --json``, ``adapt --json``, ``tune --json`` and ``serve``'s update route print
:meth:`Report.to_json`.  A report is also read like the dictionary it used to be (``report["accuracy"]``,
``report["timings"]["head_s"]``, ``dict(report)``, which ``json.dumps`` takes), so scripts that read 0.6's reports
keep working; attributes (``report.timings.head_s``) are the typed way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar


class Report(Mapping):
    """Base of the typed reports: fields in JSON order; the fields named in ``OMITTED_WHEN_NONE`` are left out of
    the JSON while they are None (keys that only some paths report)."""

    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    def _keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)
                if not (f.name in self.OMITTED_WHEN_NONE and getattr(self, f.name) is None)]

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object (nested reports too)."""
        out = {}
        for key in self._keys():
            value = getattr(self, key)
            out[key] = value.to_json() if isinstance(value, Report) else value
        return out

    def __getitem__(self, key: str) -> Any:
        """The value of a JSON key; a nested report as its JSON object, as the dictionaries of 0.6 held it."""
        if key not in self._keys():
            raise KeyError(key)
        value = getattr(self, key)
        return value.to_json() if isinstance(value, Report) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


@dataclasses.dataclass(eq=False)
class UpdateTimings(Report):
    """Seconds an update spent: the head maths, building the learners' state, the alpha search, the commit, and
    (when it ran the backbone itself) the backbone pass."""

    head_s: float
    head_state_s: float
    alpha_s: float
    commit_s: float | None = None
    backbone_s: float | None = None

    OMITTED_WHEN_NONE = ("commit_s", "backbone_s")


@dataclasses.dataclass(eq=False)
class UpdateReport(Report):
    """One committed update (``edgetl-rt update``, :class:`~edgetl.runtime.learning.update.Learner`, ``serve``)."""

    bundle: str
    parent: int
    method: str
    artifact: str | None
    n_new: int
    n_train_new: int
    n_holdout_new: int
    classes: list[str]
    new_classes: list[str]
    holdout_n: int
    accuracy: float | None
    accuracy_before: float | None
    accuracy_after_on_earlier_holdout: float | None
    accuracy_after_on_earlier_holdout_all_classes: float | None
    alpha: float | None
    alpha_searched: bool
    alpha_due: bool
    solve_residual: float | None
    timings: UpdateTimings
    evicted: int = 0
    version: int | None = None
    committed: bool = False
    n_train: int | None = None
    n_holdout: int | None = None
    n_duplicate: int | None = None      # images listed that the store held already (from images, not features)
    n_skipped: int | None = None        # unreadable images left out (with skip_bad)
    head_version: int | None = None     # the version a service answers with after the commit

    OMITTED_WHEN_NONE = ("n_duplicate", "n_skipped", "head_version")


@dataclasses.dataclass(eq=False)
class AlphaTimings(Report):
    alpha_s: float


@dataclasses.dataclass(eq=False)
class AlphaReport(Report):
    """The regularisation search committed as a ``tune`` version (``edgetl-rt tune``)."""

    bundle: str
    version: int
    parent: int
    alpha_before: float | None
    alpha: float
    holdout_n: int
    accuracy: float | None
    timings: AlphaTimings


@dataclasses.dataclass(eq=False)
class AdaptReport(Report):
    """An adaptation to unlabelled target-domain data (``edgetl-rt adapt``); the check figures with ``check``."""

    bundle: str
    n_unlabeled: int
    parent: int
    mean_shift: float
    check: str | None = None
    check_n: int | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    version: int | None = None
    committed: bool = False
    method: str | None = None           # the method taken (None: the guard refused every one)
    guard: str = "committed"            # committed | refused | forced (the guard objected; --force committed)
    guard_reason: str = ""
    drift_before: float | None = None   # the target's drift score before, the alarm level, and after the method
    alarm: float | None = None
    drift_after: float | None = None
    agreement: float | None = None      # share of the served answers the adaptation keeps
    candidates: dict = dataclasses.field(default_factory=dict)   # method -> its label-free signals
    adapt_ms: float | None = None       # fitting and guarding, the backbone pass excluded

    OMITTED_WHEN_NONE = ("check", "check_n", "accuracy_before", "accuracy_after")

"""Learning on the device: incremental learners and the transactions that commit head versions (update, adapt,
rollback, the regularisation search), each crash-safe and guarded."""

from ..exports import lazy_names

_NAMES = {
    **dict.fromkeys(("Adam", "ClassIndex", "IncrementalLearner", "RidgeLearner", "NCMLearner", "SGDLearner",
                     "LEARNERS"), ".learners"),
    **dict.fromkeys(("UpdateSettings", "METHODS", "SERVICE_LOCK_TIMEOUT"), ".settings"),
    **dict.fromkeys(("update_bundle", "learn_records", "learn_features", "Learner"), ".update"),
    **dict.fromkeys(("UpdateReport", "UpdateTimings", "AdaptReport", "AlphaReport", "Report"), ".reports"),
    "LearningSession": ".session",
    **dict.fromkeys(("ensure_store", "accuracy"), ".versions"),
    "adapt_bundle": ".adapt",
    "rollback_bundle": ".rollback",
    "tune_alpha": ".alpha",
    **dict.fromkeys(("contribute_bundle", "pull_bundle", "PullReport"), ".fleet"),
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)

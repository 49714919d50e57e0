"""The bundle: its folder and manifest, its head files, its check set, and what a device keeps beside them
(the versioned feature store of what it learned, the timings it measured)."""

from ..exports import lazy_names

_NAMES = {
    **dict.fromkeys(("Bundle", "HeadState"), ".folder"),
    **dict.fromkeys(("BundleManifest", "Artifact", "read_bundle_manifest", "verify_file"), ".manifest"),
    **dict.fromkeys(("Head", "LinearHead", "MLPHead", "RidgeHead", "NCMHead", "HEAD_KINDS", "load_head", "softmax"),
                    ".heads"),
    **dict.fromkeys(("FeatureStore", "Version"), ".store"),
    **dict.fromkeys(("CheckSet", "load_check_set"), ".checkset"),
    **dict.fromkeys(("TimingRecord", "Timing", "read_timings"), ".timings"),
    **dict.fromkeys(("verify_bundle", "sign_bundle", "BundleVerification", "BUNDLE_SIGNATURE"), ".signature"),
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)

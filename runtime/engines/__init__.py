"""Engines: the backends that run a bundle's artifacts, which artifact runs here and why, and measuring them."""

from ..exports import lazy_names

_NAMES = {
    "BackboneRunner": ".runner",
    **dict.fromkeys(("Backend", "create_backend", "installed", "available_backends"), ".backends"),
    **dict.fromkeys(("Choice", "choose"), ".choice"),
    **dict.fromkeys(("measure_bundle", "MeasureReport"), ".measure"),
    **dict.fromkeys(("BenchSettings", "latency_stats"), ".latency"),
    # what edgetl.runtime.engines (the TensorRT engine sidecars) held in 0.6; its own module since 0.7
    **dict.fromkeys(("ENGINE_FOLDER", "SIDECAR_SCHEMA", "EngineMetadata", "parse_version", "sidecar_path",
                     "read_sidecar", "check_engine_compatible"), ".sidecar"),
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)

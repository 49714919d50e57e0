"""The bundle manifest: what a device needs to know, and the checks before loading.

A bundle is a folder with ``manifest.json``, the backbone artifacts, the head
as ``.npz`` and a fused model.  Every file is listed with its sha256 and
size; :func:`read_bundle_manifest` refuses unknown schemas, missing files
and files whose content does not match.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BundleError
from .fsutil import sha256_file
from .preprocess import PreprocessConfig

#: 2 added per-artifact ``requires_cpu`` / ``measured`` and the check set; version 1 bundles still load.
BUNDLE_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"


@dataclass
class FileEntry:
    file: str
    sha256: str
    size: int

    @classmethod
    def of(cls, folder: Path, name: str) -> "FileEntry":
        path = folder / name
        return cls(name, sha256_file(path), path.stat().st_size)


@dataclass
class Artifact:
    """One exported model file.

    ``role`` is ``backbone`` (images -> features; the numpy head runs beside
    it, so on-device updates never touch it) or ``fused`` (images -> logits,
    one file for users who do not update).
    """

    name: str
    format: str
    precision: str
    backend: str
    role: str
    file: str
    sha256: str
    size: int
    input_name: str
    output_name: str
    accuracy: float | None = None
    accuracy_drop: float | None = None
    max_abs_diff: float | None = None
    backends: list[str] = field(default_factory=list)
    companions: list[dict] = field(default_factory=list)   # e.g. OpenVINO's .bin: {"file", "sha256", "size"}
    deployable: bool = True
    evaluated_with: str | None = None
    export_notes: list[str] = field(default_factory=list)
    requires_cpu: list[str] = field(default_factory=list)   # CPU flags (any of) it needs to run as stated
    # How the export measured its accuracy: "as-deployed" (the engine and kind of CPU it deploys to), "exact"
    # (the same arithmetic on another engine: Q/DQ int8 by float fake-quantization), "emulated" (bf16
    # numerics on a CPU without bf16) or "not-measured" (the exporting CPU cannot compute it).
    measured: str = "as-deployed"
    measurement_note: str = ""

    @property
    def needs_device_check(self) -> bool:
        """Not measured at export as the device runs it: the device checks it before choosing it."""
        return self.measured != "as-deployed"

    def runs_on(self, flags) -> bool:
        """Whether a CPU with ``flags`` runs this artifact as stated."""
        return not self.requires_cpu or bool(set(self.requires_cpu) & set(flags))



@dataclass
class BundleManifest:
    schema_version: int
    edgetl_version: str
    created: str
    backbone: dict             # {"name", "weights_sha256", "feature_dim", "train_last"}
    preprocess: dict
    labels: list[str]
    feature_dim: int
    head: dict                 # {"kind", "file", "sha256", "size"}
    artifacts: list[Artifact]
    reference_accuracy: float | None = None
    validation: dict = field(default_factory=dict)
    source_run: dict = field(default_factory=dict)
    target: dict = field(default_factory=dict)   # the device profile it was built for (edgetl export --target)
    learning: dict = field(default_factory=dict)  # learning/features.npz: what on-device updates start from
    check: dict = field(default_factory=dict)     # check.npz: images + fp32 logits the device checks artifacts on

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)

    @property
    def openvino_device(self) -> str | None:
        """The OpenVINO device the bundle's target profile asks for (an iGPU), if any."""
        return self.target.get("profile", {}).get("hardware", {}).get("openvino_device")

    def artifact(self, name: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        raise BundleError(
            f"bundle has no artifact '{name}' (it has: {', '.join(a.name for a in self.artifacts)})"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def write(self, folder: Path) -> None:
        (folder / MANIFEST_NAME).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> "BundleManifest":
        data = dict(data)
        data["artifacts"] = [Artifact(**a) for a in data.get("artifacts", [])]
        return cls(**data)


def read_bundle_manifest(folder: str | Path, verify: bool = True) -> BundleManifest:
    """Read and check a bundle's manifest; with ``verify`` also every file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} does not exist or is not a folder")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"{folder} is not a bundle: it has no {MANIFEST_NAME}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); the bundle is damaged") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in READABLE_SCHEMA_VERSIONS:
        raise BundleError(
            f"{path} has schema version {version!r}; this edgetl runtime reads versions "
            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}. Re-export the bundle or upgrade edgetl."
        )
    try:
        manifest = BundleManifest.from_dict(data)
    except TypeError as exc:
        raise BundleError(f"{path} does not match the bundle schema: {exc}") from exc
    if verify:
        verify_file(folder, manifest.head["file"], manifest.head["sha256"])
        for artifact in manifest.artifacts:
            verify_artifact(folder, artifact)
        for extra in (manifest.learning, manifest.check):
            if extra:
                verify_file(folder, extra["file"], extra["sha256"])
    return manifest


def verify_artifact(folder: Path, artifact: Artifact) -> None:
    """Check the sha256 of an artifact's file and of its companions (OpenVINO's .bin)."""
    verify_file(folder, artifact.file, artifact.sha256)
    for companion in artifact.companions:
        verify_file(folder, companion["file"], companion["sha256"])


def verify_file(folder: Path, name: str, expected_sha256: str) -> Path:
    path = (folder / name).resolve()
    if folder.resolve() not in path.parents:
        raise BundleError(f"bundle file name {name!r} points outside the bundle")
    if not path.is_file():
        raise BundleError(f"bundle file {name} is missing from {folder}")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise BundleError(
            f"bundle file {name} fails its sha256 check (expected {expected_sha256[:12]}..., "
            f"got {actual[:12]}...): it was modified or damaged; re-export or re-copy the bundle"
        )
    return path

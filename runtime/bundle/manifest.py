"""The bundle manifest: what a device needs to know, and the checks before loading.

A bundle is a folder with ``manifest.json``, the backbone artifacts, the head
as ``.npz`` and a fused model.  Every file is listed with its sha256 and
size; :func:`read_bundle_manifest` refuses unknown schemas, keys of the
wrong type (one line naming ``manifest.json`` and the key), missing files
and files whose content does not match.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data.preprocess import PreprocessConfig, preprocess_from_dict
from ..data.text import TextPreprocess
from ..documents import Origin, Table, build, read_document, table_of, to_json
from ..errors import BundleError, ConfigError
from ..fsutil import atomic_write_text, sha256_file
from ..machine import cpu_facts

#: 2 added per-artifact ``requires_cpu`` / ``measured`` and the check set; version 1 bundles still load.
BUNDLE_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
#: The format of a TensorRT engine an artifact entry names (built on the device: :mod:`edgetl.runtime.engines.sidecar`).
ENGINE_FORMAT = "tensorrt-engine"


@dataclass
class FileEntry:
    file: str
    sha256: str
    size: int

    @classmethod
    def of(cls, folder: Path, name: str) -> FileEntry:
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
    # Accuracy on the val split per CPU architecture: the exporting host's, then any that `make check-arm64`
    # (or :func:`record_accuracy`) measured.  Empty in bundles before 0.5.
    accuracy_by_arch: dict[str, float] = field(default_factory=dict)

    @property
    def needs_device_check(self) -> bool:
        """Not measured at export as the device runs it: the device checks it before choosing it.  Quantized
        kernels differ between architectures (with SVE and I8MM, ONNX Runtime's int8 scores on aarch64 lay up to
        0.07 from x86's on digits), so an int8 artifact not measured on this architecture is checked too."""
        foreign = bool(self.accuracy_by_arch) and cpu_facts()["arch"] not in self.accuracy_by_arch
        return self.measured != "as-deployed" or (self.precision == "int8" and foreign)

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
    fleet: dict = field(default_factory=dict)     # a merged bundle's provenance and statistics (edgetl fleet merge)
    # unknown.npz: the unknown-input scorer fitted at export and its threshold on the val split (method, threshold,
    # keep, n, on, shrinkage, k, file, sha256, size; :mod:`.unknown`)
    unknown: dict = field(default_factory=dict)

    @property
    def modality(self) -> str:
        """``image`` or ``text``: what the bundle's model reads."""
        return self.preprocess.get("kind", "image")

    @property
    def preprocess_config(self) -> PreprocessConfig | TextPreprocess:
        """The recorded preprocessing; a text model's reads its tokenizer from the bundle (:attr:`Bundle.preprocess`
        sets the folder and checks the file)."""
        return preprocess_from_dict(self.preprocess)

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
        return to_json(self)

    def write(self, folder: Path) -> None:
        (folder / MANIFEST_NAME).write_text(self.to_json())


#: A file of the bundle: ``head``, an artifact's companion, ``learning`` and ``check`` start with these keys.
FILE_KEYS = {"file": str, "sha256": str, "size": int}
#: The preprocessing of a bundle or a run (:meth:`PreprocessConfig.from_dict`).
#: An image model's keys, or a text model's (``kind: text``); which are required is checked when it is built.
PREPROCESS_TABLE = Table({"kind": str, "input_size": int, "resize_size": int, "mean": list[float], "std": list[float],
                          "interpolation": str, "tokenizer": str, "tokenizer_sha256": str, "max_length": int,
                          "pad_id": int},
                         optional=("kind", "interpolation", "input_size", "resize_size", "mean", "std", "tokenizer",
                                   "tokenizer_sha256", "max_length", "pad_id"))


def _described(**keys) -> Table:
    """A block that describes rather than drives: every key optional, keys added by a later writer allowed."""
    return Table(keys, optional=tuple(keys), closed=False)


@functools.cache
def _manifest_table() -> Table:
    """``manifest.json`` of schema 1 and 2, every key typed (schema 1 lacks keys that have a default)."""
    return table_of(
        BundleManifest,
        backbone=Table({"name": str, "weights_sha256": str, "weights_source": str, "feature_dim": int,
                        "train_last": int}, optional=("weights_source",), closed=False),
        preprocess=PREPROCESS_TABLE,
        head=Table({"kind": str, **FILE_KEYS}),
        artifacts=list[table_of(Artifact, companions=list[Table(FILE_KEYS)])],
        validation=_described(check_images=int, evaluated_on=str, max_accuracy_drop=float, calibration_images=int,
                              torch_val_accuracy=float),
        source_run=_described(path=str, created=str, data=str),
        target=_described(name=str, description=str, backends=list[str], precisions=list[str], profile=dict,
                          tensorrt=_described(version=str, precision=str, max_batch=int, dla_cores=int,
                                              source_format=str, trtexec=dict, trtexec_dla=str, engine_file=str)),
        learning=Table({**FILE_KEYS, "n_train": int, "n_holdout": int, "artifact": str, "max_per_class": int,
                        "max_holdout_per_class": int},
                       optional=("n_train", "n_holdout", "artifact", "max_per_class", "max_holdout_per_class"),
                       closed=False, or_empty=True),
        check=Table({**FILE_KEYS, "images": int, "reference": str}, optional=("images", "reference"), closed=False,
                    or_empty=True),
        fleet=_described(base=str, statistics=Table(FILE_KEYS), merged=str, alpha=float, head=str, devices=list[str],
                         contributions=list[dict], samples_per_class=dict, skipped=list[dict]),
        unknown=Table({**FILE_KEYS, "method": str, "threshold": float, "keep": float, "n": int, "on": str,
                       "shrinkage": float, "k": int},
                      optional=("threshold", "n", "on", "shrinkage", "k"), closed=False, or_empty=True),
    )


def record_accuracy(folder: str | Path, arch: str, accuracies: dict[str, float]) -> None:
    """Record artifacts' accuracy measured on CPU architecture ``arch`` (``make check-arm64`` does, for aarch64) in
    the bundle's manifest, which the runtime's choice then gates on there (the manifest is rewritten atomically;
    its files and their sha256 are untouched)."""
    path = Path(folder) / MANIFEST_NAME
    document = json.loads(path.read_text(encoding="utf-8"))
    names = {a["name"] for a in document["artifacts"]}
    unknown = sorted(set(accuracies) - names)
    if unknown:
        raise BundleError(f"{path} has no artifact {', '.join(unknown)}")
    for artifact in document["artifacts"]:
        if artifact["name"] in accuracies:
            artifact.setdefault("accuracy_by_arch", {})[arch] = float(accuracies[artifact["name"]])
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def read_bundle_manifest(folder: str | Path, verify: bool = True) -> BundleManifest:
    """Read and check a bundle's manifest; with ``verify`` also every file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} does not exist or is not a folder")
    origin = Origin(str(path), BundleError, "re-export or re-copy the bundle")
    data = read_document(path, origin, READABLE_SCHEMA_VERSIONS, what="an edgetl bundle manifest",
                         key="schema_version", missing=f"{folder} is not a bundle: it has no {MANIFEST_NAME}")
    manifest = build(BundleManifest, data, origin, _manifest_table())
    try:           # which keys are required depends on the kind: checked here, so the error names the manifest
        preprocess_from_dict(manifest.preprocess)
    except ConfigError as exc:
        origin.fail(f"key 'preprocess': {exc}")
    if verify:
        verify_file(folder, manifest.head["file"], manifest.head["sha256"])
        for artifact in manifest.artifacts:
            verify_artifact(folder, artifact)
        for extra in (manifest.learning, manifest.check, manifest.unknown):
            if extra:
                verify_file(folder, extra["file"], extra["sha256"])
        if manifest.modality == "text":
            verify_file(folder, manifest.preprocess["tokenizer"], manifest.preprocess["tokenizer_sha256"])
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
